"""The HTTP side of the Deployment Manager emulator: routes, authentication, JSON in and out.

It follows the deploymentmanager v2 discovery document for the calls `gcloud deployment-manager`
makes, with the URLs and bodies gcloud 528 sends (checked with `--log-http`):

  deployments: insert (preview, createPolicy), get, list, update (preview, createPolicy,
               deletePolicy; no `target` = commit the pending preview), delete (deletePolicy),
               cancelPreview, stop
  operations:  get (gcloud's waiter polls it about once a second), list
  manifests:   get, list
  resources:   list, get

The same server answers the Compute Engine v1 API (compute.py) under /compute/v1/, over the
same emulated cloud: one process, one state, for `api_endpoint_overrides/deploymentmanager`
(`url`) and `api_endpoint_overrides/compute` (`compute_url`).

Every request must carry `Authorization: Bearer TOKEN` accepted by the injected verifier
(emulators.oauth2 issues the tokens); anything else gets 401. Then the caller's permission for
the method is checked on the project (emulators/iam.py, the policy the bootstrap grants): 403
PERMISSION_DENIED without it, before the deployment is looked up. DM creates the resources as
its own service agent, so the caller needs no compute permission; a call to the Compute Engine
API needs the caller's own (compute.py).
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from emulators.deploymentmanager.cloud import AddressAllocator, Cloud
from emulators.deploymentmanager.compute import API_ROOT as COMPUTE_API_ROOT
from emulators.deploymentmanager.compute import ComputeApi
from emulators.deploymentmanager.errors import ApiError, insufficient_scopes, not_found
from emulators.deploymentmanager.state import Deployments
from emulators.iam import Identity, InsufficientScopes, PermissionDenied, Policy
from emulators.loopback import LoopbackService

API_ROOT = "/deploymentmanager/v2/projects/"

TokenVerifier = Callable[[str], Identity | None]  # bearer token -> who it was issued to


def authenticate(verify_token: TokenVerifier | None, token: str | None) -> Identity | None:
    """The caller, or Google's 401 for a bearer token the verifier does not know; with no
    verifier (Python-level tests of the API's logic) there is no caller and no IAM."""
    if verify_token is None:
        return None
    identity = verify_token(token) if token else None
    if identity is None:
        raise ApiError(
            HTTPStatus.UNAUTHORIZED,
            "authError",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, "
            "login cookie or other valid authentication credential.",
        )
    return identity


def authorize(
    policy: Policy | None,
    identity: Identity | None,
    resource: str,
    method: str | None = None,
    permission: str | None = None,
) -> None:
    """Google's 403 unless the caller may call `method` (or holds `permission`) on `resource`."""
    if identity is None:
        return
    assert policy is not None, "an emulator that verifies tokens needs a policy"
    try:
        if method:
            policy.authorize(identity, method, resource)
        else:
            policy.check_permission(identity, permission, resource)
    except KeyError:
        raise ApiError(HTTPStatus.NOT_FOUND, "notFound", f"no such method: {method}") from None
    except InsufficientScopes as denied:
        raise insufficient_scopes(denied.service) from None
    except PermissionDenied as denied:
        raise ApiError(HTTPStatus.FORBIDDEN, "forbidden", denied.message) from None


def _principal(identity: Identity | None) -> str:
    return identity.principal if identity else "anonymous@example.com"


def dm_method(method: str, collection: str, rest: list[str]) -> str:
    """The v2 method a request calls, as deploymentmanager.COLLECTION.METHOD."""
    if collection == "deployments" and len(rest) >= 2 and rest[1] in ("manifests", "resources"):
        collection, rest = rest[1], rest[2:]
        return f"deploymentmanager.{collection}.{'get' if rest else 'list'}"
    if collection == "deployments" and len(rest) == 2:
        return f"deploymentmanager.deployments.{rest[1]}"
    verb = {
        ("GET", False): "list",
        ("GET", True): "get",
        ("POST", False): "insert",
        ("PUT", True): "update",
        ("PATCH", True): "patch",
        ("DELETE", True): "delete",
    }.get((method, bool(rest)), method.lower())
    return f"deploymentmanager.{collection}.{verb}"


class DeploymentManagerEmulator(LoopbackService):
    """The emulated service: DM's state and its cloud behind the v2 HTTP API."""

    def __init__(
        self,
        verify_token: TokenVerifier | None = None,
        policy: Policy | None = None,
        address_allocator: AddressAllocator | None = None,
        op_seconds: float = 0.0,
        project_number: str = "123456789012",
    ):
        self.verify_token = verify_token
        self.policy = policy
        self.lock = threading.RLock()
        ids = itertools.count(7_000_000_000_000_000_001)
        self.cloud = Cloud(address_allocator, ids)
        self.state = Deployments(self.cloud, op_seconds, project_number, ids)
        self.compute = ComputeApi(self.cloud, ids, policy)
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) for tests

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Starts serving in a background thread; returns the endpoint override URL."""
        super().serve(host, port)
        return self.url

    @property
    def url(self) -> str:
        return self.base_url + "/"

    @property
    def compute_url(self) -> str:
        """The value for gcloud's `api_endpoint_overrides/compute`."""
        return self.base_url + COMPUTE_API_ROOT.removesuffix("projects/")

    # -- inspection helpers for tests and `make up` -----------------------------------------

    @property
    def hold_operations(self) -> bool:
        """While True, operations stay RUNNING: tests hold a deploy mid-flight to race another."""
        return self.state.hold_operations

    @hold_operations.setter
    def hold_operations(self, value: bool) -> None:
        with self.lock:
            self.state.hold_operations = value

    @property
    def operations(self) -> dict[tuple[str, str], dict]:
        return self.state.operations

    def deployment(self, project: str, name: str) -> dict | None:
        with self.lock:
            self.state.settle()
            record = self.state.records.get((project, name))
            return copy.deepcopy(record) if record else None

    def live_manifest(self, project: str, name: str) -> dict | None:
        """The manifest the deployment currently stands on (DM's `deployment.manifest`)."""
        with self.lock:
            self.state.settle()
            record = self.state.records.get((project, name))
            if not record or not record["manifest"]:
                return None
            return copy.deepcopy(record["manifests"][record["manifest"]])

    def cloud_resources(self, project: str) -> dict[str, dict[str, dict]]:
        with self.lock:
            return self.cloud.snapshot(project)

    def materialize(self, project: str, type_: str, name: str, properties: dict, existing):
        """Creates or updates one resource in the emulated cloud; the Infrastructure Manager
        emulator creates its resources through this too, so both engines share one cloud.
        Raises cloud.ComputeError for a body Compute Engine rejects."""
        with self.lock:
            self.cloud.check_body(project, type_, name, properties)
            return self.cloud.store(project, type_, name, properties, existing)

    def forget_cloud(self, project: str) -> None:
        """Simulates every resource having been deleted behind DM's back."""
        with self.lock:
            self.cloud.forget(project)

    def delete_behind_dms_back(self, project: str, type_: str, name: str) -> None:
        """Simulates one resource deleted out of band (console, another tool)."""
        with self.lock:
            self.cloud.remove(project, type_, name)

    # -- request dispatch -------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict, body: dict | None, token: str | None):
        """Returns (status, json body). Raises ApiError for HTTP errors."""
        identity = authenticate(self.verify_token, token)
        if path.startswith(COMPUTE_API_ROOT):
            with self.lock:
                return self.compute.handle(method, path, query, body, identity)
        if not path.startswith(API_ROOT):
            raise ApiError(HTTPStatus.NOT_FOUND, "notFound", f"no such API path: {path}")
        parts = path[len(API_ROOT) :].strip("/").split("/")
        if len(parts) < 3 or parts[1] != "global":
            raise ApiError(HTTPStatus.NOT_FOUND, "notFound", f"no such API path: {path}")
        project, collection, rest = parts[0], parts[2], parts[3:]
        authorize(self.policy, identity, f"projects/{project}", dm_method(method, collection, rest))
        principal = _principal(identity)
        with self.lock:
            self.state.settle()
            if collection == "operations":
                if method == "GET" and len(rest) == 1:
                    return HTTPStatus.OK, self.state.operation(project, rest[0])
                if method == "GET" and not rest:
                    return HTTPStatus.OK, self.state.operation_list(project)
            elif collection == "deployments":
                return self._deployments(method, project, rest, query, body or {}, principal)
        raise ApiError(HTTPStatus.NOT_FOUND, "notFound", f"no such method: {method} {path}")

    def _deployments(self, method, project, rest, query, body, principal):
        state = self.state
        if not rest:
            if method == "POST":
                policy = _enum(query, "createPolicy", ("CREATE_OR_ACQUIRE", "ACQUIRE"))
                return state.insert(project, policy, body, _flag(query, "preview"), principal)
            if method == "GET":
                return HTTPStatus.OK, state.list(project)
        elif len(rest) == 1:
            name = rest[0]
            if method == "GET":
                return HTTPStatus.OK, state.view(state.get(project, name))
            if method in ("PUT", "PATCH"):
                state.get(project, name)  # 404 before any parameter complaint
                return state.update(
                    project,
                    name,
                    body,
                    _enum(query, "createPolicy", ("CREATE_OR_ACQUIRE", "ACQUIRE")),
                    _enum(query, "deletePolicy", ("DELETE", "ABANDON")),
                    _flag(query, "preview"),
                    principal,
                )
            if method == "DELETE":
                state.get(project, name)
                delete_policy = _enum(query, "deletePolicy", ("DELETE", "ABANDON"))
                return state.delete(project, name, delete_policy, principal)
        elif len(rest) == 2 and method == "POST" and rest[1] == "cancelPreview":
            return state.cancel_preview(project, rest[0], body, principal)
        elif len(rest) == 2 and method == "POST" and rest[1] == "stop":
            return state.stop(project, rest[0], body, principal)
        elif len(rest) in (2, 3) and method == "GET" and rest[1] == "manifests":
            record = state.get(project, rest[0])
            if len(rest) == 2:
                items = [state.manifest_view(record, m) for m in record["manifests"].values()]
                return HTTPStatus.OK, {"manifests": items}
            manifest = record["manifests"].get(rest[2])
            if manifest is None:
                raise not_found(
                    f"projects/{project}/global/deployments/{rest[0]}/manifests/{rest[2]}"
                )
            return HTTPStatus.OK, state.manifest_view(record, manifest)
        elif len(rest) in (2, 3) and method == "GET" and rest[1] == "resources":
            resources = state.resource_views(state.get(project, rest[0]))
            if len(rest) == 2:
                return HTTPStatus.OK, {"resources": resources} if resources else {}
            for resource in resources:
                if resource["name"] == rest[2]:
                    return HTTPStatus.OK, resource
            raise not_found(f"projects/{project}/global/deployments/{rest[0]}/resources/{rest[2]}")
        raise ApiError(HTTPStatus.NOT_FOUND, "notFound", f"no such method: {method} {rest}")


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
