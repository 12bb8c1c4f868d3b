"""A local Infrastructure Manager (config.googleapis.com v1) API server for the real `gcloud`.

This is test infrastructure: it stands in for Google's server, never for anything this repo ships.
It follows the config v1 discovery document (google-api-python-client ships it as
discovery_cache/documents/config.v1.json) for the calls `gcloud infra-manager` 528 makes, as its
source shows (googlecloudsdk/command_lib/infra_manager/deploy_util.py, api_lib/infra_manager):

  deployments: create (deploymentId), patch, get, delete (deletePolicy, force), lock, unlock,
               exportLock
  revisions:   get, list;  resources: list (of a revision)
  previews:    create (previewId), get, export, delete
  operations:  get (gcloud's waiter polls it, then GETs the `response.name` it names)

What it does, as Infrastructure Manager documents it:
  * the blueprint is `terraformBlueprint.gcsSource` (gs://BUCKET/PREFIX): the files gcloud
    uploaded there with --local-source, read back from the Cloud Storage emulator
    (emulators/storage.py) through its JSON API; `inputValues` are the Terraform variables;
  * every apply is a new revision r-N. The Terraform run (emulators/terraform_plan.py) checks
    the configuration against the pinned google provider schema and plans against the
    deployment's state. A broken configuration gives a FAILED revision with `tfErrors` and a
    FAILED deployment (errorCode REVISION_FAILED); the resources and the last APPLIED revision
    stay as they were;
  * `applyResults.outputs` holds the Terraform outputs; resources list shows each managed
    resource with its Terraform address, id and intent;
  * the resources live in the emulated Compute Engine that the Deployment Manager emulator holds
    (pass `compute=` a DeploymentManagerEmulator), so a stack DM created can be adopted here
    with import blocks, with the same ids and the same static IP;
  * previews plan without applying; export returns signed URLs (here: the storage emulator's
    download URLs) for the JSON plan, in Terraform's `show -json` format, and a binary plan
    file that only says it is emulated (no real Terraform plan exists here);
  * deletePolicy DELETE runs a destroy, which an instance with deletion protection refuses;
    ABANDON forgets the deployment and leaves the resources;
  * `tfVersionConstraint` picks the Terraform version: the newest supported one it accepts
    (1.3.10, 1.4.7 or 1.5.7; 1.2.3's support ended 2026-02-08), never older than the
    deployment's; the module's own required_version must accept it, as Terraform checks.

Permissions: every call is authorized first (emulators/iam.py): the caller's permission for the
method on the deployment, preview or operation (config.deployments.create, .update, ...), and, for
a create, patch or preview, iam.serviceAccounts.actAs on the service account Terraform runs as,
which Infrastructure Manager's access-control page asks of the caller. 403 PERMISSION_DENIED
otherwise. Infrastructure Manager then works as that service account, which its documentation
says needs roles/config.agent (iam.yaml `agent`): it keeps the run's artifacts in a bucket of the
deployment's project (storage.buckets.create; refused, the deployment or preview FAILS with
errorCode BUCKET_CREATION_PERMISSION_DENIED and that code's text from the config.v1 discovery
document, followed by the 403) and reads the blueprint from its gcsSource (refused, the run
fails like a Terraform error). Terraform runs as the same account: every refresh, create, update
and delete of the plan needs the account's permission for the API methods the google provider
calls (iam.yaml `runner`; an instance's update: the call for each changed field, as
hashicorp/google 6.50.0 makes it; the `use` permissions on the subnetwork and address a VM
names), checked before anything is applied; a refused one fails the revision (or the preview)
with the provider's `googleapi: Error 403` in tfErrors, as Infrastructure Manager reports a
Terraform error. Not emulated: the runner's access to the deployment's Terraform state
(config.deployments.getState/updateState, also roles/config.agent's).

Emulator choices, where the documentation does not pin the behaviour down (not verified against
Google): a patch, delete, lock or preview while an operation runs on the deployment, or while
it is locked, is HTTP 409 ABORTED; a tfVersionConstraint no supported version meets is HTTP 400
INVALID_ARGUMENT; a failed apply is a DONE operation whose response is the
FAILED deployment (gcloud then prints its stateDetail); operations finish after `op_seconds`
(0 by default) and `hold_operations = True` keeps them RUNNING, so tests can race two applies.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import os
import re
import threading
import time
from datetime import UTC, date, datetime
from http import HTTPStatus

from dmlocal.compute_api import discovery_path
from dmlocal.terraform import INFRA_MANAGER_TERRAFORM, satisfies
from emulators import terraform_plan
from emulators.deploymentmanager import ApiError, DeploymentManagerEmulator
from emulators.deploymentmanager.api import TokenVerifier, authenticate, authorize
from emulators.deploymentmanager.api import _Handler as JsonApiHandler
from emulators.deploymentmanager.cloud import COLLECTIONS, COMPUTE_ROOT, ComputeError
from emulators.deploymentmanager.cloud import now as _now
from emulators.deploymentmanager.compute import references, scope_of
from emulators.deploymentmanager.state import DEPLOYMENT_NAME
from emulators.iam import AGENT_METHODS, RUNNER_METHODS, Identity, PermissionDenied, Policy
from emulators.loopback import LoopbackService
from emulators.storage import CloudStorage

API_PREFIX = "/v1/"
TYPE_PREFIX = "type.googleapis.com/google.cloud.config.v1."
SERVICE_ACCOUNT = re.compile(r"^projects/[^/]+/serviceAccounts/[^/]+@[^/]+$")
GCS_SOURCE = re.compile(r"^gs://([^/]+)/(.+)$")
ARTIFACTS_BUCKET = "{project}_infra_manager_artifacts"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"


class AgentRefused(Exception):
    """A step Infrastructure Manager takes as the runner account was refused (roles/config.agent
    missing): the deployment or preview fails with `code`."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@functools.cache
def error_code_text(schema: str, code: str) -> str:
    """The config.v1 discovery document's description of `schema`.errorCode `code`."""
    document = json.loads(discovery_path("config.v1").read_bytes())
    error_code = document["schemas"][schema]["properties"]["errorCode"]
    return dict(zip(error_code["enum"], error_code["enumDescriptions"], strict=True))[code]


class InfraManagerEmulator(LoopbackService):
    """The emulated service: state plus the v1 methods. `serve()` puts it behind HTTP."""

    def __init__(
        self,
        storage: CloudStorage,
        compute: DeploymentManagerEmulator | None = None,
        verify_token: TokenVerifier | None = None,
        policy: Policy | None = None,
        op_seconds: float = 0.0,
    ):
        self.storage = storage
        # The emulated Compute Engine: DM's emulator holds it; share one to test both engines.
        self.compute = compute or DeploymentManagerEmulator()
        self.verify_token = verify_token
        self.policy = policy
        self.op_seconds = op_seconds
        self.hold_operations = False
        self.lock: threading.RLock = self.compute.lock
        self.deployments: dict[str, dict] = {}  # full name -> record
        self.previews: dict[str, dict] = {}
        self.operations: dict[str, dict] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) for tests
        self._lock_ids = itertools.count(1_700_000_000_000_001)

    @property
    def url(self) -> str:
        """The value for gcloud's api_endpoint_overrides/config."""
        return self.base_url + "/"

    # -- inspection helpers for tests and `make up` ------------------------------------------

    def deployment(self, name: str) -> dict | None:
        with self.lock:
            self._settle()
            record = self.deployments.get(name)
            return self._view(record) if record else None

    def revisions(self, name: str) -> list[dict]:
        with self.lock:
            self._settle()
            record = self.deployments.get(name)
            return [self._revision_view(r) for r in record["revisions"]] if record else []

    def last_plan(self, name: str) -> list[dict]:
        """The latest revision's plan, in Terraform's JSON plan `resource_changes` shape."""
        with self.lock:
            record = self.deployments[name]
            return copy.deepcopy(record["revisions"][-1]["_plan"])

    # -- request dispatch --------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict, body: dict | None, token: str | None):
        """Returns (status, json body). Raises ApiError for HTTP errors."""
        identity = authenticate(self.verify_token, token)
        principal = identity.principal if identity else "anonymous@example.com"
        if not path.startswith(API_PREFIX + "projects/"):
            raise ApiError(HTTPStatus.NOT_FOUND, "notFound", f"no such API path: {path}")
        name, _, verb = path[len(API_PREFIX) :].partition(":")
        parts = name.split("/")
        if len(parts) < 5 or parts[2] != "locations":
            raise ApiError(HTTPStatus.NOT_FOUND, "notFound", f"no such API path: {path}")
        parent = "/".join(parts[:4])
        collection, rest = parts[4], parts[5:]
        body = body or {}
        method_name = config_method(method, collection, rest, verb)
        authorize(self.policy, identity, name, method_name)
        if method_name.endswith(("deployments.create", "deployments.patch", "previews.create")):
            account = body.get("serviceAccount") or ""
            authorize(self.policy, identity, account, permission="iam.serviceAccounts.actAs")
        with self.lock:
            self._settle()
            if collection == "operations" and method == "GET" and len(rest) == 1 and not verb:
                return self._get_operation(name)
            if collection == "deployments":
                return self._deployments(method, parent, rest, verb, query, body, principal)
            if collection == "previews":
                return self._previews(method, parent, rest, verb, query, body, principal)
        raise ApiError(HTTPStatus.NOT_FOUND, "notFound", f"no such method: {method} {path}")

    def _deployments(self, method, parent, rest, verb, query, body, principal):
        if not rest and method == "POST" and not verb:
            return self._create(parent, _one(query, "deploymentId"), body)
        if not rest:
            raise ApiError(HTTPStatus.NOT_FOUND, "notFound", f"no such method: {method}")
        name = f"{parent}/deployments/{rest[0]}"
        if len(rest) == 1:
            if method == "GET" and verb == "exportLock":
                return self._export_lock(name)
            if method == "GET" and not verb:
                return HTTPStatus.OK, self._view(self._get(name))
            if method == "PATCH" and not verb:
                return self._patch(name, body)
            if method == "DELETE" and not verb:
                return self._delete(name, query)
            if method == "POST" and verb == "lock":
                return self._lock(name, principal)
            if method == "POST" and verb == "unlock":
                return self._unlock(name, body)
        record = self._get(name)
        if len(rest) == 2 and rest[1] == "revisions" and method == "GET":
            revisions = [self._revision_view(r) for r in record["revisions"]]
            return HTTPStatus.OK, {"revisions": revisions}
        if len(rest) >= 3 and rest[1] == "revisions" and method == "GET":
            revision = self._revision(record, rest[2])
            if len(rest) == 3:
                return HTTPStatus.OK, self._revision_view(revision)
            if len(rest) == 4 and rest[3] == "resources":
                return HTTPStatus.OK, {"resources": revision["_resources"]}
        raise ApiError(HTTPStatus.NOT_FOUND, "notFound", f"no such method: {method} {rest}")

    def _previews(self, method, parent, rest, verb, query, body, principal):
        if not rest and method == "POST":
            return self._create_preview(parent, _one(query, "previewId"), body)
        name = f"{parent}/previews/{rest[0]}" if rest else ""
        preview = self.previews.get(name)
        if preview is None:
            raise _not_found(name or parent)
        if method == "GET" and not verb:
            return HTTPStatus.OK, _public(preview)
        if method == "POST" and verb == "export":
            return self._export_preview(preview)
        if method == "DELETE":
            del self.previews[name]
            preview["state"] = "DELETED"
            return self._operation(name, "delete", lambda: ("Preview", _public(preview)))
        raise ApiError(HTTPStatus.NOT_FOUND, "notFound", f"no such method: {method} {name}")

    # -- deployments -------------------------------------------------------------------------

    def _get(self, name: str) -> dict:
        record = self.deployments.get(name)
        if record is None:
            raise _not_found(name)
        return record

    def _create(self, parent: str, deployment_id: str, body: dict):
        if not DEPLOYMENT_NAME.match(deployment_id or ""):
            raise ApiError(
                HTTPStatus.BAD_REQUEST,
                "invalid",
                f"Invalid deploymentId '{deployment_id}': must match [a-z]([-a-z0-9]*[a-z0-9])?",
            )
        name = f"{parent}/deployments/{deployment_id}"
        if name in self.deployments:
            raise ApiError(HTTPStatus.CONFLICT, "alreadyExists", f"{name} already exists")
        blueprint = self._check_body(body)
        version = terraform_version(body.get("tfVersionConstraint"), None)
        record = {
            "name": name,
            "project": parent.split("/")[1],
            "createTime": _now(),
            "updateTime": _now(),
            "labels": body.get("labels") or {},
            "serviceAccount": body["serviceAccount"],
            "state": "CREATING",
            "stateDetail": "",
            "errorCode": None,
            "lock": None,
            "revisions": [],
            "tf_state": {},  # address -> {project, type, name}
            "operation": None,
        }
        self.deployments[name] = record
        return self._apply(record, body, blueprint, "CREATE", version)

    def _patch(self, name: str, body: dict):
        record = self._get(name)
        self._check_free(record)
        blueprint = self._check_body(body)
        version = terraform_version(body.get("tfVersionConstraint"), record.get("tf_version"))
        if body.get("labels") is not None:
            record["labels"] = body["labels"]
        record["serviceAccount"] = body["serviceAccount"]
        return self._apply(record, body, blueprint, "UPDATE", version)

    def _check_body(self, body: dict) -> dict:
        if not SERVICE_ACCOUNT.match(body.get("serviceAccount") or ""):
            raise ApiError(
                HTTPStatus.BAD_REQUEST,
                "invalid",
                "serviceAccount must be projects/{project}/serviceAccounts/{email}; got "
                f"{body.get('serviceAccount')!r}",
            )
        blueprint = body.get("terraformBlueprint") or {}
        if not GCS_SOURCE.match(blueprint.get("gcsSource") or ""):
            raise ApiError(
                HTTPStatus.BAD_REQUEST,
                "invalid",
                "terraformBlueprint.gcsSource must be gs://BUCKET/OBJECT (this emulator reads no "
                "gitSource)",
            )
        return blueprint

    def _check_free(self, record: dict) -> None:
        op = self.operations.get(record["operation"] or "")
        if op and not op["done"]:
            raise ApiError(
                HTTPStatus.CONFLICT,
                "aborted",
                f"Deployment {record['name']} is being changed by operation {op['name']}; "
                "retry when it is done",
            )
        if record["lock"]:
            raise ApiError(
                HTTPStatus.CONFLICT,
                "aborted",
                f"Deployment {record['name']} is locked (lock {record['lock']['lockId']}, "
                f"held by {record['lock']['who']})",
            )

    def _source_files(self, gcs_source: str) -> dict[str, bytes]:
        bucket, prefix = GCS_SOURCE.match(gcs_source).groups()
        prefix = prefix.rstrip("/") + "/"
        names = self.storage.list(bucket, prefix)
        if not names:
            raise terraform_plan.TerraformError(f"no files at {gcs_source}")
        return {name[len(prefix) :]: self.storage.read(bucket, name) for name in names}

    def _terraform(
        self,
        record: dict | None,
        blueprint: dict,
        import_existing: bool,
        apply: bool,
        version: str,
        runner: str,
    ):
        """Runs Terraform `version` on a copy of the cloud as the service account `runner`
        (projects/P/serviceAccounts/EMAIL); returns (plan, new state, project, new cloud copy).
        The plan comes first and is checked against the runner's permissions, so a refused
        refresh, create, update or delete fails the run before anything changes."""
        inputs = {
            key: (value or {}).get("inputValue")
            for key, value in (blueprint.get("inputValues") or {}).items()
        }
        module = terraform_plan.read_module(self._source_files(blueprint["gcsSource"]), inputs)
        module.check_core(version)
        project = module.provider_project
        if not isinstance(project, str) or not project:
            raise terraform_plan.TerraformError("provider google: no project configured")
        cloud = copy.deepcopy(self.compute.cloud.projects.get(project, {}))

        def planned(dm_type, name, properties, existing):
            resource = {**(existing or {}), **properties, "name": name}
            resource.setdefault("selfLink", f"{COMPUTE_ROOT}{project}/(known after apply)/{name}")
            resource.setdefault("address", "(known after apply)")
            return resource

        def materialize(dm_type, name, properties, existing):
            try:
                return self.compute.materialize(project, dm_type, name, properties, existing)
            except ComputeError as refusal:  # as the provider reports the API's answer
                raise terraform_plan.TerraformError(
                    f"Error {'updating' if existing else 'creating'} {dm_type} {name}: "
                    f"googleapi: Error {refusal.code}: {refusal.message}, {refusal.reason}"
                ) from None

        state = record["tf_state"] if record else {}
        plan, new_state = terraform_plan.run(
            module, state, copy.deepcopy(cloud), import_existing, planned
        )
        self._check_runner(runner, project, plan, state, new_state)
        if apply:
            plan, new_state = terraform_plan.run(module, state, cloud, import_existing, materialize)
        return plan, new_state, project, cloud

    def _check_agent(self, runner: str, project: str, blueprint: dict) -> None:
        """What Infrastructure Manager does as the runner before Terraform starts (iam.yaml
        `agent`): its artifacts bucket in the deployment's `project`, then the blueprint.
        Raises AgentRefused, or TerraformError for an unreadable blueprint."""
        if self.policy is None or self.verify_token is None:
            return
        identity = Identity(runner.rsplit("/", 1)[-1], (CLOUD_PLATFORM,))
        gcs_source = blueprint["gcsSource"]
        bucket = GCS_SOURCE.match(gcs_source).group(1)
        steps = {"artifacts": f"projects/{project}", "blueprint": f"projects/_/buckets/{bucket}"}
        for step, resource in steps.items():
            for method in AGENT_METHODS[step]:
                try:
                    self.policy.authorize(identity, method, resource)
                except PermissionDenied as denied:
                    if step == "artifacts":
                        code = "BUCKET_CREATION_PERMISSION_DENIED"
                        raise AgentRefused(code, denied.message) from None
                    raise terraform_plan.TerraformError(
                        f"reading the blueprint {gcs_source}: googleapi: Error 403: "
                        f"{denied.message}, forbidden"
                    ) from None

    def _check_runner(self, runner: str, project: str, plan, state: dict, new_state: dict):
        """Raises the provider's error for the first call of the plan the account Terraform
        runs as may not make (iam.yaml `runner`: the API method behind each action)."""
        if self.policy is None or self.verify_token is None:
            return
        identity = Identity(runner.rsplit("/", 1)[-1], (CLOUD_PLATFORM,))
        held = {project: self.compute.cloud.projects.get(project, {})}
        for change in plan.changes:
            tracked = new_state.get(change.address) or state.get(change.address) or {}
            tf_type = change.address.split(".", 1)[0]
            dm_type = tracked.get("type") or terraform_plan.DM_TYPES[tf_type]
            body = change.after or change.before or {}
            actions = (["read"] if change.before is not None else []) + [
                a for a in change.actions if a != "no-op"
            ]
            if dm_type in COLLECTIONS:
                name = tracked.get("name") or body.get("name")
                where = f"{scope_of(dm_type, body)}/{COLLECTIONS[dm_type][1]}"
                resource = f"projects/{project}/{where}/{name}"
            else:
                resource = f"projects/{project}"
            calls = [
                (action, method)
                for action in actions
                for method in runner_calls(dm_type, action, change.before, change.after)
            ]
            for action, method in calls:
                named = references(method, body, project, held)
                try:
                    self.policy.authorize(identity, method, resource, named)
                except PermissionDenied as denied:
                    kind = tf_type.split("_", 2)[-1].title().replace("_", "")
                    doing = {"read": "reading", "create": "creating", "update": "updating"}
                    if dm_type in COLLECTIONS:
                        detail = (
                            f"Required '{denied.permission}' permission for '{denied.resource}', "
                            "forbidden"
                        )
                    else:
                        detail = f"{denied.message}, forbidden"
                    raise terraform_plan.TerraformError(
                        f"Error {doing.get(action, 'deleting')} {kind} ({change.address}): "
                        f"googleapi: Error 403: {detail}"
                    ) from None

    def _apply(self, record: dict, body: dict, blueprint: dict, action: str, version: str):
        number = len(record["revisions"]) + 1
        revision = {
            "name": f"{record['name']}/revisions/r-{number}",
            "action": action,
            "createTime": _now(),
            "updateTime": _now(),
            "serviceAccount": body["serviceAccount"],
            "terraformBlueprint": blueprint,
            "importExistingResources": bool(body.get("importExistingResources")),
            "tfVersionConstraint": body.get("tfVersionConstraint"),
            "tfVersion": version,
            "_resources": [],
            "_plan": [],
        }
        record["revisions"].append(revision)

        def work():
            try:
                self._check_agent(body["serviceAccount"], record["project"], blueprint)
                plan, new_state, project, cloud = self._terraform(
                    record,
                    blueprint,
                    revision["importExistingResources"],
                    True,
                    version,
                    body["serviceAccount"],
                )
            except AgentRefused as refused:
                detail = f"{error_code_text('Deployment', refused.code)} {refused.message}"
                revision.update(state="FAILED", stateDetail=detail)
                record.update(state="FAILED", errorCode=refused.code, stateDetail=detail)
                return "Deployment", self._view(record)
            except terraform_plan.TerraformError as error:
                revision.update(
                    state="FAILED",
                    errorCode="APPLY_BUILD_RUN_FAILED",
                    stateDetail=f"terraform error: {error}",
                    tfErrors=[{"errorDescription": str(error)}],
                )
                record.update(
                    state="FAILED",
                    errorCode="REVISION_FAILED",
                    stateDetail=f"{revision['name']} failed: terraform error: {error}",
                )
                return "Deployment", self._view(record)
            self.compute.cloud.replace(project, cloud)
            record["tf_state"] = new_state
            record["tf_version"] = version
            record.update(state="ACTIVE", errorCode=None, stateDetail="")
            revision.update(state="APPLIED", stateDetail="")
            revision["applyResults"] = {
                "content": f"gs://{ARTIFACTS_BUCKET.format(project=record['project'])}/content",
                "artifacts": f"gs://{ARTIFACTS_BUCKET.format(project=record['project'])}/artifacts",
                "outputs": {k: {"value": v} for k, v in plan.outputs.items()},
            }
            revision["_plan"] = plan.as_json()["resource_changes"]
            revision["_resources"] = self._resources(revision, plan, new_state)
            return "Deployment", self._view(record)

        record["updateTime"] = _now()
        return self._operation(record["name"], action.lower(), work, record)

    def _resources(self, revision: dict, plan, new_state: dict) -> list[dict]:
        intents = {
            ("create",): "CREATE",
            ("update",): "UPDATE",
            ("no-op",): "UNCHANGED",
            ("delete", "create"): "RECREATE",
        }
        resources = []
        for change in plan.changes:
            if change.address not in new_state:
                continue
            tf_type = change.address.split(".", 1)[0]
            resource_id = terraform_plan.import_id_of(tf_type, change.after)
            resources.append(
                {
                    "name": f"{revision['name']}/resources/{change.address}",
                    "terraformInfo": {
                        "address": change.address,
                        "type": tf_type,
                        "id": resource_id,
                    },
                    "caiAssets": {
                        "compute.googleapis.com/"
                        + tf_type[len("google_compute_") :].title().replace("_", ""): {
                            "fullResourceName": f"//compute.googleapis.com/{resource_id}"
                        }
                    },
                    "intent": intents.get(tuple(change.actions), "UPDATE"),
                    "state": "RECONCILED",
                }
            )
        return resources

    def _delete(self, name: str, query: dict):
        record = self._get(name)
        self._check_free(record)
        policy = (_one(query, "deletePolicy") or "DELETE").upper()
        if policy not in ("DELETE", "ABANDON"):
            raise ApiError(HTTPStatus.BAD_REQUEST, "invalid", f"deletePolicy: {policy}")

        def work():
            if policy == "DELETE":
                projects = {t["project"] for t in record["tf_state"].values()}
                clouds = {
                    p: copy.deepcopy(self.compute.cloud.projects.get(p, {})) for p in projects
                }
                try:
                    for project, cloud in clouds.items():
                        mine = {
                            a: t for a, t in record["tf_state"].items() if t["project"] == project
                        }
                        held = {a: cloud.get(t["type"], {}).get(t["name"]) for a, t in mine.items()}
                        deletes = [
                            terraform_plan.Change(a, ["delete"], before=r)
                            for a, r in held.items()
                            if r
                        ]
                        plan = terraform_plan.Plan(deletes)
                        self._check_runner(record["serviceAccount"], project, plan, mine, {})
                        terraform_plan.destroy(mine, cloud)
                except terraform_plan.TerraformError as error:
                    record.update(state="FAILED", stateDetail=f"delete failed: {error}")
                    return None, {"code": 9, "message": f"terraform destroy failed: {error}"}
                for project, cloud in clouds.items():
                    self.compute.cloud.replace(project, cloud)
            del self.deployments[name]
            return "Deployment", {**self._view(record), "state": "DELETED"}

        return self._operation(name, "delete", work, record)

    def _lock(self, name: str, principal: str):
        record = self._get(name)
        self._check_free(record)

        def work():
            record["lock"] = {
                "lockId": str(next(self._lock_ids)),
                "operation": "lock",
                "info": "",
                "who": principal,
                "version": record.get("tf_version") or "",
                "createTime": _now(),
            }
            return "Deployment", self._view(record)

        return self._operation(name, "lock", work, record)

    def _unlock(self, name: str, body: dict):
        record = self._get(name)
        if not record["lock"] or str(body.get("lockId")) != record["lock"]["lockId"]:
            raise ApiError(
                HTTPStatus.BAD_REQUEST,
                "failedPrecondition",
                f"lockId {body.get('lockId')} does not match the lock on {name}",
            )

        def work():
            record["lock"] = None
            return "Deployment", self._view(record)

        return self._operation(name, "unlock", work, record)

    def _export_lock(self, name: str):
        record = self._get(name)
        if not record["lock"]:
            raise _not_found(f"{name} lock")
        return HTTPStatus.OK, dict(record["lock"])

    def _revision(self, record: dict, revision_id: str) -> dict:
        for revision in record["revisions"]:
            if revision["name"].endswith("/" + revision_id):
                return revision
        raise _not_found(f"{record['name']}/revisions/{revision_id}")

    # -- previews ----------------------------------------------------------------------------

    def _create_preview(self, parent: str, preview_id: str, body: dict):
        name = f"{parent}/previews/{preview_id}"
        if not DEPLOYMENT_NAME.match(preview_id or ""):
            raise ApiError(HTTPStatus.BAD_REQUEST, "invalid", f"Invalid previewId '{preview_id}'")
        if name in self.previews:
            raise ApiError(HTTPStatus.CONFLICT, "alreadyExists", f"{name} already exists")
        blueprint = self._check_body(body)
        record = None
        if body.get("deployment"):
            record = self._get(body["deployment"])
            self._check_free(record)
        version = terraform_version(
            body.get("tfVersionConstraint"), record.get("tf_version") if record else None
        )
        preview = {
            "name": name,
            "createTime": _now(),
            "serviceAccount": body["serviceAccount"],
            "terraformBlueprint": blueprint,
            "previewMode": body.get("previewMode") or "DEFAULT",
            "labels": body.get("labels") or {},
            "state": "CREATING",
        }
        if record:
            preview["deployment"] = record["name"]
        preview["tfVersion"] = version
        self.previews[name] = preview
        project = parent.split("/")[1]

        def work():
            try:
                self._check_agent(body["serviceAccount"], project, blueprint)
                plan, *_ = self._terraform(
                    record, blueprint, False, False, version, body["serviceAccount"]
                )
            except AgentRefused as refused:
                text = error_code_text("Preview", refused.code)
                preview.update(
                    state="FAILED",
                    errorCode=refused.code,
                    errorStatus={"code": 7, "message": f"{text} {refused.message}"},
                )
                return "Preview", _public(preview)
            except terraform_plan.TerraformError as error:
                preview.update(
                    state="FAILED",
                    errorCode="PREVIEW_BUILD_RUN_FAILED",
                    errorStatus={"code": 3, "message": f"terraform error: {error}"},
                    tfErrors=[{"errorDescription": str(error)}],
                )
                return "Preview", _public(preview)
            bucket = ARTIFACTS_BUCKET.format(project=project)
            prefix = f"previews/{preview_id}-{os.urandom(4).hex()}"
            self.storage.write(
                bucket,
                f"{prefix}/plan.json",
                json.dumps(plan.as_json(), indent=1).encode(),
                # Not application/json: the storage emulator would parse the body as metadata.
                "application/octet-stream",
            )
            self.storage.write(
                bucket,
                f"{prefix}/plan.tfplan",
                b"emulated preview: no binary Terraform plan exists; read plan.json\n",
                "text/plain",
            )
            preview.update(
                state="SUCCEEDED",
                previewArtifacts={
                    "content": f"gs://{bucket}/{prefix}/content",
                    "artifacts": f"gs://{bucket}/{prefix}",
                },
                _bucket=bucket,
                _prefix=prefix,
            )
            return "Preview", _public(preview)

        return self._operation(name, "create", work)

    def _export_preview(self, preview: dict):
        if preview["state"] != "SUCCEEDED":
            raise ApiError(
                HTTPStatus.BAD_REQUEST,
                "failedPrecondition",
                f"preview {preview['name']} is {preview['state']}: no results to export",
            )
        bucket, prefix = preview["_bucket"], preview["_prefix"]
        return HTTPStatus.OK, {
            "result": {
                "jsonSignedUri": self.storage.download_url(bucket, f"{prefix}/plan.json"),
                "binarySignedUri": self.storage.download_url(bucket, f"{prefix}/plan.tfplan"),
            }
        }

    # -- operations and views ----------------------------------------------------------------

    def _operation(self, target: str, verb: str, work, record: dict | None = None):
        """Does the work now; the operation reports done after `op_seconds` (or a hold)."""
        location = "/".join(target.split("/")[:4])
        name = f"{location}/operations/operation-{int(time.time() * 1000)}-{os.urandom(6).hex()}"
        kind, result = work()
        op = {
            "name": name,
            "done": False,
            "metadata": {
                "@type": TYPE_PREFIX + "OperationMetadata",
                "createTime": _now(),
                "target": target,
                "verb": verb,
                "apiVersion": "v1",
                "requestedCancellation": False,
            },
            "_kind": kind,
            "_result": result,
            "_done_at": time.monotonic() + self.op_seconds,
        }
        self.operations[name] = op
        if record is not None and name:
            record["operation"] = name
        self._settle()
        return HTTPStatus.OK, _public(op)

    def _settle(self) -> None:
        if self.hold_operations:
            return
        now = time.monotonic()
        for op in self.operations.values():
            if not op["done"] and op["_done_at"] <= now:
                op["done"] = True
                op["metadata"]["endTime"] = _now()
                if op["_kind"] is None:
                    op["error"] = op["_result"]
                else:
                    op["response"] = {"@type": TYPE_PREFIX + op["_kind"], **op["_result"]}

    def _get_operation(self, name: str):
        op = self.operations.get(name)
        if op is None:
            raise _not_found(name)
        return HTTPStatus.OK, _public(op)

    def _view(self, record: dict) -> dict:
        view = {
            "name": record["name"],
            "createTime": record["createTime"],
            "updateTime": record["updateTime"],
            "labels": record["labels"],
            "serviceAccount": record["serviceAccount"],
            "state": record["state"],
            "lockState": "LOCKED" if record["lock"] else "UNLOCKED",
            "tfVersion": record.get("tf_version") or "",
        }
        op = self.operations.get(record["operation"] or "")
        if op and not op["done"]:
            view["state"] = {"create": "CREATING", "delete": "DELETING"}.get(
                op["metadata"]["verb"], "UPDATING"
            )
            view["lockState"] = "LOCKED"
        if record["revisions"]:
            view["latestRevision"] = record["revisions"][-1]["name"]
            view["terraformBlueprint"] = record["revisions"][-1]["terraformBlueprint"]
        for key in ("stateDetail", "errorCode"):
            if record.get(key):
                view[key] = record[key]
        return view

    @staticmethod
    def _revision_view(revision: dict) -> dict:
        return _public(revision)


def config_method(method: str, collection: str, rest: list[str], verb: str) -> str:
    """The config v1 method a request calls, as config.projects.locations.COLLECTION.METHOD."""
    names = [collection]
    if collection == "deployments" and len(rest) >= 2:
        names.append(rest[1])  # revisions
        if len(rest) >= 4:
            names.append(rest[3])  # resources
    leaf = len(rest) in (1, 3)  # a named deployment, preview, operation or revision
    standard = {
        ("GET", True): "get",
        ("GET", False): "list",
        ("POST", False): "create",
        ("PATCH", True): "patch",
        ("DELETE", True): "delete",
    }
    action = verb or standard.get((method, leaf), method.lower())
    return "config.projects.locations." + ".".join(names) + "." + action


def _public(record: dict) -> dict:
    return {k: copy.deepcopy(v) for k, v in record.items() if not k.startswith("_")}


def _one(query: dict, name: str) -> str:
    return (query.get(name) or [""])[0]


def _not_found(name: str) -> ApiError:
    return ApiError(HTTPStatus.NOT_FOUND, "notFound", f"Resource '{name}' was not found")


InfraManagerEmulator.handler = JsonApiHandler


def terraform_version(constraint: str | None, current: str | None, today: date | None = None):
    """The Terraform version Infrastructure Manager runs a revision or preview with: the newest
    supported one the constraint accepts, never older than the deployment's `current` one
    (dmlocal.terraform.INFRA_MANAGER_TERRAFORM cites the documentation). The refusal's wording
    and its being an HTTP 400 are the emulator's."""
    today = today or datetime.now(UTC).date()
    supported = sorted(
        (
            v
            for v, ends in INFRA_MANAGER_TERRAFORM.items()
            if not ends or date.fromisoformat(ends) > today
        ),
        key=_version_key,
    )
    try:
        accepted = [v for v in supported if not constraint or satisfies(v, constraint)]
    except ValueError as error:
        raise ApiError(HTTPStatus.BAD_REQUEST, "invalid", f"tfVersionConstraint: {error}") from None
    if not accepted:
        raise ApiError(
            HTTPStatus.BAD_REQUEST,
            "invalid",
            f"tfVersionConstraint {constraint!r} accepts no Terraform version Infrastructure "
            f"Manager supports: {', '.join(supported)}",
        )
    version = accepted[-1]
    if current and _version_key(version) < _version_key(current):
        raise ApiError(
            HTTPStatus.BAD_REQUEST,
            "invalid",
            f"tfVersionConstraint {constraint!r} selects Terraform {version}, older than the "
            f"{current} the deployment runs; a deployment can move to a newer version only",
        )
    return version


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def runner_calls(dm_type: str, action: str, before: dict | None, after: dict | None) -> list[str]:
    """The API methods the google provider calls for `action` on a resource of `dm_type`
    (iam.yaml `runner`); an update mapped field by field calls each changed field's methods."""
    calls = RUNNER_METHODS[dm_type][action]
    if isinstance(calls, str):
        return [calls]
    methods: list[str] = []
    for changed in changed_fields(before or {}, after or {}):
        if changed not in calls:
            raise KeyError(
                f"{dm_type}: what the provider calls to update {changed} is not in "
                "emulators/iam.yaml `runner`: add it"
            )
        methods += [m for m in calls[changed] if m not in methods]
    return methods


def changed_fields(before: dict, after: dict) -> list[str]:
    """The fields an update changes; a network interface whose access configs alone changed is
    networkInterfaces.accessConfigs (the provider deletes and adds them, no stop)."""
    changed = []
    for key in sorted(before.keys() | after.keys()):
        if before.get(key) == after.get(key):
            continue
        if key == "networkInterfaces" and _only_access_configs(before[key], after.get(key)):
            key = "networkInterfaces.accessConfigs"
        changed.append(key)
    return changed


def _only_access_configs(before, after) -> bool:
    def without(nics):
        return [{k: v for k, v in nic.items() if k != "accessConfigs"} for nic in nics or []]

    both_lists = isinstance(before, list) and isinstance(after, list)
    return both_lists and without(before) == without(after)
