"""Command line: `dmlocal {preview,reach,diagram,terraform,changes} ...`.

Exit codes: 0 the config expands cleanly, 1 the config is invalid (the message names the file,
the field and the fix), 2 the command line itself is wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dmlocal import diagram, freshness, preview, reachability, replacement, terraform
from dmlocal.errors import ConfigError, ConfigErrors, Finding
from dmlocal.expand import Expansion, default_env, expand_files, read_files
from dmlocal.tracer import with_line
from dmlocal.validate import SchemaStage, check_schemas, validate

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2
REACH_HELP = (
    "Answers whether SRC may reach the VM, with the deciding rule and its priority, using GCP's "
    'semantics including the implied rules; `--expect allow` turns it into a guard ("will this '
    'change lock us out of SSH?").'
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dmlocal", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _add_preview(commands)
    terraform.add_command(commands)
    _add_reach(commands)
    diagram.add_command(commands)
    replacement.add_command(commands)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as error:
        for each in error.all:
            print(f"error: {with_line(each)}", file=sys.stderr)
        for note in error.notes:
            print(f"note: {note}", file=sys.stderr)
        return EXIT_INVALID


def _add_preview(commands) -> None:
    command = commands.add_parser("preview", help="expand a config and print it as YAML")
    command.add_argument("config", nargs="?", default="deployment.yaml")
    command.add_argument("--deployment", default="hello", help="context.env['deployment']")
    command.add_argument("--project", default="local-project", help="context.env['project']")
    command.add_argument(
        "--format",
        choices=("yaml", "json"),
        default="yaml",
        help="stdout format: the expanded YAML (default) or JSON with findings and firewall",
    )
    command.set_defaults(run=run_preview)  # YAML on stdout, findings + firewall on stderr


def _add_reach(commands) -> None:
    reach = commands.add_parser(
        "reach",
        help="may SRC reach the VM on PROTO/PORT? (GCP firewall semantics, deciding rule)",
        description=REACH_HELP,
    )
    reach.add_argument("src", help="peer IP address (the source; the destination with --egress)")
    reach.add_argument(
        "probe", help="PROTO/PORT or a protocol name, e.g. tcp/22, udp/53, icmp (not a bare port)"
    )
    reach.add_argument("--config", default="deployment.yaml")
    reach.add_argument("--vm", help="instance name (default: every instance)")
    reach.add_argument("--egress", action="store_true", help="ask about traffic from the VM")
    reach.add_argument("--expect", choices=("allow", "deny"), help="exit 1 unless this holds")
    reach.add_argument("--deployment", default="hello", help="context.env['deployment']")
    reach.add_argument("--project", default="local-project", help="context.env['project']")
    reach.set_defaults(run=run_reach, format="yaml")


def _load(args) -> Expansion | None:
    """The expanded config, or None (after saying why) when the file is missing.

    Every template resource is checked against its schema first; when that fails, the later
    checks still run with the rejected properties set aside (`_past_the_schemas`), and every
    problem propagates as one ConfigErrors to `main`, which reports each with its line.
    `--format json` callers get the same errors as a JSON document on stdout first, so a script
    parsing stdout always gets JSON.
    """
    if not Path(args.config).is_file():
        print(f"error: {args.config}: no such config file", file=sys.stderr)
        return None
    try:
        files = read_files(args.config)
        stage = check_schemas(files, args.config)
        if stage.errors:
            raise _past_the_schemas(stage, args)
        return expand_files(files, args.config, default_env(args.deployment, args.project))
    except ConfigError as error:
        if args.format == "json":
            located = [with_line(each) for each in error.all]
            doc = {
                "config": args.config,
                "valid": False,
                "errors": [
                    {"file": e.file, "field": e.field, "message": e.message, "source": e.source}
                    for e in located
                ],
                "notes": list(error.notes),
            }
            print(json.dumps(doc, indent=2))
        raise


def _past_the_schemas(stage: SchemaStage, args) -> ConfigErrors:
    """The schema errors and the later checks' errors on the config with the rejected properties
    set aside, or a note saying which property stops those checks."""
    errors = list(stage.errors)
    if stage.files_for_later is None:
        note = (
            "the expansion and the Compute Engine and firewall checks did not run: "
            f"{', '.join(stage.blocking)} has no default to check the rest with; fix "
            f"{'it' if len(stage.blocking) == 1 else 'them'} and preview again"
        )
        return ConfigErrors(errors, (note,))
    env = default_env(args.deployment, args.project)
    try:
        expansion = expand_files(stage.files_for_later, args.config, env)
    except ConfigError as error:
        errors += error.all
    else:
        errors += [
            ConfigError(f.file, f.path, f.message, f.source)
            for f in validate(expansion)
            if f.severity == "error"
        ]
    return ConfigErrors(errors)


def run_preview(args) -> int:
    """`preview`: expand, validate, print; returns the exit code."""
    expansion = _load(args)
    if expansion is None:
        return EXIT_USAGE
    findings = validate(expansion)
    errors = [f for f in findings if f.severity == "error"]
    tables: dict = {}
    layout = expansion.layout
    for vm in reachability.instance_targets(expansion.resources, layout):
        try:
            tables[vm["name"]] = (vm, preview.firewall_table(expansion.resources, vm, layout))
        except reachability.ReachabilityError as error:
            # The rules cannot be evaluated (a bad range); the findings already say which.
            if not errors:
                findings.append(
                    Finding(expansion.config_file, vm["name"], "", f"firewall: {error}")
                )
                errors = findings[-1:]
    if args.format == "json":
        print(json.dumps(preview.json_document(expansion, findings, tables), indent=2))
    else:
        sys.stdout.write(preview.render_yaml(expansion))
    sys.stderr.write(preview.summary(expansion, findings, tables))
    docs_env = default_env()  # what `make docs` draws with; under another env all would differ
    if not errors and (args.deployment, args.project) == (
        docs_env["deployment"],
        docs_env["project"],
    ):
        for line in freshness.reminders(args.config, expansion):
            print(line, file=sys.stderr)
    return EXIT_INVALID if errors else EXIT_OK


def parse_probe(text: str) -> tuple[str, int | None]:
    """'tcp/22' -> ('tcp', 22); 'icmp' -> ('icmp', None). Raises ReachabilityError.

    A bare number is refused: GCP would read `22` as IP protocol 22, while the person typing it
    almost always means port 22, and a silent "deny" for the wrong question reads as a lock-out.
    """
    if text.strip().isdigit():
        raise reachability.ReachabilityError(
            f"'{text}' is ambiguous: to ask about port {text.strip()} write tcp/{text.strip()} "
            f"(or udp/{text.strip()}); a probe is PROTO/PORT or a protocol name, e.g. tcp/22, "
            "udp/53, icmp"
        )
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
    expansion = _load(args)
    if expansion is None:
        return EXIT_USAGE
    resources, layout = expansion.resources, expansion.layout
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
