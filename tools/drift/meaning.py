"""What a firewall difference means for the VM: which ports are now open to whom, or no longer.

Each difference is judged on its own: the declared rule set and VM tags, then the same with only
that one difference applied (a rule gone, a rule as it is live, a rule added beside ours, the
VM's live tags). Both are evaluated with the dry run's firewall semantics
(dmlocal.reachability: priorities, deny beats allow, the implied rules) for one packet per
source range and port the rules mention, and every packet whose answer changes is reported.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dmlocal import reachability
from dmlocal.reachability import KNOWN_RANGES, evaluate, normalize_protocol, parse_port_range
from drift.compare import CHANGED, DELETED, UNKNOWN, UNOWNED, Difference

FIREWALL = "compute.v1.firewall"
INSTANCE = "compute.v1.instance"


@dataclass(frozen=True)
class Target:
    """A declared VM: its name and the network tags the config gives it."""

    name: str
    tags: tuple[str, ...]


def _ranges(rule: Mapping) -> list[str]:
    ranges = [r for r in rule.get("sourceRanges") or [] if isinstance(r, str) and r]
    if not ranges and not rule.get("sourceTags") and not rule.get("sourceServiceAccounts"):
        return ["0.0.0.0/0"]
    return ranges


def _probes(rules: Iterable[Mapping]) -> tuple[list[str], list[tuple[str, int | None]]]:
    """Source ranges and (protocol, port) packets worth asking about for these rules."""
    sources: list[str] = []
    packets: list[tuple[str, int | None]] = []

    def add(packet: tuple[str, int | None]) -> None:
        if packet not in packets:
            packets.append(packet)

    for rule in rules:
        if (rule.get("direction") or "INGRESS") != "INGRESS":
            continue
        for cidr in _ranges(rule):
            if cidr not in sources:
                sources.append(cidr)
        for entry in (rule.get("allowed") or []) + (rule.get("denied") or []):
            proto = normalize_protocol(entry.get("IPProtocol", ""))
            if proto == "all":
                for each in ("tcp", "udp", "icmp"):
                    add((each, None))
            elif not entry.get("ports") or proto not in reachability.PORTED_PROTOCOLS:
                add((proto, None))
            else:
                for spec in entry["ports"]:
                    add((proto, parse_port_range(spec)[0]))
    return sources, packets


def _member(cidr: str) -> str:
    """An address inside the range, other than its network address when it has others."""
    net = ipaddress.ip_network(cidr, strict=False)
    return str(net[1] if net.num_addresses > 1 else net[0])


def _label(cidr: str) -> str:
    return f"{cidr} ({KNOWN_RANGES[cidr]})" if cidr in KNOWN_RANGES else cidr


def _packet(proto: str, port: int | None) -> str:
    if port is None:
        return f"{proto} (every port)" if proto in reachability.PORTED_PROTOCOLS else proto
    return f"{proto}:{port}"


def reach_changes(
    before: list[Mapping], after: list[Mapping], targets: list[Target], after_tags=None
) -> list[str]:
    """Sentences for every packet to a target whose answer differs between the two rule sets
    (`after_tags`: {vm name: tags} where the VM's tags differ too)."""
    sources, packets = _probes([*before, *after])
    after_tags = after_tags or {}
    lines: dict[tuple, list[str]] = {}
    for target in targets:
        tags_after = after_tags.get(target.name, target.tags)
        for cidr in sources:
            try:
                remote = _member(cidr)
            except ValueError:
                continue
            for proto, port in packets:
                was = evaluate(before, remote, proto, port, tags=target.tags)
                now = evaluate(after, remote, proto, port, tags=tags_after)
                if was.allowed == now.allowed:
                    continue
                key = (target.name, cidr, now.allowed, now.rule, was.rule)
                lines.setdefault(key, []).append(_packet(proto, port))
    out = []
    for (vm, cidr, allowed, rule, declared_rule), probes in lines.items():
        what = ", ".join(probes)
        if allowed:
            out.append(
                f"{what} from {_label(cidr)} to {vm} is now OPEN (live rule {rule}); "
                f"the config denies it ({declared_rule})"
            )
        else:
            out.append(
                f"{what} from {_label(cidr)} to {vm} is now CLOSED (live: {rule}); "
                f"the config allows it (rule {declared_rule})"
            )
    return out


def _usable(rule: Mapping) -> dict:
    """A rule the evaluator can read: unresolved ranges (their resource is gone) dropped."""
    out = dict(rule)
    for key in ("sourceRanges", "destinationRanges"):
        if key in out:
            out[key] = [r for r in out[key] or [] if r is not UNKNOWN]
    return out


def meaning(
    difference: Difference,
    declared_rules: Mapping[str, Mapping],
    live_rules: Mapping[str, Mapping],
    targets: list[Target],
) -> list[str]:
    """What `difference` changes in who reaches the VMs (empty when nothing, or not a firewall
    or tag difference). Rules are keyed by name: the declared ones resolved, the live ones as
    the API returned them (the deployment's and the others on its network)."""
    before = [_usable({**rule, "name": name}) for name, rule in declared_rules.items()]
    after_tags = None
    if difference.type == FIREWALL:
        others = [r for r in before if r["name"] != difference.resource]
        if difference.kind == DELETED:
            after = others
        elif difference.kind in (CHANGED, UNOWNED):
            after = [
                *others,
                _usable({**live_rules[difference.resource], "name": difference.resource}),
            ]
        else:
            return []
    elif difference.type == INSTANCE and difference.field.startswith("tags"):
        live = difference.live or []
        after, after_tags = before, {difference.resource: tuple(live)}
    else:
        return []
    return reach_changes(before, after, targets, after_tags)
