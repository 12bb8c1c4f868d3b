"""The operator scripts as people type them: --help, a wrong flag, a missing setting.

Real: bash, scripts/*.sh, `make`, the real `gcloud` on PATH for the deploy cases, and the real
apt-get for a failed package install. No Google server is emulated here: the deploy cases point
gcloud's Deployment Manager endpoint and token host at a loopback listener that only records
requests, to prove the script stops before any.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from emulators.oauth2 import new_service_account_key
from tests.conftest import REPO

# Commands, not the libraries under scripts/lib/ that deploy.sh sources.
SCRIPTS = sorted(
    path
    for path in subprocess.run(
        ["git", "ls-files", "scripts/*.sh"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    if not path.startswith("scripts/lib/")
)


def run(*command: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(command),
        cwd=REPO,
        env=env or {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_has_help(script):
    result = run("bash", script, "--help")
    assert result.returncode == 0, result.stderr
    assert "Exit codes" in result.stdout, result.stdout
    assert result.stdout.splitlines()[0][:1].isupper()  # prose, not a shell line


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_rejects_an_unknown_flag_at_once(script):
    # A timeout of seconds proves no retry loop ran (smoke.sh used to try `http://--bogus/`
    # for about nine minutes).
    result = run("bash", script, "--bogus", timeout=10)
    assert result.returncode == 2, result.stderr
    assert "--bogus" in result.stderr
    assert "--help" in result.stderr


@pytest.mark.skipif(
    os.geteuid() != 0, reason="as a user the script calls sudo, which drops APT_CONFIG"
)
def test_a_failed_package_install_prints_the_logs_end_and_its_path(tmp_path):
    """The real apt-get and dpkg-query, pointed away from the machine's own state: an empty dpkg
    database (DPKG_ADMINDIR), so every package is missing, and a mirror on a loopback port that
    refuses connections (APT_CONFIG). apt-get fails as on a machine cut off from its mirror, and
    nothing on this machine changes."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    dpkg = tmp_path / "dpkg"
    for directory in (dpkg, tmp_path / "lists/partial", tmp_path / "cache/archives/partial"):
        directory.mkdir(parents=True)
    (dpkg / "status").touch()
    (tmp_path / "sources.list").write_text(f"deb http://127.0.0.1:{port}/debian bookworm main\n")
    (tmp_path / "apt.conf").write_text(
        f'Dir::Etc::SourceList "{tmp_path}/sources.list";\n'
        f'Dir::Etc::SourceParts "{tmp_path}/sources.list.d";\n'
        f'Dir::State::Lists "{tmp_path}/lists";\n'
        f'Dir::State::status "{dpkg}/status";\n'
        f'Dir::Cache "{tmp_path}/cache";\n'
        'APT::Sandbox::User "root";\n'
    )
    log = tmp_path / "state" / "install.log"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "APT_CONFIG": str(tmp_path / "apt.conf"),
        "DPKG_ADMINDIR": str(dpkg),
        "INSTALL_LOG": str(log),
    }
    result = run("bash", "scripts/install-system-deps.sh", "lint", env=env, timeout=60)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "install-system-deps: installing apt-utils python3-venv shellcheck"
    assert lines[-1] == f"install-system-deps: apt-get failed; full log: {log}"
    # The log's end, apt's own reason among it; its progress stays in the log.
    assert "E: Unable to locate package" in result.stderr
    assert len(lines) <= 22
    assert "Unable to locate package" in log.read_text()
    assert result.stdout == ""


def test_make_smoke_without_an_address_uses_the_names_the_user_typed(tmp_path):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DEPLOY_OUT_DIR": str(tmp_path)}
    result = run("make", "--no-print-directory", "smoke", env=env)
    assert result.returncode == 2
    assert result.stderr.splitlines()[:2] == [
        f"smoke: no address given, and {tmp_path}/public-ip (written by `make deploy`) does not "
        "exist: deploy first, or give the address",
        "usage: make smoke [IP=ADDRESS], or scripts/smoke.sh [ADDRESS] (--help for more)",
    ]
    assert "TARGET" not in result.stderr
    assert "scripts/deploy.sh" not in result.stderr


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("not_an_ip", "not_an_ip is neither an IPv4 address nor a host name"),
        ("10.10.0.300", "10.10.0.300 is not an IPv4 address: 300 is over 255"),
        ("203.0.113", "203.0.113 is not an IPv4 address (four numbers 0-255"),
        ("203.0.113.7:70000", "'70000' is not a port (1-65535)"),
    ],
)
def test_make_smoke_refuses_what_cannot_be_an_address_at_once(address, why):
    """An address that cannot be one is a usage error, said before the first try: no DNS
    lookup retried for minutes. (make exits 2 for any failed recipe; the script's own 2 is
    asserted through it by the usage line, and directly below.)"""
    result = run("make", "--no-print-directory", "smoke", f"IP={address}", timeout=10)
    assert result.returncode == 2
    refusal, usage = result.stderr.splitlines()[:2]
    assert refusal.startswith(f"smoke: '{address}' cannot be an address: {why}")
    assert usage.startswith("usage: make smoke [IP=ADDRESS]")
    assert "try 1/" not in result.stderr
    assert run("bash", "scripts/smoke.sh", address, timeout=10).returncode == 2


def test_smoke_still_retries_a_refused_connection(tmp_path):
    """A refused connection can heal (the VM is booting): it is retried, then exit 1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            **{"SMOKE_ATTEMPTS": "2", "SMOKE_FIRST_WAIT": "0", "SMOKE_VERSION": "any"},
        }
        result = run("bash", "scripts/smoke.sh", f"127.0.0.1:{port}", env=env)
    assert result.returncode == 1, result.stderr
    assert "try 1/2" in result.stderr and "try 2/2" in result.stderr


class Recorder(BaseHTTPRequestHandler):
    """Answers every request with 500 and remembers it."""

    seen: ClassVar[list[str]] = []

    def _any(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

    def log_message(self, format, *args) -> None:
        pass


@pytest.fixture
def google(tmp_path):
    """Where gcloud would send any request: a recording listener on loopback."""
    Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    yield url, Recorder.seen
    server.shutdown()
    server.server_close()


def deploy_env(tmp_path: Path, url: str, **extra: str) -> dict:
    key, _ = new_service_account_key("deployer@p.iam.gserviceaccount.com", "p", url + "token")
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_DEPLOYMENTMANAGER": url,
        "CLOUDSDK_AUTH_TOKEN_HOST": url + "token",
        "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false",
        "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "1",
        "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
        "GCP_SA_KEY_B64": base64.b64encode(json.dumps(key).encode()).decode(),
        "DEPLOY_OUT_DIR": str(tmp_path / "out"),
        **extra,
    }


NO_PROJECT = (
    "deploy: error: GCP_PROJECT is not set: export GCP_PROJECT=<your project id> and run it again"
)


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="needs the real gcloud on PATH")
def test_deploy_without_gcp_project_is_a_usage_error_before_any_call_to_google(tmp_path, google):
    url, seen = google
    env = deploy_env(tmp_path, url)

    direct = run("scripts/deploy.sh", env=env, timeout=60)
    assert direct.returncode == 2, direct.stderr
    assert direct.stderr.splitlines() == [NO_PROJECT]

    via_make = run("make", "--no-print-directory", "deploy", env=env, timeout=60)
    assert via_make.returncode == 2
    first, make_line = via_make.stderr.splitlines()
    assert first == NO_PROJECT
    assert re.fullmatch(r"make: \*\*\* \[Makefile:\d+: deploy\] Error 2", make_line)
    assert seen == []

    # The same setup with the project set does reach the (recording) server: the check above is
    # what kept it away.
    reached = run("scripts/deploy.sh", env={**env, "GCP_PROJECT": "p"}, timeout=120)
    assert reached.returncode != 0
    assert seen, reached.stderr


def test_a_credential_less_preview_still_skips_without_a_project(tmp_path, google):
    url, seen = google
    env = deploy_env(tmp_path, url, SKIP_WITHOUT_CREDENTIALS="true")
    del env["GCP_SA_KEY_B64"]
    result = run("scripts/deploy.sh", "--preview", env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "SKIPPED: no GCP credentials configured" in result.stderr
    assert seen == []
