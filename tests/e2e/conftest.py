"""One booted VM for the whole e2e module: boots are the expensive part (TCG, no KVM here).

Real: the Debian 12 image (mmdebstrap), its kernel, systemd, Google's guest agent from Debian,
the startup script and app files exactly as `make preview` renders them, apt and PyPI over the
guest's NAT, qemu, Chromium. Emulated: the metadata server (emulators/metadata.py), because
Google's cannot run here. Test-only: qemu-guest-agent, used instead of SSH to run `kill`, `ps`
and `ss` inside the guest; and a process started from the kernel command line that holds apt's
locks at every boot, as Google's OS Config agent and apt-daily-upgrade do on a real GCE image
(localvm/hold_apt_locks.py: the same fcntl locks apt takes; the agent itself is not installed).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from localvm.stack import ARTIFACTS, LocalStack
from localvm.vm import hold_apt_locks_at_boot

# How long the lists lock is held after the startup scripts begin (dpkg's locks: twice that).
APT_LOCK_HOLD = 50


@pytest.fixture(scope="module")
def stack():
    # A short path: qemu's unix sockets live here and must fit in sun_path (108 bytes).
    workdir = Path(tempfile.mkdtemp(prefix="hello-e2e-"))
    local = LocalStack(workdir, kernel_args=hold_apt_locks_at_boot(APT_LOCK_HOLD))
    local.start()
    try:
        yield local
    finally:
        local.stop()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        if local.vm is not None and local.vm.serial_log.exists():
            shutil.copyfile(local.vm.serial_log, ARTIFACTS / "e2e-serial.log")
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    local = item.funcargs.get("stack") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(local, LocalStack) and local.vm is not None:
        report.sections.append(("VM serial log (tail)", local.vm.serial_tail(80)))
