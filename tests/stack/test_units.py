"""The systemd units and startup script the VM runs, read by the tools that run them."""

import configparser
import re
import shutil
import subprocess

import pytest

from tests.conftest import REPO

UNITS = [
    "app/hello.service",
    "app/hello-metadata-watch.service",
    "app/hello-cert.service",
    "app/hello-cert.timer",
]
# Binaries that exist only on the VM, once startup.sh has installed them.
VM_ONLY = {
    "/opt/hello/venv/bin/gunicorn",
    "/usr/local/sbin/hello-startup",
    "/usr/local/sbin/hello-tls",
}


def unit(path: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string((REPO / path).read_text())
    return parser


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
@pytest.mark.parametrize("path", UNITS)
def test_systemd_accepts_the_unit(path):
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(REPO / path)],
        capture_output=True,
        text=True,
        check=False,
    )
    complaints = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip()
        and not any(f"Command {binary} is not executable" in line for binary in VM_ONLY)
    ]
    assert complaints == []


def test_app_service_runs_unprivileged_on_loopback_and_always_restarts():
    service = unit("app/hello.service")["Service"]
    assert service["User"] == "hello"
    assert service["Restart"] == "always"
    assert "AmbientCapabilities" not in service
    assert service["CapabilityBoundingSet"] == ""
    # nginx (app/nginx-hello.conf) proxies :80 and :443 to this address.
    assert re.search(r"--bind 127\.0\.0\.1:8080\b", service["ExecStart"])
    assert "server 127.0.0.1:8080;" in (REPO / "app/nginx-hello.conf").read_text()
    for hardening in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices"):
        assert service[hardening] == "yes", hardening
    assert service["ProtectSystem"] == "strict"
    assert unit("app/hello.service")["Unit"]["StartLimitIntervalSec"] == "0"
    assert unit("app/hello.service")["Install"]["WantedBy"] == "multi-user.target"


def test_startup_script_writes_the_units_it_is_given():
    script = (REPO / "app/startup.sh").read_text()
    for key in ("app-py", "app-requirements", "app-service", "app-watch-service", "startup-script"):
        assert f"metadata {key} " in script, key


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck not installed")
def test_startup_script_passes_shellcheck():
    subprocess.run(["shellcheck", str(REPO / "app/startup.sh")], check=True)
