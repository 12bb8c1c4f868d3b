"""The converge's own decisions, run from app/startup.sh on this host: what counts as healthy,
which apt sources a package install refreshes, and when the metadata watcher asks for a
converge. Real: the script, bash, curl. Emulated: loopback HTTP servers standing in for nginx's
answer (a redirect, an error, the app's JSON); the metadata server (emulators.metadata, which
follows the documented long poll)."""

from __future__ import annotations

import contextlib
import fcntl
import http.server
import json
import os
import signal
import subprocess
import threading
import time
import urllib.request

import pytest

from dmlocal.expand import default_env, expand_path
from emulators.metadata import MetadataEmulator, from_expanded_config
from tests.conftest import REPO, tamper_hashes


def startup(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / "app/startup.sh"), *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=30,
    )


@pytest.fixture
def front():
    """A loopback server answering /healthz with whatever the test sets."""
    answer = {"status": 200, "body": b"", "headers": {}}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(answer["status"])
            for name, value in answer["headers"].items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer["body"])))
            self.end_headers()
            self.wfile.write(answer["body"])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.answer = answer
    server.url = f"http://127.0.0.1:{server.server_port}/healthz"
    yield server
    server.shutdown()
    server.server_close()


VERSION = "0123456789abcdef"


def app_json(version: str) -> bytes:
    # What Flask's jsonify sends in production (compact).
    return json.dumps({"status": "ok", "version": version}, separators=(",", ":")).encode()


def test_the_app_answering_200_with_the_version_is_healthy(front):
    front.answer.update(body=app_json(VERSION))
    assert startup("healthy", front.url, VERSION).returncode == 0


def test_a_redirect_is_not_healthy(front):
    """nginx's :80 once HTTPS is on: `curl --fail` counted this 301 as success."""
    front.answer.update(
        status=301, headers={"Location": "https://203.0.113.10/healthz"}, body=b"moved"
    )
    assert startup("healthy", front.url, VERSION).returncode == 1


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, app_json("fedcba9876543210")),  # the previous release still answering
        (502, b"<html>502 Bad Gateway</html>"),  # nginx with no app behind it
        (200, b"Hello World from BenchSci!"),  # something, but not the app's health
    ],
)
def test_anything_but_the_apps_200_with_that_version_is_not_healthy(front, status, body):
    front.answer.update(status=status, body=body)
    assert startup("healthy", front.url, VERSION).returncode == 1


def test_nothing_listening_is_not_healthy(front):
    url = front.url
    front.shutdown()
    front.server_close()
    # Status 2: nothing answered (a release still starting), not a wrong answer (status 1).
    assert startup("healthy", url, VERSION).returncode == 2


def test_apt_refreshes_only_debian_sources(tmp_path):
    """GCE's debian-12 image lists Google's repositories beside Debian's (deb822 .sources and
    one-line .list files); an outage there must not fail a package install that needs none."""
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list.d/debian.sources").write_text(
        "Types: deb deb-src\nURIs: https://deb.debian.org/debian\n"
        "Suites: bookworm bookworm-updates bookworm-backports\nComponents: main\n\n"
        "Types: deb\nURIs: https://security.debian.org/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n"
    )
    (etc / "sources.list.d/google-cloud.list").write_text(
        "deb https://packages.cloud.google.com/apt google-compute-engine-bookworm-stable main\n"
        "# deb https://deb.debian.org/debian bookworm main (a comment names no source)\n"
    )
    (etc / "sources.list").write_text("# See /etc/apt/sources.list.d/\n")
    chosen = tmp_path / "chosen"
    result = startup(
        "debian-sources", str(chosen), env={"PATH": "/usr/bin:/bin", "HELLO_APT_ETC": str(etc)}
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in chosen.iterdir()) == ["debian.sources"]
    assert (chosen / "debian.sources").resolve() == etc / "sources.list.d/debian.sources"


def wait_for(condition, what: str, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@contextlib.contextmanager
def metadata_with_app():
    """The metadata server emulator holding the rendered instance, and a deploy that sets its
    app.py and returns the attributes' ETag as the watcher sees it (ETags follow the content)."""
    expansion = expand_path(str(REPO / "deployment.yaml"), default_env("hello", "local-project"))
    instance, _ = from_expanded_config({"resources": expansion.resources})
    with MetadataEmulator(instance) as metadata:
        attributes = f"{metadata.url}/computeMetadata/v1/instance/attributes"

        def deploy(app: str) -> str:
            metadata.store.set_instance_attributes({"app-py": app})
            request = urllib.request.Request(
                f"{attributes}/?recursive=true&alt=json", headers={"Metadata-Flavor": "Google"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.headers["ETag"]

        yield attributes, deploy


@contextlib.contextmanager
def watcher(attributes: str, tmp_path):
    """`app/startup.sh watch` on the emulator, its state, requests and converge lock under
    tmp_path; yields a dict that holds its output once the block ends."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HELLO_METADATA": attributes,
        "HELLO_STATE_DIR": str(tmp_path / "state"),
        "HELLO_REQUESTS": str(tmp_path / "requests"),
        "HELLO_LOCK": str(tmp_path / "converge.lock"),
    }
    process = subprocess.Popen(
        ["bash", str(REPO / "app/startup.sh"), "watch"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its long-polling curl goes with it
    )
    log: dict[str, str] = {}
    try:
        yield log
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        log["output"] = process.communicate()[0]


def test_the_watcher_forgets_every_refusal_when_the_metadata_returns(tmp_path):
    """A refused release, a deploy back to the serving one, then a second refusal and a second
    return: each return asks for a converge (which forgets the refusal, so /healthz stops
    naming it), not only the first one at that ETag."""
    state, requests = tmp_path / "state", tmp_path / "requests"
    state.mkdir()
    requests.mkdir()
    with metadata_with_app() as (attributes, deploy):
        # Each bad release's ETag is known before the watcher runs: its refusal is on disk
        # before the watcher can see it, as after a converge that refused it.
        refused = {app: deploy(app) for app in ("bad-1", "bad-2")}
        good = deploy("good")
        (state / "applied-etag").write_text(f"{good}\n")
        with watcher(attributes, tmp_path) as log:
            for app, bad in refused.items():
                # What a converge that refused it leaves behind.
                (state / "refused-etag").write_text(f"{bad} {int(time.time()) + 300}\n")
                assert deploy(app) == bad
                time.sleep(1)
                assert list(requests.iterdir()) == [], f"{app} was asked for before its retry time"
                assert deploy("good") == good
                wait_for(lambda: (requests / good).exists(), f"no converge asked after {app}")
                # The converge it asked for: answers the request and forgets the refusal.
                (requests / good).unlink()
                (state / "refused-etag").unlink()
    assert log["output"].count("requesting a converge to forget the refusal") == 2, log
    assert log["output"].count("holds a refused release") == 2, log


def test_a_rollback_during_a_converge_is_asked_for_once_that_converge_ends(tmp_path):
    """A deploy, then a rollback to the applied version while the deploy's converge still runs
    (its release is being watched): once the converge keeps the deploy's release, the watcher
    asks for the rollback at once, not after its long poll's minute, which it spent polling
    from the ETag the converge was replacing."""
    state, requests = tmp_path / "state", tmp_path / "requests"
    state.mkdir()
    requests.mkdir()
    with metadata_with_app() as (attributes, deploy):
        good = deploy("good")
        (state / "applied-etag").write_text(f"{good}\n")
        with watcher(attributes, tmp_path) as log, open(tmp_path / "converge.lock", "w") as lock:
            time.sleep(1)  # the watcher polls from the applied ETag
            wrong = deploy("wrong")
            wait_for(lambda: (requests / wrong).exists(), "no converge asked for the deploy")
            # The converge it asked for takes the request and the lock, and runs.
            fcntl.flock(lock, fcntl.LOCK_EX)
            (requests / wrong).unlink()
            assert deploy("good") == good  # the rollback, while it runs
            time.sleep(2)
            # It keeps the deploy's release.
            (state / "applied-etag").write_text(f"{wrong}\n")
            fcntl.flock(lock, fcntl.LOCK_UN)
            wait_for(lambda: (requests / good).exists(), "no converge asked for the rollback", 10)
    assert f"instance metadata changed ({wrong} -> {good})" in log["output"], log


@pytest.fixture(scope="module")
def uv_dir(tmp_path_factory):
    """Where `startup.sh venv` puts uv: downloaded from PyPI once for the module."""
    return tmp_path_factory.mktemp("uv")


def test_a_venv_is_built_from_the_hashed_pins_with_no_writable_home(tmp_path, uv_dir):
    """What the converge does on the VM, where hello-converge.service has no writable home
    (ProtectHome): uv from its pinned wheel, then the app's pins, hash-checked. Real: uv, PyPI
    (through this host's network), CPython. A second run finds the venv complete."""
    env = {"PATH": "/usr/bin:/bin", "HOME": "/proc/self", "HELLO_UV_DIR": str(uv_dir)}
    venv = tmp_path / "venv"
    result = startup("venv", str(venv), str(REPO / "app/requirements.txt"), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "venv built in" in result.stdout
    imported = subprocess.run(
        [venv / "bin/python", "-c", "import flask, gunicorn"], capture_output=True, text=True
    )
    assert imported.returncode == 0, imported.stderr
    again = startup("venv", str(venv), str(REPO / "app/requirements.txt"), env=env)
    assert again.returncode == 0 and "venv up to date" in again.stdout, again.stdout


def test_a_pin_whose_hash_does_not_match_fails_at_once_and_leaves_no_venv(tmp_path, uv_dir):
    """pip's hash-checking mode, kept by uv: a tampered download is refused on the first
    attempt (no network retries), and the venv is never marked complete."""
    requirements = tmp_path / "requirements.txt"
    tampered = tamper_hashes((REPO / "app/requirements.txt").read_text(), "flask")
    assert tampered != (REPO / "app/requirements.txt").read_text()
    requirements.write_text(tampered)
    env = {"PATH": "/usr/bin:/bin", "HOME": "/proc/self", "HELLO_UV_DIR": str(uv_dir)}
    result = startup("venv", str(tmp_path / "venv"), str(requirements), env=env)
    assert result.returncode == 1
    assert "Hash mismatch for `flask==" in result.stderr, result.stderr
    assert "FAILED: uv pip install failed (exit 1) after 1 attempt(s)" in result.stderr
    assert not (tmp_path / "venv/.complete").exists()
