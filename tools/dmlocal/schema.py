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

from dmlocal.errors import ConfigError

PATTERN_MESSAGE = "x-pattern-message"


def _with_defaults(validator_class):
    """Draft-04 validator that also writes `default` values into the instance, as DM does."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if isinstance(subschema, dict) and "default" in subschema:
                    instance.setdefault(name, _copy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": properties_with_defaults})


def _copy(value: Any) -> Any:
    return copy.deepcopy(value)


_DefaultingDraft4 = _with_defaults(jsonschema.Draft4Validator)


def load_schema(text: str, filename: str) -> dict:
    return copy.deepcopy(_parsed_schema(text, filename))


@functools.lru_cache(maxsize=64)
def _parsed_schema(text: str, filename: str) -> dict:
    # Cached: the dry run checks every schema before expanding, and the expansion loads it again.
    try:
        schema = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError(filename, "(yaml)", f"is not valid YAML: {error}") from None
    if not isinstance(schema, dict):
        raise ConfigError(filename, "(top level)", "a schema must be a YAML mapping")
    try:
        jsonschema.Draft4Validator.check_schema(_validation_part(schema))
    except jsonschema.SchemaError as error:
        raise ConfigError(filename, _path(error.absolute_path), error.message) from None
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
    validator = _DefaultingDraft4(_validation_part(schema))
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
        return f"{value!r} has a {where} {kind}, and without it: {_slip(stripped) or rule}"
    slip = _slip(value)
    return f"{value!r} is not valid here: {slip + '; ' if slip else ''}{rule}"


def _slip(value: str) -> str:
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
