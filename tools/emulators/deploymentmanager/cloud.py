"""The emulated cloud: the Compute Engine resources that exist, and Compute Engine's rules.

Deployment Manager turns each resource of a manifest into Compute Engine calls, and the Compute
Engine REST API emulator (compute.py) takes the calls `gcloud compute` makes; both land here, on
one state, so a firewall rule deleted through the Compute API stays deleted for DM. The rules,
each from the Compute Engine v1 API (the discovery document google-api-python-client ships, read
by dmlocal) or its documentation:

  * every body is checked against the discovery document before it is stored (unknown fields,
    JSON types, enums: dmlocal.compute_api) and against the values the API documents in prose
    (protocols, ports 0-65535, priorities, CIDRs: dmlocal.checks); an error answers 400;
  * a field the API sets only at creation (the insert URL's zone/region, "This field can be set
    only at resource creation time", a collection with no update method) cannot change on a
    live resource: dmlocal.replacement.replacement_reason;
  * a field the API changes only on a stopped instance (instances.setMachineType "for a stopped
    instance", setScheduling, ...) cannot change while the instance is RUNNING:
    dmlocal.replacement.stop_reason;
  * a resource in use cannot be deleted: a network that firewall rules, subnetworks or instances
    use, a subnetwork an instance uses, an address an instance holds ("The network resource '...'
    is already being used by '...'", as Compute Engine answers), an instance with
    `deletionProtection: true` ("Invalid resource usage: 'Resource cannot be deleted if it's
    protected against deletion.'", reason invalidResourceUsage);
  * updating a resource that no longer exists (deleted behind DM's back) fails with 404
    (emulator choice: DM's documentation does not say it recreates it, so the stricter one).

Every change calls each of `listeners(project, type, name, before, after)` (before/after None
for a create/delete), with the state's lock held: the local VM tooling follows the instance
(deleted, created, its metadata changed) through this hook.

Other services' objects follow their own rules, in a module per service (SERVICES below).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from dmlocal.checks import semantic_checks
from dmlocal.compute_api import check_resource
from dmlocal.replacement import replacement_reason, stop_reason
from emulators import monitoring
from emulators.deploymentmanager.errors import OperationFailed

COMPUTE_ROOT = "https://www.googleapis.com/compute/v1/projects/"
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
LINK = re.compile(
    r"(?:^|/)projects/([^/]+)/(global|regions/[^/]+|zones/[^/]+)/([a-zA-Z]+)/([^/]+)$"
)

AddressAllocator = Callable[[str, str, dict], str]
Listener = Callable[[str, str, str, dict | None, dict | None], None]

# type -> the module holding that service's rules: check(type, properties, project objects),
# stored(project, type, properties, existing, new_id), check_delete(type, object, project
# objects), each refusing with its Refused exception (a 400 from the service).
SERVICES = dict.fromkeys(monitoring.TYPES, monitoring)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def operation_name() -> str:
    """A new operation's name, in the form both APIs use: operation-MILLIS-RANDOM."""
    return f"operation-{int(time.time() * 1000)}-{os.urandom(6).hex()}"


class TestNetAddresses:
    """The default allocator: 203.0.113.10, .11, ... (TEST-NET-3, never routed)."""

    def __init__(self, first: int = 10):
        self._next = itertools.count(first)

    def __call__(self, project: str, name: str, properties: dict) -> str:
        return f"203.0.113.{next(self._next) % 256}"


class ComputeError(Exception):
    """Compute Engine's refusal: an HTTP status, Google's error reason, its message.

    `in_operation` marks refusals Compute Engine reports in the DONE operation rather than as
    the HTTP answer (a delete of a resource in use: "Error waiting for Deleting Network: The
    network resource ... is already being used by ...").
    """

    def __init__(self, code: int, reason: str, message: str, in_operation: bool = False):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.in_operation = in_operation


def resource_error(type_: str, name: str, code: int, message: str) -> OperationFailed:
    # DM wraps the API's answer as JSON in a RESOURCE_ERROR located at the resource.
    detail = {
        "ResourceType": type_,
        "ResourceErrorCode": str(code),
        "ResourceErrorMessage": message,
    }
    return OperationFailed("RESOURCE_ERROR", json.dumps(detail), resource=name)


def parse_link(link: object) -> tuple[str, str, str] | None:
    """(project, collection, name) of a Compute Engine URL, full or partial; None otherwise."""
    match = LINK.search(link) if isinstance(link, str) else None
    return (match.group(1), match.group(3), match.group(4)) if match else None


def invalid_body(type_: str, name: str, properties: dict) -> ComputeError | None:
    """The API's 400 for a body it rejects, naming every bad field; None when it is valid."""
    resource = {"type": type_, "name": name, "properties": properties}
    findings = check_resource(resource, "request") + semantic_checks([resource])
    errors = [f for f in findings if f.severity == "error"]
    if not errors:
        return None
    message = "; ".join(
        f"Invalid value for field 'resource.{f.field}': {f.message}" for f in errors
    )
    return ComputeError(400, "invalid", message)


class Cloud:
    """project -> resource type -> name -> the resource as Compute Engine holds it."""

    def __init__(self, address_allocator: AddressAllocator | None = None, ids=None):
        self.address_allocator = address_allocator or TestNetAddresses()
        self.projects: dict[str, dict[str, dict[str, dict]]] = {}
        self.listeners: list[Listener] = []
        self._ids = ids or itertools.count(8_000_000_000_000_000_001)

    def get(self, project: str, type_: str, name: str) -> dict | None:
        return self.projects.get(project, {}).get(type_, {}).get(name)

    def snapshot(self, project: str) -> dict[str, dict[str, dict]]:
        return copy.deepcopy(self.projects.get(project, {}))

    def forget(self, project: str) -> None:
        for type_, resources in list(self.projects.get(project, {}).items()):
            for name in list(resources):
                self.remove(project, type_, name)
        self.projects.pop(project, None)

    # -- what Deployment Manager calls: refusals come back as DM resource errors ---------------

    def create_or_acquire(self, project: str, type_: str, name: str, properties: dict, policy: str):
        existing = self.get(project, type_, name)
        if existing is None and policy == "ACQUIRE":
            raise resource_error(
                type_, name, 404, f"'{name}' does not exist and createPolicy is ACQUIRE"
            )
        with _as_resource_error(type_, name):
            if existing is None:
                self.check_body(project, type_, name, properties)
        return self.store(project, type_, name, properties, existing)

    def update(self, project: str, type_: str, name: str, applied: dict, properties: dict):
        """Updates a live resource in place; `applied` is what DM last set on it."""
        with _as_resource_error(type_, name):
            existing = self.require(project, type_, name, applied)
            changed = [f for f in applied.keys() | properties.keys() if f not in ("name",)]
            changed = [f for f in changed if applied.get(f) != properties.get(f)]
            self.check_change(project, type_, name, existing, properties, changed)
        return self.store(project, type_, name, properties, existing)

    def delete(self, project: str, type_: str, name: str, policy: str) -> None:
        if policy == "ABANDON" or self.get(project, type_, name) is None:
            return  # abandoned, or already gone: nothing to delete
        with _as_resource_error(type_, name):
            self.check_delete(project, type_, name)
        self.remove(project, type_, name)

    # -- Compute Engine's rules, shared by DM and the Compute API ------------------------------

    def require(self, project: str, type_: str, name: str, properties: dict) -> dict:
        existing = self.get(project, type_, name)
        if existing is None:
            link = self.self_link(project, type_, name, properties).removeprefix(COMPUTE_ROOT)
            raise ComputeError(404, "notFound", f"The resource 'projects/{link}' was not found")
        return existing

    def check_body(self, project: str, type_: str, name: str, properties: dict) -> None:
        error = invalid_body(type_, name, properties)
        if error:
            raise error

    def check_change(self, project, type_, name, existing, properties, fields) -> None:
        """Refuses a change Compute Engine cannot make on the live resource as it is now."""
        self.check_body(project, type_, name, properties)
        # A field that needs a new resource is the first thing wrong with the change: stopping
        # the instance would not help.
        for field in sorted(fields):
            reason = replacement_reason(type_, field)
            if reason:
                raise ComputeError(
                    400,
                    "invalid",
                    f"Invalid value for field 'resource.{field}': "
                    f"{json.dumps(properties.get(field))}. It cannot be changed on an existing "
                    f"resource ({reason}). Create a new resource under a new name instead.",
                )
        for field in sorted(fields):
            reason = stop_reason(type_, field)
            if reason and existing.get("status", "RUNNING") != "TERMINATED":
                raise ComputeError(
                    400,
                    "invalidResourceUsage",
                    f"Invalid resource usage: 'The instance must be stopped to change {field}' "
                    f"({reason}); it is {existing.get('status', 'RUNNING')}.",
                )

    def check_delete(self, project: str, type_: str, name: str) -> None:
        resource = self.get(project, type_, name) or {}
        if type_ in SERVICES:
            objects = self.projects.get(project, {})
            self._service(type_, name, "check_delete", type_, resource, objects)
        if resource.get("deletionProtection"):
            raise ComputeError(
                400,
                "invalidResourceUsage",
                "Invalid resource usage: 'Resource cannot be deleted if it's protected against "
                "deletion.'",
            )
        for user in self.users(project, type_, name):
            kind = type_.rsplit(".", 1)[-1].removeprefix("global").lower()
            own = self.self_link(project, type_, name, resource).removeprefix(COMPUTE_ROOT)
            theirs = user["selfLink"].removeprefix(COMPUTE_ROOT)
            raise ComputeError(
                400,
                "resourceInUseByAnotherResource",
                f"The {kind} resource 'projects/{own}' is already being used by "
                f"'projects/{theirs}'",
                in_operation=True,
            )

    def users(self, project: str, type_: str, name: str) -> Iterator[dict]:
        """The resources that use this one, the way Compute Engine tracks them."""
        target = self.get(project, type_, name) or {}
        collection = COLLECTIONS.get(type_, (None, ""))[1]
        ip = target.get("address") if collection == "addresses" else None

        def names_this(link: object) -> bool:
            parsed = parse_link(link)
            return parsed is not None and parsed[1:] == (collection, name)

        for user_type, resources in self.projects.get(project, {}).items():
            for user in resources.values():
                if user_type in ("compute.v1.firewall", "compute.v1.subnetwork"):
                    links = [user.get("network")]
                    ips = []
                elif user_type == "compute.v1.instance":
                    nics = user.get("networkInterfaces") or []
                    links = [n.get(k) for n in nics for k in ("network", "subnetwork")]
                    ips = [c.get("natIP") for n in nics for c in n.get("accessConfigs") or []]
                else:
                    continue
                if any(names_this(link) for link in links) or (ip and ip in ips):
                    yield user

    # -- storage ------------------------------------------------------------------------------

    def store(self, project, type_, name, properties, existing) -> dict:
        """The resource as Compute Engine holds it once created or updated: server-side id,
        selfLink, timestamp and, for an address, the allocated IP."""
        if type_ in SERVICES:
            objects = self.projects.get(project, {})
            self._service(type_, name, "check", type_, properties, objects)
            actual = SERVICES[type_].stored(
                project, type_, properties, existing, lambda: next(self._ids)
            )
            self.put(project, type_, name, actual)
            return copy.deepcopy(actual)
        actual = {**properties, "name": properties.get("name", name)}
        if existing:  # acquired or updated in place: the server-side fields survive
            for key in ("id", "selfLink", "creationTimestamp", "address", "status"):
                if key in existing:
                    actual.setdefault(key, existing[key])
        actual.setdefault("id", str(next(self._ids)))
        actual.setdefault("creationTimestamp", now())
        actual.setdefault("selfLink", self.self_link(project, type_, name, properties))
        if type_ in ("compute.v1.address", "compute.v1.globalAddress"):
            actual.setdefault("address", self.address_allocator(project, name, properties))
            actual.setdefault("status", "RESERVED")
        if type_ == "compute.v1.instance":
            actual.setdefault("status", "RUNNING")
        self.put(project, type_, name, actual)
        return copy.deepcopy(actual)

    def replace(self, project: str, resources: dict[str, dict[str, dict]]) -> None:
        """Makes `project` hold exactly `resources` (type -> name -> resource), as an engine that
        planned on a copy commits it; the listeners hear each resource that changed."""
        old = self.projects.get(project, {})
        self.projects[project] = resources
        for type_ in sorted(old.keys() | resources.keys()):
            before, after = old.get(type_, {}), resources.get(type_, {})
            for name in sorted(before.keys() | after.keys()):
                if before.get(name) != after.get(name):
                    self._notify(project, type_, name, before.get(name), after.get(name))

    def put(self, project: str, type_: str, name: str, resource: dict) -> None:
        before = self.get(project, type_, name)
        self.projects.setdefault(project, {}).setdefault(type_, {})[name] = resource
        self._notify(project, type_, name, before, resource)

    def remove(self, project: str, type_: str, name: str) -> None:
        before = self.projects[project][type_].pop(name)
        self._notify(project, type_, name, before, None)

    def _notify(self, project, type_, name, before, after) -> None:
        for listener in self.listeners:
            listener(project, type_, name, copy.deepcopy(before), copy.deepcopy(after))

    @staticmethod
    def _service(type_: str, name: str, rule: str, *args) -> None:
        """Applies one of the type's service rules; a refusal is that service's 400."""
        service = SERVICES[type_]
        try:
            getattr(service, rule)(*args)
        except service.Refused as refused:
            raise resource_error(type_, name, 400, str(refused)) from None

    @staticmethod
    def self_link(project: str, type_: str, name: str, properties: dict) -> str:
        scope, collection = COLLECTIONS.get(type_, (None, type_.rsplit(".", 1)[-1].lower() + "s"))
        where = "global"
        if scope == "region":
            where = f"regions/{properties.get('region', 'us-central1')}"
        elif scope == "zone":
            where = f"zones/{properties.get('zone', 'us-central1-a')}"
        return f"{COMPUTE_ROOT}{project}/{where}/{collection}/{name}"


@contextlib.contextmanager
def _as_resource_error(type_: str, name: str) -> Iterator[None]:
    """Turns Compute Engine's refusal into the resource error DM reports for it."""
    try:
        yield
    except ComputeError as error:
        raise resource_error(type_, name, error.code, error.message) from None
