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

import difflib
import importlib.abc
import importlib.util
import re
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from dmlocal.errors import ConfigError
from dmlocal.references import REFERENCE, RESOURCE_NAME
from dmlocal.schema import apply_schema, load_schema

BASE_TYPE = re.compile(r"^[a-z][a-z0-9]*\.(v[0-9]+[a-z0-9]*|alpha|beta)\.[a-zA-Z]+$")
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

    A template's schema travels with it as `<import name>.schema`, and the schema's own
    `imports:` come along too.
    """
    config_path = Path(config_path)
    config_name = str(config_path)
    text = _read(config_path, config_name, "(file)")
    config = _parse_config(text, config_name)
    files = {config_name: text}
    for index, entry in enumerate(config.get("imports") or []):
        import_path = config_path.parent / entry["path"]
        name = entry.get("name") or entry["path"]
        files[name] = _read(import_path, config_name, f"imports[{index}].path")
        schema_path = import_path.with_name(import_path.name + ".schema")
        if name.endswith((".py", ".jinja")) and schema_path.is_file():
            schema_text = schema_path.read_text()
            files[name + ".schema"] = schema_text
            _add_schema_imports(files, schema_text, schema_path)
    return files


def _add_schema_imports(files: dict[str, str], schema_text: str, schema_path: Path) -> None:
    schema = yaml.safe_load(schema_text) or {}
    for index, entry in enumerate(schema.get("imports") or []):
        if not isinstance(entry, dict) or "path" not in entry:
            raise ConfigError(str(schema_path), f"imports[{index}]", "needs a `path:`")
        name = entry.get("name") or entry["path"]
        files.setdefault(
            name, _read(schema_path.parent / entry["path"], str(schema_path), f"imports[{index}]")
        )


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
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(yaml)"
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(config_name, where, f"is not valid YAML: {problem}") from None
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
    """One template instantiation, for references to its outputs and for the layout."""

    name: str
    file: str
    outputs: dict[str, Any]
    leaves: list[str]


class _Expander:
    def __init__(self, files: dict[str, str], config_name: str, env: dict):
        self.config_name = config_name
        self.env = env
        self.imports = {k: v for k, v in files.items() if k != config_name}
        self.leaves: list[dict] = []
        self.origins: dict[str, str] = {}  # leaf resource name -> file that declared it
        self.template_origins: dict[str, str] = {}
        self.templates: dict[str, _Template] = {}

    def run(self, config: dict) -> Expansion:
        layout = {
            "resources": [
                self._expand(resource, self.config_name, f"resources[{index}]", depth=0)
                for index, resource in enumerate(config["resources"])
            ]
        }
        outputs = self._outputs(config.get("outputs"), self.config_name)
        dependencies = self._dependencies(outputs)
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
        )

    def _expand(self, resource: Any, file: str, where: str, depth: int) -> dict:
        name = self._check_resource(resource, file, where)
        type_ = resource["type"]
        if type_ in self.imports and type_.endswith(".py"):
            return self._expand_template(resource, file, depth)
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
        leaf = {k: resource[k] for k in RESOURCE_KEYS if k in resource}
        leaf.setdefault("properties", {})
        self._check_gce_name(leaf, file)
        self.leaves.append(leaf)
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
        # Leaves share one namespace and templates another: DM lets a template create a
        # resource under its own name (the usual `context.env['name']` idiom).
        is_template = resource["type"] in self.imports
        taken = self.template_origins if is_template else self.origins
        if name in taken:
            raise ConfigError(
                file,
                f"resources[{name}].name",
                f"'{name}' is already used by a resource from {taken[name]}; "
                "resource names must be unique in a deployment",
            )
        taken[name] = file
        return name

    def _check_gce_name(self, leaf: dict, file: str) -> None:
        if not leaf["type"].startswith(("compute.", "gcp-types/compute-")):
            return
        gce_name = leaf["properties"].get("name", leaf["name"])
        if isinstance(gce_name, str) and "$(" not in gce_name and not RESOURCE_NAME.match(gce_name):
            raise ConfigError(
                file,
                f"resources[{leaf['name']}].name",
                f"'{gce_name}' is not a valid Compute Engine name: 1-63 characters, lowercase "
                "letters, digits and hyphens, starting with a letter and not ending with a hyphen",
            )

    def _expand_template(self, resource: dict, file: str, depth: int) -> dict:
        name, type_ = resource["name"], resource["type"]
        if depth >= MAX_DEPTH:
            raise ConfigError(
                file, f"resources[{name}].type", f"templates nest deeper than {MAX_DEPTH} levels"
            )
        context = template_context(
            type_, name, resource.get("properties") or {}, self.env, self.imports, file
        )
        result = self._run_template(type_, context, name)
        children, outputs = self._template_result(result, type_, name)
        first_leaf = len(self.leaves)
        nested = [
            self._expand(child, type_, f"resources[{index}]", depth + 1)
            for index, child in enumerate(children)
        ]
        template_outputs = {o["name"]: o["value"] for o in self._outputs(outputs, type_)}
        self.templates[name] = _Template(
            name, type_, template_outputs, [leaf["name"] for leaf in self.leaves[first_leaf:]]
        )
        node = {"name": name, "type": type_, "properties": context.properties, "resources": nested}
        if template_outputs:
            node["outputs"] = [{"name": k, "value": v} for k, v in template_outputs.items()]
        return node

    def _run_template(self, type_: str, context: TemplateContext, name: str) -> Any:
        finder = _ImportedModules(self.imports)
        sys.meta_path.insert(0, finder)
        try:
            module = _load_module(type_, self.imports[type_])
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
        except Exception as error:
            line = _template_line(error, type_)
            raise ConfigError(
                f"{type_}{line}",
                f"resources[{name}]",
                f"the template failed: {type(error).__name__}: {error}",
            ) from None
        finally:
            sys.meta_path.remove(finder)
            finder.forget()

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
            if output["name"] in seen:
                raise ConfigError(file, f"outputs[{output['name']}]", "duplicate output name")
            seen.add(output["name"])
        return [{"name": o["name"], "value": o["value"]} for o in outputs]

    # -- references and ordering -------------------------------------------------------------

    def _dependencies(self, outputs: list[dict]) -> dict[str, list[str]]:
        dependencies: dict[str, list[str]] = {}
        for leaf in self.leaves:
            name, file = leaf["name"], self.origins[leaf["name"]]
            needs: list[str] = []
            for path, target, ref_field in _references(leaf.get("properties"), ".properties"):
                where = f"resources[{name}]{path}"
                needs += self._resolve(target, ref_field, file, where, seen=())
            depends_on = (leaf.get("metadata") or {}).get("dependsOn") or []
            if not isinstance(depends_on, list):
                raise ConfigError(file, f"resources[{name}].metadata.dependsOn", "must be a list")
            for target in depends_on:
                needs += self._depends_on(target, file, f"resources[{name}].metadata.dependsOn")
            dependencies[name] = list(dict.fromkeys(n for n in needs))
        for output in outputs:
            for path, target, ref_field in _references(output["value"], ""):
                self._resolve(
                    target, ref_field, self.config_name, f"outputs[{output['name']}]{path}", ()
                )
        return dependencies

    def _resolve(
        self, target: str, ref_field: str, file: str, where: str, seen: tuple
    ) -> list[str]:
        """The leaf resources a reference waits for (a template output may hold references).

        A template often names its main resource after itself (`hello-vm` the template creates
        `hello-vm` the instance); then a field that is one of the template's outputs means the
        output, and any other field means the resource's own.
        """
        template = self.templates.get(target)
        is_output = template is not None and ref_field.split(".")[0] in template.outputs
        if not is_output and any(leaf["name"] == target for leaf in self.leaves):
            return [target]
        if template is None:
            known = list(
                dict.fromkeys([leaf["name"] for leaf in self.leaves] + list(self.templates))
            )
            close = difflib.get_close_matches(target, known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(
                file,
                where,
                f"$(ref.{target}.{ref_field}) points to no resource in this deployment: {hint}"
                f"resources are {', '.join(known)}",
            )
        output = ref_field.split(".")[0]
        if output not in template.outputs:
            valid = ", ".join(template.outputs) or "none"
            raise ConfigError(
                file,
                where,
                f"$(ref.{target}.{ref_field}): template resource '{target}' ({template.file}) has "
                f"no output '{output}'; its outputs: {valid}",
            )
        if target in seen:
            raise ConfigError(file, where, f"outputs refer to each other in a loop via '{target}'")
        needs: list[str] = []
        for _, inner, inner_field in _references(template.outputs[output], ""):
            needs += self._resolve(inner, inner_field, template.file, where, (*seen, target))
        return needs

    def _depends_on(self, target: Any, file: str, where: str) -> list[str]:
        if any(leaf["name"] == target for leaf in self.leaves):
            return [target]
        if target in self.templates:
            return list(self.templates[target].leaves)
        raise ConfigError(file, where, f"'{target}' is not a resource in this deployment")


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


class _ImportedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Lets a template `import helper` when helper.py is among the deployment's imports."""

    def __init__(self, imports: dict[str, str]):
        self.sources = {
            PurePosixPath(name).stem: text for name, text in imports.items() if name.endswith(".py")
        }
        self.loaded: list[str] = []

    def find_spec(self, fullname, path=None, target=None):
        if fullname in self.sources:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def exec_module(self, module) -> None:
        self.loaded.append(module.__name__)
        exec(compile(self.sources[module.__name__], f"{module.__name__}.py", "exec"), vars(module))

    def forget(self) -> None:
        for name in self.loaded:
            sys.modules.pop(name, None)


def _load_module(filename: str, source: str):
    spec = importlib.util.spec_from_loader(f"dm_template_{PurePosixPath(filename).stem}", None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, filename, "exec"), vars(module))
    return module


def _template_line(error: Exception, filename: str) -> str:
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == filename]
    return f":{frames[-1].lineno}" if frames else ""
