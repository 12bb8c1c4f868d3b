"""Who may call what: Google's IAM check, the one definition every emulated API here uses.

Test infrastructure. Each emulated server (Deployment Manager, Infrastructure Manager, Cloud
Storage, IAM Credentials, Compute Engine) asks `Policy.authorize` before it does anything, as
Google checks permission before it looks the resource up (hence "denied on resource (or it may
not exist)").
A call is allowed when the access token carries one of the OAuth scopes the method accepts (its
`scopes` in the service's discovery document: a compute.readonly token may read, not write) and
one of the roles bound to the caller, on the resource or on its project, holds each permission
the method needs; a permission Google checks on a resource the request names (the subnetwork a
new VM's interface uses, the network of a firewall rule) is checked on that resource.

The facts are data in iam.yaml, each with the Google page it comes from:
  * `roles`: the predefined roles' permissions (only those of the methods emulated here);
  * `methods`: API method -> permission (or the permissions, all needed), per service, and
    `referenced`: the permissions checked on the resources a request names;
  * `runner`: the API method the google Terraform provider calls for each resource type and
    action (an instance's update: per changed field), which Infrastructure Manager's emulated
    Terraform run checks against the account it runs as;
  * `agent`: what Infrastructure Manager does as that account around the run
    (roles/config.agent);
  * `discovery`: each service's discovery document, whose per-method `scopes` are read as they
    ship in google-api-python-client.
Who holds which role is not data here: it is what scripts/gcp-bootstrap.sh grants, read from
its `--dry-run` output (`Policy.add_bootstrap`), custom roles included.

To add
  * a role: its permissions under `roles:` in iam.yaml, with the page they were copied from;
  * a method: `SERVICE.COLLECTION.METHOD: PERMISSION` under its service in `methods:` (the
    discovery document's method id; its scopes are read from there), then
    `policy.authorize(identity, "SERVICE.COLLECTION.METHOD", resource)` in the emulator;
  * an identity: create it and grant its roles in scripts/gcp-bootstrap.sh; a test that needs
    it calls `Policy.from_bootstrap(...)`, which parses the grants (project and service-account
    bindings, custom roles, bucket bindings).

Resources are named as IAM names them: `projects/P`, `projects/P/serviceAccounts/EMAIL`,
`projects/P/locations/L/deployments/D`, `projects/_/buckets/B`. A grant on `projects/P` holds for
everything under it; a bucket is under the project that created it.

Emulator choice (not Google's): a token the verifier does not know is 401 before any of this.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dmlocal.compute_api import discovery_path

_DATA = yaml.safe_load((Path(__file__).with_name("iam.yaml")).read_text())
PREDEFINED_ROLES: dict[str, frozenset[str]] = {
    name: frozenset(role["permissions"]) for name, role in _DATA["roles"].items()
}
METHOD_PERMISSIONS: dict[str, tuple[str, ...]] = {
    method: tuple(permission) if isinstance(permission, list) else (permission,)
    for service in _DATA["methods"].values()
    for method, permission in service["permissions"].items()
}
# method -> reference (what the request names) -> the permissions checked on it
REFERENCED_PERMISSIONS: dict[str, dict[str, tuple[str, ...]]] = {
    method: {reference: tuple(permissions) for reference, permissions in references.items()}
    for service in _DATA["methods"].values()
    for method, references in service.get("referenced", {}).items()
}
# resource type -> Terraform action (read, create, update, delete) -> the API method it calls;
# an instance's update maps each changed field to the methods it calls
RUNNER_METHODS: dict[str, dict] = {
    type_: actions for type_, actions in _DATA["runner"].items() if type_ != "source"
}
# what Infrastructure Manager does as the runner: step -> the API methods it calls
AGENT_METHODS: dict[str, tuple[str, ...]] = {
    step: tuple(methods) for step, methods in _DATA["agent"].items() if step != "source"
}
DISCOVERY_DOCUMENTS: dict[str, str] = _DATA["discovery"]
BOOTSTRAP = Path(__file__).resolve().parents[2] / "scripts" / "gcp-bootstrap.sh"


@dataclass(frozen=True)
class Identity:
    """Who an access token was issued to, and for which scopes."""

    principal: str  # an email, or a principal:// / principalSet:// identifier
    scopes: tuple[str, ...] = ()
    member_sets: frozenset[str] = frozenset()  # the principal sets a federated token is in

    @property
    def members(self) -> frozenset[str]:
        """The IAM members a binding may name to reach this caller."""
        if self.principal.startswith("principal://"):
            own = self.principal
        elif self.principal.endswith(".gserviceaccount.com"):
            own = f"serviceAccount:{self.principal}"
        else:
            own = f"user:{self.principal}"
        return frozenset({own, *self.member_sets})


class PermissionDenied(Exception):
    """Google's 403: the caller lacks the permission."""

    def __init__(self, message: str, permission: str, resource: str):
        super().__init__(message)
        self.message = message
        self.permission = permission
        self.resource = resource


class InsufficientScopes(PermissionDenied):
    """Google's 403 ACCESS_TOKEN_SCOPE_INSUFFICIENT: the token lacks every scope the method
    accepts, whatever the caller's roles."""

    def __init__(self, method: str, resource: str):
        super().__init__("Request had insufficient authentication scopes.", "", resource)
        self.method = method
        self.service = method.split(".")[0]


@functools.cache
def _discovery_scopes(api: str) -> dict[str, frozenset[str]]:
    document = json.loads(discovery_path(api).read_bytes())
    found: dict[str, frozenset[str]] = {}

    def walk(resources: dict) -> None:
        for resource in resources.values():
            for method in resource.get("methods", {}).values():
                found[method["id"]] = frozenset(method.get("scopes", ()))
            walk(resource.get("resources", {}))

    walk(document.get("resources", {}))
    return found


def method_scopes(method: str) -> frozenset[str]:
    """The OAuth scopes the discovery document accepts for `method` (any one is enough)."""
    service = method.split(".")[0]
    scopes = _discovery_scopes(DISCOVERY_DOCUMENTS[service]).get(method)
    if scopes is None:
        raise KeyError(f"method {method} is not in the {DISCOVERY_DOCUMENTS[service]} document")
    return scopes


@dataclass
class Policy:
    """Role bindings and custom roles: what IAM holds for the emulated projects."""

    bindings: set[tuple[str, str, str]] = field(default_factory=set)  # (resource, member, role)
    custom_roles: dict[str, frozenset[str]] = field(default_factory=dict)
    bucket_projects: dict[str, str] = field(default_factory=dict)
    checks: list[tuple[str, str, str, bool]] = field(default_factory=list)
    # (principal, permission, resource, allowed): every decision, for tests to read

    # -- what IAM holds ------------------------------------------------------------------

    def grant(self, resource: str, member: str, role: str) -> None:
        self.bindings.add((resource, member, role))

    def revoke(self, resource: str, member: str, role: str) -> None:
        self.bindings.remove((resource, member, role))

    def role_permissions(self, role: str) -> frozenset[str]:
        if role in self.custom_roles:
            return self.custom_roles[role]
        if role not in PREDEFINED_ROLES:
            raise KeyError(f"role {role} is not in emulators/iam.yaml: add its permissions there")
        return PREDEFINED_ROLES[role]

    @classmethod
    def from_bootstrap(cls, engine: str, rename: dict[str, str] | None = None, **settings):
        """The grants `gcp-bootstrap.sh --engine ENGINE --dry-run` prints for `settings`
        (PROJECT_ID, CIRCLE_ORG_ID, ...; environment variables of the script)."""
        policy = cls()
        policy.add_bootstrap(bootstrap_commands(engine, **settings), rename)
        return policy

    def add_bootstrap(self, commands: list[list[str]], rename: dict[str, str] | None = None):
        """Adds what these bootstrap commands grant. `rename` maps a member the bootstrap names
        to the one a test holds a key for."""
        rename = rename or {}
        for argv in commands:
            words = [a for a in argv if not a.startswith("-")]
            f = flags(argv)
            member = rename.get(f.get("member", ""), f.get("member", ""))
            if words[1:3] == ["projects", "add-iam-policy-binding"]:
                self.grant(f"projects/{words[3]}", member, f["role"])
            elif words[1:4] == ["iam", "service-accounts", "add-iam-policy-binding"]:
                self.grant(f"projects/{f['project']}/serviceAccounts/{words[4]}", member, f["role"])
            elif words[1:4] == ["iam", "roles", "create"]:
                role = f"projects/{f['project']}/roles/{words[4]}"
                self.custom_roles[role] = frozenset(f["permissions"].split(","))
            elif words[1:4] == ["storage", "buckets", "create"]:
                self.bucket_projects[words[4].removeprefix("gs://")] = f["project"]
            elif words[1:4] == ["storage", "buckets", "add-iam-policy-binding"]:
                bucket = words[4].removeprefix("gs://")
                self.grant(f"projects/_/buckets/{bucket}", member, f["role"])

    # -- the check -----------------------------------------------------------------------

    def ancestors(self, resource: str) -> list[str]:
        """The resource and what it inherits grants from."""
        if resource.startswith("projects/_/buckets/"):
            bucket = resource.split("/")[3]
            project = self.bucket_projects.get(bucket)
            return [resource] + ([f"projects/{project}"] if project else [])
        parts = resource.split("/")
        return [resource] + (["/".join(parts[:2])] if len(parts) > 2 else [])

    def allows(self, members: Iterable[str], permission: str, resource: str) -> bool:
        members = set(members)
        scopes = set(self.ancestors(resource))
        return any(
            where in scopes and member in members and permission in self.role_permissions(role)
            for where, member, role in self.bindings
        )

    def check_permission(self, identity: Identity, permission: str, resource: str) -> None:
        allowed = self.allows(identity.members, permission, resource)
        self.checks.append((identity.principal, permission, resource, allowed))
        if not allowed:
            raise PermissionDenied(
                f"Permission '{permission}' denied on resource '{resource}' (or it may not exist).",
                permission,
                resource,
            )

    def authorize(
        self,
        identity: Identity,
        method: str,
        resource: str,
        referenced: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Raises PermissionDenied unless `identity` may call `method` on `resource`, naming
        the `referenced` resources: (reference, IAM resource name) pairs, each kind of
        reference one of the method's under `referenced:` in iam.yaml."""
        if method not in METHOD_PERMISSIONS:
            raise KeyError(f"method {method} is not in emulators/iam.yaml: add its permission")
        accepted = method_scopes(method)
        if accepted and not accepted & set(identity.scopes):
            raise InsufficientScopes(method, resource)
        for permission in METHOD_PERMISSIONS[method]:
            self.check_permission(identity, permission, resource)
        for reference, named in referenced:
            for permission in REFERENCED_PERMISSIONS[method][reference]:
                self.check_permission(identity, permission, named)

    def used_permissions(self, principal: str) -> set[str]:
        """Every permission checked for `principal` and granted."""
        return {p for who, p, _, ok in self.checks if who == principal and ok}


# -- the bootstrap's grants ------------------------------------------------------------------


def bootstrap_dry_run(engine: str, **settings: str) -> str:
    """What `scripts/gcp-bootstrap.sh --engine ENGINE --dry-run` prints for these settings."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **settings}
    result = subprocess.run(
        [str(BOOTSTRAP), "--engine", engine, "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if result.returncode != 0:
        raise RuntimeError(f"gcp-bootstrap.sh --dry-run failed: {result.stderr}")
    return result.stdout


def bootstrap_commands(engine: str, **settings: str) -> list[list[str]]:
    """The gcloud commands gcp-bootstrap.sh would run, as argv lists."""
    return [
        shlex.split(line[2:], comments=True)
        for line in bootstrap_dry_run(engine, **settings).splitlines()
        if line.startswith("+ ")
    ]


def flags(argv: list[str]) -> dict[str, str]:
    """--name value pairs of one command (--name=value ones are the script's fixed flags; a
    flag without a value maps to "")."""
    values = [*argv[1:], "--"]
    return {
        a[2:]: "" if values[i].startswith("--") else values[i]
        for i, a in enumerate(argv)
        if a.startswith("--") and "=" not in a
    }
