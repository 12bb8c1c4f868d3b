"""The live stack, read through the Compute Engine API with google-api-python-client.

The client is built from the compute.v1 discovery document the library ships (the one dmlocal
validates against), so it sends exactly the requests Google's generated client sends. Where it
sends them is the document's root, or the same override gcloud reads
(CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE, a URL ending in /compute/v1/), so whatever points gcloud
at an emulated cloud points this at it too. Credentials are Application Default Credentials: a
service-account key or a Workload Identity Federation credential config in
GOOGLE_APPLICATION_CREDENTIALS, or gcloud's application-default login; in CI, Workload Identity
Federation from the job's OIDC token (`federated_credentials`). Both deploy engines leave
the same Compute Engine resources, so this reads them the same way for either.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

from dmlocal.compute_api import discovery_path
from dmlocal.expand import Expansion
from dmlocal.replacement import _collection as collection_for
from drift.compare import LiveState, compute_resources

ENDPOINT_OVERRIDE = "CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE"
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
# Scope path parameters of the Compute Engine API, and the declared property each comes from.
SCOPE_PARAMS = ("zone", "region")


class CredentialsMissing(Exception):
    """No Application Default Credentials, or the token endpoint refused them."""


class PermissionMissing(CredentialsMissing):
    """The API knows the caller, who lacks the permission the call needs (HTTP 403)."""


class ApiFailure(Exception):
    """The Compute Engine API answered with an error other than 404, or could not be reached."""


class _OidcToken:
    """CircleCI's OIDC token for the job, handed to google-auth as the subject token."""

    def __init__(self, token: str):
        self.token = token

    def get_subject_token(self, context, request) -> str:
        return self.token


def federated_credentials(provider: str):
    """Workload Identity Federation from a CircleCI job, on the settings deploy.sh reads:
    GCP_WIF_PROVIDER, GCP_DEPLOYER_SA (here the account to become), and the job's token in
    CIRCLE_OIDC_TOKEN_V2, CIRCLE_OIDC_TOKEN or the file OIDC_TOKEN_FILE. The token goes to STS
    and the account is impersonated, as gcloud's create-cred-config file would have it;
    WIF_STS_ENDPOINT and WIF_IAMCREDENTIALS_ENDPOINT point those two calls elsewhere (tests)."""
    from google.auth import identity_pool

    account = os.environ.get("GCP_DEPLOYER_SA")
    if not account:
        raise CredentialsMissing("GCP_WIF_PROVIDER is set but GCP_DEPLOYER_SA is not")
    token = os.environ.get("CIRCLE_OIDC_TOKEN_V2") or os.environ.get("CIRCLE_OIDC_TOKEN")
    if not token and os.environ.get("OIDC_TOKEN_FILE"):
        token = Path(os.environ["OIDC_TOKEN_FILE"]).read_text().strip()
    if not token:
        raise CredentialsMissing("no OIDC token: CIRCLE_OIDC_TOKEN_V2 is empty (is this a "
                                 "CircleCI job with OIDC?)")  # fmt: skip
    sts = os.environ.get("WIF_STS_ENDPOINT") or "https://sts.googleapis.com"
    iam = os.environ.get("WIF_IAMCREDENTIALS_ENDPOINT") or "https://iamcredentials.googleapis.com"
    return identity_pool.Credentials(
        audience=f"//iam.googleapis.com/{provider}",
        subject_token_type="urn:ietf:params:oauth:token-type:jwt",
        token_url=f"{sts}/v1/token",
        service_account_impersonation_url=(
            f"{iam}/v1/projects/-/serviceAccounts/{account}:generateAccessToken"
        ),
        subject_token_supplier=_OidcToken(token),
        scopes=list(SCOPES),
    )


def client(api_root: str | None = None):
    """A Compute Engine v1 client; raises CredentialsMissing without usable credentials:
    Workload Identity Federation when GCP_WIF_PROVIDER is set, else Application Default
    Credentials."""
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError
    from googleapiclient.discovery import build_from_document

    provider = os.environ.get("GCP_WIF_PROVIDER")
    if provider:
        credentials = federated_credentials(provider)
    else:
        try:
            credentials, _ = google.auth.default(scopes=SCOPES)
        except DefaultCredentialsError as error:
            raise CredentialsMissing(str(error).splitlines()[0]) from None
    root = api_root or os.environ.get(ENDPOINT_OVERRIDE) or None
    return build_from_document(
        discovery_path().read_text(),
        credentials=credentials,
        client_options={"api_endpoint": root} if root else None,
    )


def call(request):
    """Executes a request; None for 404, CredentialsMissing for 401, PermissionMissing for 403,
    ApiFailure else."""
    from google.auth.exceptions import GoogleAuthError
    from googleapiclient.errors import HttpError

    try:
        return request.execute(num_retries=2)
    except HttpError as error:
        status = int(error.resp.status)
        if status == 404:
            return None
        message = f"{request.method} {request.uri.split('?')[0]}: HTTP {status} {error.reason}"
        if status == 403:
            raise PermissionMissing(message) from None
        if status == 401:
            raise CredentialsMissing(message) from None
        raise ApiFailure(message) from None
    except GoogleAuthError as error:
        raise CredentialsMissing(f"could not get an access token: {error}") from None
    except OSError as error:
        raise ApiFailure(f"could not reach the Compute Engine API: {error}") from None


def _scope(properties: Mapping) -> dict[str, str]:
    return {p: str(properties[p]).rsplit("/", 1)[-1] for p in SCOPE_PARAMS if p in properties}


def locate(dm_type: str, properties: Mapping) -> tuple[str, dict[str, str]]:
    """(API collection, its scope parameters) of a declared resource: firewalls, {} or
    instances, {"zone": "us-central1-a"}."""
    found = collection_for(dm_type)
    if found is None:
        raise ApiFailure(f"{dm_type} is not a Compute Engine v1 type this tool can read")
    return found[0], _scope(properties)


def get(compute, project: str, dm_type: str, name: str, properties: Mapping) -> dict | None:
    collection, scope = locate(dm_type, properties)
    methods = getattr(compute, collection)()
    name_param = collection_for(dm_type)[1]["get"]["parameterOrder"][-1]
    return call(methods.get(project=project, **scope, **{name_param: name}))


def list_all(compute, collection: str, project: str, **scope) -> list[dict]:
    methods = getattr(compute, collection)()
    request = methods.list(project=project, **scope)
    items: list[dict] = []
    while request is not None:
        page = call(request) or {}
        items.extend(page.get("items") or [])
        request = methods.list_next(request, page)
    return items


def resource_path(link: str) -> str:
    """`projects/P/global/networks/N` of a resource URL, whichever host and API root wrote it
    (a client pointed elsewhere writes its own endpoint into the URLs it builds)."""
    start = link.find("projects/")
    return link[start:] if start >= 0 else link


def read(compute, project: str, expansion: Expansion) -> LiveState:
    """Each declared resource as the API holds it, and the firewall rules and instances on the
    stack's networks (in the zones the config uses) that the deployment does not own."""
    resources = {}
    for resource in compute_resources(expansion):
        properties = resource.get("properties") or {}
        resources[resource["name"]] = get(
            compute, project, resource["type"], resource["name"], properties
        )
    owned = set(resources)
    networks = {
        resource_path(body["selfLink"])
        for r in compute_resources(expansion)
        if r["type"] == "compute.v1.network" and (body := resources[r["name"]])
    }

    def on_stack(link: object) -> bool:
        return isinstance(link, str) and resource_path(link) in networks

    neighbours: list[tuple[str, dict]] = []
    for rule in list_all(compute, "firewalls", project):
        if on_stack(rule.get("network")) and rule["name"] not in owned:
            neighbours.append(("compute.v1.firewall", rule))
    zones = sorted(
        {
            _scope(r.get("properties") or {})["zone"]
            for r in compute_resources(expansion)
            if "zone" in (r.get("properties") or {})
        }
    )
    for zone in zones:
        for instance in list_all(compute, "instances", project, zone=zone):
            nics = instance.get("networkInterfaces") or []
            if instance["name"] not in owned and any(on_stack(n.get("network")) for n in nics):
                neighbours.append(("compute.v1.instance", instance))
    return LiveState(resources, neighbours)


def wait(compute, project: str, operation: dict, timeout: float = 600) -> dict:
    """Polls a Compute Engine operation until DONE; ApiFailure with its errors if it failed."""
    deadline = time.monotonic() + timeout
    while operation.get("status") != "DONE":
        if time.monotonic() > deadline:
            raise ApiFailure(f"operation {operation.get('name')} not done after {timeout:.0f} s")
        if operation.get("zone"):
            request = compute.zoneOperations().wait(
                project=project,
                zone=operation["zone"].rsplit("/", 1)[-1],
                operation=operation["name"],
            )
        elif operation.get("region"):
            request = compute.regionOperations().wait(
                project=project,
                region=operation["region"].rsplit("/", 1)[-1],
                operation=operation["name"],
            )
        else:
            request = compute.globalOperations().wait(project=project, operation=operation["name"])
        operation = call(request) or {}
    errors = (operation.get("error") or {}).get("errors") or []
    if errors:
        detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
        raise ApiFailure(f"operation {operation.get('operationType')} on "
                         f"{operation.get('targetLink', '?')} failed: {detail}")  # fmt: skip
    return operation
