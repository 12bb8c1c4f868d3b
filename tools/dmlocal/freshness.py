"""Do the committed docs still describe the config? Checked cheaply, without Graphviz.

`make docs` writes docs/architecture.{dot,mmd,svg} and README.md's inputs table from a config;
`generated_drift` says which of them it would change now (the SVG carries the sha256 of the DOT
it was drawn from, so comparing the DOT is enough). README's prose is written by people, so
`prose_drift` checks what it can: every value the prose names that looks like a config value
(an IP range, a zone, a region, a machine type, a `network` tag) must be one the config sets,
and every source range the firewall admits from outside the VPC must be named. `make preview`
prints a one-line reminder for each (`reminders`); tests/tooling/test_docs.py fails on
either.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from dmlocal import diagram, inputs
from dmlocal.expand import Expansion
from dmlocal.reachability import (
    ReachabilityError,
    firewall_rules,
    ingress_source_ranges,
    resolver_for,
)

# What a config value looks like in prose, by kind.
PROSE_VALUES = {
    "IP range": re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}/\d{1,2}\b"),
    "zone": re.compile(r"\b[a-z]+-[a-z]+\d-[a-z]\b"),
    "region": re.compile(r"\b[a-z]+-[a-z]+\d\b(?!-)"),
    "machine type": re.compile(
        r"\b[a-z]\d[a-z]?-(?:micro|small|medium|standard|highmem|highcpu)"
        r"(?:-\d+)?\b"
    ),
    "network tag": re.compile(r"`([a-z][-a-z0-9]*)` tag\b"),
}


def reminders(config: str | Path, expansion: Expansion) -> list[str]:
    """`make preview`'s one-line notes when the docs next to `config` no longer describe it."""
    lines = []
    stale = generated_drift(config, expansion)
    if stale:
        lines.append(
            f"note: the docs no longer match {Path(config).name} ({', '.join(stale)}): run "
            "`make docs` and commit the result"
        )
    readme = Path(config).parent / "README.md"
    if _documents(config) and readme.is_file():
        for problem in prose_drift(readme.read_text(), expansion):
            lines.append(f"note: {readme}'s prose {problem}: edit it")
    return lines


def _documents(config: str | Path) -> bool:
    """Whether the docs next to `config` were generated from it (the DOT's title names it)."""
    dot = Path(config).parent / "docs" / "architecture.dot"
    return dot.is_file() and diagram.title(config) in dot.read_text()


def generated_drift(config: str | Path, expansion: Expansion) -> list[str]:
    """What `make docs` would rewrite for `config`, or [] (also when the docs are another
    config's: the DOT's title names the config it was generated from)."""
    if not _documents(config):
        return []
    config = Path(config)
    docs, readme = config.parent / "docs", config.parent / "README.md"
    dot_file = docs / "architecture.dot"
    dot, mermaid = diagram.sources(config, expansion)
    stale = []
    if dot_file.read_text() != dot:
        stale.append(str(dot_file))
    mmd = docs / "architecture.mmd"
    if not mmd.is_file() or mmd.read_text() != mermaid:
        stale.append(str(mmd))
    svg = docs / "architecture.svg"
    if not svg.is_file() or diagram.svg_hash(svg.read_text()) != diagram.dot_hash(dot):
        stale.append(str(svg))
    text = readme.read_text() if readme.is_file() else ""
    if inputs.BEGIN in text and inputs.generated_block(text) != inputs.tables(config):
        stale.append(f"{readme}'s inputs table")
    return stale


def prose_drift(readme_text: str, expansion: Expansion) -> list[str]:
    """Each config value README's prose names that the config no longer sets, and each source
    range the firewall admits that the prose does not name."""
    prose = readme_text
    if inputs.BEGIN in prose and inputs.END in prose:
        head, rest = prose.split(inputs.BEGIN, 1)
        prose = head + rest.split(inputs.END, 1)[1]
    values = set(_strings(expansion.resources))
    ranges = _admitted_ranges(expansion)
    values.update(ranges)
    problems = []
    for kind, pattern in PROSE_VALUES.items():
        for named in dict.fromkeys(pattern.findall(prose)):
            if named not in values:
                problems.append(f"names the {kind} {named}, which the config does not set")
    for cidr in ranges:
        if cidr != "0.0.0.0/0" and cidr not in _subnet_ranges(expansion) and cidr not in prose:
            problems.append(f"does not name {cidr}, which the firewall admits")
    return problems


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
        yield value.rstrip("/").rsplit("/", 1)[-1]  # a URL's last segment: the machine type
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _admitted_ranges(expansion: Expansion) -> list[str]:
    try:
        return ingress_source_ranges(
            firewall_rules(expansion.resources),
            tags=None,
            resolve=resolver_for(expansion.resources, expansion.layout),
        )
    except ReachabilityError:
        return []  # the preview's findings say why


def _subnet_ranges(expansion: Expansion) -> set[str]:
    return {
        str((r.get("properties") or {}).get("ipCidrRange"))
        for r in expansion.of_type("compute.v1.subnetwork")
    }
