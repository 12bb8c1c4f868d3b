"""The emulated Google servers themselves, at the HTTP/JSON level, without gcloud (fast).

Real: the dmlocal engine the DM emulator expands with, deployment.yaml and the templates, and
RS256 signing with a throwaway key (cryptography). Emulated: these ARE the emulators of Google's
Deployment Manager v2 API and OAuth token endpoint; the tests pin the documented behaviour the
gcloud tests rely on (auth, fingerprints, conflicts, rejected configs, JWT checks).
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import date

import pytest
import yaml
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from emulators.deploymentmanager import ApiError, DeploymentManagerEmulator
from emulators.iam import (
    AGENT_METHODS,
    METHOD_PERMISSIONS,
    REFERENCED_PERMISSIONS,
    RUNNER_METHODS,
    Identity,
    Policy,
    method_scopes,
)
from emulators.inframanager import terraform_version
from emulators.oauth2 import GOOGLE_TOKEN_URI, JWT_BEARER, OAuth2Emulator, new_service_account_key
from emulators.storage import CloudStorage
from tests.conftest import REPO

EMAIL = "deployer@p.iam.gserviceaccount.com"
BASE = "deploymentmanager/v2/projects/p/global"
CLOUD_PLATFORM = ("https://www.googleapis.com/auth/cloud-platform",)


def target() -> dict:
    config = yaml.safe_load((REPO / "deployment.yaml").read_text())
    imports = []
    for entry in config["imports"]:
        for rel in (entry["path"], entry["path"] + ".schema"):
            if (REPO / rel).exists():
                imports.append({"name": rel, "content": (REPO / rel).read_text()})
    return {"config": {"content": (REPO / "deployment.yaml").read_text()}, "imports": imports}


def call(url: str, method: str, body: dict | None = None, token: str | None = None):
    request = urllib.request.Request(
        url,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {token}"} if token else {}),
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def sign(key_file: dict, claims: dict, kid: str | None = None) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = {"alg": "RS256", "typ": "JWT", "kid": kid or key_file["private_key_id"]}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    private = serialization.load_pem_private_key(key_file["private_key"].encode(), None)
    signature = private.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64(signature)}"


@pytest.fixture(scope="module")
def servers():
    oauth = OAuth2Emulator()
    oauth.serve()
    policy = Policy()
    policy.grant("projects/p", f"serviceAccount:{EMAIL}", "roles/deploymentmanager.editor")
    dm = DeploymentManagerEmulator(verify_token=oauth.verify, policy=policy)
    dm.serve()
    key, public = new_service_account_key(EMAIL, "p", oauth.token_url)
    oauth.register_key(EMAIL, key["private_key_id"], public)
    yield oauth, dm, key
    dm.shutdown()
    oauth.shutdown()


def grant(oauth: OAuth2Emulator, assertion: str):
    data = urllib.parse.urlencode({"grant_type": JWT_BEARER, "assertion": assertion}).encode()
    try:
        with urllib.request.urlopen(oauth.token_url, data=data, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def claims(**overrides) -> dict:
    now = int(time.time())
    return {
        "iss": EMAIL,
        "aud": GOOGLE_TOKEN_URI,
        "scope": "https://www.googleapis.com/auth/cloud-platform",
        "iat": now,
        "exp": now + 3600,
    } | overrides


def test_token_endpoint_issues_a_token_for_a_good_assertion_only(servers):
    oauth, _, key = servers
    status, body = grant(oauth, sign(key, claims()))
    assert status == 200 and body["token_type"] == "Bearer"
    assert oauth.verify(body["access_token"]) == Identity(EMAIL, CLOUD_PLATFORM)

    good = sign(key, claims())
    tampered = good[:-6] + ("AAAAAA" if not good.endswith("AAAAAA") else "BBBBBB")
    for bad in (
        tampered,
        sign(key, claims(aud="https://example.com/token")),
        sign(key, claims(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)),
        sign(key, claims(exp=int(time.time()) + 7200)),  # longer than an hour
        sign(key, claims(), kid="not-a-registered-key"),
        sign(key, claims(iss="someone-else@p.iam.gserviceaccount.com")),
    ):
        status, body = grant(oauth, bad)
        assert (status, body["error"]) == (400, "invalid_grant"), body


def test_dm_answers_401_without_a_token_it_issued(servers):
    _, dm, _ = servers
    for token in (None, "ya29.made-up"):
        status, body = call(f"{dm.url}{BASE}/deployments/hello", "GET", token=token)
        assert status == 401 and body["error"]["status"] == "UNAUTHENTICATED"


def test_dm_answers_403_without_the_permission_or_the_scope(servers):
    """IAM as Google applies it, before the deployment is looked up: a caller without a role on
    the project, or a token without a scope the API accepts, gets 403 PERMISSION_DENIED in
    Google's error shape, naming the permission (deploymentmanager.deployments.get for a GET).

    Real: nothing but HTTP. Emulated: DM's server and its IAM check (emulators/iam.py)."""
    oauth, dm, _ = servers
    url = f"{dm.url}{BASE}/deployments/nothing-here"
    status, body = call(
        url, "GET", token=oauth.issue("stranger@p.iam.gserviceaccount.com", CLOUD_PLATFORM)
    )
    assert status == 403 and body["error"]["status"] == "PERMISSION_DENIED"
    assert body["error"]["message"] == (
        "Permission 'deploymentmanager.deployments.get' denied on resource 'projects/p' "
        "(or it may not exist)."
    )
    assert body["error"]["errors"][0]["reason"] == "forbidden"
    status, body = call(
        url, "GET", token=oauth.issue(EMAIL, ("https://www.googleapis.com/auth/userinfo.email",))
    )
    assert status == 403 and "insufficient authentication scopes" in body["error"]["message"]
    status, _ = call(url, "GET", token=oauth.issue(EMAIL, CLOUD_PLATFORM))
    assert status == 404


def test_dm_fingerprints_conflicts_and_rejected_configs(servers):
    oauth, dm, _ = servers
    token = oauth.issue(EMAIL, CLOUD_PLATFORM)
    deployments = f"{dm.url}{BASE}/deployments"
    status, op = call(deployments, "POST", {"name": "fp", "target": target()}, token)
    assert status == 200 and op["status"] == "DONE" and "error" not in op
    status, body = call(deployments, "POST", {"name": "fp", "target": target()}, token)
    assert status == 409

    _, current = call(f"{deployments}/fp", "GET", token=token)
    stale = base64.urlsafe_b64encode(b"stale!!!").decode()
    status, body = call(
        f"{deployments}/fp", "PUT", {"name": "fp", "target": target(), "fingerprint": stale}, token
    )
    assert status == 412, body

    broken = target()
    broken["config"]["content"] = broken["config"]["content"].replace(
        "machineType:", "machineTyp:", 1
    )
    status, op = call(
        f"{deployments}/fp",
        "PUT",
        {"name": "fp", "target": broken, "fingerprint": current["fingerprint"]},
        token,
    )
    assert status == 200 and op["status"] == "DONE"
    (error,) = op["error"]["errors"]
    assert error["code"] == "MANIFEST_EXPANSION_USER_ERROR" and "machineTyp" in error["message"]
    _, after = call(f"{deployments}/fp", "GET", token=token)
    assert after["manifest"] == current["manifest"]
    assert after["fingerprint"] != current["fingerprint"]

    # One operation at a time: while one runs, a second update is refused with 409.
    dm.hold_operations = True
    try:
        status, op = call(
            f"{deployments}/fp",
            "PUT",
            {"name": "fp", "target": target(), "fingerprint": after["fingerprint"]},
            token,
        )
        assert status == 200 and op["status"] == "RUNNING"
        _, latest = call(f"{deployments}/fp", "GET", token=token)
        status, _ = call(
            f"{deployments}/fp",
            "PUT",
            {"name": "fp", "target": target(), "fingerprint": latest["fingerprint"]},
            token,
        )
        assert status == 409
    finally:
        dm.hold_operations = False
    status, op = call(f"{dm.url}{BASE}/operations/{op['name']}", "GET", token=token)
    assert op["status"] == "DONE"


def test_dm_final_properties_resolve_references_and_the_address_is_injectable():
    dm = DeploymentManagerEmulator(address_allocator=lambda project, name, props: "192.0.2.77")
    dm.serve()
    try:
        status, op = call(f"{dm.url}{BASE}/deployments", "POST", {"name": "ip", "target": target()})
        assert status == 200 and "error" not in op, op
        _, listing = call(f"{dm.url}{BASE}/deployments/ip/resources", "GET")
        final = {r["name"]: yaml.safe_load(r["finalProperties"]) for r in listing["resources"]}
        (instance,) = [r for r in listing["resources"] if r["type"] == "compute.v1.instance"]
        nic = final[instance["name"]]["networkInterfaces"][0]
        assert nic["accessConfigs"][0]["natIP"] == "192.0.2.77"
        assert nic["subnetwork"].startswith("https://www.googleapis.com/compute/v1/projects/p/")
        assert "$(ref." not in json.dumps(final)
        _, deployment = call(f"{dm.url}{BASE}/deployments/ip", "GET")
        manifest = deployment["manifest"].rsplit("/", 1)[1]
        _, body = call(f"{dm.url}{BASE}/deployments/ip/manifests/{manifest}", "GET")
        outputs = yaml.safe_load(body["layout"])["outputs"]
        assert {o["name"]: o["finalValue"] for o in outputs}["publicIp"] == "192.0.2.77"
    finally:
        dm.shutdown()


def test_dm_updates_only_what_changed_and_stops_at_the_first_resource_error():
    """An update touches only resources whose properties (references filled in) changed: a
    no-op update leaves a resource deleted behind DM's back deleted and every other resource as
    it was; an update whose VM change Compute Engine cannot make (another zone) applies the
    firewall change before it, fails at the VM with RESOURCE_ERROR, records the failure on that
    resource, and keeps the last successful manifest. Sources: the v2 discovery document
    (Deployment.manifest, Resource.manifest, ResourceUpdate.state) and the compute.v1 insert
    path of instances (the zone is in the URL)."""
    dm = DeploymentManagerEmulator()
    dm.serve()
    deployment = f"{dm.url}{BASE}/deployments/d"

    def update(change=lambda text: text):
        _, current = call(deployment, "GET")
        body = target()
        body["config"]["content"] = change(body["config"]["content"])
        status, op = call(
            deployment, "PUT", {"target": body, "fingerprint": current["fingerprint"]}
        )
        assert status == 200
        return op

    try:
        call(f"{dm.url}{BASE}/deployments", "POST", {"name": "d", "target": target()})
        before = dm.cloud_resources("p")
        dm.delete_behind_dms_back("p", "compute.v1.firewall", "hello-firewall-allow-web")
        assert "error" not in update()
        after = dm.cloud_resources("p")
        assert "hello-firewall-allow-web" not in after["compute.v1.firewall"]
        del before["compute.v1.firewall"]["hello-firewall-allow-web"]
        assert after == before

        _, live = call(deployment, "GET")
        op = update(
            lambda text: text.replace("- 104.154.0.0/15", "- 104.154.0.0/16").replace(
                "zone: us-central1-a", "zone: us-central1-b"
            )
        )
        (error,) = op["error"]["errors"]
        assert error["code"] == "RESOURCE_ERROR"
        assert error["location"] == "/deployments/d/resources/hello-vm"
        cloud = dm.cloud_resources("p")
        assert cloud["compute.v1.firewall"]["hello-firewall-allow-ssh"]["sourceRanges"] == [
            "104.154.0.0/16"
        ]
        assert cloud["compute.v1.instance"]["hello-vm"]["zone"] == "us-central1-a"
        _, now = call(deployment, "GET")
        assert now["manifest"] == live["manifest"]
        _, vm = call(f"{deployment}/resources/hello-vm", "GET")
        assert vm["update"]["state"] == "FAILED" and vm["update"]["intent"] == "UPDATE"
    finally:
        dm.shutdown()


def test_storage_checks_each_methods_permission_and_honours_signed_urls(servers):
    """The Cloud Storage stand-in (gcp-storage-emulator behind emulators/iam.py): no token is
    401; a caller holding only storage.objects.create on the bucket may upload but not list,
    and the 403 is Cloud Storage's body naming the permission; a stranger may not upload; a
    signed download URL needs no token, and a tampered one is refused.

    Real: nothing but HTTP. Emulated: Cloud Storage and its IAM check."""
    oauth, _, _ = servers
    policy = Policy()
    policy.custom_roles["projects/p/roles/uploader"] = frozenset({"storage.objects.create"})
    policy.grant("projects/_/buckets/b", f"serviceAccount:{EMAIL}", "projects/p/roles/uploader")
    storage = CloudStorage(verify_token=oauth.verify, policy=policy)
    try:
        storage.create_bucket("b", "p")
        url = f"{storage.base_url}/upload/storage/v1/b/b/o?uploadType=media&name=x.txt"

        def upload(token: str | None) -> tuple[int, dict]:
            headers = {"Content-Type": "text/plain"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            request = urllib.request.Request(url, b"hello", headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as error:
                return error.code, json.loads(error.read())

        assert upload(None)[0] == 401
        status, body = upload(oauth.issue("stranger@p.iam.gserviceaccount.com", CLOUD_PLATFORM))
        assert status == 403 and body["error"]["errors"][0]["reason"] == "forbidden"
        assert "Permission 'storage.objects.create' denied" in body["error"]["message"]
        token = oauth.issue(EMAIL, CLOUD_PLATFORM)
        assert upload(token)[0] == 200
        status, body = call(f"{storage.endpoint}b/b/o", "GET", token=token)
        assert status == 403 and "storage.objects.list" in body["error"]["message"]

        signed = storage.download_url("b", "x.txt")
        with urllib.request.urlopen(signed, timeout=10) as response:
            assert response.read() == b"hello"
        assert call(signed.replace("Signature=", "Signature=0"), "GET")[0] == 401
    finally:
        storage.shutdown()


def test_the_iam_data_names_methods_of_the_discovery_documents_only():
    """Every method iam.yaml maps to permissions is a method id of its service's discovery
    document (where its scopes are read), and every method the runner and the agent steps call
    is one iam.yaml maps: a misspelt method would otherwise pass unchecked or fail only when a
    test happens to call it."""
    for method in METHOD_PERMISSIONS:
        assert method_scopes(method), method
    called = {method for methods in AGENT_METHODS.values() for method in methods}
    for actions in RUNNER_METHODS.values():
        for calls in actions.values():
            if isinstance(calls, str):
                called.add(calls)
            else:
                called |= {m for methods in calls.values() for m in methods}
    assert called - METHOD_PERMISSIONS.keys() == set()
    assert REFERENCED_PERMISSIONS.keys() <= METHOD_PERMISSIONS.keys()


def test_a_token_without_the_methods_scope_is_refused_whatever_the_callers_roles(servers):
    """Google checks the token's scopes against the method's `scopes` in the API's discovery
    document before IAM: a caller whose roles allow the call, holding a read-only token
    (compute.readonly, cloud-platform.read-only, devstorage.read_only), reads but cannot write,
    and a token scoped for another API (devstorage) cannot even read Compute. The 403 is
    Google's: "Request had insufficient authentication scopes.", errors[].reason
    insufficientPermissions, an ErrorInfo ACCESS_TOKEN_SCOPE_INSUFFICIENT naming the service and,
    for Compute, the method as it names them (compute.v1.ZonesService.List in a reported answer,
    mondoohq/mql#3851); Cloud Storage answers in its own words, "Provided scope(s) are not
    authorized" (googleapis/google-cloud-cpp#7334).

    Real: the discovery documents google-api-python-client ships (the scopes). Emulated: DM,
    Compute Engine, Cloud Storage and their IAM check."""
    oauth, dm, _ = servers
    scope = "https://www.googleapis.com/auth/"
    policy = dm.policy
    for role in ("roles/compute.viewer", "roles/compute.securityAdmin"):
        policy.grant("projects/p", f"serviceAccount:{EMAIL}", role)
    firewalls = f"{dm.compute_url}projects/p/global/firewalls"
    rule = {
        "name": "r",
        "network": "projects/p/global/networks/n",
        "allowed": [{"IPProtocol": "tcp"}],
    }

    readonly = oauth.issue(EMAIL, (f"{scope}compute.readonly",))
    assert call(firewalls, "GET", token=readonly)[0] == 200
    status, body = call(firewalls, "POST", rule, token=readonly)
    assert status == 403, body
    error = body["error"]
    assert error["message"] == "Request had insufficient authentication scopes."
    assert error["status"] == "PERMISSION_DENIED"
    assert error["errors"][0]["reason"] == "insufficientPermissions"
    assert error["details"][0]["reason"] == "ACCESS_TOKEN_SCOPE_INSUFFICIENT"
    assert error["details"][0]["metadata"] == {
        "service": "compute.googleapis.com",
        "method": "compute.v1.FirewallsService.Insert",
    }
    storage_only = oauth.issue(EMAIL, (f"{scope}devstorage.read_only",))
    assert call(firewalls, "GET", token=storage_only)[0] == 403
    full = oauth.issue(EMAIL, (f"{scope}compute",))
    assert call(firewalls, "POST", rule, token=full)[0] == 404  # past IAM: no network n

    deployments = f"{dm.url}{BASE}/deployments"
    dm_readonly = oauth.issue(EMAIL, (f"{scope}cloud-platform.read-only",))
    assert call(f"{deployments}/nothing-here", "GET", token=dm_readonly)[0] == 404
    status, body = call(deployments, "POST", {"name": "ro", "target": target()}, dm_readonly)
    assert status == 403 and body["error"]["details"][0]["metadata"] == {
        "service": "deploymentmanager.googleapis.com"
    }

    policy.grant("projects/p", f"serviceAccount:{EMAIL}", "roles/config.agent")
    storage = CloudStorage(verify_token=oauth.verify, policy=policy)
    try:
        storage.create_bucket("scoped", "p")
        gcs_readonly = oauth.issue(EMAIL, (f"{scope}devstorage.read_only",))
        assert call(f"{storage.endpoint}b/scoped/o", "GET", token=gcs_readonly)[0] == 200
        status, body = call(f"{storage.endpoint}b?project=p", "POST", {"name": "x"}, gcs_readonly)
        assert status == 403
        assert body["error"]["message"] == "Provided scope(s) are not authorized"
    finally:
        storage.shutdown()


@pytest.mark.parametrize(
    ("constraint", "current", "today", "expected"),
    [
        (None, None, "2026-12-01", "1.5.7"),  # no constraint: the newest
        ("=1.4.7", None, "2026-12-01", "1.4.7"),
        ("~> 1.3.0", None, "2026-12-01", "1.3.10"),
        (">= 1.2, < 1.4", None, "2026-12-01", "1.3.10"),
        ("=1.2.3", None, "2026-01-20", "1.2.3"),  # deprecated, still supported
        ("=1.2.3", None, "2026-12-01", "supports: 1.3.10, 1.4.7, 1.5.7"),  # support ended
        (">= 1.6", None, "2026-12-01", "accepts no Terraform version"),
        ("=1.4.7", "1.5.7", "2026-12-01", "a newer version only"),  # no downgrade
        ("1.5.x", None, "2026-12-01", "Malformed constraint"),
    ],
)
def test_im_runs_the_terraform_version_its_documentation_lists(
    constraint, current, today, expected
):
    """Infrastructure Manager's "Supported Terraform versions"
    (https://cloud.google.com/infrastructure-manager/docs/terraform): 1.3.10, 1.4.7, 1.5.7, and
    1.2.3 until its end of support on 2026-02-08; the newest when no --tf-version-constraint is
    given; an update may move to a newer version, not an older one. Emulated: which version the
    IM emulator picks, and its 400 otherwise (the wording is the emulator's)."""
    day = date.fromisoformat(today)
    if expected[0].isdigit():
        assert terraform_version(constraint, current, day) == expected
    else:
        with pytest.raises(ApiError) as refused:
            terraform_version(constraint, current, day)
        assert refused.value.status == 400 and expected in refused.value.message
