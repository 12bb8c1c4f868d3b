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

import contextlib
import json
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from localvm.stack import ARTIFACTS, LocalStack, attributes
from localvm.vm import hold_apt_locks_at_boot
from tests.conftest import startup_version
from vm import METADATA_FILES

# How long apt's locks are held at every boot (the reset's too). The lists lock: from when an
# `apt-get update` started, which the script retries every 5 s while it is held; the cold boot
# test drops the link once the script says it waits, and this leaves it the time to. dpkg's:
# from when an `apt-get install` is seen waiting for them (not from its start: under load, one
# took longer than this hold to get there), or a `dpkg --configure` started; this one every
# boot pays.
APT_LISTS_LOCK_HOLD = 25
APT_DPKG_LOCK_HOLD = 12


@pytest.fixture(scope="module")
def stack():
    # A short path: qemu's unix sockets live here and must fit in sun_path (108 bytes).
    workdir = Path(tempfile.mkdtemp(prefix="hello-e2e-"))
    local = LocalStack(
        workdir, kernel_args=hold_apt_locks_at_boot(APT_LISTS_LOCK_HOLD, APT_DPKG_LOCK_HOLD)
    )
    local.accepted = attributes(local.instance)  # what the VM serves once it converged
    local.start()
    try:
        yield local
    finally:
        local.stop(discard=True)  # the overlay is deleted below
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        if local.vm is not None and local.vm.serial_log.exists():
            shutil.copyfile(local.vm.serial_log, ARTIFACTS / "e2e-serial.log")
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    stack = item.funcargs.get("stack") if hasattr(item, "funcargs") else None
    if report.failed and stack is not None:
        # A LocalStack, or test_make_up.py's RunningStack, whose VM a failure may have deleted.
        with contextlib.suppress(Exception):
            report.sections.append(("VM serial log (tail)", stack.vm.serial_tail(80)))


def guest(stack, script: str, timeout: float = 60) -> str:
    """`sh -c script` in the stack's VM through the guest agent; its stdout, or a failed test."""
    code, out, err = stack.vm.guest_exec(script, timeout=timeout)
    assert code == 0, f"guest command failed ({code}): {script}\n{out}\n{err}"
    return out


class RequestLoop:
    """GETs through `get` (a callable returning (status, body)) at a steady rate from a thread,
    while a deploy happens: every answer that is not a 200 with one of `bodies` is a failure,
    with what it was. A context manager; the loop runs until the block ends."""

    def __init__(
        self, get: Callable[[], tuple[int, str]], bodies: Iterable[str], interval: float = 0.2
    ) -> None:
        self.get, self.bodies, self.interval = get, set(bodies), interval
        self.answers = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            # Any error is a failed request, and the loop goes on: an http.client error that is
            # no OSError (a bad status line) must not end the loop silently.
            try:
                status, body = self.get()
            except Exception as error:
                status, body = 0, f"{type(error).__name__}: {error}"
            self.answers += 1
            if status != 200 or body not in self.bodies:
                self.failures.append(f"{time.strftime('%H:%M:%S')} {status} {body[:120]!r}")
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def __enter__(self) -> RequestLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


# --- redeploys: what a VM that applied some metadata reports ----------------------------------

REDEPLOY_TIMEOUT = 600  # a venv rebuild under TCG on a busy machine


def version_of(values: dict[str, str]) -> str:
    """The version a VM that applied `values` reports: startup.sh's digest of those files."""
    with tempfile.TemporaryDirectory(prefix="hello-version-") as workdir:
        for key in METADATA_FILES:
            Path(workdir, key).write_text(values[key])
        return startup_version(*(f"{key}={Path(workdir, key)}" for key in METADATA_FILES))


def wait_converged(stack, values: dict[str, str], timeout: float = REDEPLOY_TIMEOUT) -> str:
    """Until GET /healthz reports the version of `values` (over HTTP: the guest agent channel
    stalls under load, and a converge records its version only once it completed); returns it."""
    expected = version_of(values)
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        status, body = stack.vm.get("/healthz")
        last = body
        if status == 200 and f'"version":"{expected}"' in body.replace(" ", ""):
            return expected
        time.sleep(2)
    raise AssertionError(f"not at version {expected} in {timeout} s (last: {last})")


def settled(stack, timeout: float = REDEPLOY_TIMEOUT) -> None:
    """Until the VM has applied the metadata it holds and no converge runs or is asked for.
    Neither /healthz nor the serving release tells that alone: both still show the previous
    release while a converge watches the new one, or before the watcher even saw the change.
    Every converge (the boot's too, which is no unit of ours) holds app/startup.sh's lock."""
    etag = (
        "curl -s -o /dev/null -w '%header{etag}' -H 'Metadata-Flavor: Google'"
        " 'http://metadata.google.internal/computeMetadata/v1/instance/attributes/?recursive=true&alt=json'"
    )
    # Shell builtins where they do: the checks share the guest's vCPU with the converge.
    code, out, err = stack.vm.guest_exec(
        # A oneshot unit's cgroup exists while it runs.
        "busy() { [ -d /sys/fs/cgroup/system.slice/hello-converge.service ] && return 0;"
        ' set -- /run/hello-converge-requests/*; [ -e "$1" ] && return 0;'
        " flock --nonblock /run/hello-converge.lock true || return 0;"
        " read -r applied 2>/dev/null </var/lib/hello/applied-etag || return 0;"
        f' [ "$applied" != "$({etag})" ]; }};'
        " for i in 1 2 3 4 5; do while busy; do sleep 1; done; sleep 1; done",
        timeout=timeout,
    )
    assert code == 0, f"converges did not settle: {out}{err}"


def serves(stack, values: dict[str, str]) -> str:
    """Until the release of `values` is the serving one (not only answering /healthz, which it
    does while the converge still watches it) and no converge runs; returns its version."""
    version = wait_converged(stack, values)
    settled(stack)  # the VM records the metadata as applied only once the release is kept
    serving = stack.vm.guest_exec("cat /opt/hello/serving/version")[1].strip()
    assert serving == version, f"release {version} is not the serving one ({serving})"
    return version


def restore(stack, original: dict[str, str]) -> None:
    """Back to `original`, served and settled."""
    stack.set_attributes(original)
    serves(stack, original)


@contextlib.contextmanager
def releasing(stack, values: dict[str, str]):
    """A scenario that deploys `values`, a good release, over the one the VM serves
    (`stack.accepted`, the metadata the scenario starts from). Once the block passes, the VM
    must serve `values`, which the next scenario starts from, so a scenario costs one converge,
    not a second one back to the old release. A failed block restores the old release, so the
    next scenario still starts from a known one."""
    try:
        yield stack.accepted
        serves(stack, values)
    except BaseException:
        restore(stack, stack.accepted)
        raise
    stack.accepted = values


def greeting_of(values: dict[str, str]) -> str:
    return re.search(r'^GREETING = "(.*)"$', values["app-py"], re.MULTILINE).group(1)


def with_greeting(values: dict[str, str], greeting: str) -> dict[str, str]:
    """`values` with app.py greeting `greeting` instead of whatever it greets."""
    old = f'GREETING = "{greeting_of(values)}"'
    return {**values, "app-py": values["app-py"].replace(old, f'GREETING = "{greeting}"')}


def refused(stack) -> dict:
    status, body = stack.vm.get("/healthz")
    assert status == 200, body
    return json.loads(body).get("refused") or {}


def release_refused(
    stack, bad: dict[str, str], why: str, get: Callable[[], tuple[int, str]],
    *, storm_check: bool = False, then_restore: bool = True,
) -> None:  # fmt: skip
    """Deploys `bad` while `get` fetches the greeting in a loop: the VM refuses it with `why`,
    no request fails, and /healthz says which version was refused and why. Then restores what
    the VM serves (`stack.accepted`) and sees the refusal forgotten; with `then_restore=False`
    (the next scenario deploys over the refused metadata, which costs no converge back) only
    when this one failed."""
    original = stack.accepted
    greeting = greeting_of(original)
    version = version_of(bad)
    mark = len(stack.vm.serial_text())
    try:
        with RequestLoop(get, {greeting}) as loop:
            stack.set_attributes(bad)
            log = stack.vm.wait_serial(
                f"hello-startup: FAILED: release {version} refused", start=mark,
                timeout=REDEPLOY_TIMEOUT,
            )  # fmt: skip
            time.sleep(5)  # requests after the refusal too
        failed = re.search(rf"FAILED: release {version} refused: (.*)", log).group(1)
        assert why in failed, failed
        assert refused(stack) == {"version": version, "reason": failed.split("; serving ")[0]}
        assert get() == (200, greeting)
        assert loop.failures == [], loop.failures
        assert loop.answers > 20
        if storm_check:
            # No retry storm: at the end of its next long poll (a minute at most) the watcher
            # asked for a converge again before; now it says it holds a refused release and waits.
            # From the refusal on: a refusal deployed over may have its own line before it.
            refused_at = mark + log.index(f"FAILED: release {version} refused")
            after = stack.vm.wait_serial("holds a refused release", start=refused_at, timeout=120)
            assert "requesting a converge again" not in after, after
    except BaseException:
        restore(stack, original)
        raise
    if not then_restore:
        return
    restore(stack, original)
    # Back at the applied metadata, the watcher asks for a converge, which forgets the refusal.
    deadline = time.monotonic() + REDEPLOY_TIMEOUT
    while refused(stack):
        assert time.monotonic() < deadline, "the refusal was never forgotten"
        time.sleep(2)
