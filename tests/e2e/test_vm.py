"""The rendered instance, booted for real: it serves on boot (through apt's locks held by another
apt user and a network outage), after a reset, after a crash, as a non-root user on :80, picks up
redeploys while running (one converge at a time, none lost), reports the version it runs, and
shows the greeting in a browser.

Tests run in file order on one VM (see conftest.py); each leaves it serving a good release: the
committed app, until the last ones, which each release a new app over the one before
(conftest.releasing) instead of converging back to the committed one.
Waits poll only where waiting is inherent (boot, restart, redeploy), always under a deadline.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import shlex
import shutil
import struct
import subprocess
import threading
import time
import zlib
from pathlib import Path

import pytest

from app.app import GREETING
from localvm.stack import ARTIFACTS, REPO, SERVING_UNIT
from tests.browser import chromium
from tests.conftest import VM_LANE_1, copy_stack, tamper_hashes
from tests.e2e.conftest import (
    REDEPLOY_TIMEOUT,
    greeting_of,
    guest,
    release_refused,
    releasing,
    restore,
    settled,
    wait_converged,
    with_greeting,
)

pytestmark = [pytest.mark.e2e, VM_LANE_1]

COLD_BOOT_TIMEOUT = 900  # TCG on a busy 2-core CI machine, apt and the venv included
REBOOT_TIMEOUT = 600  # a reset reboot took ~7 min under TCG with host load 10-16
RESTART_TIMEOUT = 60
STARTUP_DONE = "hello-startup: serving on :80"
# A converge's last line: a new release, if any, has been kept or rolled back by then.
CONVERGED = "hello-startup: serving version"
OUR_UNITS = ("hello-startup", "gunicorn", "hello-metadata-watch", "hello-converge", "hello-tls")


def main_pid(stack) -> int:
    return int(guest(stack, f"systemctl show --property=MainPID --value {SERVING_UNIT}").strip())


def serving_slot(stack) -> str:
    """The port of the slot nginx sends traffic to (hello@<port>.service)."""
    return guest(stack, "readlink /opt/hello/serving").strip().rsplit("-", 1)[1]


def test_cold_boot_waits_for_apt_locks_and_survives_a_network_outage(stack):
    """First boot, as on a real GCE image: another apt user holds apt's locks when the startup
    script needs them, and the network drops (NIC unplugged over QMP) while it waits, so the
    package install meets the outage. The boot waits for the locks, retries through the outage,
    and serves without a reboot."""
    vm = stack.vm
    log = vm.wait_serial("hello-startup: waiting for the apt lock", timeout=COLD_BOOT_TIMEOUT)
    assert "/var/lib/apt/lists/lock" in log.split("waiting for the apt lock", 1)[1].split("\n")[0]
    mark = len(vm.serial_text())
    vm.set_link(False)
    try:
        vm.wait_serial("; retry 1 in 5 s", start=mark, timeout=COLD_BOOT_TIMEOUT)
    finally:
        vm.set_link(True)
    vm.wait_http("/", timeout=COLD_BOOT_TIMEOUT, expect=GREETING)
    for path in ("/", "/hello"):
        assert vm.get(path) == (200, GREETING), path
    log = vm.wait_serial(STARTUP_DONE, timeout=COLD_BOOT_TIMEOUT)
    assert "hello-startup: installing packages: nginx" in log
    assert re.search(r"hello-startup: apt lock free after waiting \d+ s", log)
    assert re.search(r"hello-startup: apt-get update failed \(exit \d+: .*\); retry 1 in 5 s", log)
    assert re.search(r"hello-startup: waited \d+ s for the dpkg lock \(held by process", log)
    assert "hello-startup: FAILED" not in log
    assert log.count("Linux version") == 1, "the VM rebooted"
    # Debian's package started nginx with its default site; the converge restarts it once with
    # ours. A reload before that (pointing it at the new slot) served both sites side by side
    # while the old workers finished: the greeting, then Debian's page, then the greeting.
    vm.wait_guest_agent(timeout=120)
    journal = guest(stack, "journalctl -b -o cat -u nginx.service")
    assert [line for line in journal.splitlines() if line.startswith("Reload")] == [], journal


def test_our_units_log_no_errors_and_score_5_or_less_in_systemd_analyze(stack):
    stack.vm.wait_guest_agent(timeout=120)
    # A failure announced as retried (apt during the outage the first test made) is expected.
    errors = [
        line
        for line in stack.vm.serial_text().splitlines()
        if any(unit in line for unit in OUR_UNITS)
        and re.search(r"ERROR|FAILED", line)
        and "; retry " not in line
    ]
    assert errors == []
    units = (SERVING_UNIT, "hello-metadata-watch.service", "hello-converge.service")
    # hello-cert.service and nginx.service: tests/e2e/test_make_up.py, on a VM that has HTTPS.
    for unit in units:
        report = guest(stack, f"systemd-analyze security --no-pager {unit}")
        score = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", report).group(1))
        assert score <= 5.0, f"{unit}: {score}"


def test_app_runs_as_non_root_on_loopback_behind_nginx(stack):
    stack.vm.wait_guest_agent(timeout=120)
    pid = main_pid(stack)
    assert pid > 0
    # Every process in the unit's cgroup (gunicorn's master and its workers), not a name match.
    procs = guest(
        stack, f"cat /sys/fs/cgroup$(systemctl show -P ControlGroup {SERVING_UNIT})/cgroup.procs"
    ).split()
    assert len(procs) >= 2, procs
    users = guest(stack, f"ps -o user=,args= -p {','.join(procs)}").splitlines()
    assert all(line.split()[0] == "hello" and "gunicorn" in line for line in users), users
    uid = guest(stack, f"awk '/^Uid:/ {{print $2, $3, $4, $5}}' /proc/{pid}/status").split()
    assert len(uid) == 4 and "0" not in uid, uid
    # gunicorn on loopback only, on its slot's port; nginx owns :80 and :443.
    slot = serving_slot(stack)
    listeners = guest(stack, f"ss -Hltnp 'sport = :{slot}'")
    assert re.search(rf"127\.0\.0\.1:{slot}\b.*pid={pid},", listeners), listeners
    capabilities = guest(stack, f"grep CapEff /proc/{pid}/status").split()[1]
    assert int(capabilities, 16) == 0, f"CapEff {capabilities}: none"


def test_kill_9_of_the_main_process_is_restarted_by_systemd(stack):
    before = main_pid(stack)
    restarts = int(guest(stack, f"systemctl show -P NRestarts {SERVING_UNIT}"))
    guest(stack, f"kill -9 {before}")
    # The dead master's workers notice only after a moment and answer until then: a 200 alone
    # proves no restart. First systemd's new main process, then the greeting from it.
    deadline = time.monotonic() + RESTART_TIMEOUT
    while (after := main_pid(stack)) in (0, before):
        assert time.monotonic() < deadline, f"systemd did not restart {SERVING_UNIT}"
        time.sleep(0.5)
    stack.vm.wait_http("/", timeout=RESTART_TIMEOUT, expect=GREETING)
    assert main_pid(stack) == after
    assert int(guest(stack, f"systemctl show -P NRestarts {SERVING_UNIT}")) == restarts + 1


def _png_pixels(path: Path) -> tuple[int, int, bytes]:
    """Decodes an 8-bit RGB(A) non-interlaced PNG (what Chromium writes) to raw pixels."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    offset, idat, header = 8, b"", None
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        offset += 12 + length
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, header
    bpp = 3 if color == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        kind, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b, c = prev[x], prev[x - bpp] if x >= bpp else 0
            if kind == 1:
                line[x] = (line[x] + a) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + b) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, b"".join(rows)


def _serve_text(body: str):
    """A loopback server answering `body` as text/plain: the reference rendering."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_chromium_shows_the_greeting_and_saves_a_screenshot(stack, tmp_path):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "hello-vm-screenshot.png"
    shot.unlink(missing_ok=True)
    dom = chromium(tmp_path / "dom", "--dump-dom", stack.vm.url)
    assert GREETING in dom, dom
    chromium(tmp_path / "shot", f"--screenshot={shot}", stack.vm.url)
    # The screenshot must be pixel-identical to Chromium rendering the greeting as plain text,
    # and differ from a rendering of another text (so the comparison can tell them apart).
    renders = {}
    for name, text in (("expected", GREETING), ("other", "Hello World from elsewhere!")):
        server = _serve_text(text)
        try:
            renders[name] = tmp_path / f"{name}.png"
            url = f"http://127.0.0.1:{server.server_port}/"
            chromium(tmp_path / name, f"--screenshot={renders[name]}", url)
        finally:
            server.shutdown()
            server.server_close()
    actual = _png_pixels(shot)
    assert len(set(actual[2])) > 1, "the screenshot is blank"
    assert actual == _png_pixels(renders["expected"])
    assert actual != _png_pixels(renders["other"])


# dpkg runs this after each of its actions (dpkg.cfg's post-invoke): once nginx is unpacked
# but not yet configured, it says so and holds dpkg there until the test resets the VM.
HOLD_DPKG_UNPACKED = (
    "post-invoke=if dpkg-query -W -f='${Status}' nginx 2>/dev/null | grep -q ' unpacked$';"
    " then touch /run/e2e-dpkg-unpacked; sleep 900; fi"
)
# A third-party source that answers nothing, as packages.cloud.google.com in an outage.
BROKEN_SOURCE = "deb http://127.0.0.1:9/apt google-compute-engine-bookworm-stable main"


def test_a_reset_during_apt_install_is_repaired_and_serves_without_reinstalling(stack):
    """A hard reset (`gcloud compute instances reset`: a power cut) while dpkg installs a package
    the converge needs, with a third-party apt source failing: the converge refreshes only
    Debian's sources, so the failing one does not stop it; the next boot finishes dpkg's
    interrupted work and serves, without rebuilding the venv."""
    guest(
        stack,
        f"echo {shlex.quote(HOLD_DPKG_UNPACKED)} >/etc/dpkg/dpkg.cfg.d/e2e-hold && "
        f"echo {shlex.quote(BROKEN_SOURCE)} >/etc/apt/sources.list.d/google-cloud.list && "
        "dpkg --remove nginx >/dev/null && rm -f /run/e2e-dpkg-unpacked && "
        "touch /run/hello-converge-requests/e2e",  # a converge, as the watcher asks for one
    )
    try:
        mark = len(stack.vm.serial_text())
        deadline = time.monotonic() + REDEPLOY_TIMEOUT
        while stack.vm.guest_exec("test -e /run/e2e-dpkg-unpacked")[0] != 0:
            assert time.monotonic() < deadline, stack.vm.serial_text()[mark:]
            time.sleep(2)
        log = stack.vm.serial_text()[mark:]
        assert "hello-startup: installing packages: nginx" in log
        assert "apt-get update failed" not in log and "FAILED" not in log, log
        stack.vm.reset()
        stack.vm.wait_http("/", timeout=REBOOT_TIMEOUT, expect=GREETING)
        log = stack.vm.wait_serial(STARTUP_DONE, start=mark, timeout=REBOOT_TIMEOUT)
        assert log.count("Linux version") == 1, "the VM did not reboot once"
        # The converge's lines from this boot's journal, which the serial console only copies:
        # one run missed a line there that the converge must have logged (timings in
        # docs/testing.md), so the console cannot be the evidence of what the converge did.
        after = guest(stack, "journalctl -b -o cat -u google-startup-scripts.service")
        assert "hello-startup: dpkg was interrupted: finishing it with dpkg --configure -a" in after
        # Another apt user holds dpkg's lock at this boot too: the repair waits for it.
        assert re.search(r"hello-startup: waited \d+ s for the dpkg lock", after), after
        assert "hello-startup: packages already present" in after
        assert "building venv" not in after
        assert "FAILED" not in after
        assert stack.vm.get("/hello") == (200, GREETING)
        guest(stack, "dpkg-query -W -f='${Status}' nginx | grep -qx 'install ok installed'")
    finally:
        guest(
            stack, "rm -f /etc/dpkg/dpkg.cfg.d/e2e-hold /etc/apt/sources.list.d/google-cloud.list"
        )
        settled(stack)  # the boot's converge logs its last line after it serves


# --- redeploys -------------------------------------------------------------------------------


def smoke(stack, root: Path, attempts: int) -> subprocess.CompletedProcess:
    """scripts/smoke.sh from the checkout at `root`, against the VM's forwarded port 80. This VM
    has no CA (HTTPS off), so smoke checks HTTP only; tests/e2e/test_make_up.py checks HTTPS."""
    return subprocess.run(
        ["bash", str(root / "scripts/smoke.sh"), f"127.0.0.1:{stack.vm.http_port}"],
        env={
            **os.environ,
            "SMOKE_ATTEMPTS": str(attempts),
            "SMOKE_FIRST_WAIT": "2",
            "SMOKE_HTTPS": "0",
        },
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_smoke_sees_the_version_the_vm_computed_from_what_it_installed(stack):
    result = smoke(stack, REPO, attempts=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "version" in result.stdout


def test_smoke_fails_when_a_redeploy_does_not_converge(stack, tmp_path):
    """A redeploy whose venv cannot be built (a pin whose hash does not match PyPI's wheel, as a
    tampered download would): the release is refused, the old app keeps greeting, and the smoke
    test fails at once with the VM's reason."""
    original = stack.accepted
    tampered = tamper_hashes(original["app-requirements"], "flask")
    assert tampered != original["app-requirements"]
    (tmp_path / "checkout").mkdir()
    checkout = copy_stack(tmp_path / "checkout")
    shutil.copytree(REPO / "scripts", checkout / "scripts")
    (checkout / "app/requirements.txt").write_text(tampered)
    mark = len(stack.vm.serial_text())
    stack.set_attributes({**original, "app-requirements": tampered})
    try:
        log = stack.vm.wait_serial(
            "hello-startup: FAILED: release", start=mark, timeout=REDEPLOY_TIMEOUT
        )
        assert "Hash mismatch for `flask==" in log
        assert "its venv could not be built" in log
        assert stack.vm.get("/") == (200, GREETING), "the old app stopped serving"
        result = smoke(stack, checkout, attempts=3)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "the VM refused version" in result.stderr
        assert "its venv could not be built" in result.stderr
    except BaseException:
        restore(stack, original)
        raise
    # No converge back: the next scenario deploys over the refused metadata.


# --- releases that must never take the site down ---------------------------------------------


def greeting_over_http(stack):
    return lambda: stack.vm.get("/", timeout=15)


def test_a_release_that_fails_to_import_never_serves(stack):
    original = stack.accepted
    bad = {**original, "app-py": "import hello_no_such_module  # noqa\n" + original["app-py"]}
    release_refused(
        stack,
        bad,
        "No module named 'hello_no_such_module'",
        greeting_over_http(stack),
        storm_check=True,
        then_restore=False,  # the next scenario deploys over it
    )


def test_a_release_whose_health_check_fails_never_serves(stack):
    original = stack.accepted
    app_py = original["app-py"].replace("return jsonify(health)", "return jsonify(health), 503")
    assert app_py != original["app-py"]
    release_refused(
        stack,
        {**original, "app-py": app_py},
        "answered 503 instead of 200",
        greeting_over_http(stack),
    )


# --- accepted releases, one after another ---------------------------------------------------


def test_app_changes_reach_the_running_vm_one_converge_at_a_time(stack):
    """A redeploy changes instance metadata only; the watcher re-runs the startup script, with
    no reboot. The first change rebuilds the venv (new pins), the second, a second later,
    changes the greeting again. Converges never overlap: the VM serves the second version from
    a complete venv of the first change's pins."""
    original = stack.accepted
    pins = original["app-requirements"] + "# rebuilt by an e2e test\n"
    repinned = {**original, "app-requirements": pins}
    first = with_greeting(repinned, "Hello from the first change!")
    second_greeting = "Hello from the second change!"
    second = with_greeting(repinned, second_greeting)
    settled(stack)  # a converge's last line after the mark would pass for this one's
    boot_id = guest(stack, "cat /proc/sys/kernel/random/boot_id")
    mark = len(stack.vm.serial_text())
    with releasing(stack, second):
        stack.set_attributes(first)
        time.sleep(1)
        stack.set_attributes(second)
        stack.vm.wait_http("/", timeout=REDEPLOY_TIMEOUT, expect=second_greeting)
        version = wait_converged(stack, second)
        # The converge logs its last line just after /healthz starts reporting the version.
        log = stack.vm.wait_serial(f"hello-startup: serving version {version}", start=mark,
                                   timeout=RESTART_TIMEOUT)  # fmt: skip
        # Only now: while nginx reloads, its old workers still send a request to the old release.
        assert stack.vm.get("/hello") == (200, second_greeting)
        assert "instance metadata changed" in log
        assert re.search(r"hello-startup: release \w+ replaced \w+", log), log
        assert guest(stack, "cat /proc/sys/kernel/random/boot_id") == boot_id, "it rebooted"
        runs = re.findall(r"hello-startup: (converging|serving version|FAILED)", log)
        assert runs == ["converging", "serving version"] * (len(runs) // 2), runs
        assert runs, log
        venv = f"/opt/hello/venv-{hashlib.sha256(pins.encode()).hexdigest()[:16]}"
        assert guest(stack, "readlink /opt/hello/serving/venv").strip() == venv
        # The venv has no installer of its own; uv, which built it, checks it.
        uv = "$(ls /usr/local/lib/hello/uv-*)"
        guest(stack, f"test -f {venv}/.complete && {uv} pip check --python {venv}/bin/python")
        guest(stack, f"{venv}/bin/python -c 'import flask, gunicorn'")
        # The previous release's venv is kept for going back.
        before = original["app-requirements"].encode()
        kept = f"/opt/hello/venv-{hashlib.sha256(before).hexdigest()[:16]}"
        assert sorted(guest(stack, "ls -d /opt/hello/venv-*").split()) == sorted([venv, kept])


# Kills the converge (hello-converge.service) the moment the changed app.py is on disk in the idle
# slot, before the new release is started: bash builtins only, so nothing forks in between.
KILL_AFTER_INSTALL = r"""cat >/run/e2e-kill-converge <<'EOF'
marker=$1 cgroup=/sys/fs/cgroup/system.slice/hello-converge.service
while :; do
  for file in /opt/hello/slot-*/app.py; do
    [[ -r $file ]] || continue
    IFS= read -r -d '' content <"$file" || true
    [[ $content == *"$marker"* ]] && break 2
  done
done
while read -r pid; do kill -9 "$pid"; done <"$cgroup/cgroup.procs"
echo killed >/run/e2e-converge-killed
EOF
rm -f /run/e2e-converge-killed
systemd-run --quiet --collect --unit=e2e-kill-converge /bin/bash /run/e2e-kill-converge """


def test_a_change_made_with_no_watcher_survives_a_converge_killed_mid_release(stack):
    """Two windows in one release. The watcher is stopped while the metadata changes (the gap
    between a converge reading the metadata and the watcher's first poll); started, it begins
    from the ETag the last converge applied, so it sees the change. The converge it asks for is
    killed after laying out the new release, before starting it: nothing of it serves, and the
    next converge (the watcher asks again for the unapplied metadata) releases it."""
    serving = greeting_of(stack.accepted)
    greeting = "Hello from a change the watcher missed and a converge that was killed!"
    changed = with_greeting(stack.accepted, greeting)
    settled(stack)  # a converge still running would restart the watcher when it ends
    before, slot = main_pid(stack), serving_slot(stack)
    guest(stack, "systemctl stop hello-metadata-watch.service")
    guest(stack, KILL_AFTER_INSTALL + shlex.quote(greeting))
    try:
        with releasing(stack, changed):
            stack.set_attributes(changed)
            time.sleep(3)
            assert stack.vm.get("/") == (200, serving), "applied with no watcher running?"
            mark = len(stack.vm.serial_text())
            guest(stack, "systemctl start hello-metadata-watch.service")
            deadline = time.monotonic() + REDEPLOY_TIMEOUT
            while stack.vm.guest_exec("test -e /run/e2e-converge-killed")[0] != 0:
                assert time.monotonic() < deadline, "the converge was never killed"
                time.sleep(1)
            assert (main_pid(stack), serving_slot(stack)) == (before, slot)
            assert stack.vm.get("/") == (200, serving)
            stack.vm.wait_http("/", timeout=REDEPLOY_TIMEOUT, expect=greeting)
            log = stack.vm.wait_serial(CONVERGED, start=mark, timeout=REDEPLOY_TIMEOUT)
            assert "hello-startup: instance metadata changed" in log
            releases = re.findall(r"hello-startup: new release \w+: preparing slot", log)
            assert len(releases) >= 2, log
            assert serving_slot(stack) != slot
    finally:
        guest(
            stack,
            "systemctl stop e2e-kill-converge.service || true;"
            " systemctl start hello-metadata-watch.service",
        )
