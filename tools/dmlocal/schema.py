"""Template schemas (`<template>.schema`) checked the way Deployment Manager checks them.

DM schemas are JSON Schema draft-04 written in YAML. DM fills in each property's `default`
before validating and before the template runs, so templates can index properties directly.
"""

from __future__ import annotations

import copy
import difflib
import functools
import ipaddress
import re
from typing import Any

import jsonschema
import yaml

from dmlocal.errors import ConfigError, yaml_error

PATTERN_MESSAGE = "x-pattern-message"


def _with_defaults(validator_class, root: dict):
    """Draft-04 validator that only writes `default` values into the instance, as DM does.

    DM fills defaults in a first pass that ignores `required`, then validates the filled
    properties with a plain draft-04 validator, so a required property with a default may be
    omitted. A property whose schema is `{"$ref": "#/definitions/x"}` takes x's default.
    (expandybird/expansion/schema_validation.py and schema_validation_utils.py, the open-source
    DM expansion engine in the helm repository's history.)
    """
    validate_properties = validator_class.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if isinstance(subschema, dict) and "$ref" in subschema:
                    target = _local_ref(root, subschema["$ref"])
                    if "default" in target:
                        instance.setdefault(name, _copy(target["default"]))
                elif isinstance(subschema, dict) and "default" in subschema:
                    instance.setdefault(name, _copy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    def ignore(validator, value, instance, schema):
        return iter(())

    return jsonschema.validators.extend(
        validator_class, {"properties": properties_with_defaults, "required": ignore}
    )


def _local_ref(root: dict, ref: str) -> dict:
    """The subschema `#/definitions/x` names inside `root`; {} for a ref DM cannot follow."""
    if not ref.startswith("#/"):
        return {}
    node: Any = root
    for part in ref[2:].split("/"):
        node = (
            node.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(node, dict) else None
        )
    return node if isinstance(node, dict) else {}


def _copy(value: Any) -> Any:
    return copy.deepcopy(value)


def load_schema(text: str, filename: str) -> dict:
    """The schema in `text`, checked against draft-04, as a copy the caller may change."""
    return copy.deepcopy(_parsed_schema(text, filename))


@functools.lru_cache(maxsize=64)
def _parsed_schema(text: str, filename: str) -> dict:
    # Cached: the dry run checks every schema before expanding, the import closure and every
    # instance of a template read it again.
    try:
        schema = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise yaml_error(filename, error) from None
    if not isinstance(schema, dict):
        raise ConfigError(filename, "(top level)", "a schema must be a YAML mapping")
    try:
        jsonschema.Draft4Validator.check_schema(_validation_part(schema))
    except jsonschema.SchemaError as error:
        problem = _branches(error) if error.validator in ("oneOf", "anyOf") else error.message
        raise ConfigError(filename, _path(error.absolute_path), problem) from None
    return schema


def _validation_part(schema: dict) -> dict:
    # `info`, `imports` and `outputs` are DM's own keys, not JSON Schema.
    return {k: v for k, v in schema.items() if k not in ("info", "imports", "outputs")}


def apply_schema(
    schema: dict, properties: dict, *, config_file: str, resource: str, schema_file: str
) -> dict:
    """Returns the properties with defaults filled in, or raises the first problem found.

    Errors name the config file, the resource and the property, and say what would be valid
    (`schema_problems` words them).
    """
    filled, problems = schema_problems(schema, properties, schema_file=schema_file)
    if problems:
        path, _, message = problems[0]
        raise ConfigError(
            config_file, f"resources[{resource}].properties{field_suffix(path)}", message
        )
    return filled


def schema_problems(
    schema: dict, properties: dict, *, schema_file: str
) -> tuple[dict, list[tuple[list, list, str]]]:
    """(properties with defaults, every problem), each problem as (path, where, message).

    `path` is the property path the message is about; `where` is the path of the value to edit
    (for an unknown property, the property itself), so a caller can point at its line.
    """
    filled = _copy(properties) or {}
    rules = _validation_part(schema)
    for _ in _with_defaults(jsonschema.Draft4Validator, rules)(rules).iter_errors(filled):
        pass  # this pass only fills defaults; the next one reports
    validator = jsonschema.Draft4Validator(rules)
    errors = sorted(validator.iter_errors(filled), key=lambda e: (list(e.absolute_path), e.message))
    problems = []
    for error in errors:
        path = list(error.absolute_path)
        if error.validator == "required" and isinstance(error.instance, dict):
            for name in error.validator_value:
                if name not in error.instance:
                    missing = [*path, name]
                    problems.append((missing, path, _explain(error, schema, schema_file, missing)))
        elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = sorted((error.schema.get("properties") or {}).keys())
            for name in sorted(set(error.instance) - set(allowed)):
                close = difflib.get_close_matches(name, allowed, n=1)
                suggestion = f"did you mean '{close[0]}'? " if close else ""
                message = (
                    f"unknown property '{name}': {suggestion}valid properties: {', '.join(allowed)}"
                )
                problems.append((path, [*path, name], message))
        else:
            problems.append((path, path, _explain(error, schema, schema_file, path)))
    return filled, problems


def _explain(error: jsonschema.ValidationError, schema: dict, schema_file: str, path: list) -> str:
    described = _description(schema, path)
    hint = f" ({schema_file}: {described})" if described else f" (see {schema_file})"
    if error.validator == "required":
        return f"required property is missing{hint}"
    if error.validator in ("oneOf", "anyOf"):
        return f"{_branches(error)}{hint}"
    if error.validator == "pattern":
        return _explain_pattern(error, path, hint)
    if error.validator == "enum":
        options = ", ".join(repr(v) for v in error.validator_value)
        return f"{error.instance!r} is not one of {options}{hint}"
    if error.validator == "type":
        return _explain_type(error.instance, error.validator_value, hint)
    return f"{error.message}{hint}"


def _explain_pattern(error: jsonschema.ValidationError, path: list, hint: str) -> str:
    """What is wrong with a value that fails a `pattern`, in words.

    The words a person needs sit next to each pattern in the schema, as `x-pattern-message` (a
    noun phrase: "must be <message>"); JSON Schema ignores keywords it does not define, so the
    annotation changes nothing about what validates. Common slips are named on top: stray
    whitespace, an IPv4 address or prefix length out of range.
    """
    value = error.instance
    wanted = " ".join(str(error.schema.get(PATTERN_MESSAGE) or "").split())
    name = next((p for p in reversed(path) if isinstance(p, str)), "the value")
    rule = f"{name} must be {wanted}" if wanted else f"must match {error.validator_value}{hint}"
    if not isinstance(value, str):
        return f"{value!r} is not valid here: {rule}"
    stripped = value.strip()
    if stripped != value:
        where = "trailing" if value.startswith(stripped) else "leading"
        if value.lstrip() != value and value.rstrip() != value:
            where = "leading and trailing"
        edge = value[len(value.rstrip()) :] or value[: len(value) - len(value.lstrip())]
        kind = {" ": "space", "\t": "tab", "\n": "line break"}.get(edge[0], "whitespace")
        if re.search(error.validator_value, stripped):
            return f"{value!r} has a {where} {kind}: write '{stripped}'"
        return f"{value!r} has a {where} {kind}, and without it: {address_slip(stripped) or rule}"
    slip = address_slip(value)
    return f"{value!r} is not valid here: {slip + '; ' if slip else ''}{rule}"


def address_slip(value: str) -> str:
    """A specific reason an ADDRESS/PREFIX string is not an IPv4 range, or ''."""
    address, slash, prefix = value.partition("/")
    if not slash or not re.fullmatch(r"[0-9.]+", address):
        return ""
    try:
        ipaddress.IPv4Address(address)
    except ValueError:
        return f"{address} is not an IPv4 address (four numbers 0-255 separated by dots)"
    if not prefix.isdigit():
        return f"the prefix length '{prefix}' is not a number"
    if int(prefix) > 32:
        return f"the prefix length /{prefix} is out of range for IPv4 (/0 to /32)"
    return ""


def _explain_type(value: Any, expected: str | list, hint: str) -> str:
    if isinstance(value, str) and expected == "boolean":
        if value.lower() in ("true", "false"):
            return f"{value!r} is quoted text, not a boolean: write {value.lower()} without quotes"
        return f"{value!r} is text, not a boolean: write true or false, without quotes"
    if isinstance(value, str) and expected in ("integer", "number") and value.strip().isdigit():
        return f"{value!r} is quoted text, not a number: write {value.strip()} without quotes"
    return f"{value!r} is not of type {expected}{hint}"


def _branches(error: jsonschema.ValidationError) -> str:
    """Why the value fits none (or, for oneOf, more than one) of the alternatives, per branch,
    naming the properties that decide between them rather than repeating the whole value."""
    options = error.validator_value
    reasons = []
    for index, branch in enumerate(options):
        causes = [e for e in error.context if e.schema_path and e.schema_path[0] == index]
        label = _branch_label(branch, index)
        reasons.append(f"{label} {_cause(causes[0]) if causes else 'fits'}")
    if not error.context:
        what = "fits more than one of the alternatives (oneOf needs exactly one)"
    else:
        what = f"fits none of the {len(options)} alternatives ({error.validator})"
    return f"{what}: " + "; ".join(reasons)


def _branch_label(branch: Any, index: int) -> str:
    if isinstance(branch, dict):
        keys = branch.get("required") or list(branch.get("properties") or {})
        if keys:
            return f"option {index + 1} (with {', '.join(map(str, keys))})"
        if "$ref" in branch:
            return f"option {index + 1} ({branch['$ref'].rsplit('/', 1)[-1]})"
        if "type" in branch:
            return f"option {index + 1} (a {branch['type']})"
    return f"option {index + 1}"


def _cause(error: jsonschema.ValidationError) -> str:
    where = field_suffix(list(error.relative_path)).lstrip(".")
    at = f"'{where}' " if where else ""
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [n for n in error.validator_value if n not in error.instance]
        return f"needs {', '.join(map(repr, missing))}"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set((error.schema.get("properties") or {}).keys())
        extra = sorted(map(str, set(error.instance) - allowed))
        return f"does not allow {', '.join(map(repr, extra))}"
    if error.validator == "type":
        return f"needs {at}to be of type {error.validator_value}"
    if error.validator == "enum":
        return f"needs {at}to be one of {', '.join(map(repr, error.validator_value))}"
    if error.validator == "not":
        return f"excludes {at.strip() or 'this value'}"
    return f"fails on {at}({error.validator}: {error.validator_value!r})"


def _description(schema: dict, path: list) -> str:
    node: Any = schema
    for part in path:
        if not isinstance(node, dict):
            return ""
        if isinstance(part, int):
            node = node.get("items", {})
        else:
            node = (node.get("properties") or {}).get(part, {})
    return " ".join(str(node.get("description", "")).split()) if isinstance(node, dict) else ""


def field_suffix(path) -> str:
    """['labels', 'app'] -> '.labels.app'; list indices as [0]."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _path(path) -> str:
    return field_suffix(path).lstrip(".") or "(top level)"
