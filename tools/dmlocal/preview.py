"""What `dmlocal preview` prints: the expanded YAML, a summary and the firewall table.

stdout carries the expanded config unchanged (YAML, for diffs and the pipeline) or, with
`--format json`, one document with the resources, findings and firewall answers. stderr carries
the human summary: findings (file, resource, field, what is valid), creation order, and for each
VM a table of what the firewall allows from the internet, from the SSH range and every
other source range an ingress rule names, from inside the VPC and as egress, so a reviewer sees
a lock-out (or a new opening) before merging.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

import yaml

from dmlocal.expand import Expansion
from dmlocal.reachability import (
    GOOGLE_SSH_RANGE,
    KNOWN_RANGES,
    Decision,
    evaluate,
    firewall_rules,
    ingress_source_ranges,
    resolver_for,
)

INTERNET_PROBE = "198.51.100.10"  # TEST-NET-2: stands for "any address on the internet"
PROBES = (("tcp", 22), ("tcp", 80), ("tcp", 443), ("tcp", 8080), ("udp", 53), ("icmp", None))


@dataclass(frozen=True)
class Row:
    """One line of the firewall table: a kind of peer and the decision for each probe."""

    label: str
    peer: str
    direction: str
    decisions: tuple[tuple[str, Decision], ...]  # (probe label "tcp/22", decision)


def _probe_label(proto: str, port: int | None) -> str:
    return f"{proto}/{port}" if port is not None else proto


def _inside_probe(cidr: str | None) -> str | None:
    if not cidr:
        return None
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return None
    # .0 is the network and .1 the gateway in a GCP subnet; any later host is a peer VM.
    return str(net.network_address + min(10, net.num_addresses - 1))


def _source_peers(
    rules: list[dict], instance: Mapping, resolve, inside: list[str]
) -> list[tuple[str, str, str]]:
    """One peer per distinct source range of the ingress rules: the table shows every range a
    rule names, so adding one (a second SSH range, say) shows up in the review."""
    ranges = [GOOGLE_SSH_RANGE]
    ranges += ingress_source_ranges(
        rules,
        tags=instance.get("tags") or (),
        service_account=instance.get("service_account"),
        resolve=resolve,
    )
    peers = []
    for cidr in dict.fromkeys(ranges):
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            continue  # the findings name the bad range
        if net.prefixlen == 0 or cidr in inside:
            continue  # "from the internet" and "from inside the VPC" rows ask about these
        name = KNOWN_RANGES.get(str(net))
        label = f"from {cidr} ({name})" if name else f"from {cidr}"
        peers.append((label, str(net.network_address + min(1, net.num_addresses - 1)), "INGRESS"))
    return peers


def firewall_table(
    resources: list[Mapping], instance: Mapping, layout: Mapping | None = None
) -> list[Row]:
    """What the rules allow to/from `instance` (an item of `instance_targets`), per peer kind."""
    rules = firewall_rules(resources)
    resolve = resolver_for(resources, layout)
    subnet = instance.get("subnet_range")
    inside = _inside_probe(subnet)
    peers = [("from the internet", INTERNET_PROBE, "INGRESS")]
    peers += _source_peers(rules, instance, resolve, [subnet] if inside else [])
    if inside:
        peers.append((f"from inside the VPC ({subnet})", inside, "INGRESS"))
    peers.append(("egress to the internet", INTERNET_PROBE, "EGRESS"))
    rows = []
    for label, peer, direction in peers:
        decisions = tuple(
            (
                _probe_label(proto, port),
                evaluate(
                    rules,
                    peer,
                    proto,
                    port,
                    tags=instance.get("tags") or (),
                    service_account=instance.get("service_account"),
                    direction=direction,
                    resolve=resolve,
                ),
            )
            for proto, port in PROBES
        )
        rows.append(Row(label, peer, direction, decisions))
    return rows


def format_table(rows: list[Row]) -> str:
    """The table as fixed-width text for the terminal."""
    if not rows:
        return ""
    probes = [label for label, _ in rows[0].decisions]
    width = max(len(r.label) for r in rows)
    lines = [("  " + " " * width + "  " + "  ".join(f"{p:<8}" for p in probes)).rstrip()]
    for row in rows:
        cells = "  ".join(f"{d.action:<8}" for _, d in row.decisions)
        lines.append(f"  {row.label:<{width}}  {cells}".rstrip())
    return "\n".join(lines)


class _ReadableDumper(yaml.SafeDumper):
    """Multi-line strings (the startup script, the app) as `|` blocks; no &anchors."""

    def ignore_aliases(self, data) -> bool:
        return True


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    # Block style cannot carry trailing spaces or tabs faithfully; fall back to quoting then.
    block = "\n" in value and not any(line != line.rstrip() for line in value.split("\n"))
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if block else None)


_ReadableDumper.add_representer(str, _string)


def render_yaml(expansion: Expansion) -> str:
    """The expanded config as DM shows it: leaf resources, then the deployment's outputs."""
    document: dict = {"resources": expansion.resources}
    if expansion.outputs:
        document["outputs"] = expansion.outputs
    return yaml.dump(
        document, Dumper=_ReadableDumper, sort_keys=False, default_flow_style=False, width=100
    )


def summary(expansion: Expansion, findings: list, tables: dict) -> str:
    """The human summary for stderr."""
    counts: dict[str, int] = {}
    for res in expansion.resources:
        kind = res["type"].rsplit(".", 1)[-1]
        counts[kind] = counts.get(kind, 0) + 1
    kinds = ", ".join(f"{n} {k}" for k, n in counts.items())
    lines = [f"{expansion.config_file}: {len(expansion.resources)} resources ({kinds})"]
    if expansion.creation_order:
        lines.append("creation order: " + " -> ".join(expansion.creation_order))
    for finding in findings:
        lines.append(f"{finding.severity}: {finding}")
    for name, (vm, rows) in tables.items():
        tags = ", ".join(vm["tags"]) or "none"
        lines.append(f"firewall for {name} (network tags: {tags}):")
        lines.append(format_table(rows))
    errors = sum(1 for f in findings if f.severity == "error")
    warnings = len(findings) - errors
    verdict = "INVALID" if errors else "valid"
    lines.append(f"{verdict}: {errors} error(s), {warnings} warning(s)")
    return "\n".join(lines) + "\n"


def json_document(expansion: Expansion, findings: list, tables: dict) -> dict:
    errors = [f.as_dict() for f in findings if f.severity == "error"]
    return {
        "config": expansion.config_file,
        "valid": not errors,
        "errors": errors,
        "warnings": [f.as_dict() for f in findings if f.severity != "error"],
        "creation_order": list(expansion.creation_order),
        "resources": expansion.resources,
        "outputs": expansion.outputs,
        "firewall": {
            name: [
                {
                    "from": row.label,
                    "peer": row.peer,
                    "direction": row.direction,
                    "probes": {
                        probe: {"action": d.action, "rule": d.rule, "priority": d.priority}
                        for probe, d in row.decisions
                    },
                }
                for row in rows
            ]
            for name, (_, rows) in tables.items()
        },
    }
