"""The rendered instance, booted for real: it serves on boot, after a reset, after a crash, as a
non-root user on :80, picks up a redeploy while running, and shows the greeting in a browser.

Tests run in file order on one VM (see conftest.py); each leaves it serving the committed app.
Waits poll only where waiting is inherent (boot, restart, redeploy), always under a deadline.
"""

from __future__ import annotations

import http.server
import re
import shutil
import struct
import subprocess
import tempfile
import threading
import zlib
from pathlib import Path

import pytest

from localvm.stack import ARTIFACTS, GREETING, attributes

pytestmark = pytest.mark.e2e

COLD_BOOT_TIMEOUT = 900  # TCG on a busy 2-core CI machine, apt and pip included
REBOOT_TIMEOUT = 300
RESTART_TIMEOUT = 60
REDEPLOY_TIMEOUT = 300
STARTUP_DONE = "hello-startup: serving on :80"


def guest(stack, script: str, timeout: float = 60) -> str:
    code, out, err = stack.vm.guest_exec(script, timeout=timeout)
    assert code == 0, f"guest command failed ({code}): {script}\n{out}\n{err}"
    return out


def main_pid(stack) -> int:
    return int(guest(stack, "systemctl show --property=MainPID --value hello.service").strip())


def test_cold_boot_serves_the_greeting(stack):
    stack.vm.wait_http("/", timeout=COLD_BOOT_TIMEOUT, expect=GREETING)
    for path in ("/", "/hello"):
        assert stack.vm.get(path) == (200, GREETING), path
    assert stack.vm.get("/healthz")[0] == 200
    # First boot: the image lacks the app's packages, so the startup script installed them.
    log = stack.vm.wait_serial(STARTUP_DONE, timeout=COLD_BOOT_TIMEOUT)
    assert "hello-startup: installing packages: python3-venv" in log
    assert "hello-startup: building venv" in log


def test_service_runs_as_non_root_and_listens_on_port_80(stack):
    stack.vm.wait_guest_agent(timeout=120)
    pid = main_pid(stack)
    assert pid > 0
    # Every process in the unit's cgroup (gunicorn's master and its workers), not a name match.
    procs = guest(
        stack, "cat /sys/fs/cgroup$(systemctl show -P ControlGroup hello.service)/cgroup.procs"
    ).split()
    assert len(procs) >= 2, procs
    users = guest(stack, f"ps -o user=,args= -p {','.join(procs)}").splitlines()
    assert all(line.split()[0] == "hello" and "gunicorn" in line for line in users), users
    uid = guest(stack, f"awk '/^Uid:/ {{print $2, $3, $4, $5}}' /proc/{pid}/status").split()
    assert len(uid) == 4 and "0" not in uid, uid
    # gunicorn on loopback only; nginx owns :80 and :443 (tests/e2e/test_https.py).
    listeners = guest(stack, "ss -Hltnp 'sport = :8080'")
    assert re.search(rf"127\.0\.0\.1:8080\b.*pid={pid},", listeners), listeners
    capabilities = guest(stack, f"grep CapEff /proc/{pid}/status").split()[1]
    assert int(capabilities, 16) == 0, f"CapEff {capabilities}: none"


def test_kill_9_of_the_main_process_is_restarted_by_systemd(stack):
    before = main_pid(stack)
    restarts = int(guest(stack, "systemctl show -P NRestarts hello.service"))
    guest(stack, f"kill -9 {before}")
    stack.vm.wait_http("/", timeout=RESTART_TIMEOUT, expect=GREETING)
    after = main_pid(stack)
    assert after not in (0, before)
    assert int(guest(stack, "systemctl show -P NRestarts hello.service")) == restarts + 1


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


def _chromium(*args: str) -> str:
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        result = subprocess.run(
            [
                shutil.which("chromium") or "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--hide-scrollbars",
                "--window-size=800,200",
                f"--user-data-dir={profile}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return result.stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)


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
    dom = _chromium("--dump-dom", stack.vm.url)
    assert GREETING in dom, dom
    _chromium(f"--screenshot={shot}", stack.vm.url)
    # The screenshot must be pixel-identical to Chromium rendering the greeting as plain text,
    # and differ from a rendering of another text (so the comparison can tell them apart).
    renders = {}
    for name, text in (("expected", GREETING), ("other", "Hello World from elsewhere!")):
        server = _serve_text(text)
        try:
            renders[name] = tmp_path / f"{name}.png"
            _chromium(f"--screenshot={renders[name]}", f"http://127.0.0.1:{server.server_port}/")
        finally:
            server.shutdown()
            server.server_close()
    actual = _png_pixels(shot)
    assert len(set(actual[2])) > 1, "the screenshot is blank"
    assert actual == _png_pixels(renders["expected"])
    assert actual != _png_pixels(renders["other"])


def test_reset_serves_again_without_reinstalling(stack):
    stack.vm.wait_serial(STARTUP_DONE, timeout=REBOOT_TIMEOUT)
    mark = len(stack.vm.serial_text())
    stack.vm.reset()  # a hard reset, like `gcloud compute instances reset`
    stack.vm.wait_http("/", timeout=REBOOT_TIMEOUT, expect=GREETING)
    log = stack.vm.wait_serial(STARTUP_DONE, start=mark, timeout=REBOOT_TIMEOUT)
    assert "Linux version" in log, "the VM did not actually reboot"
    assert "hello-startup: packages already present" in log
    assert "hello-startup: venv up to date" in log
    assert "installing packages" not in log
    assert "building venv" not in log
    assert stack.vm.get("/hello") == (200, GREETING)


def test_app_change_reaches_the_running_vm_through_metadata(stack):
    """A redeploy changes instance metadata only; the watcher re-runs the startup script."""
    original = attributes(stack.instance)
    changed_greeting = "Hello World from BenchSci, redeployed!"
    assert GREETING in original["app-py"]
    boot_id = guest(stack, "cat /proc/sys/kernel/random/boot_id")
    mark = len(stack.vm.serial_text())
    stack.set_attributes(
        {**original, "app-py": original["app-py"].replace(GREETING, changed_greeting)}
    )
    try:
        stack.vm.wait_http("/", timeout=REDEPLOY_TIMEOUT, expect=changed_greeting)
        assert stack.vm.get("/hello") == (200, changed_greeting)
        log = stack.vm.wait_serial(STARTUP_DONE, start=mark, timeout=REDEPLOY_TIMEOUT)
        assert "instance metadata changed" in log
        assert "restarting hello.service" in log
        assert guest(stack, "cat /proc/sys/kernel/random/boot_id") == boot_id, "it rebooted"
    finally:
        stack.set_attributes(original)
    stack.vm.wait_http("/", timeout=REDEPLOY_TIMEOUT, expect=GREETING)
