"""Deployment Manager's own state: deployments, manifests, operations and per-resource records.

What it does, as DM documents it (the v2 discovery document's field descriptions are quoted):
  * a deployment's `manifest` is "the last manifest that was successfully deployed"; each
    resource has its own record whose `manifest` is "the current configuration of this
    resource", `properties` "before any references have been filled in" and `finalProperties`
    "with references expanded";
  * an update compares the new manifest with those records, resource by resource: a resource
    whose properties (references filled in) are unchanged is left alone, so one deleted behind
    DM's back stays deleted (the emulated cloud is not consulted for it); a changed one is
    updated in place, a new one created or acquired (createPolicy), a dropped one deleted or
    abandoned (deletePolicy). Deletions go first, newest first, then the rest in dependency order;
  * DM does not roll back: resources are applied one by one, dependencies first (DM's
    "Creating explicit dependencies" page), and the first resource error stops the update.
    What was applied before it stays applied, the failing resource records the error
    (`update.state: FAILED`), and the deployment's `manifest` stays the last successful one;
  * an invalid config fails the operation before any resource is touched
    (MANIFEST_EXPANSION_USER_ERROR);
  * fingerprints: a random value that changes with every modifying request; update, stop and
    cancelPreview must carry the current one.

Emulator choices, where DM's documentation does not pin the behaviour down (not verified against
Google):
  * a stale fingerprint -> HTTP 412; a request while the deployment's last operation is still
    running -> HTTP 409; insert of an existing name -> HTTP 409 (alreadyExists);
  * operations complete after `op_seconds` (default 0: every operation is DONE when returned);
    `hold_operations = True` keeps them RUNNING until cleared, which is how tests make two
    deploys overlap;
  * an insert whose config is invalid leaves the deployment behind with no manifest (as DM
    does), so the next deploy is an update;
  * in a preview, a resource whose properties are unchanged carries no `update` (no intent);
  * deleting a deployment deletes in dependency waves and attempts every resource of a wave, so
    a refused delete (the protected VM) still removes its independent neighbours (the firewall
    rules): DM's documentation does not say it spares them, so the stricter reading.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import os
import re
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import yaml

from dmlocal.errors import ConfigError
from dmlocal.expand import default_env, expand_files
from emulators.deploymentmanager.cloud import Cloud, now, operation_name
from emulators.deploymentmanager.errors import ApiError, OperationFailed, not_found

PUBLIC_ROOT = "https://www.googleapis.com/deploymentmanager/v2/projects/"
CONFIG_NAME = "config.yaml"  # gcloud uploads the config's content, not its file name
REFERENCE = re.compile(r"\$\(ref\.([^.()\s]+)\.([^()\s]+)\)")
PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
DEPLOYMENT_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def dump(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False, width=100)


def _fingerprint() -> str:
    return base64.urlsafe_b64encode(os.urandom(8)).decode()


def _same_fingerprint(given: str | None, current: str) -> bool:
    if not given:
        return False
    try:
        # gcloud round-trips the bytes field through its own base64 flavour.
        raw = base64.urlsafe_b64decode(given.replace("+", "-").replace("/", "_") + "==")
    except (binascii.Error, ValueError):
        return False
    return raw == base64.urlsafe_b64decode(current)


class Deployments:
    """Every project's deployments and operations, and the cloud their resources live in."""

    def __init__(self, cloud: Cloud, op_seconds: float, project_number: str, ids):
        self.cloud = cloud
        self.op_seconds = op_seconds
        self.project_number = project_number
        self.hold_operations = False
        self.records: dict[tuple[str, str], dict] = {}
        self.operations: dict[tuple[str, str], dict] = {}
        self._ids = ids

    # -- reads ------------------------------------------------------------------------------

    def get(self, project: str, name: str) -> dict:
        record = self.records.get((project, name))
        if record is None:
            raise not_found(f"projects/{project}/global/deployments/{name}")
        return record

    def list(self, project: str) -> dict:
        items = [self.view(r) for (p, _), r in sorted(self.records.items()) if p == project]
        return {"deployments": items} if items else {}

    # -- writes -----------------------------------------------------------------------------

    def insert(self, project, query_policy, body, preview, principal):
        name = body.get("name") or ""
        if not DEPLOYMENT_NAME.match(name):
            raise ApiError(
                HTTPStatus.BAD_REQUEST,
                "invalid",
                f"Invalid value for field 'resource.name': '{name}'. Must be a match of regex "
                "'[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?'",
            )
        if (project, name) in self.records:
            raise ApiError(
                HTTPStatus.CONFLICT,
                "alreadyExists",
                f"The resource 'projects/{project}/global/deployments/{name}' already exists",
            )
        if not (body.get("target") or {}).get("config"):
            raise ApiError(HTTPStatus.BAD_REQUEST, "required", "target.config is required")
        record = {
            "project": project,
            "name": name,
            "id": str(next(self._ids)),
            "insertTime": now(),
            "updateTime": None,
            "description": body.get("description"),
            "labels": body.get("labels") or [],
            "fingerprint": _fingerprint(),
            "manifest": None,  # last successfully deployed manifest
            "preview": None,  # manifest name of a pending preview
            "manifests": {},
            "resources": {},  # name -> DM's resource record, in the order they were applied
            "failed": {},  # name -> the resource's failed update, from the last deploy
            "operation": None,
        }
        self.records[(project, name)] = record
        return self._run(
            record,
            "insert",
            principal,
            lambda: self._apply_target(
                record, body["target"], query_policy, "DELETE", preview, principal
            ),
        )

    def update(self, project, name, body, create_policy, delete_policy, preview, principal):
        record = self.get(project, name)
        self._check_idle(record)
        self._check_fingerprint(record, body.get("fingerprint"))
        if "description" in body:
            record["description"] = body.get("description")
        if body.get("labels") is not None:
            record["labels"] = body["labels"]
        target = body.get("target")
        if target:
            work = lambda: self._apply_target(  # noqa: E731
                record, target, create_policy, delete_policy, preview, principal
            )
        elif record["preview"] and not preview:
            work = lambda: self._commit_preview(record, create_policy, delete_policy)  # noqa: E731
        elif preview:
            raise ApiError(HTTPStatus.BAD_REQUEST, "required", "preview=true needs target.config")
        else:
            work = lambda: None  # noqa: E731 - a metadata-only update (labels, description)
        record["fingerprint"] = _fingerprint()
        return self._run(record, "update", principal, work)

    def delete(self, project, name, delete_policy, principal):
        record = self.get(project, name)
        self._check_idle(record)

        def work():
            self._delete_all(record, delete_policy)
            del self.records[(project, name)]

        return self._run(record, "delete", principal, work)

    def _delete_all(self, record: dict, delete_policy: str) -> None:
        """Deletes in waves, dependents before what they depend on. Within a wave the order is
        not documented (DM works on independent resources in parallel), so the emulator takes
        the stricter reading: every resource of the wave is attempted, and one that fails keeps
        only what it depends on; its independent neighbours are gone."""
        held = record["resources"]
        first_failure: OperationFailed | None = None
        failed: set[str] = set()
        while True:
            needed = {d for n in held for d in held[n]["dependsOn"] if d in held}
            wave = [n for n in reversed(list(held)) if n not in needed and n not in failed]
            if not wave:
                break
            for resource_name in wave:
                try:
                    self.cloud.delete(
                        record["project"], held[resource_name]["type"], resource_name, delete_policy
                    )
                except OperationFailed as failure:
                    failure.resource = resource_name
                    first_failure = first_failure or failure
                    failed.add(resource_name)
                    continue
                del held[resource_name]
        if first_failure:
            raise first_failure

    def cancel_preview(self, project, name, body, principal):
        record = self.get(project, name)
        self._check_idle(record)
        self._check_fingerprint(record, body.get("fingerprint"))
        record["fingerprint"] = _fingerprint()

        def work():
            if record["preview"] is None:
                raise OperationFailed("NO_PREVIEW", f"deployment {name} has no preview to cancel")
            record["manifests"].pop(record["preview"], None)
            record["preview"] = None

        return self._run(record, "cancelPreview", principal, work)

    def stop(self, project, name, body, principal):
        record = self.get(project, name)
        self._check_fingerprint(record, body.get("fingerprint"))
        record["fingerprint"] = _fingerprint()
        running = record["operation"] and self.operations[(project, record["operation"])]
        if running and running["_done_at"] > time.monotonic():
            # Work is applied when a request arrives, so "stop" can only end the wait early.
            running["_done_at"] = time.monotonic()
            self.settle()
        return self._run(record, "stop", principal, lambda: None)

    def _check_idle(self, record: dict) -> None:
        op = record["operation"] and self.operations[(record["project"], record["operation"])]
        if op and op["status"] != "DONE":
            raise ApiError(
                HTTPStatus.CONFLICT,
                "conflict",
                f"Resource 'projects/{record['project']}/global/deployments/{record['name']}' "
                f"has an operation in progress ({op['name']}); retry when it is DONE",
            )

    def _check_fingerprint(self, record: dict, given: str | None) -> None:
        if not _same_fingerprint(given, record["fingerprint"]):
            raise ApiError(
                HTTPStatus.PRECONDITION_FAILED,
                "conditionNotMet",
                f"The fingerprint in the request does not match deployment '{record['name']}': "
                "it was modified since you read it. Get the deployment and retry.",
            )

    # -- operations -------------------------------------------------------------------------

    def _run(self, record: dict, op_type: str, principal: str, work: Callable[[], Any]):
        """Does the work now; the operation reports DONE after `op_seconds`."""
        project = record["project"]
        name = operation_name()
        op = {
            "kind": "deploymentmanager#operation",
            "id": str(next(self._ids)),
            "name": name,
            "operationType": op_type,
            "targetLink": f"{PUBLIC_ROOT}{project}/global/deployments/{record['name']}",
            "targetId": record["id"],
            "user": principal,
            "insertTime": now(),
            "startTime": now(),
            "selfLink": f"{PUBLIC_ROOT}{project}/global/operations/{name}",
            "status": "RUNNING",
            "progress": 0,
            "_done_at": time.monotonic() + self.op_seconds,
        }
        try:
            work()
        except OperationFailed as failure:
            location = f"/deployments/{record['name']}"
            if failure.resource:
                location += f"/resources/{failure.resource}"
            op["error"] = {
                "errors": [{"code": failure.code, "location": location, "message": failure.message}]
            }
            op["httpErrorStatusCode"] = 400
            op["httpErrorMessage"] = "BAD REQUEST"
        self.operations[(project, name)] = op
        record["operation"] = name
        if op_type != "insert":
            record["updateTime"] = now()
        self.settle()
        return HTTPStatus.OK, public(op)

    def settle(self) -> None:
        if self.hold_operations:
            return
        moment = time.monotonic()
        for op in self.operations.values():
            if op["status"] != "DONE" and op["_done_at"] <= moment:
                op.update(status="DONE", progress=100, endTime=now())

    def operation(self, project: str, name: str) -> dict:
        op = self.operations.get((project, name))
        if op is None:
            raise not_found(f"projects/{project}/global/operations/{name}")
        return public(op)

    def operation_list(self, project: str) -> dict:
        items = [public(o) for (p, _), o in self.operations.items() if p == project]
        return {"operations": items} if items else {}

    # -- expansion and applying a manifest ---------------------------------------------------

    def _expand(self, record: dict, target: dict, principal: str) -> dict:
        content = ((target.get("config") or {}).get("content")) or ""
        imports = {i.get("name"): i.get("content") or "" for i in target.get("imports") or []}
        files = {**imports, CONFIG_NAME: content}
        env = default_env(
            deployment=record["name"],
            project=record["project"],
            project_number=self.project_number,
            username=principal,
        )
        try:
            expansion = expand_files(files, CONFIG_NAME, env)
        except ConfigError as error:
            raise OperationFailed("MANIFEST_EXPANSION_USER_ERROR", str(error)) from None
        except Exception as error:  # a template that crashes is the user's error too
            raise OperationFailed(
                "MANIFEST_EXPANSION_USER_ERROR", f"{type(error).__name__}: {error}"
            ) from None
        millis = int(time.time() * 1000)
        name = f"manifest-{millis}"
        while name in record["manifests"]:
            millis += 1
            name = f"manifest-{millis}"
        return {
            "name": name,
            "id": str(next(self._ids)),
            "insertTime": now(),
            "config": {"content": content},
            "imports": [{"name": k, "content": v} for k, v in imports.items()],
            "expandedConfig": dump({"resources": expansion.resources}),
            "_resources": expansion.resources,
            "_order": expansion.creation_order or [r["name"] for r in expansion.resources],
            "_dependencies": expansion.dependencies,
            "_layout": expansion.layout,
            "_outputs": expansion.outputs,
            "layout": dump(expansion.layout),
        }

    def _apply_target(
        self, record, target, create_policy, delete_policy, preview, principal
    ) -> None:
        manifest = self._expand(record, target, principal)
        record["manifests"][manifest["name"]] = manifest
        if preview:
            record["preview"] = manifest["name"]
            return
        self._deploy(record, manifest, create_policy, delete_policy)

    def _commit_preview(self, record, create_policy, delete_policy) -> None:
        manifest = record["manifests"][record["preview"]]
        self._deploy(record, manifest, create_policy, delete_policy)

    def _deploy(self, record, manifest, create_policy, delete_policy) -> None:
        """Brings the cloud to the manifest resource by resource; stops at the first error."""
        held = record["resources"]
        new = {r["name"]: r for r in manifest["_resources"]}
        # A real update supersedes a pending preview, whether or not it succeeds.
        if record["preview"] and record["preview"] != manifest["name"]:
            record["manifests"].pop(record["preview"], None)
        record["preview"] = None
        record["failed"] = {}
        for name in reversed(list(held)):
            if name not in new:
                with self._failing_at(record, manifest, name, held[name]["type"], "DELETE", {}):
                    self.cloud.delete(record["project"], held[name]["type"], name, delete_policy)
                del held[name]
        for name in manifest["_order"]:
            resource = new[name]
            unresolved = resource.get("properties") or {}
            current = held.get(name)
            same_type = bool(current) and current["type"] == resource["type"]
            intent = "UPDATE" if same_type else create_policy
            with self._failing_at(record, manifest, name, resource["type"], intent, unresolved):
                properties = self._resolve(unresolved, record, manifest)
                if same_type and current["applied"] == properties:
                    current["manifest"] = manifest["name"]
                    continue  # unchanged: DM leaves it alone
                if same_type:
                    actual = self.cloud.update(
                        record["project"], resource["type"], name, current["applied"], properties
                    )
                else:
                    actual = self.cloud.create_or_acquire(
                        record["project"], resource["type"], name, properties, create_policy
                    )
            held[name] = {
                "type": resource["type"],
                "properties": unresolved,
                "applied": properties,
                "actual": actual,
                "manifest": manifest["name"],
                "dependsOn": manifest["_dependencies"].get(name, []),
                "insertTime": current["insertTime"] if same_type else now(),
                "updateTime": now(),
            }
        manifest["layout"] = dump(self._final_layout(record, manifest))
        record["manifest"] = manifest["name"]

    @contextlib.contextmanager
    def _failing_at(self, record, manifest, name, type_, intent, unresolved):
        """Pins a failure to the resource DM stopped at, and records it there."""
        try:
            yield
        except OperationFailed as failure:
            failure.resource = name
            record["failed"][name] = {
                "type": type_,
                "update": {
                    "intent": intent,
                    "state": "FAILED",
                    "manifest": manifest["name"],
                    "properties": dump(unresolved),
                    "error": {"errors": [{"code": failure.code, "message": failure.message}]},
                },
            }
            raise

    def _resolve(self, value: Any, record: dict, manifest: dict) -> Any:
        if isinstance(value, dict):
            return {k: self._resolve(v, record, manifest) for k, v in value.items()}
        if isinstance(value, list):
            return [self._resolve(v, record, manifest) for v in value]
        if not isinstance(value, str) or "$(ref." not in value:
            return value
        whole = REFERENCE.fullmatch(value)
        if whole:  # a lone reference keeps the referenced value's type
            return self._lookup(whole.group(1), whole.group(2), record, manifest)
        return REFERENCE.sub(
            lambda m: str(self._lookup(m.group(1), m.group(2), record, manifest)), value
        )

    def _lookup(self, target: str, path: str, record: dict, manifest: dict) -> Any:
        held = record["resources"].get(target)
        if held:
            found, value = walk(held["actual"], path)
            if found:
                return value
        for template in templates(manifest["_layout"]):
            if template["name"] == target:
                outputs = {o["name"]: o["value"] for o in template.get("outputs") or []}
                head, _, tail = path.partition(".")
                if head in outputs:
                    value = self._resolve(outputs[head], record, manifest)
                    if not tail:
                        return value
                    found, inner = walk(value, tail)
                    if found:
                        return inner
        raise OperationFailed(
            "RESOURCE_ERROR", f"$(ref.{target}.{path}): no such resource field or output"
        )

    def _final_layout(self, record: dict, manifest: dict) -> dict:
        layout = copy.deepcopy(manifest["_layout"])
        for template in templates(layout):
            for output in template.get("outputs") or []:
                output["finalValue"] = self._resolve(output["value"], record, manifest)
        if manifest["_outputs"]:
            layout["outputs"] = [
                {**o, "finalValue": self._resolve(o["value"], record, manifest)}
                for o in manifest["_outputs"]
            ]
        return layout

    # -- views ------------------------------------------------------------------------------

    def view(self, record: dict) -> dict:
        project, name = record["project"], record["name"]
        base = f"{PUBLIC_ROOT}{project}/global/deployments/{name}"
        view = {
            "id": record["id"],
            "name": name,
            "fingerprint": record["fingerprint"],
            "insertTime": record["insertTime"],
            "selfLink": base,
        }
        for key in ("description", "updateTime"):
            if record.get(key):
                view[key] = record[key]
        if record["labels"]:
            view["labels"] = record["labels"]
        if record["manifest"]:
            view["manifest"] = f"{base}/manifests/{record['manifest']}"
        if record["preview"]:
            view["update"] = {"manifest": f"{base}/manifests/{record['preview']}"}
        if record["operation"]:
            view["operation"] = public(self.operations[(project, record["operation"])])
        return view

    def manifest_view(self, record: dict, manifest: dict) -> dict:
        base = f"{PUBLIC_ROOT}{record['project']}/global/deployments/{record['name']}"
        view = {k: v for k, v in manifest.items() if not k.startswith("_")}
        view["selfLink"] = f"{base}/manifests/{manifest['name']}"
        view["manifestSizeBytes"] = str(len(view["expandedConfig"]))
        view["manifestSizeLimitBytes"] = str(50 * 1024 * 1024)
        return view

    def resource_views(self, record: dict) -> list[dict]:
        base = f"{PUBLIC_ROOT}{record['project']}/global/deployments/{record['name']}"
        pending = record["manifests"].get(record["preview"]) if record["preview"] else None
        views: dict[str, dict] = {}
        for name, held in record["resources"].items():
            actual = held["actual"]
            views[name] = {
                "id": actual.get("id", "0"),
                "name": name,
                "type": held["type"],
                "manifest": f"{base}/manifests/{held['manifest']}",
                "url": actual.get("selfLink"),
                "properties": dump(held["properties"]),
                "finalProperties": dump(_without_server_fields(actual)),
                "insertTime": held["insertTime"],
                "updateTime": held["updateTime"],
            }
        for name, failed in record["failed"].items():
            view = views.setdefault(
                name, {"id": "0", "name": name, "type": failed["type"], "insertTime": now()}
            )
            view["update"] = {
                **failed["update"],
                "manifest": f"{base}/manifests/{failed['update']['manifest']}",
            }
        for resource in pending["_resources"] if pending else []:
            name = resource["name"]
            held = record["resources"].get(name)
            properties = resource.get("properties") or {}
            if held and held["properties"] == properties:
                continue
            view = views.setdefault(
                name, {"id": "0", "name": name, "type": resource["type"], "insertTime": now()}
            )
            view["update"] = {
                "intent": "UPDATE" if held else "CREATE_OR_ACQUIRE",
                "state": "IN_PREVIEW",
                "manifest": f"{base}/manifests/{pending['name']}",
                "properties": dump(properties),
            }
        if pending:
            pending_names = {r["name"] for r in pending["_resources"]}
            for name in record["resources"]:
                if name not in pending_names:
                    views[name]["update"] = {
                        "intent": "DELETE",
                        "state": "IN_PREVIEW",
                        "manifest": f"{base}/manifests/{pending['name']}",
                    }
        return list(views.values())


def _without_server_fields(actual: dict) -> dict:
    # finalProperties are the config's properties with references filled in, plus what the
    # server allocated that a reference can read (the address); not ids and timestamps.
    return {k: v for k, v in actual.items() if k not in ("id", "creationTimestamp", "selfLink")}


def templates(layout: dict):
    for resource in layout.get("resources") or []:
        if "resources" in resource:
            yield resource
            yield from templates(resource)


def walk(value: Any, path: str) -> tuple[bool, Any]:
    for key, index in PATH_PART.findall(path):
        if key and isinstance(value, dict) and key in value:
            value = value[key]
        elif index and isinstance(value, list) and int(index) < len(value):
            value = value[int(index)]
        else:
            return False, None
    return True, value


def public(op: dict) -> dict:
    return {k: v for k, v in op.items() if not k.startswith("_")}
