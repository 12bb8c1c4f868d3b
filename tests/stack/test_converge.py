"""The converge's own decisions, run from app/startup.sh on this host: what counts as healthy,
and which apt sources a package install refreshes. Real: the script, bash, curl, a loopback
HTTP server standing in for nginx's answer (a redirect, an error, the app's JSON)."""

from __future__ import annotations

import http.server
import json
import subprocess
import threading

import pytest

from tests.conftest import REPO


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
