"""Command line: `drift check` (make drift) and `drift repair` (make repair).

  drift check [CONFIG] [--json] [--json-out FILE]
                                  compare the live stack with CONFIG (default deployment.yaml)
  drift repair [CONFIG]           undo the drift: recreate, reset; never delete what is not ours

Settings (environment): GCP_PROJECT (or CLOUDSDK_CORE_PROJECT), DEPLOYMENT_NAME (default hello),
CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE (where the Compute Engine API is; default Google's),
GOOGLE_APPLICATION_CREDENTIALS (Application Default Credentials: a key or a WIF config).

Exit codes: 0 no drift (check), or all of it undone (repair); 10 drift found (check), or drift
repair left in place (an unowned resource, a field with no in-place reset; the report says
which); 1 the config is invalid; 2 usage; 3 no credentials, or the API refused them (a
missing permission: the message names it); 6 the Compute Engine API failed.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

from dmlocal.errors import ConfigError
from dmlocal.expand import default_env, expand_path
from dmlocal.tracer import with_line
from drift import compare, live, meaning, report
from drift.repair import removal_command, repair

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_AUTH, EXIT_API, EXIT_DRIFT = 0, 1, 2, 3, 6, 10


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="drift",
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="compare the live stack with the config")
    check.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    check.add_argument("--json-out", type=Path, help="also write the JSON report to this file")
    fix = commands.add_parser("repair", help="bring the live stack back to the config")
    for command in (check, fix):
        command.add_argument("config", nargs="?", default="deployment.yaml")
        command.add_argument("--api-root", help="Compute Engine API base URL (.../compute/v1/)")
    args = parser.parse_args(argv)
    project = os.environ.get("GCP_PROJECT") or os.environ.get("CLOUDSDK_CORE_PROJECT")
    if not project:
        print("drift: GCP_PROJECT is not set: export GCP_PROJECT=<project id>", file=sys.stderr)
        return EXIT_USAGE
    if not Path(args.config).is_file():
        print(f"drift: config not found: {args.config}", file=sys.stderr)
        return EXIT_USAGE
    deployment = os.environ.get("DEPLOYMENT_NAME") or "hello"
    try:
        expansion = expand_path(args.config, default_env(deployment=deployment, project=project))
    except ConfigError as error:
        for each in error.all:
            print(f"drift: error: {with_line(each)}", file=sys.stderr)
        return EXIT_INVALID
    try:
        compute = live.client(args.api_root)
        state = live.read(compute, project, expansion)
        differences = compare.compare(expansion, state)
        explain = explainer(expansion, state)
        header = f"drift: deployment {deployment} in project {project}, against {args.config}"
        removal = functools.partial(removal_command, project=project)
        if args.command == "check":
            skipped = compare.not_compute(expansion)
            machine = report.as_json(
                differences, explain, removal, skipped, project=project, deployment=deployment,
                config=args.config,
            )  # fmt: skip
            if args.json_out:
                args.json_out.parent.mkdir(parents=True, exist_ok=True)
                args.json_out.write_text(machine)
            text = report.text(differences, explain, removal, header, skipped)
            sys.stdout.write(machine if args.json else text)
            return EXIT_DRIFT if differences else EXIT_OK
        return run_repair(compute, project, expansion, state, differences, explain, header)
    except live.PermissionMissing as error:
        print(
            f"drift: error: permission denied: {error}\n"
            "  drift check needs roles/compute.viewer; repair also needs the roles "
            "scripts/gcp-bootstrap.sh grants OPERATORS (docs/operations.md)",
            file=sys.stderr,
        )
        return EXIT_AUTH
    except live.CredentialsMissing as error:
        print(f"drift: error: no usable credentials: {error}", file=sys.stderr)
        return EXIT_AUTH
    except live.ApiFailure as error:
        print(f"drift: error: {error}", file=sys.stderr)
        return EXIT_API


def run_repair(compute, project, expansion, state, differences, explain, header) -> int:
    print(header)
    if not differences:
        print("no drift: nothing to repair")
        return EXIT_OK
    left = repair(compute, project, expansion, state, differences, lambda s: print(f"repair: {s}"))
    after = compare.compare(expansion, live.read(compute, project, expansion))
    for sentence in left:
        print(f"NOT REPAIRED: {sentence}")
    still = [d for d in after if d.kind != compare.UNOWNED]
    if still:
        sys.stdout.write(
            report.text(
                still,
                explain,
                functools.partial(removal_command, project=project),
                "still drifted:",
            )
        )
    if left or still:
        return EXIT_DRIFT
    print("repaired: every resource the deployment owns matches the config again")
    return EXIT_OK


def explainer(expansion, state: compare.LiveState):
    """meaning.meaning bound to this stack: its declared rules (resolved), live rules, VMs."""
    declared_rules = {
        r["name"]: compare.resolve(r.get("properties") or {}, expansion, state)
        for r in expansion.resources
        if r["type"] == meaning.FIREWALL
    }
    live_rules = {name: body for name, body in state.resources.items() if body is not None}
    live_rules.update({body["name"]: body for _type, body in state.neighbours})
    targets = []
    for resource in expansion.of_type(meaning.INSTANCE):
        tags = ((resource.get("properties") or {}).get("tags") or {}).get("items") or []
        targets.append(meaning.Target(resource["name"], tuple(tags)))
    return lambda d: meaning.meaning(d, declared_rules, live_rules, targets)


if __name__ == "__main__":
    sys.exit(main())
