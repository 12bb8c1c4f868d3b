"""scripts/smoke.sh against the app served for real on loopback.

Real: scripts/smoke.sh (curl, its retries and backoff), the app (app/app.py) under gunicorn, the
production server, on 127.0.0.1. Emulated: nothing; only the address differs from production
(a free loopback port instead of the VM's public IP on port 80), and the version file the app
reports, which on the VM a completed converge writes (tests/e2e covers that part).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import pytest

from app.app import GREETING
from tests.conftest import REPO, startup_version

SMOKE = REPO / "scripts" / "smoke.sh"


def deployed_version() -> str:
    """The digest of this checkout's deployed files, as app/startup.sh defines it."""
    from vm import METADATA_FILES

    return startup_version(*(f"{key}={REPO / path}" for key, path in METADATA_FILES.items()))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gunicorn(port: int, version_file: Path) -> subprocess.Popen:
    """The app as the VM serves it once a converge recorded `version_file` (and, beside it,
    refused.json when the VM refused a release)."""
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}"),
            *("--workers", "1", "--chdir", str(REPO / "app"), "app:app"),
        ],
        env={
            **os.environ,
            "HELLO_VERSION_FILE": str(version_file),
            "HELLO_REFUSED_FILE": str(version_file.with_name("refused.json")),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture
def converged(tmp_path) -> Path:
    version_file = tmp_path / "version"
    version_file.write_text(deployed_version() + "\n")
    return version_file


def smoke(target: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(SMOKE), target],
        # Plain HTTP here; the HTTPS checks run against nginx in tests/stack/test_https.py.
        env={
            **os.environ,
            "SMOKE_HTTPS": "0",
            "SMOKE_FIRST_WAIT": "1",
            "SMOKE_MAX_WAIT": "1",
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def server():
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        process.terminate()
        process.wait(timeout=10)


def test_smoke_passes_against_the_running_app(server, converged, tmp_path):
    """The app is up at the deployed version: the first try passes and smoke.sh exits 0,
    removing the failure an earlier run left."""
    port = free_port()
    server.append(gunicorn(port, converged))
    (tmp_path / "smoke-failure").write_text("an earlier run's reason\n")
    result = smoke(f"127.0.0.1:{port}", SMOKE_ATTEMPTS="20", DEPLOY_OUT_DIR=str(tmp_path))
    out, err = result.communicate(timeout=60)
    assert result.returncode == 0, err
    assert GREETING in out
    assert not (tmp_path / "smoke-failure").exists()


def test_smoke_waits_for_an_app_that_comes_up_late(server, converged):
    """smoke.sh starts before anything listens (a VM still booting); it retries with backoff
    and passes once gunicorn is up."""
    port = free_port()
    result = smoke(f"127.0.0.1:{port}", SMOKE_ATTEMPTS="30")
    time.sleep(2.5)
    server.append(gunicorn(port, converged))
    out, err = result.communicate(timeout=60)
    assert result.returncode == 0, err
    assert "try 1/30" in err  # it did fail first
    assert "answered" in out


class _Wrong(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"Hello World from BenchSci"  # no "!": close is not good enough
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        pass


def test_smoke_fails_on_the_wrong_body(tmp_path):
    """A server that answers 200 with a different body fails the smoke test (exit 1), and the
    last reason is left in DEPLOY_OUT_DIR/smoke-failure for the pipeline's rollback to name; a
    passing run removes it."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Wrong)
    Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    try:
        result = smoke(
            url.removeprefix("http://").rstrip("/"),
            SMOKE_ATTEMPTS="2",
            DEPLOY_OUT_DIR=str(tmp_path),
        )
        _, err = result.communicate(timeout=60)
    finally:
        httpd.shutdown()
    assert result.returncode == 1
    assert "unexpected body" in err
    assert "FAILED" in err
    failure = tmp_path / "smoke-failure"
    assert failure.read_text() == f"{url}: unexpected body: Hello World from BenchSci\n"


def test_smoke_fails_while_the_app_serves_another_version(server, tmp_path):
    """The greeting is right but the VM never converged on this deploy (its converge failed and
    the old app kept serving): smoke.sh fails, naming both versions."""
    stale = tmp_path / "version"
    stale.write_text("0123456789abcdef\n")
    port = free_port()
    server.append(gunicorn(port, stale))
    result = smoke(f"127.0.0.1:{port}", SMOKE_ATTEMPTS="3", DEPLOY_OUT_DIR=str(tmp_path))
    _, err = result.communicate(timeout=60)
    assert result.returncode == 1
    assert f"serving version 0123456789abcdef, not the deployed {deployed_version()}" in err
    assert "FAILED" in err


def test_smoke_fails_at_once_when_the_vm_refused_the_deployed_version(server, tmp_path):
    """The VM kept the old release and says why in /healthz: smoke.sh stops at the first try
    with that reason instead of retrying for minutes."""
    stale = tmp_path / "version"
    stale.write_text("0123456789abcdef\n")
    reason = "it did not start: ModuleNotFoundError: No module named 'flask_extra'"
    (tmp_path / "refused.json").write_text(
        json.dumps({"version": deployed_version(), "reason": reason, "retryAfter": 0})
    )
    port = free_port()
    server.append(gunicorn(port, stale))
    result = smoke(f"127.0.0.1:{port}", SMOKE_ATTEMPTS="30", DEPLOY_OUT_DIR=str(tmp_path))
    _, err = result.communicate(timeout=60)
    assert result.returncode == 1
    assert (
        f"smoke: FAILED: the VM refused version {deployed_version()}: {reason}; it still serves "
        "version 0123456789abcdef"
    ) in err
    assert "try 2/30" not in err
    assert (tmp_path / "smoke-failure").read_text() == (
        f"http://127.0.0.1:{port}/: the VM refused version {deployed_version()}: {reason}\n"
    )
