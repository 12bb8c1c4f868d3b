"""Holds apt's locks at boot as other apt users do on a GCE image (see vm.hold_apt_locks_at_boot).

Runs inside the guest under python3 from the kernel command line; argv[1] is the hold in seconds.
"""

import fcntl
import subprocess
import sys
import time

hold = int(sys.argv[1])
files = {
    path: open(path, "a")  # noqa: SIM115 - held open until exit
    for path in ("/var/lib/apt/lists/lock", "/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock")
}
for handle in files.values():
    fcntl.lockf(handle, fcntl.LOCK_EX)
print(f"hold-apt-locks: holding {', '.join(files)}", flush=True)


def startup_scripts_began() -> bool:
    state = subprocess.run(
        ["systemctl", "show", "--property=ActiveState", "--value", "google-startup-scripts"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return state in ("activating", "active", "failed")


deadline = time.monotonic() + 900
while not startup_scripts_began() and time.monotonic() < deadline:
    time.sleep(1)
time.sleep(hold)
files.pop("/var/lib/apt/lists/lock").close()
print("hold-apt-locks: released the lists lock", flush=True)
time.sleep(hold)
print("hold-apt-locks: released the dpkg locks", flush=True)
