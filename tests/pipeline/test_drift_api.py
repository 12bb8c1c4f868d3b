"""`make drift` and `make repair` on both engines, each kind of drift made with `gcloud compute`.

Real: the `gcloud` 528 binary making each out-of-band change as a person would in a shell
(`gcloud compute firewall-rules ...`, `gcloud compute instances ...`), pointed at the emulated
Compute Engine API by its api_endpoint_overrides/compute property; the drift tool (tools/drift)
with google-api-python-client built from the compute.v1 discovery document and google-auth
signing in with a service-account key at the token endpoint; deployment.yaml, the templates and
dmlocal's expansion; scripts/deploy.sh for the deploys. Emulated: Google's servers only: the
Deployment Manager v2 and Compute Engine v1 APIs over one state (emulators/deploymentmanager),
Infrastructure Manager's config v1 API and Cloud Storage for the infra-manager engine, and
Google's OAuth token endpoint.

Each engine deploys the stack once; then each kind of drift is made, detected with its message
and exit code, repaired, and checked clean again, in turn, on that one stack.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess

import pytest

from dmlocal.reachability import GOOGLE_SSH_RANGE, KNOWN_RANGES
from drift import cli
from tests.conftest import REPO
from tests.pipeline.test_deploy import GCLOUD, Pipeline, copy_stack, edit_config
from tests.pipeline.test_deploy_infra_manager import InfraManagerPipeline, full_name

pytestmark = pytest.mark.skipif(GCLOUD is None, reason="needs the real gcloud on PATH")

ZONE = "us-central1-a"
INTERNET = f"0.0.0.0/0 ({KNOWN_RANGES['0.0.0.0/0']})"
SSH = f"{GOOGLE_SSH_RANGE} ({KNOWN_RANGES[GOOGLE_SSH_RANGE]})"
VM = "hello-vm"


class Stack:
    """One engine's pipeline with the stack deployed, and the drift tool pointed at it."""

    def __init__(self, engine: str, tmp):
        self.engine = engine
        self.project = f"proj-drift-{engine}"
        kind = Pipeline if engine == "dm" else InfraManagerPipeline
        self.pipeline = kind(tmp)
        # The key's account runs deploys, the out-of-band changes and the repair: it holds the
        # deployer's roles and those the bootstrap grants OPERATORS.
        self.pipeline.operators = [f"serviceAccount:{self.pipeline.key['client_email']}"]
        self.key_file = tmp / "key.json"
        self.key_file.write_text(json.dumps(self.pipeline.key))
        activated = self.pipeline.gcloud(
            self.project, "auth", "activate-service-account", f"--key-file={self.key_file}"
        )
        assert activated.returncode == 0, activated.stderr
        if engine == "dm":
            self.pipeline.ensure_deployed(self.project)
        else:
            result = self.pipeline.deploy(self.project)
            assert result.returncode == 0, result.stderr
            assert self.pipeline.im.deployment(full_name(self.project)) is not None

    def env(self) -> dict[str, str]:
        return self.pipeline.env(
            self.project,
            CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE=self.pipeline.dm.compute_url,
            GOOGLE_APPLICATION_CREDENTIALS=str(self.key_file),
        )

    def change(self, *args: str) -> None:
        """`gcloud compute ARGS`, as a person would type it."""
        result = subprocess.run(
            [GCLOUD, "compute", *args, "--quiet"],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr

    def drift(self, command: str, monkeypatch, capsys) -> tuple[int, str]:
        for name in list(os.environ):
            if name.startswith(("CLOUDSDK_", "GOOGLE_", "GCP_")):
                monkeypatch.delenv(name)
        for name, value in self.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(self.pipeline.stack)
        args = ["check", "deployment.yaml", "--json"] if command == "check" else ["repair"]
        code = cli.main(args)
        captured = capsys.readouterr()
        self.last_error = captured.err
        return code, captured.out

    def live(self, type_: str, name: str) -> dict | None:
        return self.pipeline.dm.cloud_resources(self.project).get(type_, {}).get(name)

    def close(self) -> None:
        self.pipeline.close()


@pytest.fixture(scope="module", params=["dm", "infra-manager"])
def stack(request, tmp_path_factory):
    stack = Stack(request.param, tmp_path_factory.mktemp(f"drift-{request.param}"))
    yield stack
    stack.close()


def detect(stack, monkeypatch, capsys) -> list[dict]:
    code, out = stack.drift("check", monkeypatch, capsys)
    assert code == cli.EXIT_DRIFT, out
    return json.loads(out)["differences"]


def repaired(stack, monkeypatch, capsys, expect=cli.EXIT_OK) -> str:
    code, out = stack.drift("repair", monkeypatch, capsys)
    assert code == expect, out
    if expect == cli.EXIT_OK:
        again, report = stack.drift("check", monkeypatch, capsys)
        assert again == cli.EXIT_OK, report
        assert json.loads(report)["differences"] == []
    return out


def test_the_deployed_stack_has_no_drift(stack, monkeypatch, capsys):
    code, out = stack.drift("check", monkeypatch, capsys)
    assert code == cli.EXIT_OK, out
    assert json.loads(out) | {"differences": []} == json.loads(out)


def test_a_deleted_firewall_rule(stack, monkeypatch, capsys):
    stack.change("firewall-rules", "delete", "hello-firewall-allow-web")
    (found,) = detect(stack, monkeypatch, capsys)
    assert (found["kind"], found["resource"]) == ("deleted", "hello-firewall-allow-web")
    assert any(f"tcp:80, tcp:443 from {INTERNET} to hello-vm is now CLOSED" in m
               for m in found["means"]), found["means"]  # fmt: skip
    repaired(stack, monkeypatch, capsys)
    assert stack.live("compute.v1.firewall", "hello-firewall-allow-web")["sourceRanges"] == [
        "0.0.0.0/0"
    ]


def test_repair_needs_the_operator_roles_and_says_which_permission_is_missing(
    stack, monkeypatch, capsys
):
    """Repair acts with the caller's own credentials. Without the roles gcp-bootstrap.sh grants
    OPERATORS (the deployer alone holds no compute role), Compute Engine refuses the insert
    (403) and repair exits 3 naming the permission; with them, the same repair succeeds."""
    if stack.engine != "dm":
        pytest.skip("one engine is enough: repair is the same code for both")
    stack.change("firewall-rules", "delete", "hello-firewall-allow-web")
    member = stack.pipeline.operators[0]
    granted = [b for b in stack.pipeline.policy.bindings if b[1] == member]
    operator_roles = [b for b in granted if b[2].startswith("roles/compute.")]
    assert sorted(b[2] for b in operator_roles) == [
        "roles/compute.instanceAdmin.v1",
        "roles/compute.networkAdmin",
        "roles/compute.securityAdmin",
    ]
    for binding in operator_roles:
        stack.pipeline.policy.revoke(*binding)
    try:
        code, _ = stack.drift("repair", monkeypatch, capsys)
    finally:
        for binding in operator_roles:
            stack.pipeline.policy.grant(*binding)
    assert code == cli.EXIT_AUTH, stack.last_error
    denied = re.search(
        r"permission denied: .* Required '([a-zA-Z.]+)' permission", stack.last_error
    )
    assert denied, stack.last_error
    policy = stack.pipeline.policy
    assert any(denied[1] in policy.role_permissions(b[2]) for b in operator_roles), denied[1]
    assert stack.live("compute.v1.firewall", "hello-firewall-allow-web") is None
    repaired(stack, monkeypatch, capsys)


def test_deployment_manager_leaves_a_deleted_rule_deleted(stack, monkeypatch, capsys):
    """Why repair exists: DM's update does not recreate a resource deleted behind its back
    (the emulator's model of it: DM only acts on config changes)."""
    if stack.engine != "dm":
        pytest.skip("Deployment Manager only")
    stack.change("firewall-rules", "delete", "hello-firewall-allow-icmp")
    result = stack.pipeline.deploy(stack.project)
    assert result.returncode == 0, result.stderr
    assert stack.live("compute.v1.firewall", "hello-firewall-allow-icmp") is None
    repaired(stack, monkeypatch, capsys)


def test_an_edited_source_range(stack, monkeypatch, capsys):
    stack.change(
        "firewall-rules", "update", "hello-firewall-allow-ssh", "--source-ranges=0.0.0.0/0"
    )
    (found,) = detect(stack, monkeypatch, capsys)
    assert (found["field"], found["declared"], found["live"]) == (
        "sourceRanges", ["104.154.0.0/15"], ["0.0.0.0/0"]
    )  # fmt: skip
    assert found["means"] == [
        f"tcp:22 from {INTERNET} to hello-vm is now OPEN (live rule "
        "hello-firewall-allow-ssh); the config denies it (hello-firewall-deny-ingress)"
    ]
    repaired(stack, monkeypatch, capsys)


def test_a_disabled_rule(stack, monkeypatch, capsys):
    stack.change("firewall-rules", "update", "hello-firewall-allow-ssh", "--disabled")
    (found,) = detect(stack, monkeypatch, capsys)
    assert (found["resource"], found["field"], found["live"]) == (
        "hello-firewall-allow-ssh", "disabled", True
    )  # fmt: skip
    assert any(m.startswith(f"tcp:22 from {SSH} to hello-vm is now "
                            "CLOSED") for m in found["means"]), found["means"]  # fmt: skip
    repaired(stack, monkeypatch, capsys)
    assert not stack.live("compute.v1.firewall", "hello-firewall-allow-ssh").get("disabled")


def test_an_added_rule_is_reported_never_deleted(stack, monkeypatch, capsys):
    stack.change("firewall-rules", "create", "allow-all-temp", "--network=hello-vpc",
                 "--allow=all", "--source-ranges=0.0.0.0/0", "--priority=100")  # fmt: skip
    (found,) = detect(stack, monkeypatch, capsys)
    assert (found["kind"], found["resource"]) == ("unowned", "allow-all-temp")
    remove = found["remove_with"]
    assert (
        remove == f"gcloud compute firewall-rules delete allow-all-temp --project {stack.project}"
    )
    assert any("tcp:22" in m and f"from {INTERNET} to hello-vm is now OPEN" in m
               for m in found["means"]), found["means"]  # fmt: skip
    out = repaired(stack, monkeypatch, capsys, expect=cli.EXIT_DRIFT)
    assert "NOT REPAIRED: allow-all-temp (compute.v1.firewall) is not the deployment's" in out
    assert stack.live("compute.v1.firewall", "allow-all-temp") is not None
    # The command the report names removes it.
    words = shlex.split(remove)
    assert words[:2] == ["gcloud", "compute"]
    stack.change(*words[2:])
    code, _ = stack.drift("check", monkeypatch, capsys)
    assert code == cli.EXIT_OK


def test_a_removed_tag(stack, monkeypatch, capsys):
    stack.change("instances", "remove-tags", VM, f"--zone={ZONE}", "--tags=hello-web")
    (found,) = detect(stack, monkeypatch, capsys)
    assert (found["resource"], found["field"], found["declared"]) == (
        VM, "tags.items", ["hello-web"]
    )  # fmt: skip
    assert any(m.startswith(f"tcp:80, tcp:443 from {INTERNET} to hello-vm is now CLOSED")
               for m in found["means"]), found["means"]  # fmt: skip
    repaired(stack, monkeypatch, capsys)
    assert stack.live("compute.v1.instance", VM)["tags"]["items"] == ["hello-web"]


def test_edited_metadata(stack, monkeypatch, capsys):
    stack.change("instances", "add-metadata", VM, f"--zone={ZONE}",
                 "--metadata=block-project-ssh-keys=FALSE")  # fmt: skip
    (found,) = detect(stack, monkeypatch, capsys)
    assert (found["field"], found["declared"], found["live"]) == (
        "metadata.items[block-project-ssh-keys]", "TRUE", "FALSE"
    )  # fmt: skip
    repaired(stack, monkeypatch, capsys)


def test_deletion_protection_off(stack, monkeypatch, capsys):
    stack.change("instances", "update", VM, f"--zone={ZONE}", "--no-deletion-protection")
    (found,) = detect(stack, monkeypatch, capsys)
    assert (found["field"], found["declared"], found["live"]) == ("deletionProtection", True, False)
    repaired(stack, monkeypatch, capsys)
    assert stack.live("compute.v1.instance", VM)["deletionProtection"] is True


def test_edited_labels_on_the_address(stack, monkeypatch, capsys):
    """Not one of the console incidents above, so made straight through the API (setLabels,
    the call `gcloud compute addresses update --update-labels` makes), to keep this quick."""
    if stack.engine != "dm":
        pytest.skip("one engine is enough for a field the engines treat alike")
    from drift import live

    for name, value in stack.env().items():
        monkeypatch.setenv(name, value)
    compute = live.client()
    address = live.get(compute, stack.project, "compute.v1.address", "hello-vm-ip",
                       {"region": "us-central1"})  # fmt: skip
    labels = {**address["labels"], "managed-by": "someone"}
    live.wait(compute, stack.project, live.call(compute.addresses().setLabels(
        project=stack.project, region="us-central1", resource="hello-vm-ip",
        body={"labels": labels, "labelFingerprint": address["labelFingerprint"]},
    )))  # fmt: skip
    (found,) = detect(stack, monkeypatch, capsys)
    assert (found["resource"], found["field"], found["declared"], found["live"]) == (
        "hello-vm-ip", "labels.managed-by", "deployment-manager", "someone"
    )  # fmt: skip
    repaired(stack, monkeypatch, capsys)


def test_a_deleted_vm_comes_back_with_the_same_static_ip(stack, monkeypatch, capsys):
    ip = stack.live("compute.v1.address", "hello-vm-ip")["address"]
    stack.change("instances", "update", VM, f"--zone={ZONE}", "--no-deletion-protection")
    stack.change("instances", "delete", VM, f"--zone={ZONE}")
    (found,) = detect(stack, monkeypatch, capsys)
    assert (found["kind"], found["resource"], found["type"]) == (
        "deleted", VM, "compute.v1.instance"
    )  # fmt: skip
    repaired(stack, monkeypatch, capsys)
    vm = stack.live("compute.v1.instance", VM)
    assert vm["networkInterfaces"][0]["accessConfigs"][0]["natIP"] == ip
    assert vm["deletionProtection"] is True


def test_the_engine_updates_the_repaired_stack_as_before(stack, tmp_path, monkeypatch, capsys):
    """After the repairs (the VM, two rules recreated by repair), the engine's next deploy finds
    every resource by its name: a config change reaches the recreated VM, with the same IP, and
    the deploy of the config as it was leaves no drift."""
    ip = stack.live("compute.v1.address", "hello-vm-ip")["address"]
    changed = copy_stack(tmp_path / "stack")
    edit_config(changed, 'acmeEmail: ""', "acmeEmail: ops@example.com")
    result = stack.pipeline.deploy(stack.project, stack=changed)
    assert result.returncode == 0, result.stderr
    assert f"Public IP: {ip}" in result.stdout
    items = stack.live("compute.v1.instance", VM)["metadata"]["items"]
    assert {"key": "acme-email", "value": "ops@example.com"} in items
    result = stack.pipeline.deploy(stack.project)
    assert result.returncode == 0, result.stderr
    code, out = stack.drift("check", monkeypatch, capsys)
    assert code == cli.EXIT_OK, out


def test_an_api_that_refuses_the_token_exits_3_and_one_that_is_down_exits_6(
    tmp_path, monkeypatch, capsys
):
    """A real service-account key and token from the OAuth emulator; a Compute Engine API that
    answers 401 (the emulator's verifier knows no token), then none at all (a closed port)."""
    import socket

    from emulators.deploymentmanager import DeploymentManagerEmulator
    from emulators.oauth2 import OAuth2Emulator, new_service_account_key

    oauth = OAuth2Emulator()
    token_url = oauth.serve()
    refusing = DeploymentManagerEmulator(verify_token=lambda token: None)
    refusing.serve()
    email = "operator@proj.iam.gserviceaccount.com"
    key, public_pem = new_service_account_key(email, "proj", token_url)
    oauth.register_key(email, key["private_key_id"], public_pem)
    (tmp_path / "key.json").write_text(json.dumps(key))
    for name in list(os.environ):
        if name.startswith(("CLOUDSDK_", "GOOGLE_", "GCP_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "key.json"))
    monkeypatch.setenv("GCP_PROJECT", "proj")
    monkeypatch.chdir(REPO)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/compute/v1/"
    try:
        assert cli.main(["check", "--api-root", refusing.compute_url]) == cli.EXIT_AUTH
        assert "HTTP 401" in capsys.readouterr().err
        assert cli.main(["check", "--api-root", closed]) == cli.EXIT_API
        assert "could not reach the Compute Engine API" in capsys.readouterr().err
    finally:
        refusing.shutdown()
        oauth.shutdown()


def test_make_drift_and_repair_with_local_1_read_the_local_stacks_gcloud_env(stack, tmp_path):
    """`make drift LOCAL=1` and `make repair LOCAL=1` through make, as a person types them: the
    settings come from the gcloud.env file (here one written as `make up` writes it, export
    lines, pointing at this test's emulators), and without it make says to run make up."""
    if stack.engine != "dm":
        pytest.skip("one engine is enough for the make plumbing")
    env_file = tmp_path / "gcloud.env"
    names = ("GCP_PROJECT", "DEPLOYMENT_NAME", "CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE",
             "GOOGLE_APPLICATION_CREDENTIALS")  # fmt: skip
    settings = stack.env()
    env_file.write_text("".join(f"export {n}={shlex.quote(settings[n])}\n" for n in names))
    shell = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDSDK_", "GCP_"))}

    def make(*args: str, local_env=env_file):
        return subprocess.run(
            ["make", "-s", *args, "LOCAL=1", f"LOCAL_ENV={local_env}"],
            cwd=REPO, env=shell, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    missing = make("drift", local_env=tmp_path / "none.env")
    assert missing.returncode == 2 and "no local stack: run make up" in missing.stderr
    stack.change("instances", "update", VM, f"--zone={ZONE}", "--no-deletion-protection")
    drifted = make("drift")
    assert drifted.returncode == 2, drifted.stdout  # make's own code for a failed recipe
    assert "  deletionProtection: declared True, live False" in drifted.stdout.splitlines()
    fixed = make("repair")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "repair: reset hello-vm: deletionProtection" in fixed.stdout
    clean = make("drift")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "no drift: every Compute Engine resource matches the config" in clean.stdout
