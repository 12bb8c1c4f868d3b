"""A local Deployment Manager v2 API server: the real `gcloud` deploys with nothing in the cloud.

This is test infrastructure: it stands in for Google's server, never for anything this repo ships.
It follows the deploymentmanager v2 discovery document (google-api-python-client ships it as
discovery_cache/documents/deploymentmanager.v2.json) for the calls `gcloud deployment-manager`
makes, with the URLs and bodies gcloud 528 sends (checked with `--log-http`):

  deployments: insert (preview, createPolicy), get, list, update (preview, createPolicy,
               deletePolicy; no `target` = commit the pending preview), delete (deletePolicy),
               cancelPreview, stop
  operations:  get (gcloud's waiter polls it about once a second), list
  manifests:   get, list
  resources:   list, get

What it does, as DM documents it:
  * expands the uploaded target (`target.config.content` plus `target.imports[]`) with the same
    engine as `make preview` (dmlocal.expand.expand_files); an invalid config gives a DONE
    operation whose `error.errors[]` says why, and the deployment's previous manifest (and every
    resource) is left untouched;
  * keeps state between calls: deployments, manifests, operations, and behind them a fake
    "cloud" of the resources that exist, so createPolicy (CREATE_OR_ACQUIRE / ACQUIRE) and
    deletePolicy (DELETE / ABANDON) have observable effects: an ABANDONed resource outlives its
    deployment and a later deployment acquires it again, with the same static IP;
  * honours `deletionProtection: true` on instances: deleting one under the DELETE policy fails
    the operation (as Compute Engine refuses it), and nothing is deleted;
  * fills in `finalProperties`, resolving `$(ref.NAME.FIELD)` against the fake cloud (selfLink,
    id, and for compute.v1.address the allocated `address`), and the manifest layout's output
    `finalValue`s, which `gcloud ... deployments describe` prints as outputs;
  * fingerprints: a random value that changes with every modifying request; update, stop and
    cancelPreview must carry the current one;
  * checks `Authorization: Bearer TOKEN` with an injected verifier (emulators.oauth2 issues the
    tokens) and answers 401 otherwise.

Emulator choices, where DM's documentation does not pin the behaviour down (not verified
against Google; scripts/deploy.sh treats all of them as "someone else is deploying, retry"):
  * a stale fingerprint -> HTTP 412 (conditionNotMet); a request while the deployment's last
    operation is still running -> HTTP 409 (conflict); insert of an existing name -> HTTP 409
    (alreadyExists);
  * operations complete after `op_seconds` (default 0: every operation is DONE when returned);
    a non-zero value keeps them RUNNING for that long, and `hold_operations = True` keeps them
    RUNNING until it is cleared, which is how tests make two deploys overlap;
  * a failed operation changes nothing (DM itself may leave a partial update behind);
  * an insert whose config is invalid leaves the deployment behind with no manifest (as DM
    does), so the next deploy is an update.

The static address is injectable: `address_allocator(project, resource_name, properties)` returns
the IP for a new compute.v1.address (default: 203.0.113.10, .11, ... from TEST-NET-3), so a
local run can map "the public IP" to a forwarded loopback address.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import copy
import itertools
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from dmlocal.errors import ConfigError
from dmlocal.expand import default_env, expand_files
from emulators.loopback import LoopbackService

API_ROOT = "/deploymentmanager/v2/projects/"
PUBLIC_ROOT = "https://www.googleapis.com/deploymentmanager/v2/projects/"
COMPUTE_ROOT = "https://www.googleapis.com/compute/v1/projects/"
CONFIG_NAME = "config.yaml"  # gcloud uploads the config's content, not its file name
REFERENCE = re.compile(r"\$\(ref\.([^.()\s]+)\.([^()\s]+)\)")
PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
DEPLOYMENT_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")

# Where Compute Engine keeps each type, for selfLinks: (scope property, collection).
COLLECTIONS = {
    "compute.v1.network": (None, "networks"),
    "compute.v1.firewall": (None, "firewalls"),
    "compute.v1.globalAddress": (None, "addresses"),
    "compute.v1.subnetwork": ("region", "subnetworks"),
    "compute.v1.address": ("region", "addresses"),
    "compute.v1.instance": ("zone", "instances"),
    "compute.v1.disk": ("zone", "disks"),
}

TokenVerifier = Callable[[str], str | None]  # bearer token -> principal email, or None
AddressAllocator = Callable[[str, str, dict], str]


class ApiError(Exception):
    """An HTTP error in Google's JSON error format."""

    def __init__(self, status: HTTPStatus, reason: str, message: str):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message

    def body(self) -> dict:
        return {
            "error": {
                "code": int(self.status),
                "message": self.message,
                "status": {
                    400: "INVALID_ARGUMENT",
                    401: "UNAUTHENTICATED",
                    404: "NOT_FOUND",
                    409: "ALREADY_EXISTS" if self.reason == "alreadyExists" else "ABORTED",
                    412: "FAILED_PRECONDITION",
                }.get(int(self.status), "UNKNOWN"),
                "errors": [{"domain": "global", "reason": self.reason, "message": self.message}],
            }
        }


class OperationFailed(Exception):
    """A deployment-level failure: reported in a DONE operation's `error`, not as HTTP."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dump(value: Any) -> str:
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


class TestNetAddresses:
    """The default allocator: 203.0.113.10, .11, ... (TEST-NET-3, never routed)."""

    def __init__(self, first: int = 10):
        self._next = itertools.count(first)

    def __call__(self, project: str, name: str, properties: dict) -> str:
        return f"203.0.113.{next(self._next) % 256}"


class DeploymentManagerEmulator(LoopbackService):
    """The emulated service: state plus the v2 methods. `serve()` puts it behind HTTP."""

    def __init__(
        self,
        verify_token: TokenVerifier | None = None,
        address_allocator: AddressAllocator | None = None,
        op_seconds: float = 0.0,
        project_number: str = "123456789012",
    ):
        self.verify_token = verify_token
        self.address_allocator = address_allocator or TestNetAddresses()
        self.op_seconds = op_seconds
        # While True, operations stay RUNNING: tests hold a deploy mid-flight to race another.
        self.hold_operations = False
        self.project_number = project_number
        self.lock = threading.RLock()
        self.deployments: dict[tuple[str, str], dict] = {}
        self.operations: dict[tuple[str, str], dict] = {}
        # project -> resource type -> name -> the resource as the cloud holds it
        self.cloud: dict[str, dict[str, dict[str, dict]]] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) for tests
        self._ids = itertools.count(7_000_000_000_000_000_001)

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Starts serving in a background thread; returns the endpoint override URL."""
        super().serve(host, port)
        return self.url

    @property
    def url(self) -> str:
        return self.base_url + "/"

    # -- inspection helpers for tests and `make up` ------------------------------------------

    def deployment(self, project: str, name: str) -> dict | None:
        with self.lock:
            self._settle()
            record = self.deployments.get((project, name))
            return copy.deepcopy(record) if record else None

    def live_manifest(self, project: str, name: str) -> dict | None:
        """The manifest the deployment currently stands on (DM's `deployment.manifest`)."""
        with self.lock:
            self._settle()
            record = self.deployments.get((project, name))
            if not record or not record["manifest"]:
                return None
            return copy.deepcopy(record["manifests"][record["manifest"]])

    def cloud_resources(self, project: str) -> dict[str, dict[str, dict]]:
        with self.lock:
            return copy.deepcopy(self.cloud.get(project, {}))

    def forget_cloud(self, project: str) -> None:
        """Simulates every resource having been deleted behind DM's back."""
        with self.lock:
            self.cloud.pop(project, None)

    # -- request dispatch --------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict, body: dict | None, token: str | None):
        """Returns (status, json body). Raises ApiError for HTTP errors."""
        principal = self._authenticate(token)
        if not path.startswith(API_ROOT):
            raise ApiError(HTTPStatus.NOT_FOUND, "notFound", f"no such API path: {path}")
        parts = path[len(API_ROOT) :].strip("/").split("/")
        if len(parts) < 3 or parts[1] != "global":
            raise ApiError(HTTPStatus.NOT_FOUND, "notFound", f"no such API path: {path}")
        project, collection, rest = parts[0], parts[2], parts[3:]
        with self.lock:
            self._settle()
            if collection == "operations":
                if method == "GET" and len(rest) == 1:
                    return self._operation_get(project, rest[0])
                if method == "GET" and not rest:
                    return self._operation_list(project)
            elif collection == "deployments":
                return self._deployments(method, project, rest, query, body or {}, principal)
        raise ApiError(HTTPStatus.NOT_FOUND, "notFound", f"no such method: {method} {path}")

    def _authenticate(self, token: str | None) -> str:
        if self.verify_token is None:
            return "anonymous@example.com"
        principal = self.verify_token(token) if token else None
        if principal is None:
            raise ApiError(
                HTTPStatus.UNAUTHORIZED,
                "authError",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential.",
            )
        return principal

    def _deployments(self, method, project, rest, query, body, principal):
        if not rest:
            if method == "POST":
                return self._insert(project, query, body, principal)
            if method == "GET":
                return self._list(project)
        elif len(rest) == 1:
            name = rest[0]
            if method == "GET":
                return HTTPStatus.OK, self._view(self._get(project, name))
            if method in ("PUT", "PATCH"):
                return self._update(project, name, query, body, principal)
            if method == "DELETE":
                return self._delete(project, name, query, principal)
        elif len(rest) == 2 and method == "POST" and rest[1] == "cancelPreview":
            return self._cancel_preview(project, rest[0], body, principal)
        elif len(rest) == 2 and method == "POST" and rest[1] == "stop":
            return self._stop(project, rest[0], body, principal)
        elif len(rest) in (2, 3) and method == "GET" and rest[1] == "manifests":
            record = self._get(project, rest[0])
            if len(rest) == 2:
                items = [self._manifest_view(record, m) for m in record["manifests"].values()]
                return HTTPStatus.OK, {"manifests": items}
            manifest = record["manifests"].get(rest[2])
            if manifest is None:
                raise _not_found(
                    f"projects/{project}/global/deployments/{rest[0]}/manifests/{rest[2]}"
                )
            return HTTPStatus.OK, self._manifest_view(record, manifest)
        elif len(rest) in (2, 3) and method == "GET" and rest[1] == "resources":
            record = self._get(project, rest[0])
            resources = self._resource_views(record)
            if len(rest) == 2:
                return HTTPStatus.OK, {"resources": resources} if resources else {}
            for resource in resources:
                if resource["name"] == rest[2]:
                    return HTTPStatus.OK, resource
            raise _not_found(f"projects/{project}/global/deployments/{rest[0]}/resources/{rest[2]}")
        raise ApiError(HTTPStatus.NOT_FOUND, "notFound", f"no such method: {method} {rest}")

    # -- deployments -------------------------------------------------------------------------

    def _get(self, project: str, name: str) -> dict:
        record = self.deployments.get((project, name))
        if record is None:
            raise _not_found(f"projects/{project}/global/deployments/{name}")
        return record

    def _list(self, project: str):
        items = [self._view(r) for (p, _), r in sorted(self.deployments.items()) if p == project]
        return HTTPStatus.OK, {"deployments": items} if items else {}

    def _insert(self, project, query, body, principal):
        name = body.get("name") or ""
        if not DEPLOYMENT_NAME.match(name):
            raise ApiError(
                HTTPStatus.BAD_REQUEST,
                "invalid",
                f"Invalid value for field 'resource.name': '{name}'. Must be a match of regex "
                "'[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?'",
            )
        if (project, name) in self.deployments:
            raise ApiError(
                HTTPStatus.CONFLICT,
                "alreadyExists",
                f"The resource 'projects/{project}/global/deployments/{name}' already exists",
            )
        if not (body.get("target") or {}).get("config"):
            raise ApiError(HTTPStatus.BAD_REQUEST, "required", "target.config is required")
        create_policy = _enum(query, "createPolicy", ("CREATE_OR_ACQUIRE", "ACQUIRE"))
        record = {
            "project": project,
            "name": name,
            "id": str(next(self._ids)),
            "insertTime": _now(),
            "updateTime": None,
            "description": body.get("description"),
            "labels": body.get("labels") or [],
            "fingerprint": _fingerprint(),
            "manifest": None,  # last successfully deployed manifest
            "preview": None,  # manifest name of a pending preview
            "manifests": {},
            "resources": {},  # name -> DM's resource record
            "operation": None,
        }
        self.deployments[(project, name)] = record
        preview = _flag(query, "preview")
        return self._run(
            record,
            "insert",
            principal,
            lambda: self._apply_target(
                record, body["target"], create_policy, "DELETE", preview, principal
            ),
        )

    def _update(self, project, name, query, body, principal):
        record = self._get(project, name)
        self._check_idle(record)
        self._check_fingerprint(record, body.get("fingerprint"))
        create_policy = _enum(query, "createPolicy", ("CREATE_OR_ACQUIRE", "ACQUIRE"))
        delete_policy = _enum(query, "deletePolicy", ("DELETE", "ABANDON"))
        preview = _flag(query, "preview")
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

    def _delete(self, project, name, query, principal):
        record = self._get(project, name)
        self._check_idle(record)
        delete_policy = _enum(query, "deletePolicy", ("DELETE", "ABANDON"))

        def work():
            manifest = record["manifests"].get(record["manifest"]) if record["manifest"] else None
            if manifest is not None:
                names = [r["name"] for r in manifest["_resources"]]
                self._remove(record, names, delete_policy)
            del self.deployments[(project, name)]

        return self._run(record, "delete", principal, work)

    def _cancel_preview(self, project, name, body, principal):
        record = self._get(project, name)
        self._check_idle(record)
        self._check_fingerprint(record, body.get("fingerprint"))
        record["fingerprint"] = _fingerprint()

        def work():
            if record["preview"] is None:
                raise OperationFailed("NO_PREVIEW", f"deployment {name} has no preview to cancel")
            record["manifests"].pop(record["preview"], None)
            record["preview"] = None

        return self._run(record, "cancelPreview", principal, work)

    def _stop(self, project, name, body, principal):
        record = self._get(project, name)
        self._check_fingerprint(record, body.get("fingerprint"))
        record["fingerprint"] = _fingerprint()
        running = record["operation"] and self.operations[(project, record["operation"])]
        if running and running["_done_at"] > time.monotonic():
            # Work is applied when a request arrives, so "stop" can only end the wait early.
            running["_done_at"] = time.monotonic()
            self._settle()
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

    # -- operations --------------------------------------------------------------------------

    def _run(self, record: dict, op_type: str, principal: str, work: Callable[[], Any]):
        """Does the work now; the operation reports DONE after `op_seconds`."""
        project = record["project"]
        millis = int(time.time() * 1000)
        name = f"operation-{millis}-{os.urandom(6).hex()}"
        op = {
            "kind": "deploymentmanager#operation",
            "id": str(next(self._ids)),
            "name": name,
            "operationType": op_type,
            "targetLink": f"{PUBLIC_ROOT}{project}/global/deployments/{record['name']}",
            "targetId": record["id"],
            "user": principal,
            "insertTime": _now(),
            "startTime": _now(),
            "selfLink": f"{PUBLIC_ROOT}{project}/global/operations/{name}",
            "status": "RUNNING",
            "progress": 0,
            "_done_at": time.monotonic() + self.op_seconds,
        }
        try:
            work()
        except OperationFailed as failure:
            op["error"] = {
                "errors": [
                    {
                        "code": failure.code,
                        "location": f"/deployments/{record['name']}",
                        "message": failure.message,
                    }
                ]
            }
            op["httpErrorStatusCode"] = 400
            op["httpErrorMessage"] = "BAD REQUEST"
        self.operations[(project, name)] = op
        record["operation"] = name
        if op_type != "insert":
            record["updateTime"] = _now()
        self._settle()
        return HTTPStatus.OK, _public(op)

    def _settle(self) -> None:
        if self.hold_operations:
            return
        now = time.monotonic()
        for op in self.operations.values():
            if op["status"] != "DONE" and op["_done_at"] <= now:
                op.update(status="DONE", progress=100, endTime=_now())

    def _operation_get(self, project: str, name: str):
        op = self.operations.get((project, name))
        if op is None:
            raise _not_found(f"projects/{project}/global/operations/{name}")
        return HTTPStatus.OK, _public(op)

    def _operation_list(self, project: str):
        items = [_public(o) for (p, _), o in self.operations.items() if p == project]
        return HTTPStatus.OK, {"operations": items} if items else {}

    # -- expansion and the fake cloud --------------------------------------------------------

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
            "insertTime": _now(),
            "config": {"content": content},
            "imports": [{"name": k, "content": v} for k, v in imports.items()],
            "expandedConfig": _dump({"resources": expansion.resources}),
            "_resources": expansion.resources,
            "_order": expansion.creation_order or [r["name"] for r in expansion.resources],
            "_layout": expansion.layout,
            "_outputs": expansion.outputs,
            "_final": {},  # resource name -> finalProperties, once deployed
            "layout": _dump(expansion.layout),
        }

    def _apply_target(
        self, record, target, create_policy, delete_policy, preview, principal
    ) -> None:
        manifest = self._expand(record, target, principal)
        if preview:
            record["manifests"][manifest["name"]] = manifest
            record["preview"] = manifest["name"]
            return
        self._deploy(record, manifest, create_policy, delete_policy)

    def _commit_preview(self, record, create_policy, delete_policy) -> None:
        manifest = record["manifests"][record["preview"]]
        record["preview"] = None
        self._deploy(record, manifest, create_policy, delete_policy)

    def _deploy(self, record, manifest, create_policy, delete_policy) -> None:
        """Brings the cloud to the manifest, all or nothing."""
        project = record["project"]
        cloud = copy.deepcopy(self.cloud.get(project, {}))
        old = record["manifests"].get(record["manifest"]) if record["manifest"] else None
        old_names = {r["name"]: r for r in old["_resources"]} if old else {}
        new = {r["name"]: r for r in manifest["_resources"]}
        # Deletions first, newest-first, as DM removes dependents before what they depend on.
        removed = [n for n in reversed(old["_order"]) if n not in new] if old else []
        for name in removed:
            self._remove_from(cloud, old_names[name], delete_policy)
        final: dict[str, dict] = {}
        for name in manifest["_order"]:
            resource = new[name]
            properties = self._resolve(resource.get("properties") or {}, cloud, final, manifest)
            existing = cloud.get(resource["type"], {}).get(name)
            if existing is None and create_policy == "ACQUIRE":
                raise OperationFailed(
                    "RESOURCE_ERROR",
                    f"{resource['type']} '{name}' does not exist and createPolicy is ACQUIRE",
                )
            actual = self._materialize(project, resource, properties, existing)
            cloud.setdefault(resource["type"], {})[name] = actual
            final[name] = actual
        manifest["_final"] = {n: final[n] for n in manifest["_order"]}
        manifest["layout"] = _dump(self._final_layout(manifest, cloud, final))
        self.cloud[project] = cloud
        record["manifests"][manifest["name"]] = manifest
        record["manifest"] = manifest["name"]
        if record["preview"] and record["preview"] != manifest["name"]:
            # A real update supersedes a pending preview.
            record["manifests"].pop(record["preview"], None)
        record["preview"] = None

    def _remove(self, record: dict, names: list[str], delete_policy: str) -> None:
        project = record["project"]
        cloud = copy.deepcopy(self.cloud.get(project, {}))
        manifest = record["manifests"][record["manifest"]]
        by_name = {r["name"]: r for r in manifest["_resources"]}
        for name in reversed(manifest["_order"]):
            if name in names:
                self._remove_from(cloud, by_name[name], delete_policy)
        self.cloud[project] = cloud

    @staticmethod
    def _remove_from(cloud: dict, resource: dict, delete_policy: str) -> None:
        if delete_policy == "ABANDON":
            return
        actual = cloud.get(resource["type"], {}).get(resource["name"])
        if actual is None:
            return
        if actual.get("deletionProtection"):
            raise OperationFailed(
                "RESOURCE_ERROR",
                f"{resource['type']} '{resource['name']}': Invalid resource usage: 'Resource "
                "cannot be deleted if it's protected against deletion.'",
            )
        del cloud[resource["type"]][resource["name"]]

    def materialize(self, project: str, type_: str, name: str, properties: dict, existing):
        """One resource as Compute Engine holds it once created or updated: server-side id,
        selfLink, timestamp and, for an address, the allocated IP. The Infrastructure Manager
        emulator creates its resources through this too, so both engines share one cloud."""
        with self.lock:
            return self._materialize(project, {"type": type_, "name": name}, properties, existing)

    def _materialize(self, project, resource, properties, existing) -> dict:
        type_, name = resource["type"], resource["name"]
        actual = {**properties, "name": properties.get("name", name)}
        if existing:  # acquired or updated in place: the server-side fields survive
            for key in ("id", "selfLink", "creationTimestamp", "address"):
                if key in existing:
                    actual.setdefault(key, existing[key])
        actual.setdefault("id", str(next(self._ids)))
        actual.setdefault("creationTimestamp", _now())
        scope, collection = COLLECTIONS.get(type_, (None, type_.rsplit(".", 1)[-1].lower() + "s"))
        where = "global"
        if scope == "region":
            where = f"regions/{properties.get('region', 'us-central1')}"
        elif scope == "zone":
            where = f"zones/{properties.get('zone', 'us-central1-a')}"
        actual.setdefault("selfLink", f"{COMPUTE_ROOT}{project}/{where}/{collection}/{name}")
        if type_ in ("compute.v1.address", "compute.v1.globalAddress"):
            actual.setdefault("address", self.address_allocator(project, name, properties))
            actual.setdefault("status", "RESERVED")
        if type_ == "compute.v1.instance":
            actual["status"] = "RUNNING"
        return actual

    def _resolve(self, value: Any, cloud: dict, final: dict, manifest: dict) -> Any:
        if isinstance(value, dict):
            return {k: self._resolve(v, cloud, final, manifest) for k, v in value.items()}
        if isinstance(value, list):
            return [self._resolve(v, cloud, final, manifest) for v in value]
        if not isinstance(value, str) or "$(ref." not in value:
            return value
        whole = REFERENCE.fullmatch(value)
        if whole:  # a lone reference keeps the referenced value's type
            return self._lookup(whole.group(1), whole.group(2), cloud, final, manifest)
        return REFERENCE.sub(
            lambda m: str(self._lookup(m.group(1), m.group(2), cloud, final, manifest)), value
        )

    def _lookup(self, target: str, path: str, cloud: dict, final: dict, manifest: dict) -> Any:
        if target in final:
            found, value = _walk(final[target], path)
            if found:
                return value
        for template in _templates(manifest["_layout"]):
            if template["name"] == target:
                outputs = {o["name"]: o["value"] for o in template.get("outputs") or []}
                head, _, tail = path.partition(".")
                if head in outputs:
                    value = self._resolve(outputs[head], cloud, final, manifest)
                    if not tail:
                        return value
                    found, inner = _walk(value, tail)
                    if found:
                        return inner
        raise OperationFailed(
            "RESOURCE_ERROR", f"$(ref.{target}.{path}): no such resource field or output"
        )

    def _final_layout(self, manifest: dict, cloud: dict, final: dict) -> dict:
        layout = copy.deepcopy(manifest["_layout"])
        for template in _templates(layout):
            for output in template.get("outputs") or []:
                output["finalValue"] = self._resolve(output["value"], cloud, final, manifest)
        if manifest["_outputs"]:
            layout["outputs"] = [
                {**o, "finalValue": self._resolve(o["value"], cloud, final, manifest)}
                for o in manifest["_outputs"]
            ]
        return layout

    # -- views -------------------------------------------------------------------------------

    def _view(self, record: dict) -> dict:
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
            view["operation"] = _public(self.operations[(project, record["operation"])])
        return view

    def _manifest_view(self, record: dict, manifest: dict) -> dict:
        base = f"{PUBLIC_ROOT}{record['project']}/global/deployments/{record['name']}"
        view = {k: v for k, v in manifest.items() if not k.startswith("_")}
        view["selfLink"] = f"{base}/manifests/{manifest['name']}"
        view["manifestSizeBytes"] = str(len(view["expandedConfig"]))
        view["manifestSizeLimitBytes"] = str(50 * 1024 * 1024)
        return view

    def _resource_views(self, record: dict) -> list[dict]:
        base = f"{PUBLIC_ROOT}{record['project']}/global/deployments/{record['name']}"
        live = record["manifests"].get(record["manifest"]) if record["manifest"] else None
        pending = record["manifests"].get(record["preview"]) if record["preview"] else None
        views: dict[str, dict] = {}
        for resource in live["_resources"] if live else []:
            name = resource["name"]
            actual = live["_final"].get(name, {})
            views[name] = {
                "id": actual.get("id", "0"),
                "name": name,
                "type": resource["type"],
                "manifest": f"{base}/manifests/{live['name']}",
                "url": actual.get("selfLink"),
                "properties": _dump(resource.get("properties") or {}),
                "finalProperties": _dump(_without_server_fields(actual)),
                "insertTime": actual.get("creationTimestamp"),
            }
        for resource in pending["_resources"] if pending else []:
            name = resource["name"]
            intent = "UPDATE" if name in views else "CREATE_OR_ACQUIRE"
            view = views.setdefault(
                name, {"id": "0", "name": name, "type": resource["type"], "insertTime": _now()}
            )
            view["update"] = {
                "intent": intent,
                "state": "IN_PREVIEW",
                "manifest": f"{base}/manifests/{pending['name']}",
                "properties": _dump(resource.get("properties") or {}),
            }
        if pending:
            pending_names = {r["name"] for r in pending["_resources"]}
            for name, view in views.items():
                if name not in pending_names:
                    view["update"] = {
                        "intent": "DELETE",
                        "state": "IN_PREVIEW",
                        "manifest": f"{base}/manifests/{pending['name']}",
                    }
        return list(views.values())


def _without_server_fields(actual: dict) -> dict:
    # finalProperties are the config's properties with references filled in, plus what the
    # server allocated that a reference can read (the address); not ids and timestamps.
    return {k: v for k, v in actual.items() if k not in ("id", "creationTimestamp", "selfLink")}


def _templates(layout: dict):
    for resource in layout.get("resources") or []:
        if "resources" in resource:
            yield resource
            yield from _templates(resource)


def _walk(value: Any, path: str) -> tuple[bool, Any]:
    for key, index in PATH_PART.findall(path):
        if key and isinstance(value, dict) and key in value:
            value = value[key]
        elif index and isinstance(value, list) and int(index) < len(value):
            value = value[int(index)]
        else:
            return False, None
    return True, value


def _public(op: dict) -> dict:
    return {k: v for k, v in op.items() if not k.startswith("_")}


def _not_found(what: str) -> ApiError:
    return ApiError(HTTPStatus.NOT_FOUND, "notFound", f"The object '{what}' is not found.")


def _flag(query: dict, name: str) -> bool:
    return (query.get(name) or ["false"])[0].lower() == "true"


def _enum(query: dict, name: str, allowed: tuple[str, ...]) -> str:
    value = (query.get(name) or [allowed[0]])[0]
    if value not in allowed:
        raise ApiError(
            HTTPStatus.BAD_REQUEST,
            "invalidParameter",
            f"Invalid value for {name}: '{value}'; allowed: {', '.join(allowed)}",
        )
    return value


class _Handler(BaseHTTPRequestHandler):
    emulator: DeploymentManagerEmulator
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:
        pass  # tests read `emulator.requests`; stderr stays for real failures

    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        auth = self.headers.get("Authorization") or ""
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        try:
            body = json.loads(raw) if raw.strip() else None
            status, payload = self.emulator.handle(
                self.command, url.path, parse_qs(url.query), body, token
            )
        except ApiError as error:
            status, payload = error.status, error.body()
        except json.JSONDecodeError as error:
            status = HTTPStatus.BAD_REQUEST
            payload = ApiError(status, "parseError", f"Invalid JSON payload: {error}").body()
        with self.emulator.lock:
            self.emulator.requests.append((self.command, url.path, int(status)))
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


DeploymentManagerEmulator.handler = _Handler


def main(argv: list[str] | None = None) -> int:
    """Runs the emulator in the foreground: `python -m emulators.deploymentmanager`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--address", help="the IP every compute.v1.address gets")
    parser.add_argument("--op-seconds", type=float, default=0.0)
    parser.add_argument(
        "--token",
        action="append",
        default=[],
        help="accept this bearer token (repeatable); without any, every request is accepted",
    )
    args = parser.parse_args(argv)
    tokens = set(args.token)

    def verify(token: str) -> str | None:
        return "operator@example.com" if token in tokens else None

    emulator = DeploymentManagerEmulator(
        verify_token=verify if tokens else None,
        address_allocator=(lambda *_: args.address) if args.address else None,
        op_seconds=args.op_seconds,
    )
    print(emulator.serve(port=args.port), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        emulator.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
