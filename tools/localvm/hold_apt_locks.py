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


def installing() -> bool:
    """An `apt-get install`, or a `dpkg --configure` finishing an install a reset interrupted."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.endswith(b"apt-get") for arg in args) and b"install" in args:
            return True
        if args[0].endswith(b"dpkg") and b"--configure" in args:
            return True
    return False


wait_until(startup_scripts_began)
time.sleep(lists_hold)
files.pop(LISTS).close()
print("hold-apt-locks: released the lists lock", flush=True)
# dpkg's locks stay held until `dpkg_hold` s after an `apt-get install` (or a `dpkg --configure`)
# started, so it meets them however long the `apt-get update` before it took.
wait_until(installing)
time.sleep(dpkg_hold)
print("hold-apt-locks: released the dpkg locks", flush=True)
