"""Checks resource properties against the real Google API schemas (Compute v1, Monitoring v3).

Deployment Manager turns a `compute.v1.<kind>` resource into the `<kinds>.insert` call of the
Compute Engine v1 API: the path parameters (`zone`, `region`) and query parameters come from the
properties of the same name, and the remaining properties are the request body. The API then
rejects unknown fields, wrong JSON types and values outside an enum, but only at deploy time. This
module finds those mistakes offline, from the discovery document that ships inside
google-api-python-client (googleapiclient/discovery_cache/documents/compute.v1.json): the same
schema the API client itself is generated from, so no field list is hand-maintained here.

The same walk checks the Cloud Monitoring resources (`gcp-types/monitoring-v3:projects.<kind>`,
DM's type provider for the Monitoring v3 API) against monitoring.v3.json: DM calls
`projects.<kind>.create`, whose URL takes the project from the `parent` or `name` property
(`projects/PROJECT`), and sends the rest as the body.

A `$(ref.NAME.FIELD)` string is accepted wherever a value goes: DM substitutes it at deploy time.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib.util
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmlocal.errors import Finding
from dmlocal.references import REFERENCE, compute_v1_type, singular, template_outputs

DM_TYPE = re.compile(r"^compute\.v1\.([a-zA-Z]+)$")
MONITORING_TYPE = re.compile(r"^gcp-types/monitoring-v3:(projects\.[a-zA-Z]+)$")
DOCS_URL = "https://cloud.google.com/compute/docs/reference/rest/v1/{collection}/insert"
MONITORING_DOCS_URL = "https://cloud.google.com/monitoring/api/ref_v3/rest/v3/{collection}/create"
# Per API: its name in messages, and the docs page of a collection's create/insert method.
APIS = {
    "compute.v1": ("Compute Engine v1 API", DOCS_URL),
    "monitoring.v3": ("Cloud Monitoring v3 API", MONITORING_DOCS_URL),
}
# Listing every field of a big message (Instance has ~60) buries the hint; past this, say where
# the full list is instead.
MAX_LISTED = 16


def discovery_path(api: str = "compute.v1") -> Path:
    """Where google-api-python-client keeps its copy of an API's discovery document."""
    spec = importlib.util.find_spec("googleapiclient")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("google-api-python-client is not installed (requirements-dev.txt)")
    base = Path(next(iter(spec.submodule_search_locations)))
    return base / "discovery_cache" / "documents" / f"{api}.json"


@functools.cache
def discovery(api: str = "compute.v1") -> dict:
    """An API's discovery document bundled with google-api-python-client (Compute Engine v1
    unless named).

    Only what validation reads is kept (insert methods, schemas without their prose), and that
    subset is cached outside the repository, keyed by the document's content (hashing it takes
    ~10 ms; parsing the full 5 MB document on every `make preview` cost ~0.15 s of a 1 s budget),
    so every checkout and venv with the same client version shares one entry.
    """
    source = discovery_path(api).read_bytes()
    key = hashlib.sha256(source + f":{CACHE_VERSION}".encode())
    cache_dir = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dmlocal"
    cache = cache_dir / f"{api}-{key.hexdigest()[:20]}.json"
    try:
        return json.loads(cache.read_text())
    except (OSError, ValueError):
        pass
    subset = _trim(json.loads(source))
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(subset, separators=(",", ":")))
        tmp.replace(cache)  # atomic: concurrent previews never read a half-written cache
    except OSError:
        pass  # read-only home: still correct, just slower
    return subset


CACHE_VERSION = 3
_PROSE = frozenset({"description", "enumDescriptions"})


def _strip(node, names: bool = False):
    """Drop documentation prose; `names` marks a map of field names, whose keys are all kept."""
    if isinstance(node, dict):
        return {
            k: _strip(v, names=not names and k in ("properties", "parameters"))
            for k, v in node.items()
            if names or k not in _PROSE
        }
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _creating_methods(resources: dict, prefix: str = ""):
    """(collection, method name, method) of every insert/create, nested collections dotted
    (Monitoring's `projects.uptimeCheckConfigs`)."""
    for name, body in resources.items():
        for verb in ("insert", "create"):
            if verb in body.get("methods", {}):
                yield prefix + name, verb, body["methods"][verb]
        yield from _creating_methods(body.get("resources", {}), f"{prefix}{name}.")


def _trim(doc: dict) -> dict:
    resources = {
        collection: {"methods": {verb: _strip(method)}}
        for collection, verb, method in _creating_methods(doc["resources"])
    }
    return {
        "revision": doc.get("revision"),
        "resources": resources,
        "schemas": _strip(doc["schemas"]),
    }


@dataclass(frozen=True)
class Method:
    """The API call a DM type maps to: its collection, body schema and URL parameters."""

    dm_type: str
    collection: str
    schema: str
    path_params: tuple[str, ...]
    query_params: tuple[str, ...]
    required_params: tuple[str, ...]
    api: str = "compute.v1"
    verb: str = "insert"
    path_patterns: tuple[tuple[str, str], ...] = ()

    @property
    def id(self) -> str:
        return f"{self.collection}.{self.verb}"

    @property
    def docs(self) -> str:
        return APIS[self.api][1].format(collection=self.collection)


@functools.cache
def method_for(dm_type: str) -> Method | None:
    """Find the insert method DM calls for `dm_type` (compute.v1.instance -> instances.insert).

    DM names its compute types after the API collections in the singular, so the collection is
    found by that rule in the discovery document rather than from a hand-written table. Returns
    None for a type that is not compute.v1 or has no insert method.
    """
    monitoring = MONITORING_TYPE.match(dm_type)
    if monitoring:
        return _monitoring_method(dm_type, monitoring.group(1))
    m = DM_TYPE.match(dm_type)
    if not m:
        return None
    kind = m.group(1)
    for collection, body in discovery()["resources"].items():
        insert = body.get("methods", {}).get("insert")
        if insert is None or kind != singular(collection):
            continue
        params = insert.get("parameters", {})
        path = tuple(p for p in insert.get("parameterOrder", []) if p != "project")
        query = tuple(
            p for p, spec in params.items() if spec.get("location") == "query" and p != "requestId"
        )
        required = tuple(p for p in path if params.get(p, {}).get("required"))
        return Method(dm_type, collection, insert["request"]["$ref"], path, query, required)
    return None


def _monitoring_method(dm_type: str, collection: str) -> Method | None:
    create = discovery("monitoring.v3")["resources"].get(collection, {}).get("methods", {})
    create = create.get("create")
    if create is None:
        return None
    params = create.get("parameters", {})
    path = tuple(create.get("parameterOrder", []))
    patterns = tuple((p, params[p]["pattern"]) for p in path if params[p].get("pattern"))
    return Method(
        dm_type,
        collection,
        create["request"]["$ref"],
        path,
        (),
        tuple(p for p in path if params.get(p, {}).get("required")),
        api="monitoring.v3",
        verb="create",
        path_patterns=patterns,
    )


def supported_types() -> list[str]:
    """Every compute.v1 DM type this module can check, for messages about unknown types."""
    return sorted(
        f"compute.v1.{singular(collection)}"
        for collection, body in discovery()["resources"].items()
        if "insert" in body.get("methods", {})
    )


def _is_ref(value: Any) -> bool:
    return isinstance(value, str) and REFERENCE.search(value) is not None


def _describe(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list"}
    return names.get(type(value), "mapping" if isinstance(value, dict) else type(value).__name__)


class _Walker:
    def __init__(self, resource: str, file: str, method: Method):
        self.resource = resource
        self.file = file
        self.method = method
        self.schemas = discovery(method.api)["schemas"]

    def finding(self, path: str, message: str, severity: str = "error") -> Finding:
        return Finding(self.file, self.resource, path, message, severity)

    def walk(self, spec: dict, value: Any, path: str, schema_name: str) -> Iterator[Finding]:
        if "$ref" in spec:
            name = spec["$ref"]
            yield from self.walk(self.schemas[name], value, path, name)
            return
        if _is_ref(value):
            return
        type_ = spec.get("type", "any")
        if type_ == "any":
            return
        if type_ == "object":
            yield from self._object(spec, value, path, schema_name)
        elif type_ == "array":
            if not isinstance(value, list):
                yield self.finding(
                    path, f"must be a list, not a {_describe(value)} ({value!r}); wrap it in [ ]"
                )
                return
            for index, item in enumerate(value):
                yield from self.walk(spec.get("items", {}), item, f"{path}[{index}]", schema_name)
        elif type_ == "string":
            yield from self._string(spec, value, path)
        elif type_ == "integer":
            ok = (isinstance(value, int) and not isinstance(value, bool)) or (
                isinstance(value, str) and re.fullmatch(r"-?\d+", value)
            )
            if not ok:
                yield self.finding(path, f"must be an integer, not {_describe(value)} {value!r}")
        elif type_ == "number":
            if isinstance(value, bool) or not isinstance(value, int | float):
                yield self.finding(path, f"must be a number, not {_describe(value)} {value!r}")
        elif type_ == "boolean" and not isinstance(value, bool):
            yield self.finding(
                path, f"must be true or false (a YAML boolean), not {_describe(value)} {value!r}"
            )

    def _string(self, spec: dict, value: Any, path: str) -> Iterator[Finding]:
        if spec.get("format") in ("int64", "uint64"):
            if isinstance(value, bool) or not (
                isinstance(value, int) or (isinstance(value, str) and value.lstrip("-").isdigit())
            ):
                yield self.finding(
                    path, f"must be a whole number (64-bit), not {_describe(value)} {value!r}"
                )
            return
        if isinstance(value, int) and not isinstance(value, bool) and not spec.get("enum"):
            # Deployment Manager sends the config as JSON and the API takes a number where it
            # declares a string: Google's own samples write `ports: [22]` and `portRange: 80`.
            yield self.finding(
                path,
                f"is a string in the API; Deployment Manager accepts the integer {value} as "
                f'"{value}", quote it to say so',
                "warning",
            )
            return
        if not isinstance(value, str):
            yield self.finding(
                path, f"must be a string, not {_describe(value)} {value!r}; quote it in YAML"
            )
            return
        enum = spec.get("enum")
        if enum and value not in enum:
            close = difflib.get_close_matches(value.upper().strip(), enum, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            yield self.finding(
                path, f"'{value}' is not a valid value: {hint}valid: {', '.join(enum)}"
            )

    def _object(self, spec: dict, value: Any, path: str, schema_name: str) -> Iterator[Finding]:
        if not isinstance(value, dict):
            yield self.finding(path, f"must be a mapping, not {_describe(value)} {value!r}")
            return
        fields = spec.get("properties")
        extra = spec.get("additionalProperties")
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if fields and key in fields:
                if fields[key].get("readOnly"):
                    yield self.finding(
                        sub, "is output only: the API sets it and ignores this value", "warning"
                    )
                    continue
                yield from self.walk(fields[key], item, sub, schema_name)
            elif extra is not None:
                yield from self.walk(extra, item, sub, schema_name)
            else:
                yield self.finding(sub, self._unknown(str(key), fields or {}, schema_name))

    def _unknown(self, key: str, fields: dict, schema_name: str) -> str:
        names = [n for n, f in fields.items() if not f.get("readOnly")]
        by_lower = {n.lower(): n for n in names}
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
        if key.lower() in by_lower:
            close = [by_lower[key.lower()]]
        hint = f"did you mean '{close[0]}'? " if close else ""
        if len(names) <= MAX_LISTED:
            valid = f"valid fields of {schema_name}: {', '.join(sorted(names))}"
        else:
            valid = f"{schema_name} has {len(names)} settable fields, listed at {self.method.docs}"
        return f"unknown field '{key}' in the {APIS[self.method.api][0]}: {hint}{valid}"


def check_resource(resource: dict, file: str) -> list[Finding]:
    """Findings for one expanded leaf resource; [] for types this module does not cover."""
    dm_type = compute_v1_type(resource.get("type", ""))
    name = resource.get("name", "?")
    method = method_for(dm_type)
    if method is None:
        if MONITORING_TYPE.match(dm_type):
            kinds = sorted(discovery("monitoring.v3")["resources"])
            close = difflib.get_close_matches(dm_type.split(":", 1)[1], kinds, n=1)
            hint = f"did you mean 'gcp-types/monitoring-v3:{close[0]}'? " if close else ""
            return [
                Finding(
                    file,
                    name,
                    "type",
                    f"'{dm_type}' has no create method in the Cloud Monitoring v3 API: {hint}"
                    "for example gcp-types/monitoring-v3:projects.uptimeCheckConfigs",
                )
            ]
        if DM_TYPE.match(dm_type):
            kind = dm_type.rsplit(".", 1)[1]
            close = difflib.get_close_matches(dm_type, supported_types(), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            return [
                Finding(
                    file,
                    name,
                    "type",
                    f"'{dm_type}' is not a Compute Engine v1 type ({kind} has no insert method): "
                    f"{hint}for example compute.v1.instance, compute.v1.firewall",
                )
            ]
        return []
    properties = dict(resource.get("properties") or {})
    walker = _Walker(name, file, method)
    findings: list[Finding] = []
    body_fields = walker.schemas[method.schema]["properties"]
    if method.api != "compute.v1":
        return findings + _project_path(walker, method, properties)
    for param in method.path_params:
        value = properties.get(param)
        example = "us-central1-a" if param == "zone" else "us-central1"
        if param not in body_fields or body_fields[param].get("readOnly"):
            # A path parameter only (instance.zone is output-only in the body): not body data.
            properties.pop(param, None)
        if value is None:
            if param in method.required_params:
                findings.append(
                    walker.finding(
                        param,
                        f"is required: {dm_type} is created with {method.id}, whose URL needs "
                        f"the {param} (e.g. {param}: {example})",
                    )
                )
        elif not isinstance(value, str):
            findings.append(walker.finding(param, f"must be a {param} name string, not {value!r}"))
    for param in method.query_params:
        if param not in body_fields and param in properties:
            value = properties.pop(param)
            if not isinstance(value, str) and not _is_ref(value):
                findings.append(walker.finding(param, f"must be a string, not {value!r}"))
    properties.pop("project", None)  # DM lets a resource name another project; it is a URL part
    findings += walker.walk({"$ref": method.schema}, properties, "", method.schema)
    for field_name, spec in body_fields.items():
        required = spec.get("annotations", {}).get("required", [])
        if f"compute.{method.id}" in required and field_name not in properties:
            if field_name == "name":
                continue  # DM fills the GCE name from the resource name
            findings.append(walker.finding(field_name, f"is required by {method.id} and missing"))
    return findings


def _project_path(walker: _Walker, method: Method, properties: dict) -> list[Finding]:
    """A Monitoring create: the URL's `projects/PROJECT` comes from its path property, the rest
    is the body (the server names the new object, so a body `name` would be the project)."""
    findings: list[Finding] = []
    for param, pattern in method.path_patterns:
        value = properties.pop(param, None)
        if value is None:
            findings.append(
                walker.finding(
                    param,
                    f"is required: {method.dm_type} is created with {method.id}, whose URL "
                    f"needs the project (e.g. {param}: projects/my-project)",
                )
            )
        elif not _is_ref(value) and not (isinstance(value, str) and re.match(pattern, value)):
            findings.append(
                walker.finding(
                    param,
                    f"{value!r} is not a project for {method.id}'s URL: write "
                    f"{param}: projects/PROJECT_ID (pattern {pattern})",
                )
            )
    findings += walker.walk({"$ref": method.schema}, properties, "", method.schema)
    return findings


def check_resources(resources: list[dict], origins: dict[str, str] | None = None) -> list[Finding]:
    """Findings for every compute.v1 resource; `origins` maps resource name -> declaring file."""
    origins = origins or {}
    findings: list[Finding] = []
    for resource in resources:
        findings += check_resource(resource, origins.get(resource.get("name", ""), "?"))
    return findings


def _field_parts(path: str) -> list[str]:
    """'networkInterfaces[0].accessConfigs.0.natIP' -> names only, indices dropped."""
    return [p for p in re.split(r"[.\[\]]+", path) if p and not p.isdigit()]


def _walk_field(
    schema_name: str, parts: list[str], api: str = "compute.v1"
) -> tuple[str, str, list[str]] | None:
    """None when the field path exists in the schema; else (bad part, schema, its fields)."""
    schemas = discovery(api)["schemas"]
    node: dict = schemas[schema_name]
    current = schema_name
    for part in parts:
        while "$ref" in node or node.get("type") == "array":
            if "$ref" in node:
                current = node["$ref"]
                node = schemas[current]
            else:
                node = node.get("items", {})
        fields = node.get("properties")
        if fields is None:
            if node.get("additionalProperties") is not None:
                node = node["additionalProperties"]
                continue
            return None  # a scalar or free-form value: nothing more to check
        if part not in fields:
            return part, current, sorted(fields)
        node = fields[part]
    return None


def _resource_docs(method: Method) -> str:
    return method.docs.rsplit("/", 1)[0]


def check_references(expansion) -> list[Finding]:
    """Each `$(ref.NAME.FIELD)` whose NAME is a compute.v1 leaf must name a field that resource
    has (output-only ones such as selfLink and address included).

    The engine checks that NAME exists; this catches `$(ref.hello-vm.publicIpp)` when a
    template and its main resource share the name `hello-vm`, and `$(ref.subnet.ipCidrRnge)`.
    """
    leaves = {r["name"]: r for r in expansion.resources}
    outputs = template_outputs(expansion.layout)
    origins = expansion.origins
    findings: list[Finding] = []

    def scan(value: Any, file: str, resource: str, path: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                scan(v, file, resource, f"{path}.{k}" if path else str(k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                scan(v, file, resource, f"{path}[{i}]")
        elif isinstance(value, str):
            for target, ref_field in REFERENCE.findall(value):
                head = _field_parts(ref_field)[:1]
                if target in outputs and head and head[0] in outputs[target]:
                    continue  # a template output; the engine checks those
                leaf = leaves.get(target)
                method = method_for(compute_v1_type(leaf["type"])) if leaf else None
                if method is None:
                    continue
                bad = _walk_field(method.schema, _field_parts(ref_field), method.api)
                if bad is None:
                    continue
                part, schema, fields = bad
                candidates = [*fields, *(outputs.get(target) or {})]
                close = difflib.get_close_matches(part, candidates, n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                also = ""
                if target in outputs:
                    names = ", ".join(outputs[target]) or "none"
                    also = f"; template '{target}' outputs: {names}"
                findings.append(
                    Finding(
                        file,
                        resource,
                        path,
                        f"$(ref.{target}.{ref_field}): {leaf['type']} '{target}' has no field "
                        f"'{part}' ({schema}): {hint}see {_resource_docs(method)}{also}",
                    )
                )

    for leaf in expansion.resources:
        scan(leaf.get("properties") or {}, origins.get(leaf["name"], "?"), leaf["name"], "")
    for output in expansion.outputs or []:
        scan(output.get("value"), expansion.config_file, "outputs", str(output.get("name")))
    return findings
