"""Holds apt's locks at boot as other apt users do on a GCE image (see vm.hold_apt_locks_at_boot).

Runs inside the guest under python3 from the kernel command line; argv[1] is the hold in seconds.
"""

import fcntl
import struct
import subprocess
import sys
import time

LISTS = "/var/lib/apt/lists/lock"
hold = int(sys.argv[1])
DPKG = ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock")
files = {path: open(path, "a") for path in (LISTS, *DPKG)}  # noqa: SIM115 - held until exit
for handle in files.values():
    fcntl.lockf(handle, fcntl.LOCK_EX)
print(f"hold-apt-locks: holding {', '.join(files)}", flush=True)


def wait_until(condition, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.5)


def startup_scripts_began() -> bool:
    state = subprocess.run(
        ["systemctl", "show", "--property=ActiveState", "--value", "google-startup-scripts"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return state in ("activating", "active", "failed")


def lists_lock_held_by_another() -> bool:
    """F_GETLK: asks who holds the lock without taking it (taking it would fail apt-get)."""
    with open(LISTS, "a") as handle:
        query = struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0)
        return struct.unpack("hhqqi", fcntl.fcntl(handle, fcntl.F_GETLK, query))[0] != fcntl.F_UNLCK


wait_until(startup_scripts_began)
time.sleep(hold)
files.pop(LISTS).close()
print("hold-apt-locks: released the lists lock", flush=True)
# dpkg's locks stay held until `hold` s after another `apt-get update` finished, so the
# `apt-get install` that follows it meets them however long the update took.
wait_until(lists_lock_held_by_another)
wait_until(lambda: not lists_lock_held_by_another())
time.sleep(hold)
print("hold-apt-locks: released the dpkg locks", flush=True)
