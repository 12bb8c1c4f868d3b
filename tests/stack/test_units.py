"""The systemd units and startup script the VM runs, read by the tools that run them."""

import configparser
import datetime
import itertools
import os
import re
import shutil
import subprocess

import pytest

from tests.conftest import REPO, startup_version
from vm import METADATA_FILES

SERVICES = [
    "app/hello@.service",
    "app/hello-metadata-watch.service",
    "app/hello-converge.service",
    "app/hello-cert.service",
]
UNITS = [*SERVICES, "app/hello-converge.path", "app/hello-cert.timer"]
# Binaries that exist only on the VM, once startup.sh has installed them.
VM_ONLY = {
    # systemd-analyze verifies the template unit as instance "i".
    "/opt/hello/slot-i/venv/bin/gunicorn",
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
    service = unit("app/hello@.service")["Service"]
    assert service["User"] == "hello"
    assert service["Restart"] == "always"
    assert "AmbientCapabilities" not in service
    assert service["CapabilityBoundingSet"] == ""
    # A slot is its port: hello@8081 serves /opt/hello/slot-8081 on 127.0.0.1:8081, the address
    # the converge's nginx upstream names.
    assert re.search(r"--bind 127\.0\.0\.1:%i\b", service["ExecStart"])
    assert service["ExecStart"].startswith("/opt/hello/slot-%i/venv/bin/gunicorn ")
    assert service["WorkingDirectory"] == "/opt/hello/slot-%i"
    script = (REPO / "app/startup.sh").read_text()
    slots = re.search(r"^readonly SLOTS=\((\d+) (\d+)\)$", script, re.M).groups()
    upstream = subprocess.run(
        ["bash", str(REPO / "app/startup.sh"), "upstream", *slots],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert f"server 127.0.0.1:{slots[0]} max_fails=0;" in upstream
    assert f"server 127.0.0.1:{slots[1]} backup max_fails=0;" in upstream
    assert "proxy_pass http://hello_app;" in (REPO / "app/nginx-hello.conf").read_text()
    # systemd's 90 s default must not fail a slow but healthy start.
    assert int(service["TimeoutStartSec"]) >= 300
    for hardening in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices"):
        assert service[hardening] == "yes", hardening
    assert service["ProtectSystem"] == "strict"
    assert unit("app/hello@.service")["Unit"]["StartLimitIntervalSec"] == "0"
    assert unit("app/hello@.service")["Install"]["WantedBy"] == "multi-user.target"


def test_startup_script_installs_exactly_the_files_vm_py_deploys():
    """The version digest covers startup.sh's INSTALLED keys; smoke.sh covers vm.py's."""
    script = (REPO / "app/startup.sh").read_text()
    table = script.split("declare -rA INSTALLED=(", 1)[1].split("\n)", 1)[0]
    assert set(re.findall(r"^\s+\[([a-z-]+)\]=", table, re.M)) == set(METADATA_FILES)


def test_version_digest_names_the_files_not_their_order(tmp_path):
    pairs = [f"{key}={path}" for key, path in METADATA_FILES.items()]
    digest = startup_version(*pairs)
    assert re.fullmatch(r"[0-9a-f]{16}", digest)
    assert startup_version(*reversed(pairs)) == digest
    edited = tmp_path / "app.py"
    edited.write_text((REPO / "app/app.py").read_text() + "\n")
    changed = [f"app-py={edited}" if p.startswith("app-py=") else p for p in pairs]
    assert startup_version(*changed) != digest
    # Same bytes under another key are another deployment.
    renamed = [p.replace("app-py=", "app-python=") for p in pairs]
    assert startup_version(*renamed) != digest


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
@pytest.mark.parametrize("path", SERVICES)
def test_every_service_scores_5_or_less_in_systemd_analyze_security(path):
    """systemd's own exposure score (0 safest, 10 unsafe), for the unit file as committed."""
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(REPO / path)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    if match is None and "--offline" in result.stderr:
        pytest.skip("this systemd-analyze cannot score a unit file offline")
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 5.0


@pytest.mark.parametrize("path", SERVICES)
def test_every_service_writes_its_output_to_the_serial_console_too(path):
    """GCE's image copies nothing from the journal to the console (journald's default), and the
    VM sends nothing to Cloud Logging: a unit that does not ask keeps its failures out of
    `gcloud compute instances get-serial-port-output`."""
    service = unit(path)["Service"]
    assert service["StandardOutput"] == "journal+console"
    assert service.get("StandardError", "inherit") in ("inherit", "journal+console")


def seconds(timespan: str) -> int:
    """A systemd time span ("1h", "30min") in seconds, as systemd-analyze reads it."""
    result = subprocess.run(
        ["systemd-analyze", "timespan", timespan], capture_output=True, text=True, check=True
    )
    micros = re.search(r"μs: (\d+)", result.stdout)
    assert micros, result.stdout
    return int(micros.group(1)) // 1_000_000


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_a_certificate_is_served_only_while_it_outlives_the_next_timer_run_by_an_hour():
    """hello-tls activate runs after each hello-cert run; a certificate it serves must stay valid
    for an hour past the latest the next run can come: the timer's period plus its delay."""
    timer = unit("app/hello-cert.timer")["Timer"]
    result = subprocess.run(
        ["systemd-analyze", "calendar", "--iterations=3", timer["OnCalendar"]],
        env={**os.environ, "TZ": "UTC"},
        capture_output=True,
        text=True,
        check=True,
    )
    # "Next elapse: Wed 2026-12-02 00:00:00 UTC", then "Iter. #2: ...": the next three runs.
    stamps = re.findall(r"(?:Next elapse|Iter\. #\d): \w{3} (\S+ \S+) UTC", result.stdout)
    runs = [datetime.datetime.fromisoformat(stamp) for stamp in stamps]
    assert len(runs) == 3, result.stdout
    period = max((b - a).total_seconds() for a, b in itertools.pairwise(runs))
    longest_gap = period + seconds(timer["RandomizedDelaySec"])
    script = (REPO / "app/hello-tls.sh").read_text()
    lead = re.search(r"^readonly LEAD=\$\{HELLO_TLS_LEAD:-(\d+)\}$", script, re.M)
    assert lead, "hello-tls.sh defines no LEAD"
    assert int(lead.group(1)) >= longest_gap + 3600
    assert '-checkend "$LEAD"' in script


def test_metadata_watcher_runs_without_privileges():
    service = unit("app/hello-metadata-watch.service")["Service"]
    assert service["DynamicUser"] == "yes"
    assert service["CapabilityBoundingSet"] == ""
    assert service["ProtectSystem"] == "strict"
    # It only asks for converges, through the directory hello-converge.path watches.
    path = unit("app/hello-converge.path")["Path"]
    assert path["DirectoryNotEmpty"] == f"/run/{service['RuntimeDirectory']}"
    assert path["Unit"] == "hello-converge.service"


def test_gunicorn_runs_without_a_control_socket():
    """gunicorn's default control socket lives under the service user's home, which does not
    exist: every start logged an ERROR."""
    assert "--no-control-socket" in unit("app/hello@.service")["Service"]["ExecStart"]


def pins(path: str) -> dict[str, str]:
    text = (REPO / path).read_text()
    return {
        name.lower(): version
        for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\]+)", text, re.M)
    }


def test_app_pins_are_hashed_and_the_tooling_uses_the_same_versions():
    text = (REPO / "app/requirements.txt").read_text()
    blocks = re.split(r"\n(?=[A-Za-z])", text.split("\n", 6)[-1])
    assert blocks, text
    for block in blocks:
        if re.match(r"[A-Za-z]", block):
            assert re.search(r"--hash=sha256:[0-9a-f]{64}", block), block
    assert "pip-compile --generate-hashes" in text.split("\n", 6)[4]
    app = pins("app/requirements.txt")
    tools = pins("tools/requirements.txt")
    assert {name: tools.get(name) for name in app} == app
    assert "--require-hashes" in (REPO / "app/startup.sh").read_text()


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck not installed")
def test_startup_script_passes_shellcheck():
    subprocess.run(["shellcheck", str(REPO / "app/startup.sh")], check=True)
