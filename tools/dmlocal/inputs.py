"""docs/inputs.md's Inputs and Outputs tables, generated from the templates' schemas.

The schemas are the one place a property's type, default and meaning are written down, so the
page copies them rather than restating them: `make docs` rewrites the block between the
markers, and a test fails when the block no longer matches what this module generates.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from dmlocal.schema import load_schema

BEGIN = "<!-- BEGIN GENERATED INPUTS: make docs -->"
END = "<!-- END GENERATED INPUTS -->"
PAGE = "docs/inputs.md"  # relative to the config's directory


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, dict | list):
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _code(value: Any) -> str:
    text = _cell(value)
    return f"`{text}`" if text else ""


def _describe(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def _templates(config: dict) -> list[tuple[str, str]]:
    """(resource name, template file) for each template resource, in the config's order."""
    return [
        (resource["name"], resource["type"])
        for resource in config.get("resources", [])
        if str(resource.get("type", "")).endswith(".py")
    ]


def tables(config_path: Path) -> str:
    """Markdown for every template the config uses: its inputs, then its outputs if any."""
    config = yaml.load(
        config_path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    )
    lines: list[str] = []
    for name, template in _templates(config):
        schema_file = f"{template}.schema"
        # load_schema: parsed once per process, shared with the expansion `make preview` ran.
        schema = load_schema((config_path.parent / schema_file).read_text(), schema_file)
        properties = schema.get("properties", {})
        required = set(schema.get("required", []))
        set_here = next(r for r in config["resources"] if r["name"] == name).get("properties", {})
        lines += [
            f"**`{template}`** (resource `{name}` in `{config_path.name}`)",
            "",
            f"| input | type | default | set in `{config_path.name}` | description |",
            "|---|---|---|---|---|",
        ]
        for prop, spec in properties.items():
            default = "(required)" if prop in required else _code(spec.get("default"))
            lines.append(
                f"| `{prop}` | {spec.get('type', '')} | {default} | {_code(set_here.get(prop))}"
                f" | {_describe(spec.get('description'))} |"
            )
        outputs = schema.get("outputs", {})
        if outputs:
            lines += ["", "| output | type | description |", "|---|---|---|"]
            for output, spec in outputs.items():
                description = _describe(spec.get("description"))
                lines.append(f"| `{output}` | {spec.get('type', '')} | {description} |")
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def generated_block(page_text: str) -> str:
    """The page's generated block as it stands (between the markers)."""
    return page_text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def refresh(page: Path, config_path: Path) -> bool:
    """Rewrites the generated block in `page`; True when it changed."""
    text = page.read_text()
    try:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
    except ValueError:
        raise SystemExit(f"{page}: the markers {BEGIN!r} and {END!r} are missing") from None
    new = f"{head}{BEGIN}\n{tables(config_path)}\n{END}{tail}"
    if new == text:
        return False
    page.write_text(new)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dmlocal.inputs", description=__doc__)
    parser.add_argument("config", nargs="?", default="deployment.yaml", type=Path)
    parser.add_argument("--page", default=PAGE, type=Path, help=f"default: {PAGE}")
    args = parser.parse_args(argv)
    changed = refresh(args.page, args.config)
    print(f"{args.page}: inputs table {'updated' if changed else 'up to date'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
