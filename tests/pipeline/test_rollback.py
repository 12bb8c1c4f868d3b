"""The master deploy job's rollback, offline, on both engines: `make deploy`, `make smoke`, then
`make record-good` when smoke passed, or `make rollback AFTER_FAILED_SMOKE=1` when it failed,
replayed as .circleci/config.yml orders those steps (tests/pipeline/test_circleci_config.py
checks that order), in a git repository of the stack with a good commit and a bad one.

Real: the `gcloud` 528 binary (deployment-manager, infra-manager, auth), scripts/deploy.sh with
scripts/lib/dm.sh and scripts/lib/infra-manager.sh, scripts/rollback.sh (git archive of the
recorded commit), scripts/smoke.sh (curl), the templates, dmlocal, and the app the deployment
carries: the app/app.py and app/startup.sh held in the live instance's metadata answer the smoke
test through Flask, so the greeting and /healthz version are those of the deployed commit.

Emulated: Google's servers (Deployment Manager, Infrastructure Manager, Cloud Storage, OAuth, as
in test_deploy.py and test_deploy_infra_manager.py), and the VM's converge, which here is
instant: each request reads the live instance's metadata from the emulated cloud (the real
converge is tests/e2e's). The VM answers on loopback instead of the public IP, over plain HTTP.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from app.app import GREETING
from tests.conftest import REPO, copy_stack, startup_version
from tests.pipeline import test_deploy_infra_manager
from tests.pipeline.test_deploy import CLOUD_PLATFORM, DEPLOYER, GCLOUD, NAME
from tests.pipeline.test_deploy_infra_manager import full_name
from vm import METADATA_FILES

SCRIPTS = REPO / "scripts"
WRONG_GREETING = "Hello World from BenchSci?"

# The Infrastructure Manager pipeline's fixture: its emulators are a superset of Deployment
# Manager's, and each engine's deploys go to their own projects.
pipeline = test_deploy_infra_manager.pipeline

pytestmark = pytest.mark.skipif(GCLOUD is None, reason="needs the real gcloud on PATH")


class ConvergedVM:
    """The instance's app, served from what its metadata holds right now in the emulated cloud."""

    def __init__(self, pipeline, project: str, files: Path):
        self.pipeline, self.project, self.files = pipeline, project, files
        self.answering = True
        vm = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if not vm.answering:
                    self.send_error(503)
                    return
                response = vm.app().test_client().get(self.path)
                self.send_response(response.status_code)
                self.send_header("Content-Type", response.content_type)
                self.end_headers()
                self.wfile.write(response.data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.address = f"127.0.0.1:{self.server.server_port}"

    def app(self):
        """The Flask app of the live metadata, with the version startup.sh computes over it."""
        instance = self.pipeline.dm.cloud_resources(self.project)["compute.v1.instance"]
        items = {i["key"]: i["value"] for i in instance["hello-vm"]["metadata"]["items"]}
        digest = hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:16]
        root = self.files / digest
        if not root.exists():
            for key, path in METADATA_FILES.items():
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                (root / path).write_text(items[key])
            pairs = [f"{key}={root / path}" for key, path in METADATA_FILES.items()]
            (root / "version").write_text(startup_version(*pairs) + "\n")
        spec = importlib.util.spec_from_file_location(f"deployed_{digest}", root / "app/app.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.VERSION_FILE = root / "version"
        module.REFUSED_FILE = root / "refused.json"  # none: the instant converge refuses nothing
        return module.app

    def close(self) -> None:
        self.server.shutdown()


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> tuple[Path, str, str]:
    """The stack as a git repository: a good commit, then one whose app greets wrongly (the VM
    accepts it: healthy, only wrong)."""
    root = copy_stack(tmp_path_factory.mktemp("repo"))
    git(root, "init", "--quiet", "--initial-branch=master")
    git(root, "add", ".")
    identity = ("-c", "user.name=CI", "-c", "user.email=ci@example.com")
    git(root, *identity, "commit", "--quiet", "-m", "good")
    good = git(root, "rev-parse", "HEAD")
    app = root / "app/app.py"
    app.write_text(app.read_text().replace(f'"{GREETING}"', f'"{WRONG_GREETING}"', 1))
    git(root, *identity, "commit", "--quiet", "--all", "-m", "bad greeting")
    return root, good, git(root, "rev-parse", "HEAD")


class Job:
    """One engine's deploy job steps on one project, run from a checkout of the repository."""

    def __init__(self, pipeline, repo: Path, project: str, engine: str, tmp: Path):
        self.pipeline, self.repo, self.project, self.engine = pipeline, repo, project, engine
        self.vm = ConvergedVM(pipeline, project, tmp / "vm")
        # A token the emulated token endpoint issued, as gcloud's access_token_file: each
        # script run spends no gcloud call on finding an account (the key and WIF logins are
        # test_deploy.py's and test_wif.py's).
        token = tmp / "token"
        token.write_text(pipeline.oauth.issue(DEPLOYER, CLOUD_PLATFORM))
        self.env = pipeline.env(
            project,
            CLOUDSDK_AUTH_ACCESS_TOKEN_FILE=str(token),
            DEPLOY_ENGINE=engine,
            SMOKE_HTTPS="0",
            SMOKE_ATTEMPTS="2",
            SMOKE_FIRST_WAIT="1",
            IP=self.vm.address,
            CI="true",
        )

    def checkout(self, commit: str) -> None:
        git(self.repo, "checkout", "--quiet", commit)

    def run(self, script: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(SCRIPTS / script), *args],
            cwd=self.repo,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
        )

    def start(self, script: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            ["bash", str(SCRIPTS / script), *args],
            cwd=self.repo,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def deploy_and_smoke(self) -> subprocess.CompletedProcess:
        """`make deploy` then `make smoke`; with a passing smoke, `make record-good`."""
        deployed = self.run("deploy.sh")
        assert deployed.returncode == 0, deployed.stderr
        smoke = self.run("smoke.sh", self.vm.address)
        if smoke.returncode == 0:
            head = git(self.repo, "rev-parse", "HEAD")
            recorded = self.run("deploy.sh", "--record-good", head)
            assert recorded.returncode == 0, recorded.stderr
        return smoke

    def last_good(self) -> str:
        """The label as `deploy.sh --last-good` reads it through gcloud."""
        result = self.run("deploy.sh", "--last-good")
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def label(self) -> str | None:
        """The label as the emulated engine holds it (no gcloud round trip)."""
        if self.engine == "dm":
            labels = self.pipeline.dm.deployment(self.project, NAME)["labels"]
            return next((e["value"] for e in labels if e["key"] == "last-good-commit"), None)
        return self.pipeline.im.deployment(full_name(self.project))["labels"].get(
            "last-good-commit"
        )

    def greeting(self) -> str:
        return self.vm.app().test_client().get("/").get_data(as_text=True)

    def live_app(self) -> str:
        """app/app.py as the live deployment holds it, read from the engine's own record."""
        if self.engine == "dm":
            manifest = self.pipeline.live(self.project)
            return next(i["content"] for i in manifest["imports"] if i["name"] == "app/app.py")
        instance = self.pipeline.cloud(self.project)["compute.v1.instance"]["hello-vm"]
        return next(i["value"] for i in instance["metadata"]["items"] if i["key"] == "app-py")


@pytest.fixture(params=["dm", "infra-manager"])
def job(request, pipeline, repo, tmp_path):
    root, good, _ = repo
    project = f"rb-{len(request.node.name)}-{request.node.name[5:15]}-{request.param[:2]}"
    job = Job(pipeline, root, project.replace("_", "-"), request.param, tmp_path)
    job.checkout(good)
    yield job
    job.vm.close()


def test_a_deploy_that_fails_smoke_is_rolled_back(job, repo):
    """Good commit deployed, smoke passes, recorded; the bad commit deploys (the VM takes it),
    smoke fails on the greeting; the rollback step redeploys the good commit with the same
    engine, smoke passes on it, and the job ends red naming both commits and smoke's reason."""
    _, good, bad = repo
    assert job.deploy_and_smoke().returncode == 0
    assert job.last_good() == good

    job.checkout(bad)
    smoke = job.deploy_and_smoke()
    assert smoke.returncode == 1
    assert job.greeting() == WRONG_GREETING
    assert job.label() == good  # a failed smoke records nothing

    rollback = job.run("rollback.sh", "--after-failed-smoke")
    assert rollback.returncode == 1, rollback.stderr
    message = rollback.stderr.splitlines()[-1]
    assert f"commit {bad} failed its smoke test" in message
    assert "unexpected body: Hello World from BenchSci?" in message
    assert f"rolled back: {good}, the last good version, is live again" in message
    assert job.greeting() == GREETING
    assert job.live_app() == (REPO / "app/app.py").read_text()
    assert job.last_good() == good


def test_a_failed_rollback_says_so_and_what_is_live(job, repo):
    """The VM stops answering after the bad deploy (say, a firewall change cut it off): the
    rollback deploys the good commit, its smoke test fails too, and the message says the
    rollback failed and that the good commit's config is live but not serving."""
    _, good, bad = repo
    assert job.deploy_and_smoke().returncode == 0
    job.checkout(bad)
    job.vm.answering = False
    assert job.deploy_and_smoke().returncode == 1

    rollback = job.run("rollback.sh", "--after-failed-smoke")
    assert rollback.returncode == 11, rollback.stderr
    message = rollback.stderr.splitlines()[-1]
    assert "the rollback FAILED" in message
    assert f"Live now: {good[:12]}'s config, not serving as expected" in message
    assert job.live_app() == (REPO / "app/app.py").read_text()
    assert job.label() == good


def test_a_failed_deploy_is_not_rolled_back(pipeline, repo, tmp_path):
    """The rollback step runs after any failed step; when the deploy itself failed, smoke never
    ran and wrote no failure, so the step names that and changes nothing (no API call)."""
    root, good, _ = repo
    job = Job(pipeline, root, "rb-deploy-failed", "dm", tmp_path)
    job.checkout(good)
    seen = len(pipeline.dm.requests)
    rollback = job.run("rollback.sh", "--after-failed-smoke")
    job.vm.close()
    assert rollback.returncode == 10, rollback.stderr
    assert "the deploy failed before its smoke test" in rollback.stderr
    assert pipeline.dm.requests[seen:] == []


def test_the_first_deploy_has_nothing_to_roll_back_to(job, repo):
    """The first deploy of a project is the bad commit: smoke fails, nothing was ever recorded,
    so the rollback step deploys nothing and says so, naming the commit that stays live."""
    _, _, bad = repo
    job.checkout(bad)
    assert job.deploy_and_smoke().returncode == 1
    revisions = len(job.pipeline.im.revisions(full_name(job.project)) or [])
    manifest = job.pipeline.dm.live_manifest(job.project, NAME)

    rollback = job.run("rollback.sh", "--after-failed-smoke")
    assert rollback.returncode == 10, rollback.stderr
    assert f"commit {bad} failed its smoke test" in rollback.stderr
    assert "no last good version is recorded" in rollback.stderr
    assert "stays live" in rollback.stderr
    assert job.greeting() == WRONG_GREETING
    assert len(job.pipeline.im.revisions(full_name(job.project)) or []) == revisions
    assert job.pipeline.dm.live_manifest(job.project, NAME) == manifest


def test_a_deploy_queues_behind_a_rollback(job, repo):
    """A rollback's deploy is held mid-flight; a deploy of the good commit by hand, started
    then, is refused by the engine (409: one operation per deployment), backs off and applies
    after the rollback's, never at the same time; both end well. The engine serializes single
    operations only: in CI the deploy job's serial group queues a whole job (deploy, smoke,
    rollback) behind another (test_circleci_config.py checks the rollback is in that job)."""
    _, good, bad = repo
    assert job.deploy_and_smoke().returncode == 0
    job.checkout(bad)
    assert job.deploy_and_smoke().returncode == 1
    engine = job.pipeline.dm if job.engine == "dm" else job.pipeline.im
    writes = ("PUT", "PATCH", "POST")
    seen = len(engine.requests)

    def on_project(status: int) -> bool:
        return any(
            method in writes and f"/projects/{job.project}/" in path and code == status
            for method, path, code in engine.requests[seen:]
        )

    engine.hold_operations = True
    try:
        rollback = job.start("rollback.sh", "--after-failed-smoke")
        wait_for(lambda: on_project(200), "the rollback's deploy")
        job.checkout(good)
        second = job.start("deploy.sh")
        wait_for(lambda: on_project(409), "the second deploy to be refused")
    finally:
        engine.hold_operations = False
    _, rollback_err = rollback.communicate(timeout=180)
    _, second_err = second.communicate(timeout=180)
    assert rollback.returncode == 1, rollback_err
    assert "is live again" in rollback_err
    assert second.returncode == 0, second_err
    assert "another deploy holds" in second_err


def wait_for(condition, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("job", ["dm"], indirect=True)
def test_a_rollback_by_hand_to_a_named_commit(job, repo):
    """`make rollback REF=<commit>` by hand, outside CI and with no terminal to ask on: it says
    which commit it will redeploy before the deploy starts, redeploys it, smoke-tests it, records
    it, and exits 0. (Deployment Manager only: past the choice of commit it is the same engine
    verbs as the automatic rollback, which runs on both.)"""
    _, good, bad = repo
    job.checkout(bad)
    assert job.run("deploy.sh").returncode == 0
    assert job.label() is None
    job.env.pop("CI")
    rollback = job.run("rollback.sh", "--ref", good[:8])
    assert rollback.returncode == 0, rollback.stderr
    lines = rollback.stderr.splitlines()
    assert lines[0].startswith(f'rollback: will redeploy {good[:7]} "good" (CI, ')
    assert f"to deployment {NAME} in project {job.project} with {job.engine}" in lines[0]
    assert lines[-1] == f"rollback: rolled back: {good} is live and passed its smoke test"
    assert job.greeting() == GREETING
    assert job.label() == good
