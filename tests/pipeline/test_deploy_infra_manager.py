"""scripts/deploy.sh with DEPLOY_ENGINE=infra-manager, end to end, offline, with the real gcloud.

Real in every test here: the `gcloud` 528 binary (its infra-manager commands: the upload of
--local-source to the staging bucket, request building, operation waiting, preview export and
error reporting; deployment-manager and auth where used), scripts/deploy.sh and
scripts/lib/infra-manager.sh, deployment.yaml and the templates, `dmlocal terraform` (the
Terraform JSON that is uploaded), and the google provider 6.50.0 schema the upload is checked
against (dmlocal/provider_schema.py).

Emulated: Google's servers only. Infrastructure Manager's config v1 API is
emulators/inframanager.py, which plans and applies the uploaded Terraform with
emulators/terraform_plan.py (no Terraform or provider binary runs: neither can be downloaded
here); Cloud Storage is the gcp-storage-emulator package from PyPI (emulators/storage.py);
Compute Engine is the "cloud" dict the Deployment Manager emulator holds, shared by both engines;
the OAuth token endpoint is emulators/oauth2.py. gcloud reaches them through its documented
properties api_endpoint_overrides/config, api_endpoint_overrides/storage and auth/token_host.

Sources for the emulated behaviour: the config v1 discovery document in google-api-python-client;
gcloud's own googlecloudsdk/command_lib/infra_manager/deploy_util.py and
staging_bucket_util.py (staging bucket PROJECT_infra_manager_staging, objects under
im_source_staging/LOCATION/DEPLOYMENT/); https://cloud.google.com/infrastructure-manager/docs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dmlocal.expand import expand_path
from emulators.deploymentmanager import ApiError, DeploymentManagerEmulator
from emulators.inframanager import InfraManagerEmulator
from emulators.storage import CloudStorage
from localvm import deploy as localvm_deploy
from tests.conftest import REPO
from tests.pipeline.test_deploy import DEPLOY, NAME, Pipeline, copy_stack, edit_config, ip_from

LOCATION = "us-central1"
MONITORING_CHECK = "gcp-types/monitoring-v3:projects.uptimeCheckConfigs"
DMLOCAL = Path(sys.executable).parent / "dmlocal"


def full_name(project: str) -> str:
    return f"projects/{project}/locations/{LOCATION}/deployments/{NAME}"


class InfraManagerPipeline(Pipeline):
    """The DM pipeline's emulators and key, plus Cloud Storage and Infrastructure Manager,
    sharing the DM emulator's cloud; the deployer holds what gcp-bootstrap.sh --engine
    infra-manager grants, and the staging bucket it creates exists."""

    engine = "infra-manager"

    def __init__(self, tmp: Path):
        self.buckets: set[str] = set()
        super().__init__(tmp)
        self.storage = CloudStorage(verify_token=self.oauth.verify, policy=self.policy)
        self.im = InfraManagerEmulator(
            self.storage, compute=self.dm, verify_token=self.oauth.verify, policy=self.policy
        )
        self.im.serve()

    def bootstrap(self, project: str, engine: str | None = None) -> None:
        super().bootstrap(project, engine)
        for bucket, owner in list(self.policy.bucket_projects.items()):
            if owner == project and bucket not in self.buckets:
                self.buckets.add(bucket)
                self.storage.create_bucket(bucket, owner)

    def env(self, project: str, config_dir: Path | None = None, **extra: str) -> dict:
        # A project deployed with an engine was set up for it (both, for a migration).
        self.bootstrap(project, extra.get("DEPLOY_ENGINE"))
        env = super().env(project, config_dir)
        env.update(
            DEPLOY_ENGINE="infra-manager",
            CLOUDSDK_API_ENDPOINT_OVERRIDES_CONFIG=self.im.url,
            CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE=self.storage.endpoint,
            DMLOCAL=str(DMLOCAL),
        )
        env.update(extra)
        return env

    def cloud(self, project: str) -> dict:
        return self.dm.cloud_resources(project)

    def close(self) -> None:
        self.im.shutdown()
        self.storage.shutdown()
        super().close()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    pipeline = InfraManagerPipeline(tmp_path_factory.mktemp("im-pipeline"))
    key_file = pipeline.tmp / "key.json"
    key_file.write_text(json.dumps(pipeline.key))
    activated = pipeline.gcloud("p", "auth", "activate-service-account", f"--key-file={key_file}")
    key_file.unlink()
    assert activated.returncode == 0, activated.stderr
    yield pipeline
    pipeline.close()


def deployed(pipeline: InfraManagerPipeline, project: str) -> dict:
    if pipeline.im.deployment(full_name(project)) is None:
        result = pipeline.deploy(project)
        assert result.returncode == 0, result.stderr
    return pipeline.im.deployment(full_name(project))


def test_create_then_print_the_ip(pipeline, tmp_path):
    """1. First deploy from an empty gcloud config, authenticating with the key: the Terraform
    is uploaded to the staging bucket, applied as revision r-1, and the IP is printed from the
    Terraform output and written for `make smoke`. Every resource of the DM expansion exists in
    the cloud with its GCE name, and the instance's metadata is byte-identical to app/."""
    fresh = tmp_path / "gcloud"
    fresh.mkdir()
    project = "im-first"
    result = pipeline.deploy(project, GCP_SA_KEY_B64=pipeline.key_b64, CLOUDSDK_CONFIG=str(fresh))
    assert result.returncode == 0, result.stderr
    deployment = pipeline.im.deployment(full_name(project))
    assert deployment["state"] == "ACTIVE"
    assert deployment["latestRevision"].endswith("/revisions/r-1")
    source = deployment["terraformBlueprint"]["gcsSource"]
    assert source.startswith(f"gs://{project}_infra_manager_staging/im_source_staging/{LOCATION}/")
    assert not [r for r in pipeline.im.requests if r[2] == 401]

    cloud = pipeline.cloud(project)
    address = cloud["compute.v1.address"]["hello-vm-ip"]["address"]
    assert ip_from(result.stdout) == address
    ip_file = Path(pipeline.env(project)["DEPLOY_OUT_DIR"]) / "public-ip"
    assert ip_file.read_text() == address + "\n"
    assert "google_compute_instance.hello-vm" in result.stdout  # the resources table

    expansion = expand_path(pipeline.stack / "deployment.yaml")
    assert {n for by_name in cloud.values() for n in by_name} == {
        r["name"] for r in expansion.resources
    }
    vm = cloud["compute.v1.instance"]["hello-vm"]
    items = {i["key"]: i["value"] for i in vm["metadata"]["items"]}
    assert items["startup-script"] == (REPO / "app" / "startup.sh").read_text()
    assert items["app-py"] == (REPO / "app" / "app.py").read_text()
    assert vm["deletionProtection"] is True
    assert vm["labels"] == expansion.of_type("compute.v1.instance")[0]["properties"]["labels"]
    assert vm["networkInterfaces"][0]["accessConfigs"][0]["natIP"] == address


def test_changed_firewall_rule_is_an_in_place_update(pipeline, tmp_path):
    """2. The SSH rule's source range changes in deployment.yaml: a new revision updates that
    rule in place; nothing else changes, the instance keeps its id."""
    project = "im-update"
    deployed(pipeline, project)
    before = pipeline.cloud(project)
    stack = copy_stack(tmp_path)
    edit_config(stack, "- 104.154.0.0/15", "- 104.154.0.0/16")
    started = time.monotonic()
    result = pipeline.deploy(project, stack=stack)
    assert result.returncode == 0, result.stderr
    print(f"update through deploy.sh: {time.monotonic() - started:.1f} s")
    after = pipeline.cloud(project)
    assert after["compute.v1.firewall"]["hello-firewall-allow-ssh"]["sourceRanges"] == [
        "104.154.0.0/16"
    ]
    changed = {
        c["address"]: c["change"]["actions"] for c in pipeline.im.last_plan(full_name(project))
    }
    assert changed.pop("google_compute_firewall.hello-firewall-allow-ssh") == ["update"]
    assert set(map(tuple, changed.values())) == {("no-op",)}
    assert (
        after["compute.v1.instance"]["hello-vm"]["id"]
        == before["compute.v1.instance"]["hello-vm"]["id"]
    )


def test_no_op_redeploy_changes_nothing(pipeline):
    """3. Deploying the same config again: a new revision whose plan is all no-op; the cloud is
    exactly as it was."""
    project = "im-noop"
    deployed(pipeline, project)
    before = pipeline.cloud(project)
    revisions = len(pipeline.im.revisions(full_name(project)))
    result = pipeline.deploy(project)
    assert result.returncode == 0, result.stderr
    assert len(pipeline.im.revisions(full_name(project))) == revisions + 1
    plan = pipeline.im.last_plan(full_name(project))
    assert {tuple(c["change"]["actions"]) for c in plan} == {("no-op",)}
    assert pipeline.cloud(project) == before


BREAK_TERRAFORM = """#!/usr/bin/env bash
# dmlocal, then a hand edit that breaks the Terraform: the argument machine_type misspelled.
set -euo pipefail
"{dmlocal}" "$@"
out=""
while (($#)); do [[ $1 == --out ]] && out=$2; shift; done
sed -i 's/"machine_type"/"machine_typ"/' "$out/main.tf.json"
"""


def test_broken_terraform_is_a_failed_revision_and_the_previous_stays_live(pipeline, tmp_path):
    """4. Terraform the provider schema rejects (a misspelled argument, written by a wrapper
    around dmlocal standing in for a hand edit) reaches Infrastructure Manager: the revision
    FAILS with the schema error, deploy.sh exits 4, the cloud is unchanged and the last APPLIED
    revision is still the one before. A config dmlocal itself refuses never leaves the machine:
    exit 4 too, and no new revision."""
    project = "im-broken"
    deployed(pipeline, project)
    before = pipeline.cloud(project)
    wrapper = tmp_path / "dmlocal-broken"
    wrapper.write_text(BREAK_TERRAFORM.format(dmlocal=DMLOCAL))
    wrapper.chmod(0o755)
    result = pipeline.deploy(project, DMLOCAL=str(wrapper))
    assert result.returncode == 4, result.stderr
    assert "machine_typ: no such argument" in result.stderr
    assert "rejected revision r-2" in result.stderr
    assert pipeline.cloud(project) == before
    states = [r["state"] for r in pipeline.im.revisions(full_name(project))]
    assert states == ["APPLIED", "FAILED"]

    stack = copy_stack(tmp_path / "stack")
    edit_config(stack, "machineType: e2-small", "machineTyp: e2-small")
    refused = pipeline.deploy(project, stack=stack)
    assert refused.returncode == 4, refused.stderr
    assert "machineTyp" in refused.stderr
    assert len(pipeline.im.revisions(full_name(project))) == 2

    recovered = pipeline.deploy(project)
    assert recovered.returncode == 0, recovered.stderr
    assert pipeline.im.deployment(full_name(project))["state"] == "ACTIVE"


def test_preview_shows_the_change_and_changes_nothing(pipeline, tmp_path):
    """5. `deploy.sh --preview`: a preview against the deployment, its JSON plan exported and
    summarised per resource, then deleted; no revision, no change in the cloud. On a project with
    no deployment, the preview lists creates and leaves nothing behind."""
    project = "im-preview"
    deployed(pipeline, project)
    before = pipeline.cloud(project)
    revisions = len(pipeline.im.revisions(full_name(project)))
    stack = copy_stack(tmp_path)
    edit_config(stack, "- 104.154.0.0/15", "- 104.154.0.0/16")
    result = pipeline.deploy(project, "--preview", stack=stack)
    assert result.returncode == 0, result.stderr
    assert "  update    google_compute_firewall.hello-firewall-allow-ssh" in result.stdout
    # Unchanged: 9 Compute Engine resources and the uptime check.
    summary = "Plan: 0 to create, 1 to update, 0 to replace, 0 to delete, 10 unchanged"
    assert summary in result.stdout
    assert pipeline.cloud(project) == before
    assert len(pipeline.im.revisions(full_name(project))) == revisions
    assert pipeline.im.previews == {}

    fresh = pipeline.deploy("im-preview-new", "--preview")
    assert fresh.returncode == 0, fresh.stderr
    assert "Plan: 11 to create, 0 to update" in fresh.stdout
    assert pipeline.im.deployment(full_name("im-preview-new")) is None
    assert pipeline.cloud("im-preview-new") == {}


def test_two_applies_at_once(pipeline, tmp_path):
    """6. Two pipelines apply at the same moment. The first apply's operation is held RUNNING
    (the deployment is locked by it), so the second gets 409 ABORTED: with retries it backs off
    and applies after the first; with retries turned off it exits 5 (busy)."""
    project = "im-race"
    deployed(pipeline, project)
    stack = copy_stack(tmp_path / "second")
    edit_config(stack, "- 104.154.0.0/15", "- 104.154.0.0/16")
    patch = f"/v1/{full_name(project)}"

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

    for retries, want_second in (("0", 5), ("10", 0)):
        conflicts = pipeline.im.requests.count(("PATCH", patch, 409))
        patches = pipeline.im.requests.count(("PATCH", patch, 200))
        pipeline.im.hold_operations = True
        try:
            first = start(pipeline.stack)
            wait_for(
                lambda n=patches: pipeline.im.requests.count(("PATCH", patch, 200)) > n, "PATCH"
            )
            assert pipeline.im.deployment(full_name(project))["lockState"] == "LOCKED"
            second = start(stack, DEPLOY_RETRIES=retries)
            wait_for(
                lambda n=conflicts: pipeline.im.requests.count(("PATCH", patch, 409)) > n,
                "the second apply to hit the locked deployment",
            )
        finally:
            pipeline.im.hold_operations = False
        _, err1 = first.communicate(timeout=120)
        _, err2 = second.communicate(timeout=120)
        assert first.returncode == 0, err1
        assert second.returncode == want_second, err2
        if want_second == 5:
            assert "busy with another deploy; gave up after 0 retries" in err2
        else:
            assert "another deploy holds" in err2
            rule = pipeline.cloud(project)["compute.v1.firewall"]["hello-firewall-allow-ssh"]
            assert rule["sourceRanges"] == ["104.154.0.0/16"]


def test_the_incident_deleted_deployment_comes_back_on_rerun(pipeline):
    """7. THE INCIDENT: `gcloud infra-manager deployments delete` (policy DELETE) is refused,
    because Terraform will not destroy the instance with deletion protection, and the stack
    stays. Deleted with ABANDON, the deployment is gone and the resources stay; re-running the
    pipeline creates the deployment again and adopts them (--import-existing-resources): the
    same instance, the same IP. The uptime check cannot be adopted (Monitoring names it, so no
    create conflicts): a second one is created beside the abandoned one (docs/monitoring.md)."""
    project = "im-incident"
    deployed(pipeline, project)
    before = pipeline.cloud(project)
    refused = pipeline.gcloud(project, "infra-manager", "deployments", "delete", full_name(project))
    assert refused.returncode != 0
    assert "deletion_protection" in refused.stderr
    assert pipeline.cloud(project) == before

    gone = pipeline.gcloud(
        project,
        "infra-manager",
        "deployments",
        "delete",
        full_name(project),
        "--delete-policy=ABANDON",
    )
    assert gone.returncode == 0, gone.stderr
    assert pipeline.im.deployment(full_name(project)) is None

    result = pipeline.deploy(project)
    assert result.returncode == 0, result.stderr
    after = pipeline.cloud(project)
    ip = before["compute.v1.address"]["hello-vm-ip"]["address"]
    assert ip_from(result.stdout) == ip
    assert (
        after["compute.v1.instance"]["hello-vm"]["id"]
        == before["compute.v1.instance"]["hello-vm"]["id"]
    )
    plan = pipeline.im.last_plan(full_name(project))
    check = "google_monitoring_uptime_check_config.hello-vm-uptime"
    adopted = [c for c in plan if c["address"] != check]
    assert all("importing" in c["change"] for c in adopted)
    assert {tuple(c["change"]["actions"]) for c in adopted} == {("no-op",)}
    assert [c["change"]["actions"] for c in plan if c["address"] == check] == [["create"]]
    checks = after[MONITORING_CHECK]
    assert checks["hello-vm-uptime"] == before[MONITORING_CHECK]["hello-vm-uptime"]
    assert len({c["name"] for c in checks.values()}) == 2


class ShutDownDeploymentManager(DeploymentManagerEmulator):
    """DM after its end of support, answering as Google answers for an API that is turned off
    for a project: HTTP 403 PERMISSION_DENIED with reason SERVICE_DISABLED (the format of
    https://cloud.google.com/apis/design/errors#error_info)."""

    def handle(self, method, path, query, body, token):
        raise ShutDownError()


class ShutDownError(ApiError):
    def __init__(self):
        super().__init__(403, "accessNotConfigured", "")

    def body(self) -> dict:
        message = (
            "Cloud Deployment Manager V2 API has not been used in project 123456789012 before "
            "or it is disabled."
        )
        return {
            "error": {
                "code": 403,
                "message": message,
                "status": "PERMISSION_DENIED",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "SERVICE_DISABLED",
                        "domain": "googleapis.com",
                        "metadata": {"service": "deploymentmanager.googleapis.com"},
                    }
                ],
            }
        }


def test_dm_shutdown_answer_exits_with_its_own_code_and_deploys_nothing(pipeline, tmp_path):
    """8. On the dm engine, DM answers that its API is turned off: deploy.sh exits 9 with a
    message naming DEPLOY_ENGINE=infra-manager and docs/migration.md, and nothing is deployed
    by either engine: the script never falls back to Infrastructure Manager by itself."""
    project = "im-dm-shutdown"
    dm = ShutDownDeploymentManager()
    dm_url = dm.serve()
    try:
        requests_before = len(pipeline.im.requests)
        for args in ((), ("--preview",)):
            result = pipeline.deploy(
                project,
                *args,
                DEPLOY_ENGINE="dm",
                CLOUDSDK_API_ENDPOINT_OVERRIDES_DEPLOYMENTMANAGER=dm_url,
            )
            assert result.returncode == 9, result.stderr
            assert "DEPLOY_ENGINE=infra-manager" in result.stderr
            assert "docs/migration.md" in result.stderr
        assert len(pipeline.im.requests) == requests_before
        assert pipeline.cloud(project) == {}
        assert dm.cloud_resources(project) == {}
    finally:
        dm.shutdown()


def test_migration_adopts_the_dm_stack_without_recreating_anything(pipeline):
    """9. THE MIGRATION: a stack created through the DM emulator (the request gcloud sends for
    `deployment-manager deployments create`) is adopted by an infra-manager apply with import
    blocks (IM_ADOPT=true): every Compute Engine resource is imported with no change, none is
    recreated (same ids, same creation times) and the IP is the same. The uptime check has no
    import ID (Monitoring names it): a new one is created and DM's stays, to be deleted by hand
    (docs/migration.md). The project was bootstrapped for Deployment Manager first, then for
    Infrastructure Manager."""
    project = "im-migrate"
    pipeline.bootstrap(project, "dm")
    pipeline.ensure_deployed(project)
    before = pipeline.cloud(project)
    result = pipeline.deploy(project, IM_ADOPT="true")
    assert result.returncode == 0, result.stderr
    after = pipeline.cloud(project)
    checks = after.pop(MONITORING_CHECK)
    dm_check = before.pop(MONITORING_CHECK)["hello-vm-uptime"]
    assert after == before  # nothing created, changed or deleted: ids and timestamps included
    assert checks["hello-vm-uptime"] == dm_check  # DM's check stays as it was...
    (new_check,) = (c for key, c in checks.items() if key != "hello-vm-uptime")
    assert new_check["name"] != dm_check["name"]  # ...beside the one Terraform created
    ip = before["compute.v1.address"]["hello-vm-ip"]["address"]
    assert ip_from(result.stdout) == ip
    plan = pipeline.im.last_plan(full_name(project))
    adopted = [c for c in plan if not c["address"].startswith("google_monitoring_")]
    assert len(adopted) == 10
    for change in adopted:
        assert change["change"]["actions"] == ["no-op"], change["address"]
        assert change["change"]["importing"]["id"].startswith(f"projects/{project}/")
    # And from now on Infrastructure Manager manages them: a change is an update.
    again = pipeline.deploy(project, IM_ADOPT="true")
    assert again.returncode == 0, again.stderr
    settled = pipeline.cloud(project)
    assert settled.pop(MONITORING_CHECK) == checks
    assert settled == before


def test_make_up_boots_from_the_metadata_infra_manager_deployed():
    """`make up DEPLOY_ENGINE=infra-manager`'s deploy step (localvm.deploy): deploy.sh with the
    infra-manager engine against the local emulators; the instance it returns, which the VM then
    boots from, carries the startup script and app files byte for byte as committed, the same
    items the DM expansion carries."""
    instance, network, output = localvm_deploy.deploy(
        str(REPO / "deployment.yaml"), "im-up", engine="infra-manager"
    )
    assert "Public IP: " in output
    assert network == "hello-vpc"
    items = {i["key"]: i["value"] for i in instance["metadata"]["items"]}
    assert items["startup-script"] == (REPO / "app" / "startup.sh").read_text()
    (dm_instance,) = expand_path(REPO / "deployment.yaml").of_type("compute.v1.instance")
    assert instance["metadata"]["items"] == dm_instance["properties"]["metadata"]["items"]


def test_a_locked_deployment_is_busy_until_it_is_unlocked(pipeline):
    """Someone holds the deployment's lock (`gcloud infra-manager deployments lock`, as before a
    state import): an apply is refused with 409, deploy.sh reports busy (exit 5 with retries
    off); `export-lock` shows who holds it, and after `unlock --lock-id` the deploy goes through.
    """
    project = "im-lock"
    deployed(pipeline, project)
    name = full_name(project)
    locked = pipeline.gcloud(project, "infra-manager", "deployments", "lock", name, "--format=json")
    assert locked.returncode == 0, locked.stderr
    lock_id = json.loads(locked.stdout)["lockId"]
    assert pipeline.im.deployment(name)["lockState"] == "LOCKED"

    busy = pipeline.deploy(project, DEPLOY_RETRIES="0")
    assert busy.returncode == 5, busy.stderr
    assert "is locked" in busy.stderr

    shown = pipeline.gcloud(
        project, "infra-manager", "deployments", "export-lock", name, "--format=json"
    )
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["who"] == "deployer@hello-proj.iam.gserviceaccount.com"
    unlocked = pipeline.gcloud(
        project, "infra-manager", "deployments", "unlock", name, f"--lock-id={lock_id}"
    )
    assert unlocked.returncode == 0, unlocked.stderr
    result = pipeline.deploy(project)
    assert result.returncode == 0, result.stderr


def test_an_unknown_engine_is_a_usage_error(tmp_path):
    result = subprocess.run(
        [str(DEPLOY)],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DEPLOY_ENGINE": "terraform"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "DEPLOY_ENGINE must be dm or infra-manager, not 'terraform'" in result.stderr
