"""Template schemas (`<template>.schema`) checked the way Deployment Manager checks them.

DM schemas are JSON Schema draft-04 written in YAML. DM fills in each property's `default`
before validating and before the template runs, so templates can index properties directly.
"""

from __future__ import annotations

import difflib
from typing import Any

import jsonschema
import yaml

from dmlocal.errors import ConfigError


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
    return yaml.safe_load(yaml.safe_dump(value))


_DefaultingDraft4 = _with_defaults(jsonschema.Draft4Validator)


def load_schema(text: str, filename: str) -> dict:
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

    Errors name the config file, the resource and the property, and say what would be valid,
    quoting the schema's description so the fix is on the screen.
    """
    filled = _copy(properties) or {}
    validator = _DefaultingDraft4(_validation_part(schema))
    errors = sorted(validator.iter_errors(filled), key=lambda e: (list(e.absolute_path), e.message))
    if errors:
        first = errors[0]
        path = list(first.absolute_path)
        if first.validator == "required" and isinstance(first.instance, dict):
            missing = [n for n in first.validator_value if n not in first.instance]
            path.append(missing[0])
        raise ConfigError(
            config_file,
            f"resources[{resource}].properties{_suffix(path)}",
            _explain(first, schema, schema_file, path),
        )
    return filled


def _explain(error: jsonschema.ValidationError, schema: dict, schema_file: str, path: list) -> str:
    described = _description(schema, path)
    hint = f" ({schema_file}: {described})" if described else f" (see {schema_file})"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted((error.schema.get("properties") or {}).keys())
        unknown = sorted(set(error.instance) - set(allowed))
        name = unknown[0] if unknown else "?"
        close = difflib.get_close_matches(name, allowed, n=1)
        suggestion = f"did you mean '{close[0]}'? " if close else ""
        return f"unknown property '{name}': {suggestion}valid properties: {', '.join(allowed)}"
    if error.validator == "required":
        return f"required property is missing{hint}"
    if error.validator == "pattern":
        return f"{error.instance!r} is not valid here: must match {error.validator_value}{hint}"
    if error.validator == "enum":
        options = ", ".join(repr(v) for v in error.validator_value)
        return f"{error.instance!r} is not one of {options}{hint}"
    if error.validator == "type":
        return f"{error.instance!r} is not of type {error.validator_value}{hint}"
    return f"{error.message}{hint}"


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


def _suffix(path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _path(path) -> str:
    return _suffix(path).lstrip(".") or "(top level)"
