"""The Compute Engine v1 REST API over the emulated cloud: what `gcloud compute` and the console
would do to the stack behind Deployment Manager's back.

It serves, under /compute/v1/projects/PROJECT/, the methods of the compute.v1 discovery document
that `gcloud compute` 528 sends for these commands (its surface/compute/*/ sources: a
read-modify-write command GETs the resource, then sends the set* call with the fingerprint it
read):

  firewall-rules  list, describe, create (insert), update (patch), delete
  instances       list (aggregatedList), describe, delete, add-tags/remove-tags (setTags),
                  add-metadata/remove-metadata (setMetadata), update --[no-]deletion-protection
                  (setDeletionProtection), update (update, with the instance fingerprint),
                  add-labels (setLabels), set-machine-type (setMachineType), stop, start
  networks, subnets, addresses  list, describe, delete (addresses: setLabels)
  operations      get and wait, global, regional and zonal: gcloud polls the operation each
                  call returns, then GETs the resource

The state is cloud.Cloud, the one Deployment Manager applies manifests to, so a rule deleted here
stays deleted for DM's next no-op update, as with the real services. Compute Engine's rules
(valid bodies, creation-only fields, stopped-only changes, resources in use) are the cloud's.
What follows the API's documentation:

  * each mutating call answers an Operation (compute#operation) in the resource's scope; a
    refusal Compute Engine reports in the operation (deleting a resource in use) comes back DONE
    with `error.errors[].code` RESOURCE_IN_USE_BY_ANOTHER_RESOURCE and httpErrorStatusCode 400;
  * other refusals are HTTP errors in Google's JSON shape: 400 (invalid field, deletion
    protection), 404 notFound, 409 alreadyExists, 412 conditionNotMet for a fingerprint that
    is not the current one (instances.setTags, setMetadata, setLabels, update: "the request will
    fail if the fingerprint is out of date");
  * GET answers carry what the API adds: kind, full zone/region URLs, the fingerprints
    (tags.fingerprint, metadata.fingerprint, labelFingerprint, the instance's fingerprint),
    an address's status IN_USE and its users, a firewall's default direction and priority.

Permissions: every call is checked first (emulators/iam.py): the token needs one of the
method's OAuth scopes (the discovery document's; compute.readonly reads only), else 403 with
Google's "Request had insufficient authentication scopes." (ACCESS_TOKEN_SCOPE_INSUFFICIENT);
the caller needs each permission Compute Engine documents for the method (iam.yaml `methods:
compute`), on the resource or its project, and each permission Google checks on a resource the
request names on that resource (`referenced`: compute.subnetworks.use and useExternalIp on the
subnetwork a new VM's interface uses, compute.addresses.use on the address holding its natIP,
compute.networks.updatePolicy on a firewall rule's network), else 403 forbidden with Compute
Engine's message, "Required 'PERMISSION' permission for 'RESOURCE'", which gcloud prints. An
interface naming only a network (no subnetwork) gets no network check (compute.networks.use is
not emulated; the stack's VM always names its subnetwork).

Emulator choices: operations are DONE when returned (the work is done in the call); a
fingerprint is a hash of the content it guards, so it changes with every change of that content
(a change back to an earlier content gives the earlier fingerprint again); the server-side list
`filter` is ignored (gcloud filters again on its side); no paging.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from http import HTTPStatus

from emulators.deploymentmanager.cloud import (
    COLLECTIONS,
    COMPUTE_ROOT,
    LINK,
    Cloud,
    ComputeError,
    now,
    operation_name,
    parse_link,
)
from emulators.deploymentmanager.errors import ApiError, insufficient_scopes
from emulators.iam import (
    REFERENCED_PERMISSIONS,
    Identity,
    InsufficientScopes,
    PermissionDenied,
    Policy,
)

API_ROOT = "/compute/v1/projects/"
SCOPES = {None: "global", "region": "regions", "zone": "zones"}
# (scope in the URL, collection) -> the Deployment Manager type the cloud keys resources by.
TYPES = {(SCOPES[scope], collection): t for t, (scope, collection) in COLLECTIONS.items()}
# Fields the server sets; a body that echoes them back (gcloud's update sends what it read)
# does not change them.
SERVER_FIELDS = ("id", "kind", "selfLink", "creationTimestamp", "status", "users", "fingerprint")
ENDPOINT = re.compile(r"^https?://[^/]+/compute/v1/")
FIREWALL_DEFAULTS = {"direction": "INGRESS", "priority": 1000, "disabled": False}


def canonical(value):
    """URLs in a request body as Compute Engine stores them: gcloud builds them from the endpoint
    it talks to (here, loopback), the API answers with https://www.googleapis.com/compute/v1/."""
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    if isinstance(value, str):
        return ENDPOINT.sub(COMPUTE_ROOT.removesuffix("projects/"), value)
    return value


def fingerprint(value: object) -> str:
    digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).digest()
    return base64.urlsafe_b64encode(digest[:8]).decode()


def _error(code: int, reason: str, message: str) -> ApiError:
    return ApiError(HTTPStatus(code), reason, message)


class ComputeApi:
    """Answers Compute Engine v1 requests from `cloud`; the caller holds the state's lock."""

    def __init__(self, cloud: Cloud, ids, policy: Policy | None = None):
        self.cloud = cloud
        self.policy = policy
        self.operations: dict[tuple[str, str], dict] = {}
        self._ids = ids

    def handle(
        self, method: str, path: str, query: dict, body: dict | None, identity: Identity | None
    ):
        """Returns (status, json body). Raises ApiError for HTTP errors."""
        principal = identity.principal if identity else "anonymous@example.com"
        parts = path[len(API_ROOT) :].strip("/").split("/")
        if len(parts) < 3:
            raise _error(404, "notFound", f"no such API path: {path}")
        project = parts[0]
        if parts[1] == "aggregated" and method == "GET":
            self._authorize(identity, f"compute.{parts[2]}.aggregatedList", f"projects/{project}")
            return HTTPStatus.OK, self._aggregated(project, parts[2])
        if parts[1] == "global":
            scope, rest = "global", parts[2:]
        elif parts[1] in ("regions", "zones") and len(parts) >= 4:
            scope, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            raise _error(404, "notFound", f"no such API path: {path}")
        wait = method == "POST" and rest[2:] == ["wait"]
        if rest[0] == "operations" and len(rest) >= 2 and (method == "GET" or wait):
            kind = {"global": "global", "regions": "region", "zones": "zone"}[parts[1]]
            operation = f"compute.{kind}Operations.{'wait' if wait else 'get'}"
            self._authorize(identity, operation, f"projects/{project}/{scope}/operations/{rest[1]}")
            return HTTPStatus.OK, self._operation(project, scope, rest[1])
        collection, rest = rest[0], rest[1:]
        type_ = TYPES.get((scope.split("/")[0], collection))
        if type_ is None:
            raise _error(404, "notFound", f"no such collection: {scope}/{collection}")
        name = rest[0] if rest else (body or {}).get("name")
        where = f"projects/{project}/{scope}/{collection}"
        api = api_method(type_, method, rest)
        stored = self.cloud.get(project, type_, name) if rest else None
        self._authorize(
            identity,
            api,
            f"{where}/{name}" if rest or method == "POST" else f"projects/{project}",
            references(api, {**(stored or {}), **(body or {})}, project, self.cloud.projects),
        )
        call = Call(self, project, scope, collection, type_, principal)
        body = canonical(body)
        try:
            if not rest:
                if method == "GET":
                    return HTTPStatus.OK, call.list()
                if method == "POST":
                    return HTTPStatus.OK, call.insert(body or {})
            elif len(rest) == 1:
                if method == "GET":
                    return HTTPStatus.OK, call.view(rest[0])
                if method == "DELETE":
                    return HTTPStatus.OK, call.delete(rest[0])
                if method in ("PATCH", "PUT"):
                    return HTTPStatus.OK, call.modify(rest[0], body or {}, method == "PUT")
            elif len(rest) == 2 and method == "POST":
                return HTTPStatus.OK, call.action(rest[0], rest[1], query, body or {})
        except ComputeError as refusal:
            raise _error(refusal.code, refusal.reason, refusal.message) from None
        raise _error(404, "notFound", f"no such method: {method} {path}")

    def _authorize(
        self, identity: Identity | None, method: str, resource: str, referenced=()
    ) -> None:
        """Compute Engine's 403 unless the token has a scope `method` accepts and the caller
        holds every permission it needs on `resource` (or its project) and on the `referenced`
        resources; with no verifier there is no caller and no IAM."""
        if identity is None:
            return
        assert self.policy is not None, "an emulator that verifies tokens needs a policy"
        try:
            self.policy.authorize(identity, method, resource, referenced)
        except KeyError:
            raise _error(404, "notFound", f"no such method: {method}") from None
        except InsufficientScopes:
            raise insufficient_scopes("compute", rpc_method(method)) from None
        except PermissionDenied as denied:
            message = f"Required '{denied.permission}' permission for '{denied.resource}'"
            raise _error(403, "forbidden", message) from None

    def _aggregated(self, project: str, collection: str) -> dict:
        items: dict[str, dict] = {}
        for (scope_kind, name), type_ in TYPES.items():
            if name != collection or scope_kind == "global":
                continue
            for resource in self.cloud.projects.get(project, {}).get(type_, {}).values():
                scope = scope_of(type_, resource)
                items.setdefault(scope, {collection: []})[collection].append(
                    view(self.cloud, project, type_, resource)
                )
        return {"kind": f"compute#{collection}AggregatedList", "id": project, "items": items}

    def _operation(self, project: str, scope: str, name: str) -> dict:
        op = self.operations.get((project, name))
        if op is None:
            link = f"projects/{project}/{scope}/operations/{name}"
            raise _error(404, "notFound", f"The resource '{link}' was not found")
        return op

    def record(self, project, scope, op_type, target, principal, refusal=None) -> dict:
        name = operation_name()
        moment = now()
        op = {
            "kind": "compute#operation",
            "id": str(next(self._ids)),
            "name": name,
            "selfLink": f"{COMPUTE_ROOT}{project}/{scope}/operations/{name}",
            "operationType": op_type,
            "targetLink": target.get("selfLink", ""),
            "targetId": target.get("id", "0"),
            "user": principal,
            "status": "DONE",
            "progress": 100,
            "insertTime": moment,
            "startTime": moment,
            "endTime": moment,
        }
        if scope != "global":
            op[scope.split("/")[0][:-1]] = f"{COMPUTE_ROOT}{project}/{scope}"
        if refusal is not None:
            op["error"] = {"errors": [{"code": _code(refusal.reason), "message": refusal.message}]}
            op["httpErrorStatusCode"] = refusal.code
            op["httpErrorMessage"] = HTTPStatus(refusal.code).phrase.upper()
        self.operations[(project, name)] = op
        return copy.deepcopy(op)


def _code(reason: str) -> str:
    """resourceInUseByAnotherResource -> RESOURCE_IN_USE_BY_ANOTHER_RESOURCE."""
    return "".join(f"_{c}" if c.isupper() else c.upper() for c in reason)


class Call:
    """One request on one collection: the resource's type and where the URL put it."""

    def __init__(self, api: ComputeApi, project, scope, collection, type_, principal):
        self.api = api
        self.cloud = api.cloud
        self.project = project
        self.scope = scope
        self.collection = collection
        self.type_ = type_
        self.principal = principal

    def _resources(self) -> dict[str, dict]:
        return self.cloud.projects.get(self.project, {}).get(self.type_, {})

    def get(self, name: str) -> dict:
        resource = self._resources().get(name)
        if resource is None or scope_of(self.type_, resource) != self.scope:
            link = f"projects/{self.project}/{self.scope}/{self.collection}/{name}"
            raise ComputeError(404, "notFound", f"The resource '{link}' was not found")
        return resource

    def list(self) -> dict:
        items = [
            view(self.cloud, self.project, self.type_, r)
            for r in self._resources().values()
            if scope_of(self.type_, r) == self.scope
        ]
        base = f"{COMPUTE_ROOT}{self.project}/{self.scope}/{self.collection}"
        kind = f"compute#{self.type_.rsplit('.', 1)[-1].removeprefix('global').lower()}List"
        return {"kind": kind, "id": base, "items": items, "selfLink": base}

    def view(self, name: str) -> dict:
        return view(self.cloud, self.project, self.type_, self.get(name))

    def done(self, op_type: str, resource: dict, refusal: ComputeError | None = None) -> dict:
        return self.api.record(self.project, self.scope, op_type, resource, self.principal, refusal)

    def insert(self, body: dict) -> dict:
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise ComputeError(400, "required", "Required field 'resource.name' not specified")
        if name in self._resources():
            link = f"projects/{self.project}/{self.scope}/{self.collection}/{name}"
            raise ComputeError(409, "alreadyExists", f"The resource '{link}' already exists")
        properties = {k: v for k, v in body.items() if k not in SERVER_FIELDS}
        where = COLLECTIONS[self.type_][0]
        if where:
            properties[where] = self.scope.split("/")[1]
        self.cloud.check_body(self.project, self.type_, name, properties)
        self._check_references(properties)
        return self.done("insert", self._store(name, properties, None))

    def _check_references(self, properties: dict) -> None:
        """The network a firewall rule or subnetwork names must exist, as Compute Engine
        checks on insert."""
        parsed = parse_link(properties.get("network"))
        if parsed and self.cloud.get(parsed[0], "compute.v1.network", parsed[2]) is None:
            link = f"projects/{parsed[0]}/global/networks/{parsed[2]}"
            raise ComputeError(404, "notFound", f"The resource '{link}' was not found")

    def delete(self, name: str) -> dict:
        resource = self.get(name)
        try:
            self.cloud.check_delete(self.project, self.type_, name)
        except ComputeError as refusal:
            if not refusal.in_operation:
                raise
            return self.done("delete", resource, refusal)
        self.cloud.remove(self.project, self.type_, name)
        return self.done("delete", resource)

    def modify(self, name: str, body: dict, replace: bool) -> dict:
        """patch (JSON merge of the top-level fields) or update (the whole resource)."""
        existing = self.get(name)
        if replace and self.type_ == "compute.v1.instance":
            self._check_fingerprint(body.get("fingerprint"), _instance_fingerprint(existing), "")
        current = _settable(existing)
        sent = {k: v for k, v in body.items() if k not in SERVER_FIELDS}
        if self.type_ == "compute.v1.instance":
            for part in ("tags", "metadata"):
                if isinstance(sent.get(part), dict):
                    sent[part] = {k: v for k, v in sent[part].items() if k != "fingerprint"}
            sent.pop("labelFingerprint", None)
        where = COLLECTIONS[self.type_][0]
        if where and isinstance(sent.get(where), str):
            sent[where] = sent[where].rsplit("/", 1)[-1]  # the view's URL, sent back
        wanted = {**({"name": name} if replace else current), **sent}
        if where:
            wanted.setdefault(where, current.get(where))
        changed = [f for f in wanted.keys() | current.keys() if wanted.get(f) != current.get(f)]
        self.cloud.check_change(self.project, self.type_, name, existing, wanted, changed)
        return self.done("update" if replace else "patch", self._store(name, wanted, existing))

    def _store(self, name: str, properties: dict, existing: dict) -> dict:
        return self.cloud.store(self.project, self.type_, name, properties, existing)

    def _check_fingerprint(self, sent, current: str, what: str) -> None:
        if sent != current:
            raise ComputeError(
                412,
                "conditionNotMet",
                f"Supplied fingerprint does not match current {what}fingerprint.",
            )

    def action(self, name: str, verb: str, query: dict, body: dict) -> dict:
        existing = self.get(name)
        properties = _settable(existing)
        if verb == "setLabels":
            current = fingerprint(existing.get("labels") or {})
            self._check_fingerprint(body.get("labelFingerprint"), current, "label ")
            properties["labels"] = body.get("labels") or {}
        elif self.type_ != "compute.v1.instance":
            raise ComputeError(404, "notFound", f"no such method: {self.collection}.{verb}")
        elif verb in ("setTags", "setMetadata"):
            part = "tags" if verb == "setTags" else "metadata"
            current = fingerprint((existing.get(part) or {}).get("items") or [])
            self._check_fingerprint(body.get("fingerprint"), current, f"{part} ")
            properties[part] = {"items": body.get("items") or []}
            self.cloud.check_body(self.project, self.type_, name, properties)
        elif verb == "setDeletionProtection":
            flag = (query.get("deletionProtection") or ["true"])[0].lower() == "true"
            properties["deletionProtection"] = flag
        elif verb == "setMachineType":
            properties["machineType"] = body.get("machineType")
            self.cloud.check_change(
                self.project, self.type_, name, existing, properties, ["machineType"]
            )
        elif verb in ("stop", "start"):
            status = "TERMINATED" if verb == "stop" else "RUNNING"
            stored = {**existing, "status": status}
            self.cloud.put(self.project, self.type_, name, stored)
            return self.done(verb, stored)
        else:
            raise ComputeError(404, "notFound", f"no such method: instances.{verb}")
        return self.done(verb, self._store(name, properties, existing))


def api_method(type_: str, method: str, rest: list[str]) -> str:
    """The compute.v1 method a request on a collection calls, as compute.COLLECTION.METHOD
    (global addresses are their own collection in the API: globalAddresses)."""
    collection = type_.rsplit(".", 1)[-1]
    collection += "es" if collection.endswith("ss") else "s"
    if len(rest) == 2:
        return f"compute.{collection}.{rest[1]}"
    verb = {
        ("GET", False): "list",
        ("POST", False): "insert",
        ("GET", True): "get",
        ("DELETE", True): "delete",
        ("PATCH", True): "patch",
        ("PUT", True): "update",
    }.get((method, bool(rest)), method.lower())
    return f"compute.{collection}.{verb}"


def rpc_method(method: str) -> str:
    """compute.instances.insert -> compute.v1.InstancesService.Insert, as Compute Engine names
    the method in an ErrorInfo (its answer for zones.list names compute.v1.ZonesService.List)."""
    _, collection, verb = method.split(".")
    return f"compute.v1.{collection[0].upper()}{collection[1:]}Service.{verb[0].upper()}{verb[1:]}"


def references(method: str, body: dict, project: str, projects: dict) -> list[tuple[str, str]]:
    """(reference, IAM resource name) for each resource `body` names that `method` needs a
    permission on (iam.yaml `referenced`). `projects` is project -> type -> name -> resource,
    where an access config's natIP is looked up; a link not known yet (a plan's "known after
    apply") or an IP no address holds is checked on the project, the only place a grant on
    something not yet created can be."""
    kinds = REFERENCED_PERMISSIONS.get(method, {})
    found = []
    if "network" in kinds and body.get("network"):
        found.append(("network", _iam_name(body["network"], project)))
    for nic in body.get("networkInterfaces") or []:
        if not nic.get("subnetwork"):
            continue
        subnet = _iam_name(nic["subnetwork"], project)
        if "subnetwork" in kinds:
            found.append(("subnetwork", subnet))
        for config in nic.get("accessConfigs") or []:
            if "external IP" in kinds:
                found.append(("external IP", subnet))
            if "address" in kinds and config.get("natIP"):
                found.append(("address", _address_of(config["natIP"], project, projects)))
    return found


def _iam_name(link: str, project: str) -> str:
    match = LINK.search(link) if isinstance(link, str) else None
    return match.group(0).lstrip("/") if match else f"projects/{project}"


def _address_of(ip: str, project: str, projects: dict) -> str:
    for type_ in ("compute.v1.address", "compute.v1.globalAddress"):
        for address in projects.get(project, {}).get(type_, {}).values():
            if address.get("address") == ip:
                where = scope_of(type_, address)
                return f"projects/{project}/{where}/addresses/{address['name']}"
    return f"projects/{project}"


def scope_of(type_: str, resource: dict) -> str:
    """Where the resource's URL puts it: global, regions/REGION or zones/ZONE."""
    where = COLLECTIONS[type_][0]
    if where is None:
        return "global"
    return f"{SCOPES[where]}/{str(resource.get(where, '')).rsplit('/', 1)[-1]}"


def _settable(resource: dict) -> dict:
    return {k: copy.deepcopy(v) for k, v in resource.items() if k not in SERVER_FIELDS}


def _instance_fingerprint(resource: dict) -> str:
    return fingerprint({k: v for k, v in resource.items() if k != "status"})


def view(cloud: Cloud, project: str, type_: str, resource: dict) -> dict:
    """The resource as a Compute Engine GET answers it."""
    shown = copy.deepcopy(resource)
    kind = type_.rsplit(".", 1)[-1].removeprefix("global").lower()
    shown["kind"] = f"compute#{kind}"
    for where, plural in (("zone", "zones"), ("region", "regions")):
        if isinstance(shown.get(where), str) and "/" not in shown[where]:
            shown[where] = f"{COMPUTE_ROOT}{project}/{plural}/{shown[where]}"
    if type_ == "compute.v1.firewall":
        shown = {**FIREWALL_DEFAULTS, **shown}
    if type_ in ("compute.v1.address", "compute.v1.globalAddress"):
        users = [u["selfLink"] for u in cloud.users(project, type_, resource["name"])]
        shown["status"] = "IN_USE" if users else "RESERVED"
        if users:
            shown["users"] = users
    if type_ in ("compute.v1.address", "compute.v1.instance"):
        shown["labelFingerprint"] = fingerprint(resource.get("labels") or {})
    if type_ == "compute.v1.instance":
        for nic in shown.get("networkInterfaces") or []:
            subnet = parse_link(nic.get("subnetwork"))
            held = cloud.get(subnet[0], "compute.v1.subnetwork", subnet[2]) if subnet else None
            if held and "network" not in nic:
                nic["network"] = held.get("network")  # the API fills it from the subnetwork
        for part in ("tags", "metadata"):
            items = (resource.get(part) or {}).get("items") or []
            shown[part] = {**(shown.get(part) or {}), "fingerprint": fingerprint(items)}
        shown["fingerprint"] = _instance_fingerprint(resource)
    return shown
