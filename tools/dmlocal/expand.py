"""Expands a Deployment Manager config the way DM's server does, offline.

What DM does, and so what this does:
  * reads `imports:` (each a `path`, optionally renamed by `name`); a template's schema travels
    with it as `<name>.schema`, and the schema's own `imports:` come along too;
  * for each resource whose `type` is an imported Python template: checks its properties against
    the schema and fills in defaults, builds `context` (env, properties, imports), and calls
    `generate_config(context)` (preferred when both exist) or `GenerateConfig(context)`;
  * expands templates that return templates, recursively, into leaf resources;
  * checks that every `$(ref.NAME.FIELD)` names a resource (or a template's output) in the
    deployment and that `metadata.dependsOn` does too, then orders creation by those edges and
    rejects cycles.
Jinja templates are refused with a clear message: this repo and its users write Python.
"""

from __future__ import annotations

import builtins
import contextlib
import difflib
import os
import re
import sys
import time
import traceback
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from dmlocal.errors import ConfigError, yaml_error
from dmlocal.references import REFERENCE, RESOURCE_NAME, is_compute
from dmlocal.schema import apply_schema, load_schema

# api.version.kind, or api.version.parent.kind (bigtableadmin.v2.instance.table and the virtual
# types deploymentmanager.v2.virtual.enableService / .projectBillingInfo), as DM's
# supported-resource-types page lists them.
BASE_TYPE = re.compile(r"^[a-z][a-z0-9]*\.(v[0-9]+[a-z0-9]*|alpha|beta)(\.[a-zA-Z]+){1,2}$")
PROVIDER_TYPE = re.compile(r"^[^/\s]+/[^:\s]+:[^\s]+$")
CONFIG_KEYS = ("imports", "resources", "outputs")
RESOURCE_KEYS = ("name", "type", "properties", "metadata", "accessControl")
MAX_DEPTH = 20


@dataclass
class Expansion:
    """The expanded deployment: what DM would create, and in which order."""

    config_file: str
    resources: list[dict]
    outputs: list[dict]
    layout: dict
    creation_order: list[str] = field(default_factory=list)
    dependencies: dict[str, list[str]] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # the config and its imports, as read

    def resource(self, name: str) -> dict:
        for resource in self.resources:
            if resource["name"] == name:
                return resource
        raise KeyError(name)

    def of_type(self, type_: str) -> list[dict]:
        return [r for r in self.resources if r["type"] == type_]


def default_env(
    deployment: str = "hello",
    project: str = "local-project",
    project_number: str = "123456789012",
    username: str = "operator@example.com",
) -> dict:
    """`context.env` as DM fills it for a deployment; `name` and `type` are set per template."""
    return {
        "deployment": deployment,
        "project": project,
        "project_number": project_number,
        "current_time": int(time.time()),
        "username": username,
    }


def expand_path(config_path: str | Path, env: dict | None = None) -> Expansion:
    """Reads a config and everything it imports from disk, as gcloud uploads them, and expands."""
    return expand_files(read_files(config_path), str(config_path), env)


def read_files(config_path: str | Path) -> dict[str, str]:
    """What gcloud uploads for a config: {its path: text, each import name: text}.

    As gcloud's importer (googlecloudsdk/command_lib/deployment_manager/importer.py,
    CreateImports) builds it: the config's imports; for every template among them its schema
    (`<import name>.schema`, found next to the template) and the schema's own `imports:`
    (paths relative to the schema), transitively. One import name cannot stand for two files.
    """
    config_path = Path(config_path)
    config_name = str(config_path)
    text = _read(config_path, config_name, "(file)")
    config = _parse_config(text, config_name)
    files = {config_name: text}
    sources: dict[str, Path] = {}  # import name -> the file it was read from
    pending = _imports_of(config, config_path, config_name)
    while pending:
        name, path, file, field_ = pending.pop(0)
        if name in sources:
            if sources[name] != path:
                raise ConfigError(
                    file,
                    field_,
                    f"'{name}' names both {sources[name]} and {path}: give one a `name:`",
                )
            continue
        sources[name] = path
        files[name] = _read(path, file, field_)
        schema_path = path.with_name(path.name + ".schema")
        if path.name.endswith((".py", ".jinja")) and schema_path.is_file():
            schema_text = _read(schema_path, file, field_)
            pending.append((name + ".schema", schema_path, file, field_))
            schema = load_schema(schema_text, str(schema_path))
            pending += _imports_of(schema, schema_path, str(schema_path))
    return files


def _imports_of(document: dict, path: Path, file: str) -> list[tuple[str, Path, str, str]]:
    """(import name, file path, declaring file, field) for each entry of `imports:`."""
    entries = document.get("imports") or []
    if not isinstance(entries, list):
        raise ConfigError(file, "imports", "must be a list of `- path: FILE` entries")
    found = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise ConfigError(file, f"imports[{index}]", "needs `path: FILE`")
        name = entry.get("name") or entry["path"]
        found.append((name, Path(os.path.normpath(path.parent / entry["path"])), file,
                      f"imports[{index}].path"))  # fmt: skip
    return found


def _read(path: Path, file: str, field_: str) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise ConfigError(file, field_, f"file not found: {path}") from None
    except OSError as error:
        raise ConfigError(file, field_, f"cannot read {path}: {error.strerror}") from None


def _parse_config(text: str, config_name: str) -> dict:
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise yaml_error(config_name, error) from None
    if not isinstance(config, dict):
        raise ConfigError(config_name, "(top level)", "a config must be a YAML mapping")
    for key in config:
        if key not in CONFIG_KEYS:
            raise ConfigError(config_name, str(key), _unknown(key, CONFIG_KEYS, "top-level key"))
    imports = config.get("imports") or []
    if not isinstance(imports, list):
        raise ConfigError(config_name, "imports", "must be a list of `- path: FILE` entries")
    for index, entry in enumerate(imports):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise ConfigError(config_name, f"imports[{index}]", "needs `path: FILE`")
        for key in entry:
            if key not in ("path", "name"):
                raise ConfigError(
                    config_name, f"imports[{index}].{key}", _unknown(key, ("path", "name"), "key")
                )
    if not isinstance(config.get("resources"), list) or not config["resources"]:
        raise ConfigError(config_name, "resources", "must be a non-empty list of resources")
    return config


def _unknown(key: Any, valid: tuple[str, ...] | list[str], what: str) -> str:
    close = difflib.get_close_matches(str(key), list(valid), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown {what} '{key}': {hint}valid: {', '.join(valid)}"


def expand_files(files: dict[str, str], config_name: str, env: dict | None = None) -> Expansion:
    """Expands `files[config_name]`; every other entry is an import, keyed by its import name."""
    config = _parse_config(files[config_name], config_name)
    return _Expander(files, config_name, env or default_env()).run(config)


class TemplateContext:
    """What a template sees as `context`, as DM builds it."""

    def __init__(self, env: dict, properties: dict, imports: dict[str, str]):
        self.env = env
        self.properties = properties
        self.imports = imports


def template_context(
    type_: str, name: str, properties: dict, env: dict, imports: dict[str, str], file: str
) -> TemplateContext:
    """`context` for template resource `name` of type `type_`, declared in `file`.

    As DM does: the properties are checked against the template's schema (in `imports` as
    `<type_>.schema`) with its defaults filled in, `env` gains the resource's `name` and `type`,
    and `imports` holds every imported file by import name.
    """
    schema_file = f"{type_}.schema"
    if schema_file in imports:
        schema = load_schema(imports[schema_file], schema_file)
        properties = apply_schema(
            schema, properties, config_file=file, resource=name, schema_file=schema_file
        )
    return TemplateContext({**env, "name": name, "type": type_}, properties, dict(imports))


@dataclass
class _Template:
    """One template instantiation (or the config itself, the root): where its outputs resolve.

    DM resolves `$(ref.T.OUTPUT)` level by level (expandybird/expansion/expansion.py,
    _ProcessTargetConfig): a level sees the outputs of its own child templates only, so outputs
    belong to the instance that produced them, and a nested template may reuse a name.
    """

    name: str
    file: str
    parent: _Template | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    leaves: list[str] = field(default_factory=list)
    children: dict[str, _Template] = field(default_factory=dict)

    def chain(self) -> list[_Template]:
        """This level and the levels around it, innermost first."""
        levels, level = [], self
        while level is not None:
            levels.append(level)
            level = level.parent
        return levels


class _Expander:
    def __init__(self, files: dict[str, str], config_name: str, env: dict):
        self.config_name = config_name
        self.env = env
        self.files = files
        self.imports = {k: v for k, v in files.items() if k != config_name}
        self.leaves: list[dict] = []
        self.origins: dict[str, str] = {}  # leaf resource name -> file that declared it
        self.scopes: dict[str, _Template] = {}  # leaf resource name -> the level declaring it
        self.root = _Template(config_name, config_name)

    def run(self, config: dict) -> Expansion:
        layout = {"resources": self._expand_all(config["resources"], self.root, depth=0)}
        outputs = self._outputs(config.get("outputs"), self.config_name)
        dependencies = self._dependencies()
        for output in outputs:
            where = f"outputs[{output['name']}]"
            _check_references_are_whole(output["value"], self.config_name, where)
            # DM shows a deployment output with template outputs substituted
            # (expandybird/expansion/expansion.py, _ProcessTargetConfig and _ResolveOutputs).
            output["value"] = self._substitute(
                output["value"], [self.root], self.config_name, where
            )
            for _, target, ref_field in _references(output["value"], ""):
                self._leaf(target, ref_field, self.config_name, where)
        order = _creation_order(
            [r["name"] for r in self.leaves], dependencies, self.origins, self.config_name
        )
        return Expansion(
            config_file=self.config_name,
            resources=self.leaves,
            outputs=outputs,
            layout=layout,
            creation_order=order,
            dependencies=dependencies,
            origins=dict(self.origins),
            files=dict(self.files),
        )

    def _expand_all(self, resources: list, level: _Template, depth: int) -> list[dict]:
        siblings: set[str] = set()
        nodes = []
        for index, resource in enumerate(resources):
            name = self._check_resource(resource, level.file, f"resources[{index}]")
            # DM wants names unique among the resources of one config or template
            # (expansion.py, _ValidateUniqueNames), so a template may reuse its parent's name.
            if name in siblings:
                raise ConfigError(
                    level.file,
                    f"resources[{name}].name",
                    f"'{name}' is already used by a resource of {level.file}; names must "
                    "be unique among the resources a config or template declares",
                )
            siblings.add(name)
            nodes.append(self._expand(resource, level, depth))
        return nodes

    def _expand(self, resource: dict, level: _Template, depth: int) -> dict:
        name, type_, file = resource["name"], resource["type"], level.file
        if type_ in self.imports and type_.endswith(".py"):
            return self._expand_template(resource, level, depth)
        if type_.endswith(".jinja"):
            raise ConfigError(
                file,
                f"resources[{name}].type",
                f"'{type_}' is a Jinja template; this renderer expands Python templates only. "
                "Rewrite it as a .py template (GenerateConfig(context) returning the same "
                "resources) or preview it with `gcloud deployment-manager deployments create "
                "--preview`.",
            )
        if type_.endswith(".py"):
            raise ConfigError(
                file,
                f"resources[{name}].type",
                f"template '{type_}' is not imported: add `- path: {type_}` under `imports:`",
            )
        if not (BASE_TYPE.match(type_) or PROVIDER_TYPE.match(type_)):
            templates = [n for n in self.imports if n.endswith(".py")]
            raise ConfigError(
                file,
                f"resources[{name}].type",
                f"'{type_}' is neither an imported template nor a DM type such as "
                f"compute.v1.instance; imported templates: {', '.join(templates) or 'none'}",
            )
        if name in self.origins:
            # Every leaf becomes one resource of the deployment's manifest, keyed by name.
            raise ConfigError(
                file,
                f"resources[{name}].name",
                f"'{name}' is already used by a resource from {self.origins[name]}; resource "
                "names must be unique in a deployment",
            )
        leaf = {k: resource[k] for k in RESOURCE_KEYS if k in resource}
        leaf.setdefault("properties", {})
        self._check_gce_name(leaf, file)
        self.leaves.append(leaf)
        self.origins[name] = file
        self.scopes[name] = level
        return dict(leaf)

    def _check_resource(self, resource: Any, file: str, where: str) -> str:
        if not isinstance(resource, dict):
            raise ConfigError(file, where, "a resource must be a mapping with `name` and `type`")
        name = resource.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(file, f"{where}.name", "every resource needs a non-empty `name`")
        for key in resource:
            if key not in RESOURCE_KEYS:
                raise ConfigError(
                    file, f"resources[{name}].{key}", _unknown(key, RESOURCE_KEYS, "resource key")
                )
        if not isinstance(resource.get("type"), str):
            raise ConfigError(file, f"resources[{name}].type", "every resource needs a `type`")
        if "properties" in resource and not isinstance(resource["properties"] or {}, dict):
            raise ConfigError(file, f"resources[{name}].properties", "must be a mapping")
        return name

    def _check_gce_name(self, leaf: dict, file: str) -> None:
        if not is_compute(leaf["type"]):
            return
        gce_name = leaf["properties"].get("name", leaf["name"])
        if isinstance(gce_name, str) and "$(" not in gce_name and not RESOURCE_NAME.match(gce_name):
            raise ConfigError(
                file,
                f"resources[{leaf['name']}].name",
                f"'{gce_name}' is not a valid Compute Engine name: 1-63 characters, lowercase "
                "letters, digits and hyphens, starting with a letter and not ending with a hyphen",
            )

    def _expand_template(self, resource: dict, level: _Template, depth: int) -> dict:
        name, type_, file = resource["name"], resource["type"], level.file
        if depth >= MAX_DEPTH:
            raise ConfigError(
                file, f"resources[{name}].type", f"templates nest deeper than {MAX_DEPTH} levels"
            )
        context = template_context(
            type_, name, resource.get("properties") or {}, self.env, self.imports, file
        )
        result = _run_template(type_, context, name, self.imports)
        children, outputs = self._template_result(result, type_, name)
        template = _Template(name, type_, parent=level)
        level.children[name] = template
        first_leaf = len(self.leaves)
        nested = self._expand_all(children, template, depth + 1)
        template.outputs = {o["name"]: o["value"] for o in self._outputs(outputs, type_)}
        template.leaves = [leaf["name"] for leaf in self.leaves[first_leaf:]]
        node = {"name": name, "type": type_, "properties": context.properties, "resources": nested}
        if template.outputs:
            node["outputs"] = [{"name": k, "value": v} for k, v in template.outputs.items()]
        return node

    def _template_result(self, result: Any, type_: str, name: str) -> tuple[list, Any]:
        if isinstance(result, str):
            try:
                result = yaml.safe_load(result)
            except yaml.YAMLError as error:
                raise ConfigError(
                    type_, f"resources[{name}]", f"returned bad YAML: {error}"
                ) from None
        if not isinstance(result, dict) or not isinstance(result.get("resources"), list):
            raise ConfigError(
                type_,
                f"resources[{name}]",
                "GenerateConfig must return a dict with a `resources` list (or such YAML)",
            )
        return result["resources"], result.get("outputs")

    def _outputs(self, outputs: Any, file: str) -> list[dict]:
        if outputs is None:
            return []
        if not isinstance(outputs, list):
            raise ConfigError(file, "outputs", "must be a list of `- name: N` / `value: V`")
        seen = set()
        for index, output in enumerate(outputs):
            if not isinstance(output, dict) or "name" not in output or "value" not in output:
                raise ConfigError(file, f"outputs[{index}]", "needs `name` and `value`")
            if not isinstance(output["name"], str):
                raise ConfigError(file, f"outputs[{index}].name", "must be a string")
            if output["name"] in seen:
                raise ConfigError(file, f"outputs[{output['name']}]", "duplicate output name")
            seen.add(output["name"])
        return [{"name": o["name"], "value": o["value"]} for o in outputs]

    # -- references and ordering -------------------------------------------------------------

    def _dependencies(self) -> dict[str, list[str]]:
        dependencies: dict[str, list[str]] = {}
        for leaf in self.leaves:
            name, file = leaf["name"], self.origins[leaf["name"]]
            chain = self.scopes[name].chain()
            needs: list[str] = []
            _check_references_are_whole(
                leaf.get("properties"), file, f"resources[{name}].properties"
            )
            for path, target, ref_field in _references(leaf.get("properties"), ".properties"):
                where = f"resources[{name}]{path}"
                ref = f"$(ref.{target}.{ref_field})"
                for _, inner, inner_field in _references(
                    self._substitute(ref, chain, file, where), ""
                ):
                    needs.append(self._leaf(inner, inner_field, file, where))
            depends_on = (leaf.get("metadata") or {}).get("dependsOn") or []
            if not isinstance(depends_on, list):
                raise ConfigError(file, f"resources[{name}].metadata.dependsOn", "must be a list")
            for target in depends_on:
                needs += self._depends_on(
                    target, chain, file, f"resources[{name}].metadata.dependsOn"
                )
            dependencies[name] = list(dict.fromkeys(needs))
        return dependencies

    def _substitute(self, value: Any, chain: list[_Template], file: str, where: str) -> Any:
        """`value` with each template-output reference replaced by the output's value.

        As DM does (expandybird/expansion/references.py, PopulateReferences): a reference is
        looked up level by level, innermost first, among each level's child templates; the
        substituted value is not looked up again at that level, only above it. So a template
        may output `$(ref.NAME.name)` for its own main resource NAME: the reference is
        substituted once and then names the resource. A field the template does not output
        names the same-named resource's own field, when there is one.
        """
        if isinstance(value, dict):
            return {k: self._substitute(v, chain, file, where) for k, v in value.items()}
        if isinstance(value, list):
            return [self._substitute(v, chain, file, where) for v in value]
        if not isinstance(value, str) or "$(ref." not in value:
            return value
        whole = REFERENCE.fullmatch(value)
        if whole:
            return self._output(whole, chain, file, where)
        return REFERENCE.sub(lambda m: _as_text(self._output(m, chain, file, where)), value)

    def _output(self, match: re.Match, chain: list[_Template], file: str, where: str) -> Any:
        target, ref_field = match.groups()
        output = ref_field.split(".")[0]
        for index, level in enumerate(chain):
            template = level.children.get(target)
            if template is None:
                continue
            if output in template.outputs:
                rest = ref_field[len(output) :]
                value = template.outputs[output]
                if rest and isinstance(value, str) and REFERENCE.fullmatch(value):
                    value = value[:-1] + rest + ")"
                return self._substitute(value, [template, *chain[index + 1 :]], file, where)
            if target not in self.origins:
                valid = ", ".join(template.outputs) or "none"
                raise ConfigError(
                    file,
                    where,
                    f"$(ref.{target}.{ref_field}): template resource '{target}' "
                    f"({template.file}) has no output '{output}'; its outputs: {valid}",
                )
        return match.group(0)

    def _leaf(self, target: str, ref_field: str, file: str, where: str) -> str:
        if target in self.origins:
            return target
        known = list(self.origins)
        close = difflib.get_close_matches(target, known, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(
            file,
            where,
            f"$(ref.{target}.{ref_field}) points to no resource in this deployment: {hint}"
            f"resources are {', '.join(known)}",
        )

    def _depends_on(self, target: Any, chain: list[_Template], file: str, where: str) -> list[str]:
        if not isinstance(target, str):
            raise ConfigError(file, where, f"{target!r} is not a resource name")
        if target in self.origins:
            return [target]
        for level in chain:
            if target in level.children:
                return list(level.children[target].leaves)
        raise ConfigError(file, where, f"'{target}' is not a resource in this deployment")


def _check_references_are_whole(value: Any, file: str, where: str) -> None:
    """DM refuses a `$(ref.` that does not close into `$(ref.NAME.FIELD)` (references.py,
    ReferenceMatcher: "Malformed reference")."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_references_are_whole(item, file, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_references_are_whole(item, file, f"{where}[{index}]")
    elif isinstance(value, str) and value.count("$(ref.") > len(REFERENCE.findall(value)):
        raise ConfigError(
            file, where, f"{value!r} holds a malformed reference: write $(ref.NAME.FIELD)"
        )


def _as_text(value: Any) -> str:
    """A reference inside a longer string takes its value as text."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip()


def _references(value: Any, path: str) -> Iterator[tuple[str, str, str]]:
    """Yields (path, resource name, field) for every $(ref.NAME.FIELD) inside `value`."""
    if isinstance(value, str):
        for match in REFERENCE.finditer(value):
            yield path, match.group(1), match.group(2)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _references(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _references(item, f"{path}[{index}]")


def _creation_order(
    names: list[str], dependencies: dict[str, list[str]], origins: dict[str, str], config: str
) -> list[str]:
    """Topological order, stable in config order; a cycle is named resource by resource."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = [*trail[trail.index(name) :], name]
            raise ConfigError(
                origins.get(name, config),
                f"resources[{name}]",
                "references form a cycle, so nothing could be created first: " + " -> ".join(cycle),
            )
        state[name] = "visiting"
        for needed in dependencies.get(name, []):
            visit(needed, [*trail, name])
        state[name] = "done"
        order.append(name)

    for name in names:
        visit(name, [])
    return order


# What a template may import besides the deployment's own files. DM runs templates in a
# sandbox that provides the Python standard library (its docs list base64, collections, hashlib,
# json, math, random, io, sys, string, time, zipfile, ...), PyYAML and six
# (https://cloud.google.com/deployment-manager/docs/configuration/templates/import-python-libraries);
# whatever else is installed next to this tool does not exist there.
DM_MODULES = frozenset(sys.stdlib_module_names) | {"yaml", "six"}


class _NotProvided(ImportError):
    """A template imported a module Deployment Manager does not provide."""


class _Sandbox:
    """Runs a template as DM does: its imports are the deployment's files and DM's modules.

    A deployment file `helpers/common.py` is the module `helpers.common`, with the package
    `helpers` made up when no `helpers/__init__.py` is imported (DM's sandbox_loader.py in
    expandybird/expansion/ does the same). Modules are fresh for every template run.
    """

    def __init__(self, imports: dict[str, str]):
        self.sources: dict[str, tuple[str, str]] = {}  # module name -> (file, source)
        self.packages: set[str] = set()
        for name, text in imports.items():
            path = PurePosixPath(os.path.normpath(name))
            if path.suffix != ".py":
                continue
            parts = path.with_suffix("").parts
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            self.sources[module] = (name, text)
            for i in range(1, len(parts)):
                self.packages.add(".".join(parts[:i]))
        self.modules: dict[str, types.ModuleType] = {}
        self.builtins = {**vars(builtins), "__import__": self._import}

    def run(self, filename: str, source: str, name: str) -> types.ModuleType:
        module = types.ModuleType(name)
        module.__file__ = filename
        module.__dict__["__builtins__"] = self.builtins
        exec(compile(source, filename, "exec"), module.__dict__)
        return module

    def _load(self, name: str) -> types.ModuleType:
        if name in self.modules:
            return self.modules[name]
        parent, _, child = name.rpartition(".")
        if parent:
            self._load(parent)
        file, source = self.sources.get(name, (f"{name.replace('.', '/')}/__init__.py", ""))
        module = types.ModuleType(name)
        module.__file__ = file
        module.__dict__["__builtins__"] = self.builtins
        if name in self.packages:
            module.__path__ = []
        module.__package__ = name if name in self.packages else parent
        self.modules[name] = module
        exec(compile(source, file, "exec"), module.__dict__)
        if parent:
            setattr(self.modules[parent], child, module)
        return module

    def _is_ours(self, name: str) -> bool:
        return name in self.sources or name in self.packages

    def _import(self, name, globals=None, locals=None, fromlist=(), level=0):
        if level:
            package = (globals or {}).get("__package__") or ""
            base = package.rsplit(".", level - 1)[0] if level > 1 else package
            name = f"{base}.{name}" if name else base
        top = name.split(".")[0]
        if self._is_ours(top):
            if not self._is_ours(name):
                raise ModuleNotFoundError(f"No module named '{name}'", name=name)
            module = self._load(name)
            for item in fromlist or ():
                if self._is_ours(f"{name}.{item}"):
                    self._load(f"{name}.{item}")
            return module if fromlist else self.modules[top]
        if top in DM_MODULES:
            return builtins.__import__(name, globals, locals, fromlist, 0)
        raise _NotProvided(name)


def _run_template(type_: str, context: TemplateContext, name: str, imports: dict) -> Any:
    """GenerateConfig's result; anything the template prints goes to stderr, as stdout carries
    only the expanded config."""
    try:
        with contextlib.redirect_stdout(sys.stderr):
            sandbox = _Sandbox(imports)
            module = sandbox.run(type_, imports[type_], f"dm_template_{PurePosixPath(type_).stem}")
            generate = getattr(module, "generate_config", None) or getattr(
                module, "GenerateConfig", None
            )
            if not callable(generate):
                raise ConfigError(
                    type_,
                    "GenerateConfig",
                    "a Python template must define generate_config(context) or "
                    "GenerateConfig(context)",
                )
            return generate(context)
    except ConfigError:
        raise
    except _NotProvided as error:
        module = str(error)
        raise ConfigError(
            _raised_at(error, imports, type_),
            f"resources[{name}]",
            f"imports '{module}', which Deployment Manager does not provide to templates: use the "
            f"standard library, yaml or six, or ship the module with the deployment (`- path: "
            f"{module.replace('.', '/')}.py` under `imports:`)",
        ) from None
    except (Exception, SystemExit) as error:
        raise ConfigError(
            _raised_at(error, imports, type_),
            f"resources[{name}]",
            f"the template failed: {type(error).__name__}: {error}",
        ) from None


def _raised_at(error: Exception, imports: dict[str, str], type_: str) -> str:
    """`FILE:LINE` of the deepest deployment file (template or helper) the error passed through."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename in imports]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else type_
