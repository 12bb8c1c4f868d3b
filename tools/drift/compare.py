"""What the config declares against what Compute Engine holds: one Difference per field.

The declared side is the expanded config (dmlocal's expansion, as Deployment Manager would
expand it), with each `$(ref.NAME.FIELD)` resolved against the live resource NAME, the way DM
resolves it at deploy time. The live side is each resource as the Compute Engine API's `get`
returns it. The API adds to what was sent, and none of that is drift; which fields it adds is read
from the compute.v1 discovery document that ships with google-api-python-client, not listed by
hand:

  * output-only fields (`readOnly`, or described "[Output Only]": id, selfLink, fingerprints of
    the resource, status) and input-only ones (described "[Input Only]": a disk's
    `initializeParams`, never returned) are not compared;
  * a declared field the API leaves out is equal when the declared value is the JSON zero value
    (false, 0, "", [], {}), which the API omits, or the default its description states
    ("The default value is `1000`");
  * a field given as a name or a partial URL (`us-central1-a`, `zones/Z/machineTypes/e2-small`)
    equals the full URL the API returns for it;
  * inside a declared object only the declared fields count (the API fills in the rest, e.g. a
    NIC's `network`), except maps (labels) and `key`-indexed lists (metadata items), where an
    added entry is drift too (but for labels Google's services add under `goog-`);
  * a top-level boolean the config leaves unset is drift when it is live true: a proto3 boolean
    defaults to false, so true was set by someone (a disabled firewall rule, IP forwarding on).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from dmlocal.expand import Expansion
from dmlocal.references import REFERENCE, compute_v1_type, follow, template_outputs
from dmlocal.replacement import _collection as collection_for
from dmlocal.replacement import _compute as compute_document

# The kinds of Difference.
DELETED = "deleted"  # declared, and the API answers 404
CHANGED = "changed"  # a field's live value is not the declared one
UNOWNED = "unowned"  # on the stack's network, but not in the deployment

_OUTPUT_ONLY = re.compile(r"\[Output Only\]|^Output only", re.IGNORECASE)
_INPUT_ONLY = re.compile(r"\[Input Only\]|^Input only", re.IGNORECASE)
_DEFAULT = re.compile(r"default(?: value)? is `([^`]+)`")
_API_PREFIX = re.compile(r"^https://[^/]+/compute/v1/")


class _Unknown:
    """A declared value that depends on a resource that is gone: nothing to compare it with."""

    def __repr__(self) -> str:
        return "<unknown>"


UNKNOWN = _Unknown()
_MISSING = object()


@dataclass(frozen=True)
class Difference:
    """One way the live stack differs from the config. `field` is a dotted path (empty for a
    whole resource); values are as declared and as the API returned them (None: absent)."""

    kind: str
    resource: str
    type: str
    field: str
    declared: Any
    live: Any


@dataclass
class LiveState:
    """What the Compute Engine API returned: each deployment resource by name (None when its
    `get` answered 404), and the resources on the stack's network the deployment does not own."""

    resources: dict[str, dict | None]
    neighbours: list[tuple[str, dict]] = field(default_factory=list)


def compute_resources(expansion: Expansion) -> list[dict]:
    """The expanded resources Compute Engine holds, in creation order: what drift reads and
    compares. Others (the Cloud Monitoring uptime check) belong to other APIs."""
    by_name = {r["name"]: r for r in expansion.resources}
    order = expansion.creation_order or list(by_name)
    return [by_name[n] for n in order if collection_for(compute_v1_type(by_name[n]["type"]))]


def not_compute(expansion: Expansion) -> list[dict]:
    """The expanded resources of other APIs, which drift names as not checked."""
    own = {r["name"] for r in compute_resources(expansion)}
    return [r for r in expansion.resources if r["name"] not in own]


def _schemas() -> dict:
    return compute_document()["schemas"]


def resource_schema(dm_type: str) -> dict:
    found = collection_for(dm_type)
    return found[2] if found else {}


def _spec(spec: Mapping) -> Mapping:
    return _schemas()[spec["$ref"]] if "$ref" in spec else spec


def _fields(schema: Mapping) -> Mapping:
    return _spec(schema).get("properties", {})


def output_only(spec: Mapping) -> bool:
    return bool(spec.get("readOnly")) or bool(_OUTPUT_ONLY.search(spec.get("description", "")))


def input_only(spec: Mapping) -> bool:
    return bool(_INPUT_ONLY.search(spec.get("description", "")))


def _zero(value: Any) -> bool:
    if isinstance(value, bool | int | float | str | list | dict):
        return not value
    return value is None


def _url_path(value: str) -> str:
    return _API_PREFIX.sub("", value)


def same_scalar(declared: Any, live: Any) -> bool:
    """Equal as Compute Engine means it: numbers in either JSON spelling ("10" and 10), a name
    or partial URL and the full URL it stands for."""
    if declared == live:
        return True
    if isinstance(declared, bool) or isinstance(live, bool):
        return False
    d, v = str(declared), str(live)
    if d == v:
        return True
    d, v = _url_path(d), _url_path(v)
    if "/" in d or "/" in v:
        return d == v or v.endswith("/" + d) or d.endswith("/" + v)
    return False


def _absent_is_default(declared: Any, spec: Mapping) -> bool:
    if _zero(declared):
        return True
    stated = _DEFAULT.search(spec.get("description", ""))
    return bool(stated) and str(declared) == stated.group(1)


def resolve(value: Any, expansion: Expansion, live: LiveState) -> Any:
    """The declared value with its references replaced by live values (UNKNOWN inside when a
    referenced resource is gone)."""
    outputs = template_outputs(expansion.layout)
    declared = {r["name"]: r.get("properties") or {} for r in expansion.resources}

    def lookup(name: str, path: str) -> Any:
        for source in (live.resources.get(name), declared.get(name)):
            if source is None:
                if name in live.resources:
                    return UNKNOWN  # the resource is gone
                continue
            found = _walk(source, path)
            if found is not _MISSING:
                return found
        return UNKNOWN

    def one(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: one(v) for k, v in value.items()}
        if isinstance(value, list):
            return [one(v) for v in value]
        if not isinstance(value, str) or "$(ref." not in value:
            return value
        leaf = follow(value, outputs)
        whole = REFERENCE.fullmatch(leaf.strip()) if isinstance(leaf, str) else None
        if whole:
            return lookup(*whole.groups())
        parts = [lookup(*m.groups()) for m in REFERENCE.finditer(value)]
        if any(p is UNKNOWN for p in parts):
            return UNKNOWN
        found = iter(parts)
        return REFERENCE.sub(lambda _m: str(next(found)), value)

    return one(value)


def _walk(value: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def google_labels(labels: Mapping) -> dict:
    """The labels Google's services add under their reserved `goog-` prefix (Deployment
    Manager's goog-dm, the Terraform provider's goog-terraform-provisioned): not a person's
    edit, so not drift, and kept by repair. (From the services' behaviour, not verified on a
    live project.)"""
    return {k: v for k, v in labels.items() if str(k).startswith("goog-")}


def _keyed(items: list) -> bool:
    return bool(items) and all(isinstance(i, Mapping) and "key" in i for i in items)


def _diff(declared: Any, live: Any, spec: Mapping, path: str) -> Iterator[tuple[str, Any, Any]]:
    """(field path, declared, live) for each declared value the live one does not match."""
    if declared is UNKNOWN or (isinstance(declared, list) and UNKNOWN in declared):
        return
    spec = _spec(spec)
    if live is _MISSING or live is None:
        if not _absent_is_default(declared, spec):
            yield path, declared, None
        return
    if isinstance(declared, Mapping):
        if not isinstance(live, Mapping):
            yield path, declared, live
            return
        if "additionalProperties" in spec:  # a map: every key counts but Google's own
            for key in sorted(declared.keys() | (live.keys() - google_labels(live).keys())):
                if not same_scalar(declared.get(key), live.get(key)):
                    yield f"{path}.{key}", declared.get(key), live.get(key)
            return
        fields = _fields(spec)
        for key, value in declared.items():
            sub = fields.get(key, {})
            if output_only(sub) or input_only(sub):
                continue
            yield from _diff(value, live.get(key, _MISSING), sub, f"{path}.{key}".lstrip("."))
        return
    if isinstance(declared, list):
        if not isinstance(live, list):
            yield path, declared, live
            return
        items = spec.get("items", {})
        if _keyed(declared) or _keyed(live):
            have = {i["key"]: i.get("value") for i in live}
            want = {i["key"]: i.get("value") for i in declared}
            for key in [*want, *(k for k in have if k not in want)]:
                if key not in have or key not in want or not same_scalar(want[key], have[key]):
                    yield f"{path}[{key}]", want.get(key), have.get(key)
            return
        if declared and all(isinstance(i, Mapping) for i in declared):
            if len(declared) != len(live):
                yield path, declared, live
                return
            for index, (d, v) in enumerate(zip(declared, live, strict=True)):
                yield from _diff(d, v, items, f"{path}[{index}]")
            return
        if sorted(map(str, declared)) != sorted(map(str, live)):
            yield path, declared, live
        return
    if not same_scalar(declared, live):
        yield path, declared, live


def compare_resource(name: str, dm_type: str, declared: Mapping, live: Mapping):
    """The Differences of one live resource from its resolved declared properties."""
    schema = resource_schema(dm_type)
    fields = _fields(schema)
    for path, want, have in _diff(dict(declared), live, schema, ""):
        yield Difference(CHANGED, name, dm_type, path, want, have)
    for key, value in live.items():
        spec = fields.get(key, {})
        if key in declared or spec.get("type") != "boolean" or output_only(spec):
            continue
        if value is True:
            yield Difference(CHANGED, name, dm_type, key, None, True)


def compare(expansion: Expansion, live: LiveState) -> list[Difference]:
    """Every difference between the expanded config and the live stack, in creation order, then
    the resources on its network that it does not own."""
    found: list[Difference] = []
    for resource in compute_resources(expansion):
        name = resource["name"]
        body = live.resources.get(name)
        if body is None:
            found.append(Difference(DELETED, name, resource["type"], "", "exists", None))
            continue
        declared = resolve(resource.get("properties") or {}, expansion, live)
        found.extend(compare_resource(name, resource["type"], declared, body))
    for type_, body in live.neighbours:
        found.append(Difference(UNOWNED, body["name"], type_, "", None, body))
    return found
