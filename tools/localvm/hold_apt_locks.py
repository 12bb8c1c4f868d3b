"""Holds apt's locks at boot as other apt users do on a GCE image (see vm.hold_apt_locks_at_boot).

Runs inside the guest under python3 from the kernel command line; argv[1] is how long the lists
lock is held after an `apt-get update` started, argv[2] how long dpkg's locks are held after an
`apt-get install` began waiting for them (or a `dpkg --configure`, which does not wait, started).
"""

import fcntl
import sys
import time
from pathlib import Path

LISTS = "/var/lib/apt/lists/lock"
DPKG = ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock")
hold = {"update": int(sys.argv[1]), "install": int(sys.argv[2])}
files = {path: open(path, "a") for path in (LISTS, *DPKG)}  # noqa: SIM115 - held until exit
for handle in files.values():
    fcntl.lockf(handle, fcntl.LOCK_EX)
print(f"hold-apt-locks: holding {', '.join(files)}", flush=True)


def waiting(process: Path) -> bool:
    """Asleep in clock_nanosleep (or nanosleep): apt-get's once-a-second loop waiting for a lock
    (DPkg::Lock::Timeout). Before it gets there it never sleeps, and under load it may take
    longer than a hold to get there after it started."""
    try:
        return (process / "syscall").read_text().split()[0] in ("230", "35")
    except (OSError, IndexError):
        return False


def apt_command() -> tuple[str, str]:
    """("update" or "install", pid and command line) of a running `apt-get update` or install
    (`apt-get install` waiting for dpkg's lock, or `dpkg --configure` ending a reset's);
    ("", "") if none."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        apt_get = any(arg.endswith(b"apt-get") for arg in args)
        if apt_get and b"update" in args:
            kind = "update"
        elif (apt_get and b"install" in args and waiting(cmdline.parent)) or (
            args[0].endswith(b"dpkg") and b"--configure" in args
        ):
            kind = "install"
        else:
            continue
        return kind, f"{cmdline.parent.name} ({b' '.join(args).decode(errors='replace').strip()})"
    return "", ""


# From when the startup scripts begin (systemd writes this link as the unit starts), or 900 s.
latest = time.monotonic() + 900
began = Path("/run/systemd/units/invocation:google-startup-scripts.service")
while not began.is_symlink() and time.monotonic() < latest:
    time.sleep(1)
# A lock no command asks for goes 900 s after that. An install with no update before it (a
# boot only ending dpkg's interrupted work) releases the lists lock with dpkg's.
until = dict.fromkeys(hold, time.monotonic() + 900)
seen = set()
while files:
    now = time.monotonic()
    # Reading /proc costs the guest's vCPU: only until both were seen.
    kind, command = apt_command() if len(seen) < len(hold) else ("", "")
    if kind and kind not in seen:
        seen.add(kind)
        until[kind] = now + hold[kind]
        if "update" not in seen:
            until["update"] = until["install"]
        print(f"hold-apt-locks: an {kind} needs its lock: {command}", flush=True)
    if LISTS in files and now >= until["update"]:
        files.pop(LISTS).close()
        print("hold-apt-locks: released the lists lock", flush=True)
    if DPKG[0] in files and now >= until["install"]:
        for path in DPKG:
            files.pop(path).close()
        print("hold-apt-locks: released the dpkg locks", flush=True)
    time.sleep(1)
