"""Do the committed docs still describe the config? Checked cheaply, without Graphviz.

`make docs` writes docs/architecture.{dot,mmd,svg} and docs/inputs.md's tables from a config;
`generated_drift` says which of them it would change now (the SVG carries the sha256 of the DOT
it was drawn from, so comparing the DOT is enough). The prose is written by people, so
`prose_drift` checks what it can in README.md, docs/security.md and the schemas' descriptions:
every value they name that looks like a config value (an IP range, a zone, a region, a machine
type, a `network` tag) must be one the config sets, unless it is an example ("e.g. X", "such as
X"); and README must name every source range the firewall admits from outside the VPC. Each
problem names its file and line. `make preview` prints a one-line reminder for each
(`reminders`); tests/tooling/test_docs.py fails on either.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import yaml

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
# Prose next to the config that states its values (the schemas' descriptions are read too).
PROSE_PAGES = ("README.md", "docs/security.md")
# An example names a value of the right shape, not the config's own: it is not checked.
EXAMPLE = re.compile(r"(?:e\.g\.|such as)\s*$")


def reminders(config: str | Path, expansion: Expansion) -> list[str]:
    """`make preview`'s one-line notes when the docs next to `config` no longer describe it."""
    lines = []
    stale = generated_drift(config, expansion)
    if stale:
        lines.append(
            f"note: the docs no longer match {Path(config).name} ({', '.join(stale)}): run "
            "`make docs` and commit the result"
        )
    if _documents(config):
        for problem in prose_drift(Path(config).parent, expansion):
            lines.append(f"note: {problem}: edit it")
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
    docs, page = config.parent / "docs", config.parent / inputs.PAGE
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
    text = page.read_text() if page.is_file() else ""
    if inputs.BEGIN in text and inputs.generated_block(text) != inputs.tables(config):
        stale.append(str(page))
    return stale


def prose_drift(root: Path, expansion: Expansion) -> list[str]:
    """Each config value the prose under `root` names that the config no longer sets, as
    `FILE:LINE: names the KIND VALUE, ...`, and each source range the firewall admits that
    README does not name."""
    values = set(_strings(expansion.resources))
    ranges = _admitted_ranges(expansion)
    values.update(ranges)
    problems = []
    for file, line, text in _prose(root, expansion):
        for kind, pattern in PROSE_VALUES.items():
            for match in pattern.finditer(text):
                named = match.group(match.lastindex or 0)
                if named not in values and not EXAMPLE.search(text[: match.start()]):
                    problems.append(
                        f"{file}:{line}: names the {kind} {named}, which the config does not set"
                    )
    readme = root / "README.md"
    prose = readme.read_text() if readme.is_file() else ""
    for cidr in ranges:
        if cidr != "0.0.0.0/0" and cidr not in _subnet_ranges(expansion) and cidr not in prose:
            problems.append(f"{readme}: does not name {cidr}, which the firewall admits")
    return list(dict.fromkeys(problems))


def _prose(root: Path, expansion: Expansion) -> Iterator[tuple[Path, int, str]]:
    """(file, line number, text) for each line of prose that describes the config."""
    for name in PROSE_PAGES:
        page = root / name
        if page.is_file():
            for number, text in enumerate(page.read_text().splitlines(), 1):
                yield page, number, text
    for name, text in expansion.files.items():
        if name.endswith(".schema") and (root / name).is_file():
            lines = text.splitlines()
            for first, last in _description_lines(text):
                for number in range(first, last + 1):
                    yield root / name, number, lines[number - 1]


def _description_lines(schema_text: str) -> Iterator[tuple[int, int]]:
    """(first, last) line of each `description:` value in a schema, 1-based."""
    try:
        pending = [yaml.compose(schema_text, Loader=yaml.SafeLoader)]
    except yaml.YAMLError:
        return
    while pending:
        node = pending.pop()
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == "description" and isinstance(value, yaml.ScalarNode):
                    last = value.end_mark.line + (1 if value.end_mark.column else 0)
                    yield key.start_mark.line + 1, max(last, key.start_mark.line + 1)
                else:
                    pending.append(value)
        elif isinstance(node, yaml.SequenceNode):
            pending.extend(node.value)


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
