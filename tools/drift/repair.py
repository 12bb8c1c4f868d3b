"""Brings the live stack back to the config through the Compute Engine API, for either engine.

Neither engine does it by itself on the next deploy: Deployment Manager's update only touches
resources whose config changed, and one deleted behind its back fails that update with 404 (it
never recreates it); Infrastructure Manager would, but only on the next apply of a new revision.
So repair works on the resources directly, under the names the deployment knows them by, and
both engines find them again by name on their next update (docs/deploy-failures.md):

  * a deleted resource is inserted again from the expanded config, in the deployment's creation
    order, with its references resolved against what is live by then; a recreated instance gets
    the reserved static address the address resource still holds, so the IP is the same;
  * an edited firewall rule is patched back (firewalls.patch with the declared fields; a field
    set out of band to true, such as `disabled`, is patched back to false);
  * an instance's tags, metadata, labels and deletion protection (an address's labels) are reset
    through their set* methods with the fingerprint read just before, as the API requires;
  * a field the API cannot change on a live resource (dmlocal.replacement reads which from the
    discovery document) is reported, not forced: deleting the resource is a person's call;
  * a resource on the stack's network that the deployment does not own is never touched: the
    report names the command that would remove it, and removing it stays a person's decision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dmlocal.expand import Expansion
from dmlocal.replacement import _collection as collection_for
from dmlocal.replacement import replacement_reason
from drift import live as api
from drift.compare import (
    CHANGED,
    DELETED,
    UNKNOWN,
    UNOWNED,
    Difference,
    compute_resources,
    google_labels,
    resolve,
)

# Instance fields with a method of their own (instances.setTags, setMetadata, ...).
INSTANCE_SETTERS = ("tags", "metadata", "deletionProtection")


def _instance_request(methods, project: str, zone: str, name: str, field: str, want, have):
    """The set* request that puts one instance field back; tags and metadata carry the
    fingerprint just read, as the API requires."""
    where = {"project": project, "zone": zone}
    if field == "deletionProtection":
        return methods.setDeletionProtection(**where, resource=name, deletionProtection=bool(want))
    body = {"items": (want or {}).get("items", []), "fingerprint": (have or {}).get("fingerprint")}
    setter = methods.setTags if field == "tags" else methods.setMetadata
    return setter(**where, instance=name, body=body)


class NotRepairable(Exception):
    """A difference repair cannot undo in place (the message says what to do instead)."""


def insert_body(resource: dict, expansion: Expansion, state: api.LiveState) -> dict:
    """The insert request body for a declared resource: its resolved properties without the
    scope path parameters, named as the deployment names it."""
    properties = resolve(resource.get("properties") or {}, expansion, state)
    body = {k: v for k, v in properties.items() if k not in api.SCOPE_PARAMS}
    body.setdefault("name", resource["name"])
    if _contains_unknown(body):
        raise NotRepairable(
            f"{resource['name']}: a resource it refers to is gone and was not recreated first"
        )
    return body


def _contains_unknown(value: Any) -> bool:
    if value is UNKNOWN:
        return True
    if isinstance(value, dict):
        return any(_contains_unknown(v) for v in value.values())
    if isinstance(value, list):
        return any(_contains_unknown(v) for v in value)
    return False


def removal_command(difference: Difference, project: str) -> str:
    """The gcloud command that would remove a resource the deployment does not own."""
    body = difference.live or {}
    if difference.type == "compute.v1.firewall":
        return f"gcloud compute firewall-rules delete {difference.resource} --project {project}"
    if difference.type == "compute.v1.instance":
        zone = str(body.get("zone", "ZONE")).rsplit("/", 1)[-1]
        return (
            f"gcloud compute instances delete {difference.resource} --zone {zone} "
            f"--project {project}"
        )
    return f"(remove {difference.resource}, a {difference.type}, in the console)"


def repair(
    compute,
    project: str,
    expansion: Expansion,
    state: api.LiveState,
    differences: list[Difference],
    log: Callable[[str], None],
) -> list[str]:
    """Undoes every difference it can; returns what it could not undo (unowned resources and
    fields with no in-place method), one sentence each."""
    left: list[str] = []
    by_name = {r["name"]: r for r in expansion.resources}
    deleted = {d.resource for d in differences if d.kind == DELETED}
    for resource in compute_resources(expansion):
        name = resource["name"]
        if name not in deleted:
            continue
        collection, scope = api.locate(resource["type"], resource.get("properties") or {})
        body = insert_body(resource, expansion, state)
        log(f"recreate {name} ({resource['type']})")
        methods = getattr(compute, collection)()
        api.wait(compute, project, api.call(methods.insert(project=project, **scope, body=body)))
        state.resources[name] = api.get(
            compute, project, resource["type"], name, resource.get("properties") or {}
        )
    changed: dict[str, list[Difference]] = {}
    for difference in differences:
        if difference.kind == CHANGED:
            changed.setdefault(difference.resource, []).append(difference)
        elif difference.kind == UNOWNED:
            left.append(
                f"{difference.resource} ({difference.type}) is not the deployment's: left as it "
                f"is; to remove it: {removal_command(difference, project)}"
            )
    for name, group in changed.items():
        resource = by_name[name]
        declared = resolve(resource.get("properties") or {}, expansion, state)
        try:
            _reset(compute, project, resource, declared, state.resources[name], group, log)
        except NotRepairable as reason:
            left.append(str(reason))
    return left


def _reset(compute, project, resource, declared, have, group, log) -> None:
    name, type_ = resource["name"], resource["type"]
    fields = sorted({d.field.split(".")[0].split("[")[0] for d in group})
    for field in fields:
        reason = replacement_reason(type_, field)
        if reason:
            raise NotRepairable(
                f"{name} ({type_}): {field} cannot change on a live resource ({reason}); "
                "delete it and run make repair to recreate it from the config"
            )
    collection, scope = api.locate(type_, resource.get("properties") or {})
    methods = getattr(compute, collection)()
    if type_ == "compute.v1.firewall":
        body = {f: declared.get(f, False) for f in fields}
        log(f"patch {name}: {', '.join(fields)}")
        api.wait(
            compute, project, api.call(methods.patch(project=project, firewall=name, body=body))
        )
        return
    for field in fields:
        setter = collection_for(type_)[1].get("setLabels")
        if field == "labels" and setter:
            where = {**scope, "project": project, setter["parameterOrder"][-1]: name}
            labels = {**google_labels(have.get("labels") or {}), **(declared.get("labels") or {})}
            body = {"labels": labels, "labelFingerprint": have.get("labelFingerprint")}
            request = methods.setLabels(**where, body=body)
        elif type_ == "compute.v1.instance" and field in INSTANCE_SETTERS:
            request = _instance_request(
                methods, project, scope["zone"], name, field, declared.get(field), have.get(field)
            )
        else:
            raise NotRepairable(_no_method(name, type_, field))
        log(f"reset {name}: {field}")
        api.wait(compute, project, api.call(request))


def _no_method(name: str, type_: str, field: str) -> str:
    return (
        f"{name} ({type_}): make repair has no in-place reset for {field}; reset it by hand "
        "(or delete the resource and run make repair to recreate it from the config)"
    )
