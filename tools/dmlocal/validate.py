"""The validator: every problem in a deployment, found before Google sees it.

`check_schemas(files, config)` checks every template resource of the config against its
template's schema before anything is expanded, so all those problems are reported in one run,
each with its line. `validate(expansion)` then runs the Compute Engine API schema check
(dmlocal.compute_api), the reviewer's semantic checks (dmlocal.checks), and points each finding
at the line an operator edits (dmlocal.tracer). When the schemas reject something, the later
checks still run, on the config with each rejected property set aside (an unknown one dropped, a
bad value replaced by its default), so one preview shows every mistake; a rejected property with
no default stops them, since the templates would be built from a value known to be wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from dmlocal import compute_api
from dmlocal.checks import semantic_checks
from dmlocal.errors import ConfigError, Finding
from dmlocal.expand import Expansion
from dmlocal.schema import field_suffix, load_schema, schema_problems
from dmlocal.tracer import Tracer, line_of


def validate(expansion: Expansion) -> list[Finding]:
    """Every finding for an Expansion: API schema first, then semantics, in resource order."""
    origins = expansion.origins
    findings = compute_api.check_resources(expansion.resources, origins)
    findings += compute_api.check_references(expansion)
    findings += semantic_checks(expansion.resources, origins, expansion.layout)
    tracer = Tracer(expansion)
    order = {r["name"]: i for i, r in enumerate(expansion.resources)}
    findings = [tracer.annotate(f) for f in findings]
    findings.sort(key=lambda f: (order.get(f.resource, len(order)), f.severity != "error"))
    return list(dict.fromkeys(findings))


@dataclass
class SchemaStage:
    """What the schema check found, and what the later checks may run on."""

    errors: list[ConfigError]
    # `files` with each rejected property set aside, or None when one has no default.
    files_for_later: dict[str, str] | None
    blocking: list[str] = field(default_factory=list)  # the properties that have no default


def check_schemas(files: dict[str, str], config_name: str) -> SchemaStage:
    """Every schema problem of every template resource in the config, each with its line.

    `files` is what `read_files` returns. The expansion checks the same schemas again (nested
    templates too) and stops at the first problem; this pass lets the operator fix them all at once.
    """
    config = yaml.safe_load(files[config_name]) or {}
    errors: list[ConfigError] = []
    blocking: list[str] = []
    for resource in config.get("resources") or []:
        if not isinstance(resource, dict) or not isinstance(resource.get("type"), str):
            continue
        schema_file = f"{resource['type']}.schema"
        if schema_file not in files or not isinstance(resource.get("properties") or {}, dict):
            continue
        schema = load_schema(files[schema_file], schema_file)
        _, problems = schema_problems(
            schema, resource.get("properties") or {}, schema_file=schema_file
        )
        prefix = f"resources[{resource.get('name')}].properties"
        for path, where, message in problems:
            line = line_of(config_name, prefix + field_suffix(where))
            source = f"{config_name}:{line}" if line else ""
            errors.append(ConfigError(config_name, prefix + field_suffix(path), message, source))
            if not _set_aside(resource, schema, (where or path)[:1]):
                blocking.append(f"{resource.get('name')}.{field_suffix(path).lstrip('.')}")
    if not errors or blocking:
        return SchemaStage(errors, None if errors else files, list(dict.fromkeys(blocking)))
    later = dict(files)
    later[config_name] = yaml.safe_dump(config, sort_keys=False)
    return SchemaStage(errors, later)


def _set_aside(resource: dict, schema: dict, top: list) -> bool:
    """Drops the rejected top-level property `top` from `resource`, or puts its schema default
    in its place; False when it has no default (a required property, or the whole mapping)."""
    properties = resource.get("properties")
    if not top or not isinstance(properties, dict):
        return False
    declared = (schema.get("properties") or {}).get(top[0])
    if declared is None:
        properties.pop(top[0], None)  # unknown: the template would never read it
        return True
    if isinstance(declared, dict) and "default" in declared:
        properties[top[0]] = declared["default"]
        return True
    return False
