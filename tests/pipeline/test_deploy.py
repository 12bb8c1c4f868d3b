"""The deploy pipeline, end to end, offline: the real gcloud drives scripts/deploy.sh's logic.

Real in every test here: the `gcloud` 528 binary (its deployment-manager and auth commands, its
request building, operation waiting and error handling), scripts/deploy.sh, deployment.yaml and
the templates, and the dmlocal expansion engine (the emulator expands what gcloud uploads with
it). Emulated: Google's servers only. Deployment Manager's v2 API is emulators/deploymentmanager/
(on loopback, following the v2 discovery document, with a fake "cloud" behind it that holds the
resources and allocates the static IP from TEST-NET-3), and Google's OAuth 2.0 token endpoint is
emulators/oauth2.py, which verifies the RS256 assertion signed with a throwaway key made here.

Permissions: the emulators check the caller's permission for every call (emulators/iam.py).
The deployer here holds, on each project a test deploys to, exactly the roles
scripts/gcp-bootstrap.sh --engine dm grants its deployer (read from its --dry-run output), so
every test in this file also shows those roles suffice for that path.

gcloud talks to them through its own documented properties, set as CLOUDSDK_* environment
variables: api_endpoint_overrides/deploymentmanager and auth/token_host; its config lives in a
temp dir (CLOUDSDK_CONFIG), so nothing here touches the machine's gcloud setup.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from dmlocal.expand import expand_path
from emulators.deploymentmanager import DeploymentManagerEmulator
from emulators.iam import Identity, Policy, bootstrap_commands
from emulators.oauth2 import OAuth2Emulator, new_service_account_key
from tests.conftest import REPO

DEPLOY = REPO / "scripts" / "deploy.sh"
GCLOUD = shutil.which("gcloud")
DEPLOYER = "deployer@hello-proj.iam.gserviceaccount.com"
NAME = "hello"
CLOUD_PLATFORM = ("https://www.googleapis.com/auth/cloud-platform",)

pytestmark = pytest.mark.skipif(GCLOUD is None, reason="needs the real gcloud on PATH")


def stack_files() -> list[str]:
    """deployment.yaml's imports plus their schemas: the files gcloud uploads with it."""
    config = yaml.safe_load((REPO / "deployment.yaml").read_text())
    paths = []
    for entry in config["imports"]:
        paths.append(entry["path"])
        if (REPO / (entry["path"] + ".schema")).exists():
            paths.append(entry["path"] + ".schema")
    return paths


def copy_stack(dest: Path) -> Path:
    for rel in ["deployment.yaml", *stack_files()]:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, dest / rel)
    return dest


def edit_config(stack: Path, old: str, new: str) -> None:
    path = stack / "deployment.yaml"
    text = path.read_text()
    assert old in text, f"deployment.yaml no longer contains {old!r}; update this test"
    path.write_text(text.replace(old, new, 1))


class Pipeline:
    """Both emulators, a registered throwaway key, and a way to run deploy.sh and gcloud."""

    engine = "dm"

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.oauth = OAuth2Emulator()
        self.token_url = self.oauth.serve()
        self.policy = Policy()
        self.bootstrapped: set[tuple[str, str]] = set()
        self.deployers = [DEPLOYER]  # who deploys: each holds the bootstrap's deployer roles
        self.operators: list[str] = []  # members the bootstrap's OPERATORS names (make repair)
        self.dm = DeploymentManagerEmulator(verify_token=self.oauth.verify, policy=self.policy)
        self.dm_url = self.dm.serve()
        self.key, public_pem = new_service_account_key(DEPLOYER, "hello-proj", self.token_url)
        self.oauth.register_key(DEPLOYER, self.key["private_key_id"], public_pem)
        self.key_b64 = base64.b64encode(json.dumps(self.key).encode()).decode()
        self.stack = copy_stack(tmp / "stack")
        self.config_dir = tmp / "gcloud"
        self.config_dir.mkdir()

    def bootstrap(self, project: str, engine: str | None = None) -> None:
        """What gcp-bootstrap.sh grants in `project` for `engine` (default: this pipeline's),
        with each of `deployers` as its deployer."""
        engine = engine or self.engine
        if (project, engine) in self.bootstrapped:
            return
        self.bootstrapped.add((project, engine))
        commands = bootstrap_commands(
            engine,
            PROJECT_ID=project,
            CIRCLE_ORG_ID="org",
            CIRCLE_PROJECT_ID="circle",
            OPERATORS=",".join(self.operators),
        )
        bootstrap_deployer = f"serviceAccount:hello-deployer@{project}.iam.gserviceaccount.com"
        for deployer in self.deployers:
            rename = {bootstrap_deployer: f"serviceAccount:{deployer}"}
            self.policy.add_bootstrap(commands, rename=rename)

    def env(self, project: str, config_dir: Path | None = None, **extra: str) -> dict:
        self.bootstrap(project)
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(self.tmp),
            "LANG": "C.UTF-8",
            "CLOUDSDK_CONFIG": str(config_dir or self.config_dir),
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_DEPLOYMENTMANAGER": self.dm_url,
            "CLOUDSDK_AUTH_TOKEN_HOST": self.token_url,
            "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
            "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "1",
            # No probing for a GCE metadata server: loopback only.
            "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false",
            "GCP_PROJECT": project,
            "CLOUDSDK_CORE_PROJECT": project,
            "DEPLOYMENT_NAME": NAME,
            "DEPLOY_OUT_DIR": str(self.tmp / "out" / project),
            "DEPLOY_RETRY_SECONDS": "1",
        }
        env.update(extra)
        return env

    def deploy(self, project: str, *args: str, stack: Path | None = None, **extra: str):
        return subprocess.run(
            [str(DEPLOY), *args],
            cwd=stack or self.stack,
            env=self.env(project, **extra),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def gcloud(self, project: str, *args: str):
        return subprocess.run(
            [GCLOUD, *args, "--quiet"],
            env=self.env(project),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def live(self, project: str) -> dict:
        manifest = self.dm.live_manifest(project, NAME)
        assert manifest is not None, f"no live deployment {NAME} in {project}"
        return manifest

    def ensure_deployed(self, project: str) -> dict:
        """A live deployment to start from, inserted straight into the emulator (the body gcloud
        sends for `create --config deployment.yaml`); deploying it is the first test's job."""
        self.bootstrap(project)
        if self.dm.live_manifest(project, NAME) is None:
            target = {
                "config": {"content": (REPO / "deployment.yaml").read_text()},
                "imports": [
                    {"name": rel, "content": (REPO / rel).read_text()} for rel in stack_files()
                ],
            }
            status, op = self.dm.handle(
                "POST",
                f"/deploymentmanager/v2/projects/{project}/global/deployments",
                {},
                {"name": NAME, "target": target},
                self.oauth.issue(DEPLOYER, CLOUD_PLATFORM),
            )
            assert status == 200 and "error" not in op, op
        return self.live(project)

    def close(self) -> None:
        self.dm.shutdown()
        self.oauth.shutdown()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    pipeline = Pipeline(tmp_path_factory.mktemp("pipeline"))
    # Later tests deploy as gcloud's active account (deploy.sh's "by hand" path); the key path
    # itself is exercised in test_first_deploy_creates_the_stack, from an empty gcloud config.
    key_file = pipeline.tmp / "key.json"
    key_file.write_text(json.dumps(pipeline.key))
    activated = pipeline.gcloud("p", "auth", "activate-service-account", f"--key-file={key_file}")
    key_file.unlink()
    assert activated.returncode == 0, activated.stderr
    yield pipeline
    pipeline.close()


def expanded(manifest: dict) -> dict[str, dict]:
    return {r["name"]: r for r in yaml.safe_load(manifest["expandedConfig"])["resources"]}


def ip_from(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith("Public IP: ")]
    assert lines, f"deploy.sh printed no public IP:\n{stdout}"
    return lines[-1].removeprefix("Public IP: ")


def test_first_deploy_creates_the_stack(pipeline, tmp_path):
    """First deploy: deploy.sh authenticates with the base64 key (GCP_SA_KEY_B64) from an empty
    gcloud config, finds no deployment, creates it, waits, and prints the public IP.

    Real: gcloud (auth activate-service-account, describe, create), deploy.sh, the templates and
    the engine. Emulated: DM's server and Google's OAuth token endpoint.
    """
    fresh = tmp_path / "gcloud"
    fresh.mkdir()
    result = pipeline.deploy(
        "proj-first", GCP_SA_KEY_B64=pipeline.key_b64, CLOUDSDK_CONFIG=str(fresh)
    )
    assert result.returncode == 0, result.stderr
    assert "does not exist: creating it" in result.stderr
    assert "code=404" not in result.stderr  # the expected "not found" is not shown as an error

    # The token endpoint verified an assertion signed by our key, and every DM call carried a
    # token it issued (the emulator answers 401 otherwise).
    assert any(g["iss"] == DEPLOYER and "scope" in g for g in pipeline.oauth.grants)
    assert ("POST", "/deploymentmanager/v2/projects/proj-first/global/deployments", 200) in (
        pipeline.dm.requests
    )
    assert not [r for r in pipeline.dm.requests if r[2] == 401]

    # What DM holds is what the engine renders from the same files.
    want = expand_path(pipeline.stack / "deployment.yaml")
    live = expanded(pipeline.live("proj-first"))
    assert {(n, r["type"]) for n, r in live.items()} == {
        (r["name"], r["type"]) for r in want.resources
    }
    addresses = pipeline.dm.cloud_resources("proj-first")["compute.v1.address"]
    (address,) = addresses.values()
    assert ip_from(result.stdout) == address["address"]
    assert (pipeline.tmp / "out/proj-first/public-ip").read_text().strip() == address["address"]
    # The key never reaches the output.
    assert pipeline.key["private_key_id"] not in result.stdout + result.stderr
    assert "PRIVATE KEY" not in result.stdout + result.stderr


def test_a_key_the_token_endpoint_does_not_know_is_refused(pipeline, tmp_path):
    """A well-formed key whose public half is not registered: the OAuth emulator answers
    invalid_grant, gcloud cannot activate it, and deploy.sh exits 3 before touching DM.

    Real: gcloud's key flow and deploy.sh. Emulated: the token endpoint.
    """
    stranger, _ = new_service_account_key(DEPLOYER, "hello-proj", pipeline.token_url)
    fresh = tmp_path / "gcloud"
    fresh.mkdir()
    before = len(pipeline.dm.requests)
    result = pipeline.deploy(
        "proj-stranger",
        GCP_SA_KEY_B64=base64.b64encode(json.dumps(stranger).encode()).decode(),
        CLOUDSDK_CONFIG=str(fresh),
    )
    assert result.returncode == 3, result.stderr
    assert "Invalid JWT Signature." in pipeline.oauth.rejections
    assert len(pipeline.dm.requests) == before


def test_changed_firewall_rule_is_an_update_and_the_new_manifest_shows_it(pipeline, tmp_path):
    """A deploy with a changed firewall rule updates the deployment in place; DM's new manifest
    and the resource's finalProperties carry the new source range.

    Real: gcloud (describe, update), deploy.sh, templates, engine. Emulated: DM's server.
    """
    project = "proj-update"
    before = pipeline.ensure_deployed(project)
    stack = copy_stack(tmp_path)
    edit_config(stack, "- 104.154.0.0/15", "- 104.154.0.0/16")

    result = pipeline.deploy(project, stack=stack)
    assert result.returncode == 0, result.stderr
    assert "existed: updated in place" in result.stderr
    after = pipeline.live(project)
    assert after["name"] != before["name"]
    rule = expanded(after)["hello-firewall-allow-ssh"]["properties"]
    assert rule["sourceRanges"] == ["104.154.0.0/16"]
    assert expanded(before)["hello-firewall-allow-ssh"]["properties"]["sourceRanges"] == [
        "104.154.0.0/15"
    ]
    cloud = pipeline.dm.cloud_resources(project)["compute.v1.firewall"]
    assert cloud["hello-firewall-allow-ssh"]["sourceRanges"] == ["104.154.0.0/16"]
    put = f"/deploymentmanager/v2/projects/{project}/global/deployments/{NAME}"
    assert ("PUT", put, 200) in pipeline.dm.requests


def test_no_op_redeploy_changes_nothing(pipeline):
    """Re-running the pipeline on an unchanged config: an update that leaves every resource,
    its id and the static IP as they were.

    Real: gcloud, deploy.sh, templates, engine. Emulated: DM's server.
    """
    project = "proj-noop"
    before = pipeline.ensure_deployed(project)
    cloud_before = pipeline.dm.cloud_resources(project)
    result = pipeline.deploy(project)
    assert result.returncode == 0, result.stderr
    after = pipeline.live(project)
    assert expanded(after) == expanded(before)
    assert pipeline.dm.cloud_resources(project) == cloud_before
    (address,) = cloud_before["compute.v1.address"].values()
    assert ip_from(result.stdout) == address["address"]


def test_the_incident_deleted_deployment_comes_back_on_rerun(pipeline):
    """THE INCIDENT: the deployment is deleted; re-running the pipeline brings the stack back.

    First, a plain `gcloud deployment-manager deployments delete` (delete policy DELETE) is
    refused because the instance has deletion protection: the VM, its IP, subnet and network
    stay, but the firewall rules, which do not depend on the VM, are deleted (DM's documentation
    does not say a failed delete spares independent resources; the emulator takes that stricter
    reading), so re-running the pipeline at once recreates them. Then the deployment is deleted
    with ABANDON (DM forgets it; the resources stay). Re-running deploy.sh creates the
    deployment again, acquires the resources, and the public IP is unchanged.

    Real: gcloud (delete, describe, update, create), deploy.sh, templates (deletionProtection on
    by default), engine. Emulated: DM's server and the cloud behind it, including Compute
    Engine's refusal to delete a protected instance.
    """
    project = "proj-incident"
    pipeline.ensure_deployed(project)
    ip_before = pipeline.dm.cloud_resources(project)["compute.v1.address"]["hello-vm-ip"]["address"]

    refused = pipeline.gcloud(project, "deployment-manager", "deployments", "delete", NAME)
    assert refused.returncode != 0
    assert "protected against deletion" in refused.stderr
    assert pipeline.dm.live_manifest(project, NAME) is not None
    left = pipeline.dm.cloud_resources(project)
    assert set(left["compute.v1.instance"]) == {"hello-vm"}
    assert set(left["compute.v1.address"]) == {"hello-vm-ip"}
    assert not left.get("compute.v1.firewall")
    rerun = pipeline.deploy(project)
    assert rerun.returncode == 0, rerun.stderr
    assert len(pipeline.dm.cloud_resources(project)["compute.v1.firewall"]) == 6

    gone = pipeline.gcloud(
        project, "deployment-manager", "deployments", "delete", NAME, "--delete-policy=ABANDON"
    )
    assert gone.returncode == 0, gone.stderr
    assert pipeline.dm.deployment(project, NAME) is None

    result = pipeline.deploy(project)
    assert result.returncode == 0, result.stderr
    assert "does not exist: creating it" in result.stderr
    assert pipeline.dm.live_manifest(project, NAME) is not None
    assert ip_from(result.stdout) == ip_before


def test_the_incident_with_the_resources_gone_too_rebuilds_everything(pipeline):
    """The worse incident: deployment and resources both gone (deleted by hand). The re-run
    recreates every resource; the static IP is a new one, which is why the instance carries
    deletion protection and the README says so.

    Real: gcloud, deploy.sh, templates, engine. Emulated: DM's server and its cloud.
    """
    project = "proj-wiped"
    pipeline.ensure_deployed(project)
    old_ip = pipeline.dm.cloud_resources(project)["compute.v1.address"]["hello-vm-ip"]["address"]
    gone = pipeline.gcloud(
        project, "deployment-manager", "deployments", "delete", NAME, "--delete-policy=ABANDON"
    )
    assert gone.returncode == 0, gone.stderr
    pipeline.dm.forget_cloud(project)

    result = pipeline.deploy(project)
    assert result.returncode == 0, result.stderr
    want = {r["name"] for r in expand_path(pipeline.stack / "deployment.yaml").resources}
    cloud = pipeline.dm.cloud_resources(project)
    assert {name for by_name in cloud.values() for name in by_name} == want
    new_ip = cloud["compute.v1.address"]["hello-vm-ip"]["address"]
    assert ip_from(result.stdout) == new_ip != old_ip


def test_broken_config_is_rejected_and_the_live_manifest_stays(pipeline, tmp_path):
    """A config with a typo'd property: DM's operation fails with the engine's message (file,
    field, fix), deploy.sh exits 4, and the previous manifest and resources stay live.

    Real: gcloud (update and its operation-error reporting), deploy.sh, templates' schema,
    engine. Emulated: DM's server.
    """
    project = "proj-broken"
    before = pipeline.ensure_deployed(project)
    cloud_before = pipeline.dm.cloud_resources(project)
    stack = copy_stack(tmp_path)
    edit_config(stack, "machineType: e2-small", "machineTyp: e2-small")

    result = pipeline.deploy(project, stack=stack)
    assert result.returncode == 4, result.stderr
    assert "machineTyp" in result.stderr
    assert "rejected" in result.stderr
    assert pipeline.live(project)["name"] == before["name"]
    assert pipeline.dm.cloud_resources(project) == cloud_before
    assert not (tmp_path / "out").exists()


def test_two_deploys_at_once_are_serialized(pipeline, tmp_path):
    """Two pipelines deploy at the same moment. The first one's operation is held RUNNING, so
    the second finds the deployment busy (HTTP 409), backs off and retries, and both end well,
    one after the other; with retries turned off the second fails cleanly with exit 5.

    Real: gcloud, deploy.sh (its retry and backoff), templates, engine. Emulated: DM's server,
    whose `hold_operations` keeps the first operation running until the race has happened.
    """
    project = "proj-race"
    pipeline.ensure_deployed(project)
    stack = copy_stack(tmp_path / "second")
    edit_config(stack, "- 104.154.0.0/15", "- 104.154.0.0/16")
    put = f"/deploymentmanager/v2/projects/{project}/global/deployments/{NAME}"

    def start(stack_dir: Path, **extra: str) -> subprocess.Popen:
        return subprocess.Popen(
            [str(DEPLOY)],
            cwd=stack_dir,
            env=pipeline.env(project, **extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_for(condition, what: str) -> None:
        deadline = time.monotonic() + 60
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}")
            time.sleep(0.05)

    def conflicts() -> int:
        return pipeline.dm.requests.count(("PUT", put, 409))

    for retries, want_second in (("10", 0), ("0", 5)):
        seen = conflicts()
        pipeline.dm.hold_operations = True
        try:
            puts = pipeline.dm.requests.count(("PUT", put, 200))
            first = start(pipeline.stack)
            wait_for(lambda n=puts: pipeline.dm.requests.count(("PUT", put, 200)) > n, "a PUT")
            second = start(stack, DEPLOY_RETRIES=retries)
            wait_for(lambda n=seen: conflicts() > n, "the second deploy to hit the running one")
        finally:
            pipeline.dm.hold_operations = False
        _, err1 = first.communicate(timeout=120)
        _, err2 = second.communicate(timeout=120)
        assert first.returncode == 0, err1
        assert second.returncode == want_second, err2
        if want_second == 5:
            assert "busy with another deploy; gave up after 0 retries" in err2
        else:
            assert "another deploy holds" in err2
            # The second deploy ran after the first, so its config is what is live now.
            rule = expanded(pipeline.live(project))["hello-firewall-allow-ssh"]
            assert rule["properties"]["sourceRanges"] == ["104.154.0.0/16"]
    ops = sorted(
        (o for (p, _), o in pipeline.dm.operations.items() if p == project),
        key=lambda o: o["insertTime"],
    )
    for earlier, later in itertools.pairwise(ops):
        assert earlier["endTime"] <= later["startTime"], "two operations overlapped"


def test_preview_shows_the_change_and_leaves_the_deployment_as_it_was(pipeline, tmp_path):
    """`deploy.sh --preview`: DM's server-side preview on the branch's own deployment (resources
    listed with their intents), which is then deleted: the live manifest is the same one, with
    no pending update. On a project with no deployment, the preview leaves no deployment behind.

    Real: gcloud (create --preview, manifests describe, delete), deploy.sh, templates, engine.
    Emulated: DM's server.
    """
    project = "proj-preview"
    before = pipeline.ensure_deployed(project)
    stack = copy_stack(tmp_path)
    edit_config(stack, "- 104.154.0.0/15", "- 104.154.0.0/16")
    result = pipeline.deploy(project, "--preview", stack=stack)
    assert result.returncode == 0, result.stderr
    assert "IN_PREVIEW" in result.stdout
    assert pipeline.dm.deployment(project, NAME)["preview"] is None
    assert pipeline.live(project)["name"] == before["name"]
    firewalls = pipeline.dm.cloud_resources(project)["compute.v1.firewall"]
    assert firewalls["hello-firewall-allow-ssh"]["sourceRanges"] == ["104.154.0.0/15"]

    fresh = pipeline.deploy("proj-preview-new", "--preview")
    assert fresh.returncode == 0, fresh.stderr
    assert "CREATE_OR_ACQUIRE" in fresh.stdout
    assert not [n for (p, n) in pipeline.dm.state.records if p == "proj-preview-new"]
    assert pipeline.dm.cloud_resources("proj-preview-new") == {}


def test_create_cred_config_writes_a_valid_external_account_file(tmp_path):
    """The OIDC cred-config gcloud writes is a valid external_account credential: the fields
    Google's STS exchange needs, and google-auth (the library gcloud itself uses) loads it as an
    identity-pool credential and reads the subject token from the file.

    Real: gcloud's create-cred-config (a local file, no network) and google-auth's parser.
    Emulated: nothing.
    """
    from google.auth import identity_pool

    token_file = tmp_path / "oidc-token"
    token_file.write_text("header.payload.signature")
    out = tmp_path / "creds.json"
    provider = "projects/123456789012/locations/global/workloadIdentityPools/circleci/providers/cci"
    result = subprocess.run(
        [
            GCLOUD,
            "iam",
            "workload-identity-pools",
            "create-cred-config",
            provider,
            f"--service-account={DEPLOYER}",
            f"--credential-source-file={token_file}",
            f"--output-file={out}",
        ],
        env={
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
            "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
            "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(out.read_text())
    assert info["type"] == "external_account"
    assert info["audience"] == f"//iam.googleapis.com/{provider}"
    assert info["subject_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
    assert info["token_url"] == "https://sts.googleapis.com/v1/token"
    assert info["credential_source"] == {"file": str(token_file)}
    assert info["service_account_impersonation_url"] == (
        "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/"
        f"{DEPLOYER}:generateAccessToken"
    )
    credentials = identity_pool.Credentials.from_file(str(out))
    assert credentials.service_account_email == DEPLOYER
    assert credentials.retrieve_subject_token(None) == "header.payload.signature"


def test_local_run_with_an_access_token_file_and_an_injected_address(tmp_path):
    """How `make up` can reuse this path on one machine: a DM emulator whose static address is
    injected (a loopback address standing in for the public IP), and gcloud authenticated by
    its own auth/access_token_file property instead of a key. deploy.sh prints that address.

    Real: gcloud, deploy.sh, templates, engine. Emulated: DM's server (no OAuth server at all:
    the DM emulator accepts exactly one token).
    """
    token_file = tmp_path / "token"
    token_file.write_text("local-token")
    operator = Identity("operator@example.com", CLOUD_PLATFORM)
    policy = Policy()
    policy.grant(
        "projects/local-project", "user:" + operator.principal, "roles/deploymentmanager.editor"
    )
    dm = DeploymentManagerEmulator(
        verify_token=lambda t: operator if t == "local-token" else None,
        policy=policy,
        address_allocator=lambda project, name, properties: "127.0.0.42",
    )
    dm.serve()
    try:
        config_dir = tmp_path / "gcloud"
        config_dir.mkdir()
        result = subprocess.run(
            [str(DEPLOY)],
            cwd=REPO,
            env={
                "PATH": os.environ["PATH"],
                "HOME": str(tmp_path),
                "CLOUDSDK_CONFIG": str(config_dir),
                "CLOUDSDK_API_ENDPOINT_OVERRIDES_DEPLOYMENTMANAGER": dm.url,
                "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE": str(token_file),
                "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false",
                "GCP_PROJECT": "local-project",
                "DEPLOY_OUT_DIR": str(tmp_path / "out"),
            },
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        dm.shutdown()
    assert result.returncode == 0, result.stderr
    assert ip_from(result.stdout) == "127.0.0.42"
    assert (tmp_path / "out" / "public-ip").read_text() == "127.0.0.42\n"


def test_usage_errors_and_missing_credentials_have_their_own_exit_codes(tmp_path):
    """Exit 2 for a bad flag or a missing config; with no credentials at all, exit 3, or, in
    CI's branch preview (SKIP_WITHOUT_CREDENTIALS=true), a clear SKIPPED line and exit 0.

    Real: deploy.sh and gcloud (reading its empty config). Emulated: nothing; no server is
    contacted.
    """
    (tmp_path / "gcloud").mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
        "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false",
        "GCP_PROJECT": "p",
    }

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(DEPLOY), *args],
            cwd=REPO,
            env=env | extra,
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert run("--bogus").returncode == 2
    assert run(DM_CONFIG="missing.yaml").returncode == 2
    skipped = run("--preview", SKIP_WITHOUT_CREDENTIALS="true")
    assert skipped.returncode == 0 and "SKIPPED: no GCP credentials" in skipped.stderr
    assert "nothing was checked against Deployment Manager" in skipped.stderr
    skipped = run("--preview", SKIP_WITHOUT_CREDENTIALS="true", DEPLOY_ENGINE="infra-manager")
    assert skipped.returncode == 0, skipped.stderr
    assert "nothing was checked against Infrastructure Manager" in skipped.stderr
    refused = run()
    assert refused.returncode == 3 and "no credentials" in refused.stderr
