"""The validator: every problem in a deployment, found before Google sees it.

`schema_errors(files, config)` checks every template resource of the config against its
template's schema before anything is expanded, so all those problems are reported in one run,
each with its line. `validate(expansion)` then runs the Compute Engine API schema check
(dmlocal.compute_api), the reviewer's semantic checks (dmlocal.checks), and points each finding
at the deployment-config line an operator edits (dmlocal.tracer).
"""

from __future__ import annotations

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


def schema_errors(files: dict[str, str], config_name: str) -> list[ConfigError]:
    """Every schema problem of every template resource in the config, each with its line.

    `files` is what `read_files` returns. The expansion checks the same schemas again (nested
    templates too) and stops at the first problem; this pass lets the operator fix them all at once.
    """
    config = yaml.safe_load(files[config_name]) or {}
    errors = []
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
    return errors
