"""The drift report: plain lines for a terminal and a CI log, or JSON for machines.

Text, one block per resource that differs, every line readable on its own in a CI log:

    DRIFT hello-firewall-allow-ssh (compute.v1.firewall): changed
      sourceRanges: declared ['104.154.0.0/15'], live ['0.0.0.0/0']
      means: tcp:22 from 0.0.0.0/0 (Internet) to hello-vm is now OPEN (live rule ...)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from drift.compare import DELETED, UNOWNED, Difference

MAX_SHOWN = 72


def shown(value: Any) -> str:
    """A value short enough for one line: long text (a metadata file) by size and digest."""
    if value is None:
        return "(not set)"
    if isinstance(value, str) and (len(value) > MAX_SHOWN or "\n" in value):
        digest = hashlib.sha256(value.encode()).hexdigest()[:12]
        return f"<{len(value.encode())} bytes, sha256 {digest}>"
    text = json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def _grouped(differences: Iterable[Difference]) -> dict[tuple[str, str], list[Difference]]:
    groups: dict[tuple[str, str], list[Difference]] = {}
    for difference in differences:
        groups.setdefault((difference.resource, difference.type), []).append(difference)
    return groups


def text(
    differences: list[Difference],
    meanings: Callable[[Difference], list[str]],
    removal: Callable[[Difference], str],
    header: str,
    not_checked: Sequence[dict] = (),
) -> str:
    """The report for people. `meanings` says what a difference means for reachability;
    `removal` names the command that would remove an unowned resource; `not_checked` are the
    config's resources of other APIs."""
    lines = [header]
    if not_checked:
        names = ", ".join(f"{r['name']} ({r['type']})" for r in not_checked)
        lines.append(f"not checked (not Compute Engine resources): {names}")
    if not differences:
        lines.append("no drift: every Compute Engine resource matches the config")
        return "\n".join(lines) + "\n"
    for (name, type_), group in _grouped(differences).items():
        kind = group[0].kind
        if kind == DELETED:
            lines.append(f"DRIFT {name} ({type_}): deleted (the config declares it)")
        elif kind == UNOWNED:
            lines.append(f"DRIFT {name} ({type_}): not in the deployment, on the stack's network")
            lines.append(f"  remove it (if nobody needs it): {removal(group[0])}")
        else:
            lines.append(f"DRIFT {name} ({type_}): changed")
            for difference in group:
                lines.append(
                    f"  {difference.field}: declared {shown(difference.declared)}, "
                    f"live {shown(difference.live)}"
                )
        lines.extend(f"  means: {sentence}" for sentence in meanings(group[0]))
    resources = len(_grouped(differences))
    lines.append(
        f"drift: {len(differences)} difference(s) in {resources} resource(s); `make repair` puts "
        "the deployment's back and leaves the rest to you (docs/deploy-failures.md)"
    )
    return "\n".join(lines) + "\n"


def as_json(
    differences: list[Difference],
    meanings: Callable[[Difference], list[str]],
    removal: Callable[[Difference], str],
    not_checked: Sequence[dict] = (),
    **about: Any,
) -> str:
    """The report for machines: one object per difference, with `means` on each."""
    items = []
    explained: dict[tuple[str, str], list[str]] = {}
    for difference in differences:
        key = (difference.resource, difference.type)
        if key not in explained:
            explained[key] = meanings(difference)
        item = {
            "kind": difference.kind,
            "resource": difference.resource,
            "type": difference.type,
            "field": difference.field,
            "declared": difference.declared,
            "live": difference.live,
            "means": explained[key],
        }
        if difference.kind == UNOWNED:
            item["remove_with"] = removal(difference)
        items.append(item)
    skipped = [{"resource": r["name"], "type": r["type"]} for r in not_checked]
    return (
        json.dumps(
            {**about, "drift": bool(items), "differences": items, "not_checked": skipped},
            indent=2,
        )
        + "\n"
    )
