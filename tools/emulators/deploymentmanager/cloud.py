"""The emulated cloud behind Deployment Manager: the Compute Engine resources that exist.

DM turns each resource of a manifest into Compute Engine calls; this is the far side of those
calls, just strict enough for what deploys here: a resource is created, acquired, updated in
place, or deleted, and Compute Engine's refusals come back as DM resource errors:

  * updating a resource that no longer exists (deleted behind DM's back) fails: DM updates it
    through the API, which answers 404 (emulator choice: DM's documentation does not say it
    recreates it, so the stricter behaviour);
  * a change the Compute Engine API cannot make on a live resource (dmlocal.replacement reads
    which ones from the API's discovery document: a zone, a subnet's ipCidrRange, ...) fails;
  * deleting an instance with `deletionProtection: true` fails, as Compute Engine refuses it.

Other services' objects follow their own rules, in a module per service (SERVICES below).
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime

from dmlocal.replacement import replacement_reason
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

AddressAllocator = Callable[[str, str, dict], str]

# type -> the module holding that service's rules: check(type, properties, project objects),
# stored(project, type, properties, existing, new_id), check_delete(type, object, project
# objects), each refusing with its Refused exception (a 400 from the service).
SERVICES = dict.fromkeys(monitoring.TYPES, monitoring)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TestNetAddresses:
    """The default allocator: 203.0.113.10, .11, ... (TEST-NET-3, never routed)."""

    def __init__(self, first: int = 10):
        self._next = itertools.count(first)

    def __call__(self, project: str, name: str, properties: dict) -> str:
        return f"203.0.113.{next(self._next) % 256}"


def resource_error(type_: str, name: str, code: int, message: str) -> OperationFailed:
    # DM wraps the API's answer as JSON in a RESOURCE_ERROR located at the resource.
    detail = {
        "ResourceType": type_,
        "ResourceErrorCode": str(code),
        "ResourceErrorMessage": message,
    }
    return OperationFailed("RESOURCE_ERROR", json.dumps(detail), resource=name)


class Cloud:
    """project -> resource type -> name -> the resource as Compute Engine holds it."""

    def __init__(self, address_allocator: AddressAllocator | None = None, ids=None):
        self.address_allocator = address_allocator or TestNetAddresses()
        self.projects: dict[str, dict[str, dict[str, dict]]] = {}
        self._ids = ids or itertools.count(8_000_000_000_000_000_001)

    def get(self, project: str, type_: str, name: str) -> dict | None:
        return self.projects.get(project, {}).get(type_, {}).get(name)

    def snapshot(self, project: str) -> dict[str, dict[str, dict]]:
        return copy.deepcopy(self.projects.get(project, {}))

    def forget(self, project: str) -> None:
        self.projects.pop(project, None)

    def create_or_acquire(self, project: str, type_: str, name: str, properties: dict, policy: str):
        existing = self.get(project, type_, name)
        if existing is None and policy == "ACQUIRE":
            raise resource_error(
                type_, name, 404, f"'{name}' does not exist and createPolicy is ACQUIRE"
            )
        return self.store(project, type_, name, properties, existing)

    def update(self, project: str, type_: str, name: str, applied: dict, properties: dict):
        """Updates a live resource in place; `applied` is what DM last set on it."""
        existing = self.get(project, type_, name)
        if existing is None:
            link = self._self_link(project, type_, name, applied)
            raise resource_error(type_, name, 404, f"The resource '{link}' was not found")
        for field in sorted(applied.keys() | properties.keys()):
            if applied.get(field) == properties.get(field):
                continue
            reason = replacement_reason(type_, field)
            if reason:
                raise resource_error(
                    type_,
                    name,
                    400,
                    f"Invalid value for field 'resource.{field}': "
                    f"{json.dumps(properties.get(field))}. It cannot be changed on an existing "
                    f"resource ({reason}). Create a new resource under a new name instead.",
                )
        return self.store(project, type_, name, properties, existing)

    def delete(self, project: str, type_: str, name: str, policy: str) -> None:
        if policy == "ABANDON":
            return
        actual = self.get(project, type_, name)
        if actual is None:
            return  # already gone: nothing to delete
        if type_ in SERVICES:
            objects = self.projects.get(project, {})
            self._service(type_, name, "check_delete", type_, actual, objects)
        if actual.get("deletionProtection"):
            raise resource_error(
                type_,
                name,
                400,
                "Invalid resource usage: 'Resource cannot be deleted if it's protected against "
                "deletion.'",
            )
        del self.projects[project][type_][name]

    def store(self, project, type_, name, properties, existing) -> dict:
        """The resource as Compute Engine holds it once created or updated: server-side id,
        selfLink, timestamp and, for an address, the allocated IP."""
        if type_ in SERVICES:
            objects = self.projects.get(project, {})
            self._service(type_, name, "check", type_, properties, objects)
            actual = SERVICES[type_].stored(
                project, type_, properties, existing, lambda: next(self._ids)
            )
            self.projects.setdefault(project, {}).setdefault(type_, {})[name] = actual
            return copy.deepcopy(actual)
        actual = {**properties, "name": properties.get("name", name)}
        if existing:  # acquired or updated in place: the server-side fields survive
            for key in ("id", "selfLink", "creationTimestamp", "address"):
                if key in existing:
                    actual.setdefault(key, existing[key])
        actual.setdefault("id", str(next(self._ids)))
        actual.setdefault("creationTimestamp", now())
        actual.setdefault("selfLink", self._self_link(project, type_, name, properties))
        if type_ in ("compute.v1.address", "compute.v1.globalAddress"):
            actual.setdefault("address", self.address_allocator(project, name, properties))
            actual.setdefault("status", "RESERVED")
        if type_ == "compute.v1.instance":
            actual["status"] = "RUNNING"
        self.projects.setdefault(project, {}).setdefault(type_, {})[name] = actual
        return copy.deepcopy(actual)

    @staticmethod
    def _service(type_: str, name: str, rule: str, *args) -> None:
        """Applies one of the type's service rules; a refusal is that service's 400."""
        service = SERVICES[type_]
        try:
            getattr(service, rule)(*args)
        except service.Refused as refused:
            raise resource_error(type_, name, 400, str(refused)) from None

    @staticmethod
    def _self_link(project: str, type_: str, name: str, properties: dict) -> str:
        scope, collection = COLLECTIONS.get(type_, (None, type_.rsplit(".", 1)[-1].lower() + "s"))
        where = "global"
        if scope == "region":
            where = f"regions/{properties.get('region', 'us-central1')}"
        elif scope == "zone":
            where = f"zones/{properties.get('zone', 'us-central1-a')}"
        return f"{COMPUTE_ROOT}{project}/{where}/{collection}/{name}"
