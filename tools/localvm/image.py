"""Builds (once) and caches a Debian 12 disk image like GCE's debian-12 family.

The image has what a stock GCE Debian 12 image brings that matters here: systemd, the cloud
kernel, python3, curl and Google's guest agent, which runs the startup script from metadata.
It deliberately has none of the app's own packages (python3-venv, Flask, gunicorn): the startup
script must install those on first boot, exactly as on GCE. The one addition is
qemu-guest-agent, the tests' out-of-band control channel (there is no SSH: OS Login needs Google).

It builds without privileges, so it runs where CI does (a container in a user namespace, where
mknod and mount are refused): mmdebstrap installs the packages under fakechroot and fakeroot and
writes a tarball; unpacking it under fakeroot records owners and device nodes in a state file
instead of creating them, and `mkfs.ext4 -d`, run under fakeroot with that state, writes them
into the raw disk. No mounts, no loop devices, no device nodes on the host. The kernel and initrd
are copied out for qemu's direct kernel boot.

The result lives outside the clone in CACHE_ROOT/<key>/, where <key> hashes the recipe (this
file and image-overlay/), so a recipe change builds a new image and an unchanged one is reused.
A build happens in a temporary directory that is renamed into place only when complete.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
OVERLAY = HERE / "image-overlay"
# CAs the host added locally (e.g. a TLS-inspecting egress proxy): the guest's HTTPS to PyPI
# leaves through the host's network, so it must trust what the host trusts. Usually empty.
HOST_EXTRA_CAS = Path("/usr/local/share/ca-certificates")
CACHE_ROOT = Path(os.environ.get("LOCALVM_CACHE", "/var/cache/hello-stack/images"))
MIRROR = os.environ.get("LOCALVM_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
DISK_SIZE = "3G"

# GCE's debian-12 image, reduced to what the VM's behaviour depends on.
PACKAGES = (
    "systemd-sysv",
    "udev",
    "dbus",  # without it systemd ignores ACPI power button presses (QMP system_powerdown)
    "linux-image-cloud-amd64",
    "google-guest-agent",
    "python3",
    "curl",
    "ca-certificates",
    "iproute2",
    "ifupdown",
    "isc-dhcp-client",
    "netbase",
    "procps",
    # As on GCE (Debian's cloud image config installs it): with it, the apt-daily and
    # apt-daily-upgrade timers apt enables really update and upgrade, taking apt's locks when
    # they fire, and may fire during a first boot.
    "unattended-upgrades",
    # e2scrub_reap.service is masked (image-overlay/): it only reaps e2scrub's LVM snapshots,
    # there is no LVM here, and under TCG it held a CPU for ~40 s of every boot.
    # Test infrastructure, not part of GCE's image: a virtio-serial exec channel for the e2e
    # tests (kill -9 the app, inspect users and sockets) in place of SSH.
    "qemu-guest-agent",
)

# The app's packages: the startup script installs them, so the image must not have them.
FORBIDDEN = ("python3-venv", "python3-flask", "gunicorn")

MMDEBSTRAP_HOOKS = Path("/usr/share/mmdebstrap/hooks")
# Inside a user namespace that maps one uid (unshare --map-root-user), chown to any other uid is
# refused with EINVAL, which fakeroot passes on; this makes it only record the owner, as it does
# for mknod.
FAKEROOT_ENV = {**os.environ, "FAKEROOTDONTTRYCHOWN": "1"}

KERNEL_CMDLINE = "root=LABEL=root ro console=ttyS0,115200 net.ifnames=0 biosdevname=0"


@dataclass(frozen=True)
class Image:
    """A built image: the raw root disk and the kernel/initrd for direct kernel boot."""

    directory: Path

    @property
    def disk(self) -> Path:
        return self.directory / "disk.raw"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"

    @property
    def cmdline(self) -> str:
        return KERNEL_CMDLINE

    def complete(self) -> bool:
        return all(p.is_file() for p in (self.disk, self.kernel, self.initrd, self.manifest_path))

    @property
    def manifest_path(self) -> Path:
        return self.directory / "manifest.json"


def recipe_key() -> str:
    """Hash of everything that determines the image: this builder and the overlay files."""
    digest = hashlib.sha256()
    digest.update(Path(__file__).read_bytes())
    for path in sorted(OVERLAY.rglob("*")):
        if path.is_symlink():  # e.g. a unit masked with a link to /dev/null
            content = b"-> " + os.readlink(path).encode()
        elif path.is_file():
            content = path.read_bytes()
        else:
            continue
        digest.update(str(path.relative_to(OVERLAY)).encode() + b"\0" + content + b"\0")
    for path in _host_cas():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _host_cas() -> list[Path]:
    return sorted(HOST_EXTRA_CAS.glob("*.crt")) if HOST_EXTRA_CAS.is_dir() else []


def log(message: str) -> None:
    print(f"localvm-image: {message}", file=sys.stderr, flush=True)


def run(*args: str | Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], check=True, **kwargs)


def _customize_hooks() -> list[str]:
    """mmdebstrap hooks that finish the tree inside its fakeroot session, so what they add is
    packed as root's."""
    hooks = [
        # Copied, not synced: sync-in would keep the builder's uid as the owner in the image.
        f'cp -R -P --preserve=mode "{OVERLAY}/." "$1/"',
        # Empty machine-id: each VM generates its own on first boot, as a fresh GCE disk does.
        ': > "$1/etc/machine-id"',
        'rm -f "$1/var/lib/dbus/machine-id"',
        f'echo "deb {MIRROR} {SUITE} main" > "$1/etc/apt/sources.list"',
    ]
    cas = _host_cas()
    if cas:
        log(f"trusting the host's local CAs in the guest: {', '.join(p.name for p in cas)}")
        hooks += [f'cp "{path}" "$1/usr/local/share/ca-certificates/"' for path in cas]
        hooks.append('chroot "$1" update-ca-certificates >/dev/null')
    return hooks


def _build_rootfs(rootfs: Path, fakeroot_state: Path) -> None:
    log(f"mmdebstrap {SUITE} from {MIRROR}, unprivileged (minutes)")
    # A tarball, not a directory: in a directory, fakechroot leaves absolute symlinks pointing
    # into the build directory (/sbin/init would not resolve on the VM); mmdebstrap writes the
    # tarball from inside the emulated chroot, where they read as on a real system.
    tarball = rootfs.with_suffix(".tar")
    run(
        "fakechroot",
        "fakeroot",
        "mmdebstrap",
        "--mode=fakechroot",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        # Merged /usr set up as debootstrap and GCE's image builder do, with usr-is-merged,
        # rather than by the usrmerge package (which would also pull perl into the image).
        f"--hook-dir={MMDEBSTRAP_HOOKS}/merged-usr",
        # mmdebstrap's own cleanup drops package lists and downloaded .debs, as GCE's images do.
        *(f"--customize-hook={hook}" for hook in _customize_hooks()),
        SUITE,
        tarball,
        MIRROR,
        env=FAKEROOT_ENV,
        stdout=subprocess.DEVNULL,
    )
    # Unpacked under fakeroot, which records the owners and device nodes in `fakeroot_state`
    # for mkfs.ext4 to replay; numeric ids, because the host's names may map to other ids.
    run(
        *("fakeroot", "-s", fakeroot_state, "tar", "--extract", "--numeric-owner"),
        *("--file", tarball, "--directory", rootfs),
        env=FAKEROOT_ENV,
    )
    tarball.unlink()
    for name in FORBIDDEN:
        if (rootfs / "var/lib/dpkg/info" / f"{name}.list").exists():
            raise SystemExit(
                f"localvm-image: {name} got into the image; the startup script owns it"
            )


def _manifest(rootfs: Path) -> dict:
    packages = subprocess.run(
        ["dpkg-query", f"--admindir={rootfs}/var/lib/dpkg", "-W", "-f=${Package} ${Version}\n"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\n")
    return {
        "recipe": recipe_key(),
        "suite": SUITE,
        "mirror": MIRROR,
        "cmdline": KERNEL_CMDLINE,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "packages": sorted(p for p in packages if p),
    }


def _build(target: Path) -> None:
    started = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        rootfs = work / "rootfs"
        rootfs.mkdir()
        fakeroot_state = work / "fakeroot.state"
        _build_rootfs(rootfs, fakeroot_state)
        out = work / "image"
        out.mkdir()
        boot = rootfs / "boot"
        kernels = sorted(boot.glob("vmlinuz-*"))
        initrds = sorted(boot.glob("initrd.img-*"))
        if len(kernels) != 1 or len(initrds) != 1:
            raise SystemExit(f"localvm-image: expected one kernel and initrd in /boot: {kernels}")
        shutil.copyfile(kernels[0], out / "vmlinuz")
        shutil.copyfile(initrds[0], out / "initrd.img")
        (out / "manifest.json").write_text(json.dumps(_manifest(rootfs), indent=1) + "\n")
        log(f"mkfs.ext4 -d rootfs ({DISK_SIZE}, sparse)")
        run(
            # fakeroot replays the owners, modes and device nodes the bootstrap recorded.
            "fakeroot",
            "-i",
            fakeroot_state,
            "mkfs.ext4",
            "-q",
            "-L",
            "root",
            "-E",
            "root_owner=0:0",
            "-d",
            rootfs,
            out / "disk.raw",
            DISK_SIZE,
            env=FAKEROOT_ENV,
            stdout=subprocess.DEVNULL,
        )
        shutil.rmtree(rootfs)
        # The base must stay pristine: every boot runs on a qcow2 overlay on top of it.
        for path in out.iterdir():
            path.chmod(0o444)
        out.rename(target)
        log(f"built {target} in {time.monotonic() - started:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ensure_image(cache_root: Path = CACHE_ROOT) -> Image:
    """Returns the cached image for the current recipe, building it first when missing."""
    image = Image(cache_root / recipe_key())
    if image.complete():
        return image
    cache_root.mkdir(parents=True, exist_ok=True)
    # One builder at a time per cache; a second caller waits and then finds the image built.
    with open(cache_root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not image.complete():
            if image.directory.exists():
                shutil.rmtree(image.directory)
            _build(image.directory)
            # Images of older recipes are unreachable now: drop them (a VM still running on one
            # keeps its open file). Leftover temporary dirs of killed builds go too.
            for stale in cache_root.iterdir():
                if stale.is_dir() and stale != image.directory:
                    log(f"removing stale {stale}")
                    shutil.rmtree(stale, ignore_errors=True)
    return image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localvm.image", description=__doc__)
    parser.add_argument("--cache", type=Path, default=CACHE_ROOT)
    parser.add_argument("--print-key", action="store_true", help="print the recipe key and exit")
    args = parser.parse_args(argv)
    if args.print_key:
        print(recipe_key())
        return 0
    print(ensure_image(args.cache).directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
