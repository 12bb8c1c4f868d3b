"""Holds apt's locks at boot as other apt users do on a GCE image (see vm.hold_apt_locks_at_boot).

Runs inside the guest under python3 from the kernel command line; argv[1] and argv[2] are how
long the lists lock and dpkg's locks are held, in seconds.
"""

import fcntl
import sys
import time
from pathlib import Path

LISTS = "/var/lib/apt/lists/lock"
lists_hold, dpkg_hold = int(sys.argv[1]), int(sys.argv[2])
DPKG = ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock")
files = {path: open(path, "a") for path in (LISTS, *DPKG)}  # noqa: SIM115 - held until exit
for handle in files.values():
    fcntl.lockf(handle, fcntl.LOCK_EX)
print(f"hold-apt-locks: holding {', '.join(files)}", flush=True)


def wait_until(condition, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(1)


def startup_scripts_began() -> bool:
    # systemd writes this link when the unit starts: no process to spawn under TCG per poll.
    return Path("/run/systemd/units/invocation:google-startup-scripts.service").is_symlink()


def installing() -> str:
    """The pid and command line of an `apt-get install`, or of a `dpkg --configure` finishing
    an install a reset interrupted; empty if there is none."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if (any(arg.endswith(b"apt-get") for arg in args) and b"install" in args) or (
            args[0].endswith(b"dpkg") and b"--configure" in args
        ):
            return f"{cmdline.parent.name} ({b' '.join(args).decode(errors='replace').strip()})"
    return ""


wait_until(startup_scripts_began)
# The lists lock is released `lists_hold` s after the startup scripts began, and dpkg's locks
# `dpkg_hold` s after an `apt-get install` (or a `dpkg --configure`) started, whenever that is:
# after an `apt-get update` however long it took (a first boot), or while the lists lock is
# still held (a boot that only finishes dpkg's interrupted work).
lists_until = time.monotonic() + lists_hold
dpkg_until = time.monotonic() + 900  # at the latest, if no install comes
install = ""
while files:
    now = time.monotonic()
    if LISTS in files and now >= lists_until:
        files.pop(LISTS).close()
        print("hold-apt-locks: released the lists lock", flush=True)
    if not install and (install := installing()):
        dpkg_until = now + dpkg_hold
        print(f"hold-apt-locks: an install started: {install}", flush=True)
    if DPKG[0] in files and now >= dpkg_until:
        for path in DPKG:
            files.pop(path).close()
        print("hold-apt-locks: released the dpkg locks", flush=True)
    time.sleep(1)
