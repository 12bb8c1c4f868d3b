"""Traces a finding on a leaf resource back to the deployment-config line that caused it.

A template turns the config's properties into leaf resources, so a finding names a leaf
(`hello-firewall-allow-ssh.sourceRanges[0]`) while the operator edits deployment.yaml. When the
bad value was passed in from the config, the tracer finds that value's line there, so the
message points at the line to change; when the template wrote the value itself (a port in
firewall.py), it finds the literal's line in the template instead.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from typing import Any

import yaml

from dmlocal.errors import ConfigError, Finding
from dmlocal.expand import Expansion


class Tracer:
    """Maps a leaf finding back to the deployment-config line whose value produced it."""

    def __init__(self, expansion: Expansion):
        self.config_file = expansion.config_file
        self.roots: dict[str, tuple[int, dict]] = {}  # leaf name -> (config index, top node)
        for index, node in enumerate(expansion.layout.get("resources") or []):
            for leaf in _leaf_names(node):
                self.roots[leaf] = (index, node)
        self.leaves = {r["name"]: r for r in expansion.resources}
        self.origins, self.files = expansion.origins, expansion.files
        self._tree: yaml.Node | bool | None = False  # parsed on first use: valid configs skip it

    @property
    def tree(self) -> yaml.Node | None:
        if self._tree is False:
            self._tree = _compose(self.config_file)
        return self._tree

    def annotate(self, finding: Finding) -> Finding:
        if finding.source or finding.resource not in self.roots:
            return finding
        index, node = self.roots[finding.resource]
        if "resources" not in node:
            # Declared in the config itself: point at the field's own line (or the resource's).
            line = self._line(["resources", index, "properties", *_split(finding.field)])
            line = line or self._line(["resources", index])
            if not line:
                return finding
            return Finding(
                finding.file,
                finding.resource,
                finding.field,
                finding.message,
                finding.severity,
                f"{self.config_file}:{line}",
            )
        value = _get_path(
            self.leaves.get(finding.resource, {}).get("properties") or {}, finding.field
        )
        if value is _MISSING or isinstance(value, dict | list | bool) or value is None:
            return finding
        found = _find_value(node.get("properties") or {}, value, "")
        if found is None:
            return self._in_template(finding, value)
        line = self._line(["resources", index, "properties", *_split(found)])
        where = f"{self.config_file}:{line}" if line else self.config_file
        source = f"{where} ({node['name']}.{found})"
        return Finding(
            finding.file, finding.resource, finding.field, finding.message, finding.severity, source
        )

    def _line(self, keys: list) -> int | None:
        return node_line(self.tree, keys)

    def _in_template(self, finding: Finding, value: Any) -> Finding:
        """`finding` pointing at the template line that writes `value` as a literal, when exactly
        one line of the declaring template does (several would be a guess)."""
        text = self.files.get(self.origins.get(finding.resource, ""), "")
        lines = literal_lines(text, value) if text.strip() else []
        if len(lines) != 1:
            return finding
        source = f"{self.origins[finding.resource]}:{lines[0]}"
        return Finding(
            finding.file, finding.resource, finding.field, finding.message, finding.severity, source
        )


def _compose(config_file: str) -> yaml.Node | None:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        with open(config_file) as fh:
            return yaml.compose(fh, Loader=loader)
    except (OSError, yaml.YAMLError):
        return None


def node_line(tree: yaml.Node | None, keys: list) -> int | None:
    """1-based line of the node at `keys`; for a mapping entry, the line of its key.

    A string key into a sequence picks the item whose `name` is that string, so
    `["resources", "hello-vm", "properties", "zone"]` finds the zone of resource hello-vm.
    """
    node, line = tree, None
    for key in keys:
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == key), None)
            if pair is None:
                return None
            line, node = pair[0].start_mark.line + 1, pair[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            if key >= len(node.value):
                return None
            node = node.value[key]
            line = node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            node = next((item for item in node.value if _name_of(item) == key), None)
            if node is None:
                return None
            line = node.start_mark.line + 1
        else:
            return None
    return line


def _name_of(node: yaml.Node) -> str | None:
    if isinstance(node, yaml.MappingNode):
        return next((v.value for k, v in node.value if k.value == "name"), None)
    return None


def line_of(config_file: str, field: str) -> int | None:
    """The line of `field` in a config, written as messages write fields:
    `resources[hello-vm].properties.zone`, `imports[2].path`, `outputs[publicIp]`."""
    keys = [
        int(index) if index.isdigit() else index or name
        for name, index in re.findall(r"([^.\[\]]+)|\[([^\]]+)\]", field)
    ]
    return node_line(_compose(config_file), keys) if keys else None


def with_line(error: ConfigError) -> ConfigError:
    """`error` with the line of its field in the config it names, when that can be found."""
    if error.source or not error.file.endswith((".yaml", ".yml")):
        return error
    line = line_of(error.file, error.field)
    if not line:
        return error
    return ConfigError(error.file, error.field, error.message, f"{error.file}:{line}")


_MISSING = object()


def literal_lines(python_source: str, value: Any) -> list[int]:
    """The lines of `python_source` holding a string or number literal equal to `value`."""
    lines = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(python_source).readline):
            if token.type not in (tokenize.STRING, tokenize.NUMBER):
                continue
            try:
                literal = ast.literal_eval(token.string)
            except (ValueError, SyntaxError):
                continue  # an f-string: its value is not known here
            if type(literal) is type(value) and literal == value:
                lines.append(token.start[0])
    except (tokenize.TokenError, SyntaxError):
        return []
    return list(dict.fromkeys(lines))


def _leaf_names(node: dict) -> Iterator[str]:
    children = node.get("resources")
    if children is None:
        yield node["name"]
        return
    for child in children:
        yield from _leaf_names(child)


def _split(path: str) -> list:
    out: list = []
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        out.append(int(part[1:-1]) if part.startswith("[") else part)
    return out


def _get_path(value: Any, path: str) -> Any:
    for part in _split(path):
        if (isinstance(part, int) and isinstance(value, list) and part < len(value)) or (
            isinstance(value, dict) and part in value
        ):
            value = value[part]
        else:
            return _MISSING
    return value


def _find_value(value: Any, target: Any, path: str) -> str | None:
    if isinstance(value, dict):
        for key, item in value.items():
            got = _find_value(item, target, f"{path}.{key}" if path else str(key))
            if got is not None:
                return got
    elif isinstance(value, list):
        for i, item in enumerate(value):
            got = _find_value(item, target, f"{path}[{i}]")
            if got is not None:
                return got
    elif type(value) is type(target) and value == target:
        return path
    return None
