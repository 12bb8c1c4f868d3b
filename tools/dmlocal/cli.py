"""Command line: `dmlocal {preview,reach,diagram,terraform,changes} ...`.

Exit codes: 0 the config expands cleanly, 1 the config is invalid (the message names the file,
the field and the fix), 2 the command line itself is wrong.
"""

from __future__ import annotations

import argparse

import yaml

from dmlocal import diagram, replacement, terraform, validate
from dmlocal.expand import Expansion


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dmlocal", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    preview = commands.add_parser("preview", help="expand a config and print it as YAML")
    preview.add_argument("config", nargs="?", default="deployment.yaml")
    preview.add_argument("--deployment", default="hello", help="context.env['deployment']")
    preview.add_argument("--project", default="local-project", help="context.env['project']")
    validate.add_preview_options(preview)
    preview.set_defaults(run=validate.run_preview)  # YAML on stdout, findings + firewall on stderr
    terraform.add_command(commands)
    validate.add_commands(commands)
    diagram.add_command(commands)
    replacement.add_command(commands)
    args = parser.parse_args(argv)
    return args.run(args)


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
