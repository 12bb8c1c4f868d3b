"""The validator's command-line behaviour: `preview` output and the `reach` question.

preview: the expanded config as YAML on stdout (unchanged, for diffs and the pipeline) or, with
`--format json`, one JSON document with the resources, findings and firewall answers; on stderr a
human summary: findings (file, resource, field, what is valid), creation order, and a table of
what the firewall allows from the internet, from Google's SSH range, from inside the VPC and as
egress. Exit 0 valid, 1 invalid, 2 usage.

reach: `dmlocal reach SRC PROTO[/PORT]` answers whether SRC may reach the VM, with the
deciding rule and its priority, using GCP's semantics including the implied rules; `--expect
allow` turns it into a guard ("will this change lock us out of SSH?").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dmlocal import checks, reachability
from dmlocal.errors import ConfigError
from dmlocal.expand import Expansion, default_env, expand_path

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def add_preview_options(parser: argparse.ArgumentParser) -> None:
    """Options the validator adds to `preview` (the lead's parser owns the rest)."""
    parser.add_argument(
        "--format",
        choices=("yaml", "json"),
        default="yaml",
        help="stdout format: the expanded YAML (default) or JSON with findings and firewall",
    )


def add_commands(commands) -> None:
    """Register `reach` on the CLI's subparsers."""
    reach = commands.add_parser(
        "reach",
        help="may SRC reach the VM on PROTO/PORT? (GCP firewall semantics, deciding rule)",
        description=__doc__.split("\n\n")[2] if __doc__ else None,
    )
    reach.add_argument("src", help="peer IP address (the source; the destination with --egress)")
    reach.add_argument("probe", help="PROTO/PORT or PROTO, e.g. tcp/22, udp/53, icmp")
    reach.add_argument("--config", default="deployment.yaml")
    reach.add_argument("--vm", help="instance name (default: every instance)")
    reach.add_argument("--egress", action="store_true", help="ask about traffic from the VM")
    reach.add_argument("--expect", choices=("allow", "deny"), help="exit 1 unless this holds")
    reach.add_argument("--deployment", default="hello", help="context.env['deployment']")
    reach.add_argument("--project", default="local-project", help="context.env['project']")
    reach.set_defaults(run=run_reach)


def _load(args) -> Expansion | int:
    if not Path(args.config).is_file():
        print(f"error: {args.config}: no such config file", file=sys.stderr)
        return EXIT_USAGE
    try:
        return expand_path(args.config, default_env(args.deployment, args.project))
    except ConfigError as error:
        if getattr(args, "format", "yaml") == "json":
            doc = {
                "config": args.config,
                "valid": False,
                "errors": [{"file": error.file, "field": error.field, "message": error.message}],
            }
            print(json.dumps(doc, indent=2))
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID


def run_preview(args) -> int:
    """`preview`: expand, validate, print; returns the exit code."""
    from dmlocal.cli import render_yaml  # the lead's YAML rendering, unchanged

    loaded = _load(args)
    if isinstance(loaded, int):
        return loaded
    expansion = loaded
    findings = checks.validate(expansion)
    errors = [f for f in findings if f.severity == "error"]
    tables: dict = {}
    layout = expansion.layout
    for vm in reachability.instance_targets(expansion.resources, layout):
        try:
            tables[vm["name"]] = (vm, reachability.firewall_table(expansion.resources, vm, layout))
        except reachability.ReachabilityError as error:
            # The rules cannot be evaluated (a bad range); the findings already say which.
            if not errors:
                findings.append(
                    checks.Finding(expansion.config_file, vm["name"], "", f"firewall: {error}")
                )
                errors = findings[-1:]
    if getattr(args, "format", "yaml") == "json":
        print(json.dumps(_json_document(expansion, findings, tables), indent=2))
    else:
        sys.stdout.write(render_yaml(expansion))
    sys.stderr.write(summary(expansion, findings, tables))
    return EXIT_INVALID if errors else EXIT_OK


def summary(expansion: Expansion, findings: list, tables: dict) -> str:
    """The human summary for stderr."""
    counts: dict[str, int] = {}
    for res in expansion.resources:
        kind = res["type"].rsplit(".", 1)[-1]
        counts[kind] = counts.get(kind, 0) + 1
    kinds = ", ".join(f"{n} {k}" for k, n in counts.items())
    lines = [f"{expansion.config_file}: {len(expansion.resources)} resources ({kinds})"]
    order = getattr(expansion, "creation_order", None)
    if order:
        lines.append("creation order: " + " -> ".join(order))
    for finding in findings:
        lines.append(f"{finding.severity}: {finding}")
    for name, (vm, rows) in tables.items():
        tags = ", ".join(vm["tags"]) or "none"
        lines.append(f"firewall for {name} (network tags: {tags}):")
        lines.append(reachability.format_table(rows))
    errors = sum(1 for f in findings if f.severity == "error")
    warnings = len(findings) - errors
    verdict = "INVALID" if errors else "valid"
    lines.append(f"{verdict}: {errors} error(s), {warnings} warning(s)")
    return "\n".join(lines) + "\n"


def _json_document(expansion: Expansion, findings: list, tables: dict) -> dict:
    errors = [f.as_dict() for f in findings if f.severity == "error"]
    return {
        "config": expansion.config_file,
        "valid": not errors,
        "errors": errors,
        "warnings": [f.as_dict() for f in findings if f.severity != "error"],
        "creation_order": list(getattr(expansion, "creation_order", []) or []),
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


def parse_probe(text: str) -> tuple[str, int | None]:
    """'tcp/22' -> ('tcp', 22); 'icmp' -> ('icmp', None). Raises ReachabilityError."""
    proto, _, port = text.partition("/")
    name = reachability.normalize_protocol(proto)
    if not port:
        return name, None
    low, high = reachability.parse_port_range(port)
    if low != high:
        raise reachability.ReachabilityError(f"ask about one port, not the range {port!r}")
    return name, low


def run_reach(args) -> int:
    """`reach`: print allow/deny with the deciding rule and priority for each instance."""
    try:
        proto, port = parse_probe(args.probe)
        reachability.evaluate([], args.src, proto, port)  # validates the address early
    except reachability.ReachabilityError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    loaded = _load(args)
    if isinstance(loaded, int):
        return loaded
    resources, layout = loaded.resources, loaded.layout
    targets = reachability.instance_targets(resources, layout)
    if args.vm:
        targets = [t for t in targets if t["name"] == args.vm]
        if not targets:
            names = ", ".join(t["name"] for t in reachability.instance_targets(resources, layout))
            print(f"error: no instance '{args.vm}' in {args.config}; instances: {names}",
                  file=sys.stderr)  # fmt: skip
            return EXIT_USAGE
    if not targets:
        print(f"error: {args.config} creates no compute.v1.instance to ask about", file=sys.stderr)
        return EXIT_USAGE
    direction = "EGRESS" if args.egress else "INGRESS"
    rules = reachability.firewall_rules(resources)
    resolve = reachability.resolver_for(resources, layout)
    probe = f"{proto}/{port}" if port is not None else proto
    status = EXIT_OK
    for vm in targets:
        try:
            d = reachability.evaluate(
                rules,
                args.src,
                proto,
                port,
                tags=vm["tags"],
                service_account=vm["service_account"],
                direction=direction,
                resolve=resolve,
            )
        except reachability.ReachabilityError as error:
            print(f"error: {args.config}: firewall rules cannot be evaluated: {error}",
                  file=sys.stderr)  # fmt: skip
            return EXIT_INVALID
        arrow = f"{vm['name']} -> {args.src}" if args.egress else f"{args.src} -> {vm['name']}"
        print(f"{d.action}: {arrow} {probe} (rule {d.rule}, priority {d.priority})")
        if args.expect and d.action != args.expect:
            print(
                f"error: expected {args.expect}, got {d.action} by rule {d.rule}", file=sys.stderr
            )
            status = EXIT_INVALID
    return status
