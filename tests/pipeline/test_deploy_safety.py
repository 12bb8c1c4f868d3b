"""What a deploy or a preview may leave behind when things go wrong, with the real gcloud.

Real in every test: the `gcloud` 528 binary, scripts/deploy.sh, deployment.yaml and the templates,
the dmlocal engine and `dmlocal changes`. Emulated: Google's servers only (emulators/
deploymentmanager: DM's API, DM's per-resource state, and the Compute Engine resources behind it;
emulators/oauth2: the token endpoint), as in test_deploy.py, whose harness this reuses.

Deployment Manager behaviour these tests rely on, and where it is documented:
  * an update compares the new manifest with what is deployed and changes only what differs
    ("Updating a deployment", cloud.google.com/deployment-manager/docs/deployments/
    updating-deployments; the v2 discovery document: Resource.manifest is "the current
    configuration of this resource");
  * resources are applied in dependency order and a failure does not roll back: the v2 discovery
    document's Deployment.manifest is "the last manifest that was successfully deployed", and
    ResourceUpdate.state includes FAILED;
  * a field the Compute Engine API cannot change on a live resource fails the update at that
    resource (compute.v1 discovery document: Subnetwork.ipCidrRange "is set at resource creation
    time"; an instance's zone is part of its URL).
Where DM's documentation is silent the emulator takes the stricter reading, and the test says so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dmlocal.expand import expand_path
from tests.conftest import REPO
from tests.pipeline.test_deploy import (
    DEPLOY,
    GCLOUD,
    NAME,
    Pipeline,
    copy_stack,
    edit_config,
    expanded,
    ip_from,
)

DMLOCAL = str(Path(sys.executable).parent / "dmlocal")

pytestmark = pytest.mark.skipif(GCLOUD is None, reason="needs the real gcloud on PATH")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    pipeline = Pipeline(tmp_path_factory.mktemp("safety"))
    key_file = pipeline.tmp / "key.json"
    key_file.write_text(json.dumps(pipeline.key))
    activated = pipeline.gcloud("p", "auth", "activate-service-account", f"--key-file={key_file}")
    key_file.unlink()
    assert activated.returncode == 0, activated.stderr
    yield pipeline
    pipeline.close()


def start(pipeline: Pipeline, project: str, *args: str, stack: Path | None = None, **extra: str):
    """deploy.sh in the background, in its own process group (as a CI job step runs)."""
    return subprocess.Popen(
        [str(DEPLOY), *args],
        cwd=stack or pipeline.stack,
        env=pipeline.env(project, DMLOCAL=DMLOCAL, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for(condition, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def production_state(pipeline: Pipeline, project: str) -> tuple:
    """Everything a preview must never change: the live manifest, the pending preview slot, and
    every resource in the emulated cloud."""
    record = pipeline.dm.deployment(project, NAME)
    return (
        record and record["manifest"],
        record and record["preview"],
        pipeline.dm.cloud_resources(project),
    )


def deployments(pipeline: Pipeline, project: str) -> list[str]:
    return sorted(n for (p, n) in pipeline.dm.state.records if p == project)


def operations_on(pipeline: Pipeline, project: str, name: str) -> list[str]:
    link = f"/deployments/{name}"
    return [
        op["operationType"]
        for (p, _), op in sorted(pipeline.dm.operations.items(), key=lambda i: i[1]["insertTime"])
        if p == project and op["targetLink"].endswith(link)
    ]


# -- stricter updates: DM leaves unchanged resources alone ---------------------------------------


def test_a_resource_deleted_behind_dms_back_stays_deleted_on_a_no_op_deploy(pipeline):
    """A firewall rule deleted by hand (console) is NOT restored by re-running an unchanged
    deploy: DM compares manifests, sees nothing to do for that resource, and does not look at
    the cloud. (DM's documentation does not say an update re-reads unchanged resources; the
    emulator takes the stricter reading.) The recovery that works: drop DM's record with
    ABANDON and deploy again, which acquires what exists and creates what is missing, keeping
    the static IP.

    Real: gcloud (update, delete --delete-policy=ABANDON, create), deploy.sh. Emulated: DM and
    the cloud, including the out-of-band delete.
    """
    project = "proj-oob"
    pipeline.ensure_deployed(project)
    ip = pipeline.dm.cloud_resources(project)["compute.v1.address"]["hello-vm-ip"]["address"]
    pipeline.dm.delete_behind_dms_back(project, "compute.v1.firewall", "hello-firewall-allow-ssh")

    rerun = pipeline.deploy(project)
    assert rerun.returncode == 0, rerun.stderr
    assert (
        "hello-firewall-allow-ssh"
        not in pipeline.dm.cloud_resources(project)["compute.v1.firewall"]
    )

    gone = pipeline.gcloud(
        project, "deployment-manager", "deployments", "delete", NAME, "--delete-policy=ABANDON"
    )
    assert gone.returncode == 0, gone.stderr
    recovered = pipeline.deploy(project)
    assert recovered.returncode == 0, recovered.stderr
    assert "does not exist: creating it" in recovered.stderr
    cloud = pipeline.dm.cloud_resources(project)
    assert "hello-firewall-allow-ssh" in cloud["compute.v1.firewall"]
    assert ip_from(recovered.stdout) == ip


# -- honest exit codes: rejected before applying vs. stopped mid-apply ---------------------------


def test_a_resource_error_mid_update_exits_8_and_says_earlier_resources_changed(pipeline, tmp_path):
    """A change to the SSH rule (applied early: firewalls come before the VM in dependency
    order) together with a move of the VM to another zone (which Compute Engine cannot do to a
    live instance). DM applies the firewall change, stops at the VM, and does not roll back:
    deploy.sh must not claim "the live deployment is unchanged" (exit 4), but exit 8 and say
    that earlier resources changed. The deployment's manifest stays the last successful one.

    Real: gcloud (update and its operation-error report), deploy.sh. Emulated: DM's in-order,
    no-rollback apply and Compute Engine's refusal (its message is the emulator's wording).
    """
    project = "proj-partial"
    before = pipeline.ensure_deployed(project)
    stack = copy_stack(tmp_path)
    edit_config(stack, "- 104.154.0.0/15", "- 104.154.0.0/16")
    edit_config(stack, "zone: us-central1-a", "zone: us-central1-b")

    result = pipeline.deploy(project, stack=stack)
    assert result.returncode == 8, result.stderr
    assert "RESOURCE_ERROR" in result.stderr
    assert "hello-vm" in result.stderr and "zone" in result.stderr
    assert "already changed" in result.stderr
    assert "unchanged" not in result.stderr.split("deploy: error:")[-1]
    cloud = pipeline.dm.cloud_resources(project)
    assert cloud["compute.v1.firewall"]["hello-firewall-allow-ssh"]["sourceRanges"] == [
        "104.154.0.0/16"
    ]
    assert cloud["compute.v1.instance"]["hello-vm"]["zone"] == "us-central1-a"
    assert pipeline.live(project)["name"] == before["name"]
    failed = pipeline.gcloud(
        project, "deployment-manager", "resources", "describe", "hello-vm",
        f"--deployment={NAME}", "--format=json",
    )  # fmt: skip
    assert failed.returncode == 0, failed.stderr
    assert json.loads(failed.stdout)["update"]["state"] == "FAILED"


def test_a_config_rejected_before_applying_still_exits_4_with_nothing_changed(pipeline, tmp_path):
    """The other case keeps its promise: a template error fails the operation before any
    resource (MANIFEST_EXPANSION_USER_ERROR), deploy.sh exits 4 and says the live deployment is
    unchanged, and it is.

    Real: gcloud, deploy.sh, the engine's error. Emulated: DM.
    """
    project = "proj-rejected"
    pipeline.ensure_deployed(project)
    before = production_state(pipeline, project)
    stack = copy_stack(tmp_path)
    edit_config(stack, "machineType: e2-small", "machineTyp: e2-small")
    result = pipeline.deploy(project, stack=stack)
    assert result.returncode == 4, result.stderr
    assert "before applying any resource" in result.stderr
    assert production_state(pipeline, project)[0] == before[0]
    assert production_state(pipeline, project)[2] == before[2]


# -- changes DM cannot apply in place ------------------------------------------------------------


def test_preview_names_changes_that_need_a_new_resource_and_the_emulator_refuses_them(
    pipeline, tmp_path
):
    """Moving the subnet to another CIDR: `deploy.sh --preview` reads the live manifest (gcloud
    deployment-manager manifests describe) and `dmlocal changes` says the subnet must be
    replaced, why (the Compute Engine API's own words), and how to do it safely; the preview
    exits 8 and production is untouched. Deployed anyway, DM stops at the subnet (exit 8) and
    the subnet keeps its range.

    Real: gcloud, deploy.sh, dmlocal changes (facts from the compute.v1 discovery document).
    Emulated: DM and Compute Engine's refusal.
    """
    project = "proj-replace"
    pipeline.ensure_deployed(project)
    before = production_state(pipeline, project)
    stack = copy_stack(tmp_path)
    edit_config(stack, "subnetCidr: 10.10.0.0/24", "subnetCidr: 10.20.0.0/24")
    edit_config(stack, "- 104.154.0.0/15", "- 104.154.0.0/16")

    preview = pipeline.deploy(project, "--preview", stack=stack, DMLOCAL=DMLOCAL)
    assert preview.returncode == 8, preview.stderr
    assert "REPLACE  hello-vpc-subnet.ipCidrRange" in preview.stdout
    assert "This field is set at resource creation time." in preview.stdout
    assert "in place hello-firewall-allow-ssh.sourceRanges" in preview.stdout
    assert "new name" in preview.stdout
    assert production_state(pipeline, project) == before

    deployed = pipeline.deploy(project, stack=stack)
    assert deployed.returncode == 8, deployed.stderr
    assert "ipCidrRange" in deployed.stderr
    subnet = pipeline.dm.cloud_resources(project)["compute.v1.subnetwork"]["hello-vpc-subnet"]
    assert subnet["ipCidrRange"] == "10.10.0.0/24"


def test_dmlocal_changes_reads_a_saved_manifest_and_says_what_applies_in_place(tmp_path):
    """`dmlocal changes` offline, against a manifest saved as gcloud prints it: a machine type
    change exits 0 but warns that it needs the VM stopped (instances.setMachineType changes "a
    stopped instance"); a zone move exits 3 naming the URL the zone is part of.

    Real: dmlocal, the compute.v1 discovery document. Emulated: nothing.
    """
    live = tmp_path / "live.yaml"
    resources = expand_path(REPO / "deployment.yaml").resources
    live.write_text(yaml.safe_dump({"expandedConfig": yaml.safe_dump({"resources": resources})}))
    stack = copy_stack(tmp_path / "stack")

    def changes() -> subprocess.CompletedProcess:
        return subprocess.run(
            [DMLOCAL, "changes", "deployment.yaml", "--against", str(live)],
            cwd=stack,
            capture_output=True,
            text=True,
            timeout=60,
        )

    same = changes()
    assert same.returncode == 0, same.stderr
    assert "no changes" in same.stdout
    edit_config(stack, "machineType: e2-small", "machineType: e2-medium")
    stop = changes()
    assert stop.returncode == 0, stop.stderr
    assert "STOP     hello-vm.machineType" in stop.stdout
    assert "instances.setMachineType" in stop.stdout
    assert "warning: Compute Engine changes this on hello-vm only while" in stop.stdout
    edit_config(stack, "zone: us-central1-a", "zone: us-central1-b")
    moved = changes()
    assert moved.returncode == 3, moved.stdout
    assert "REPLACE  hello-vm.zone" in moved.stdout
    assert "projects/{project}/zones/{zone}/instances" in moved.stdout


# -- previews cannot touch production ------------------------------------------------------------


def test_a_preview_racing_a_master_deploy_leaves_production_to_the_deploy(pipeline, tmp_path):
    """The reproduced bug: on a project with no deployment yet, a branch preview and the
    first master deploy run at once. Before, the preview used the production name, lost the
    create race, and its clean-up deleted `hello`. Now the preview runs on its own deployment:
    the master deploy creates `hello` with master's config, the preview's deployment is gone
    afterwards, and no operation of the preview ever targets `hello`.

    Real: gcloud, deploy.sh (both runs). Emulated: DM, holding operations RUNNING so the two
    overlap.
    """
    project = "proj-preview-race"
    branch_stack = copy_stack(tmp_path / "branch")
    edit_config(branch_stack, "- 104.154.0.0/15", "- 104.154.0.0/16")
    pipeline.dm.hold_operations = True
    try:
        deploy = start(pipeline, project)
        wait_for(lambda: deployments(pipeline, project) == [NAME], "the master create")
        preview = start(pipeline, project, "--preview", stack=branch_stack, CIRCLE_BRANCH="feat/x")
        wait_for(lambda: len(deployments(pipeline, project)) == 2, "the preview's create")
    finally:
        pipeline.dm.hold_operations = False
    _, deploy_err = deploy.communicate(timeout=120)
    _, preview_err = preview.communicate(timeout=120)
    assert deploy.returncode == 0, deploy_err
    assert preview.returncode == 0, preview_err
    assert deployments(pipeline, project) == [NAME]
    assert operations_on(pipeline, project, NAME) == ["insert"]
    rule = expanded(pipeline.live(project))["hello-firewall-allow-ssh"]["properties"]
    assert rule["sourceRanges"] == ["104.154.0.0/15"]
    assert pipeline.dm.deployment(project, NAME)["preview"] is None


def test_two_branch_previews_at_once_both_finish_and_leave_nothing(pipeline, tmp_path):
    """Two branches preview at the same moment (their creates held RUNNING together): each has
    its own deployment, so neither cancels the other (before: exit 6 for one of them), both
    exit 0, both deployments are removed, and production is untouched.

    Real: gcloud, deploy.sh. Emulated: DM.
    """
    project = "proj-two-previews"
    pipeline.ensure_deployed(project)
    before = production_state(pipeline, project)
    stacks = [copy_stack(tmp_path / b) for b in ("a", "b")]
    edit_config(stacks[1], "machineType: e2-small", "machineType: e2-medium")
    pipeline.dm.hold_operations = True
    try:
        branches = ("feature/a", "Feature/B_with-a-very-long-name" * 3)
        runs = [
            start(pipeline, project, "--preview", stack=s, CIRCLE_BRANCH=b)
            for s, b in zip(stacks, branches, strict=True)
        ]
        wait_for(lambda: len(deployments(pipeline, project)) == 3, "both preview creates")
        names = deployments(pipeline, project)
    finally:
        pipeline.dm.hold_operations = False
    for run in runs:
        _, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
    previews = [n for n in names if n != NAME]
    assert all(n.startswith("hello-preview-") and len(n) <= 63 for n in previews), previews
    assert deployments(pipeline, project) == [NAME]
    assert production_state(pipeline, project) == before


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_preview_killed_mid_run_leaves_production_untouched(pipeline, tmp_path, sig):
    """A preview job cancelled while DM is still working on its create. SIGTERM (CircleCI's
    cancel) runs deploy.sh's clean-up, which removes the preview deployment once DM lets it.
    SIGKILL runs nothing: the branch's preview deployment is left behind, but production is
    untouched either way, and the branch's next preview removes the leftover and succeeds.

    Real: gcloud, deploy.sh and its traps, signals to the whole process group. Emulated: DM.
    """
    project = f"proj-killed-{sig.name.lower()}"
    pipeline.ensure_deployed(project)
    before = production_state(pipeline, project)
    stack = copy_stack(tmp_path)
    edit_config(stack, "- 104.154.0.0/15", "- 104.154.0.0/16")
    pipeline.dm.hold_operations = True
    try:
        run = start(pipeline, project, "--preview", stack=stack, CIRCLE_BRANCH="killed")
        wait_for(lambda: len(deployments(pipeline, project)) == 2, "the preview's create")
        os.killpg(run.pid, sig)
        time.sleep(1)
    finally:
        pipeline.dm.hold_operations = False
    run.communicate(timeout=120)
    assert run.returncode != 0
    assert production_state(pipeline, project) == before
    if sig == signal.SIGTERM:
        assert deployments(pipeline, project) == [NAME]
    else:
        assert len(deployments(pipeline, project)) == 2  # the leftover preview shell
        again = start(pipeline, project, "--preview", stack=stack, CIRCLE_BRANCH="killed")
        _, err = again.communicate(timeout=120)
        assert again.returncode == 0, err
        assert deployments(pipeline, project) == [NAME]
        assert production_state(pipeline, project) == before
