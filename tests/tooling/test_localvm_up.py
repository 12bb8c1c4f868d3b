"""`make up`'s local cloud (localvm.cloud) and what `make up` decides from it.

Real: the `gcloud` binary, scripts/deploy.sh, deployment.yaml and its templates, bash sourcing
gcloud.env, the metadata server's HTTP. Emulated: Google's servers (token endpoint, Deployment
Manager, Infrastructure Manager, Cloud Storage, the metadata server), and in the follower tests the
VM itself (FakeVM, LocalVM's shape: qemu is not booted here). tests/e2e/test_make_up.py runs
`make up` itself, VM boot included.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from localvm.cli import UpError, deploy_summary, forwarding, healthz, wait_for_version
from localvm.cloud import InstanceFollower, LocalCloud, configure_gcloud, gcloud_env
from localvm.stack import AppError, app_greeting, app_source
from tests.conftest import REPO, copy_stack

needs_gcloud = pytest.mark.skipif(shutil.which("gcloud") is None, reason="needs the real gcloud")
ACME = {"acme-directory": "https://169.254.169.2:14000/dir", "acme-directory-ca": "PEM"}


def clean_environment(home: Path) -> dict[str, str]:
    """This process's environment without anything that points gcloud or deploy.sh elsewhere."""
    keep = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CLOUDSDK_", "GCP_", "DEPLOY", "LOCAL_", "SMOKE_"))
    }
    return {**keep, "HOME": str(home)}


def sourced(state: Path, command: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """`source gcloud.env && COMMAND` in bash, as a person types it; stderr folded into stdout."""
    return subprocess.run(
        ["bash", "-c", f"source {state / 'gcloud.env'} && {command}"],
        cwd=cwd,
        env=clean_environment(state),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
        check=False,
    )


def write_contract(cloud: dict, state: Path) -> None:
    """What `make up` writes once the cloud runs: the gcloud config and gcloud.env."""
    configure_gcloud(state / "gcloud", cloud["gcloud_properties"], state / "deployer-key.json")
    (state / "gcloud.env").write_text(
        gcloud_env(state, cloud, engine="dm", cacert=state / "ca-root.pem")
    )


class FakeVM:
    """LocalVM's shape as the follower uses it: boots and stops are recorded, nothing runs."""

    def __init__(self, instance: dict) -> None:
        self.instance = instance
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True


def metadata_get(cloud: LocalCloud, path: str) -> tuple[str, dict]:
    request = urllib.request.Request(
        f"{cloud.metadata.url}/computeMetadata/v1/{path}", headers={"Metadata-Flavor": "Google"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.headers["ETag"], json.loads(response.read())


@needs_gcloud
def test_the_cloud_process_answers_gcloud_through_gcloud_env_and_stops_on_sigterm(tmp_path):
    """The process `make up` starts: its ready file, then the real gcloud, pointed at it only by
    `source gcloud.env`, lists the Deployment Manager deployments as the
    throwaway deployer, with Infrastructure Manager's endpoint set beside it; SIGTERM ends it
    cleanly, its files gone."""
    state = tmp_path / "state"
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "localvm.cloud", "--state-dir", str(state)),
            *("--image", str(tmp_path / "no-image"), "--http-port", "1", "--https-port", "2"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        ready = state / "cloud.json"
        for _ in range(300):
            if ready.exists() or process.poll() is not None:
                break
            threading.Event().wait(0.1)
        cloud = json.loads(ready.read_text())
        assert (state / "deployer-key.json").stat().st_mode & 0o077 == 0
        write_contract(cloud, state)
        result = sourced(
            state,
            "gcloud config list --format=json && "
            "gcloud deployment-manager deployments list --format=json",
        )
        assert result.returncode == 0, result.stdout
        properties, listed = result.stdout.split("\n}\n")
        properties = json.loads(properties + "}")
        assert properties["core"]["account"] == "deployer@local-project.iam.gserviceaccount.com"
        assert properties["api_endpoint_overrides"]["config"] == cloud["endpoints"]["config"]
        assert json.loads(listed) == []
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 0, output
    assert not (state / "cloud.json").exists()


@needs_gcloud
def test_the_vm_follows_the_clouds_instance_through_deploys_and_a_delete(tmp_path):
    """deploy.sh with the real gcloud, in the environment `source gcloud.env` gives: the instance
    it creates boots a VM, with its metadata (the local CA, 127.0.0.1 as external IP) served; a
    redeploy that changes app.py changes what the metadata server serves, under a new ETag, and
    wakes a waiting long poll, without a reboot; the instance deleted with `gcloud compute` (its
    deletion protection turned off first) powers the VM off, and created again boots a new one."""
    stack = copy_stack(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    booted: list[FakeVM] = []

    def boot(instance: dict) -> FakeVM:
        booted.append(FakeVM(instance))
        return booted[-1]

    with LocalCloud() as cloud:
        (state / "deployer-key.json").write_text(json.dumps(cloud.key))
        write_contract(cloud.describe(8080, 8443), state)
        follower = InstanceFollower(boot, lambda instance: cloud.serve_metadata(instance, ACME))
        deploy = "bash " + str(REPO / "scripts" / "deploy.sh")

        result = sourced(state, deploy, cwd=stack)
        assert result.returncode == 0, result.stdout
        assert deploy_summary(result.stdout) == "deployment hello created"
        assert follower.follow(cloud.instance()) == [
            "instance hello-vm running: booting a fresh disk"
        ]
        assert follower.follow(cloud.instance()) == []
        etag, attributes = metadata_get(cloud, "instance/attributes/?recursive=true")
        assert attributes["app-py"] == (stack / "app" / "app.py").read_text()
        assert {k: attributes[k] for k in ACME} == ACME
        nic = "instance/network-interfaces/0/access-configs/0/?recursive=true"
        assert metadata_get(cloud, nic)[1]["externalIp"] == "127.0.0.1"
        nat_ip = booted[0].instance["networkInterfaces"][0]["accessConfigs"][0]["natIP"]
        assert forwarding(booted[0].instance, "http://a/", "https://b/").startswith(
            f"public IP {nat_ip} is the emulated cloud's address for hello-vm"
        )

        woken: list[tuple[str, dict]] = []
        poll = "instance/attributes/?recursive=true&wait_for_change=true&last_etag=" + etag
        waiter = threading.Thread(target=lambda: woken.append(metadata_get(cloud, poll)))
        waiter.start()
        app = stack / "app" / "app.py"
        app.write_text(app.read_text().replace(app_greeting(app), "Hello from the inner loop"))
        result = sourced(state, deploy, cwd=stack)
        assert result.returncode == 0, result.stdout
        assert follower.follow(cloud.instance()) == [
            "instance hello-vm changed: the metadata server serves it"
        ]
        waiter.join(timeout=30)
        ((new_etag, attributes),) = woken
        assert new_etag != etag and "Hello from the inner loop" in attributes["app-py"]
        assert len(booted) == 1 and not booted[0].stopped

        # The incident, as someone would cause it in a terminal.
        instance = cloud.instance()
        result = sourced(
            state,
            "gcloud compute instances update hello-vm --zone=us-central1-a "
            "--no-deletion-protection && "
            "gcloud compute instances delete hello-vm --zone=us-central1-a --quiet",
        )
        assert result.returncode == 0, result.stdout
        assert follower.follow(cloud.instance()) == ["instance hello-vm deleted: VM powered off"]
        assert booted[0].stopped
        # What a repair does: the same instance created again, a new one to Compute Engine.
        del instance["id"]
        cloud.dm.materialize("local-project", "compute.v1.instance", "hello-vm", instance, None)
        assert follower.follow(cloud.instance()) == [
            "instance hello-vm running: booting a fresh disk"
        ]
        assert len(booted) == 2 and booted[1].instance["id"] != booted[0].instance["id"]


def test_a_stopped_instance_powers_the_vm_off_and_a_started_one_boots_it():
    """compute.v1 Instance.status: TERMINATED (after instances.stop) has no VM; RUNNING again
    (instances.start) boots one; a metadata change while stopped is served, with nothing booted."""
    booted: list[FakeVM] = []
    served: list[dict] = []
    follower = InstanceFollower(lambda i: booted.append(FakeVM(i)) or booted[-1], served.append)
    running = {"name": "hello-vm", "id": "1", "status": "RUNNING", "metadata": {"items": []}}
    stopped = {**running, "status": "TERMINATED"}
    assert follower.follow(running) == ["instance hello-vm running: booting a fresh disk"]
    assert follower.follow(stopped) == ["instance hello-vm terminated: VM powered off"]
    assert booted[0].stopped and follower.vm is None
    assert follower.follow({**stopped, "metadata": {"items": [{"key": "a", "value": "b"}]}}) == []
    assert len(served) == 3 and len(booted) == 1
    assert follower.follow(running) == ["instance hello-vm running: booting a fresh disk"]
    assert follower.follow({**running, "id": "2"}) == [
        "instance hello-vm replaced: VM powered off",
        "instance hello-vm running: booting a fresh disk",
    ]
    assert [vm.stopped for vm in booted] == [True, True, False]


def test_make_up_waits_for_the_deployed_version_and_names_a_refusal():
    """The VM's /healthz, as issue 20's VM reports it: the new version served ends the wait; the
    new version refused ends it with the VM's reason; an old version served until the deadline
    says what is served."""
    answers = iter([None, {"status": "ok", "version": "old"}, {"version": "new"}])
    assert wait_for_version("new", lambda: next(answers), lambda: True, 10, 0)["version"] == "new"

    refused = {"version": "old", "refused": {"version": "new", "reason": "import failed"}}
    reason = "refused version new: import failed; it still serves version old"
    with pytest.raises(UpError, match=reason):
        wait_for_version("new", lambda: refused, lambda: True, 10, 0)
    with pytest.raises(UpError, match="no version new after 0 s: it serves version old"):
        wait_for_version("new", lambda: {"version": "old"}, lambda: True, 0, 0)
    with pytest.raises(UpError, match="the VM is not running"):
        wait_for_version("new", lambda: None, lambda: False, 10, 0)


def test_healthz_is_the_apps_json_and_a_redirect_is_not_health():
    """A front that answers 301 on /healthz (HTTPS on, the old redirect) is not healthy."""

    class Front(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.server.redirect:
                self.send_response(301)
                self.send_header("Location", "https://127.0.0.1/healthz")
                body = b""
            else:
                self.send_response(200)
                body = b'{"status": "ok", "version": "v1"}'
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Front)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        server.redirect = False
        port = server.server_address[1]
        assert healthz(port, 1, Path("/nonexistent")) == {"status": "ok", "version": "v1"}
        server.redirect = True
        assert healthz(port, 1, Path("/nonexistent")) is None
    finally:
        server.shutdown()


def test_an_app_that_cannot_compile_is_refused_with_its_file_and_line(tmp_path):
    app = tmp_path / "app.py"
    app.write_text('GREETING = "Hi"\ndef broken(:\n')
    with pytest.raises(AppError, match=r"app\.py, line 2: .*fix it"):
        app_source(app)
    app.write_text("print('no greeting')\n")
    with pytest.raises(AppError, match="no `GREETING"):
        app_greeting(app)


def test_the_tools_never_import_the_app_they_deploy():
    """tools/ reads app/app.py (localvm.stack.app_source); an import would crash `make up` on an
    app that cannot import, before anything is deployed."""
    importers = []
    for module in (REPO / "tools").rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(name == "app" or name.startswith("app.") for name in names):
                importers.append(str(module.relative_to(REPO)))
    assert importers == []


def test_make_up_installs_no_browser():
    """Chromium and certutil are the e2e tests' (install-system-deps.sh `browser`)."""
    from localvm.cli import HOST_PURPOSES

    listed = subprocess.run(
        ["bash", str(REPO / "scripts/install-system-deps.sh"), "--list", *HOST_PURPOSES],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "qemu-system-x86" in listed and "pebble" in listed
    assert not {"chromium", "libnss3-tools"} & set(listed)


def test_the_venv_build_keeps_pips_output_in_its_log_and_prints_its_end_on_a_failure(tmp_path):
    """pip prints warnings even with --quiet (one per missing index directory in a machine's pip
    config); a first `make up` shows one line for the venv, and pip's own words only on a failure.
    The real Makefile and pip, in a copy whose requirements file has an operator's typo."""
    copy_stack(tmp_path, "Makefile", "pyproject.toml", "scripts")
    (tmp_path / "tools").mkdir()
    requirements = tmp_path / "tools/requirements.txt"
    requirements.write_text("flask=3.1.3\n")

    def build_venv() -> subprocess.CompletedProcess:
        return subprocess.run(
            ["make", "--no-print-directory", ".venv/.installed"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )

    result = build_venv()
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    log = (tmp_path / ".state/venv.log").read_text()
    error = "ERROR: Invalid requirement: 'flask=3.1.3' (from line 1 of tools/requirements.txt)"
    assert error in log.splitlines() and error in result.stderr.splitlines()
    assert "make: building .venv failed; full log: .state/venv.log" in result.stderr.splitlines()

    requirements.write_text("flask==3.1.3\n")
    fixed = build_venv()
    assert fixed.returncode == 0 and fixed.stderr == "", fixed.stdout + fixed.stderr
    assert re.fullmatch(
        r"==> venv: \.venv from tools/requirements\.txt, "
        r"pip's output in \.state/venv\.log \(\d+ s\)\n",
        fixed.stdout,
    )
    assert "Successfully installed" in (tmp_path / ".state/venv.log").read_text()
