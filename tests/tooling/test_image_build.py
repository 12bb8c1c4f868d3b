"""The VM image builds without privileges, as it must in CircleCI's Docker executor.

CircleCI runs Docker-executor jobs in a user namespace, where creating device nodes and mounting
are refused. The test builds the image inside `unshare --user --map-root-user`, which refuses
both in the same way (the test checks that first), then reads the result back with e2fsprogs:
a clean ext4 file system holding device nodes, owners other than root, setuid modes and the
overlay's files, with a kernel and initrd beside it. The e2e suite boots the image that this
same code builds.

Real: mmdebstrap, fakechroot, fakeroot and Debian's mirror; mkfs.ext4, e2fsck and debugfs.
Nothing is emulated.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from localvm.image import FORBIDDEN, PACKAGES, Image, recipe_key
from tests.conftest import VM_LANE_2

# As busy as a VM while it runs, so it takes a VM lane (tests/conftest.py).
pytestmark = [pytest.mark.e2e, VM_LANE_2]

USER_NAMESPACE = ["unshare", "--user", "--map-root-user"]


def _refused(command: list[str], cwd: Path) -> bool:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    message = result.stderr.lower()
    return result.returncode != 0 and ("not permitted" in message or "permission denied" in message)


def _unprivileged_prefix(workdir: Path) -> list[str]:
    """How to run a command where mknod and mount are refused, checked before it is trusted."""
    probe = subprocess.run([*USER_NAMESPACE, "true"], capture_output=True, text=True)
    prefix = USER_NAMESPACE if probe.returncode == 0 else []
    if not prefix and not _refused(["mknod", "probe", "c", "1", "3"], workdir):
        pytest.skip(f"no user namespaces here ({probe.stderr.strip()}) and mknod is allowed")
    (workdir / "mnt").mkdir()
    assert _refused([*prefix, "mknod", "null", "c", "1", "3"], workdir)
    assert _refused([*prefix, "mount", "-t", "tmpfs", "none", "mnt"], workdir)
    return prefix


def _debugfs(disk: Path, request: str) -> str:
    result = subprocess.run(
        ["debugfs", "-R", request, disk], capture_output=True, text=True, check=True
    )
    return result.stdout


def _inode(disk: Path, path: str) -> dict[str, str]:
    text = _debugfs(disk, f"stat {path}")
    fields = dict(re.findall(r"(Type|User|Group|Mode|Device major/minor number):\s*(\S+)", text))
    if fields["Type"] == "symlink":
        # Short targets live in the inode ("fast"); longer ones in a data block, read by cat.
        fast = re.search(r'Fast link dest: "([^"]*)"', text)
        fields["link"] = fast.group(1) if fast else _debugfs(disk, f"cat {path}")
    return fields


def test_image_builds_in_a_user_namespace_without_device_nodes_or_mounts(tmp_path):
    prefix = _unprivileged_prefix(tmp_path)
    cache = tmp_path / "cache"
    result = subprocess.run(
        [*prefix, sys.executable, "-m", "localvm.image", "--cache", cache],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    image = Image(Path(result.stdout.strip()))
    assert image.directory == cache / recipe_key()
    assert image.complete()

    fsck = subprocess.run(["e2fsck", "-fn", image.disk], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr

    # Device nodes exist only in the image, recorded by fakeroot and written by mkfs.ext4 -d.
    null = _inode(image.disk, "/dev/null")
    assert null["Type"] == "character"
    assert null["Device major/minor number"] == "01:03"

    # Owners other than the builder's one mapped uid survive: /etc/shadow's group is the image's
    # own "shadow" group, and passwd keeps its setuid bit.
    groups = dict(
        (line.split(":")[0], line.split(":")[2])
        for line in _debugfs(image.disk, "cat /etc/group").splitlines()
        if line.count(":") >= 3
    )
    shadow = _inode(image.disk, "/etc/shadow")
    assert (shadow["User"], shadow["Group"]) == ("0", groups["shadow"])
    assert groups["shadow"] != "0"
    assert _inode(image.disk, "/usr/bin/passwd")["Mode"] == "04755"

    # The overlay is in, owned by root whoever built it, with its symlinks kept as symlinks.
    masked = _inode(image.disk, "/etc/systemd/system/e2scrub_reap.service")
    assert masked["link"] == "/dev/null"
    assert _inode(image.disk, "/etc/network/interfaces")["User"] == "0"
    assert _debugfs(image.disk, "cat /etc/machine-id") == ""

    # Merged /usr as on Debian 12 installs: /bin is a link into /usr. Absolute links point
    # into the image, not into the build directory: the kernel starts /sbin/init through one.
    assert _inode(image.disk, "/bin")["link"] == "usr/bin"
    assert _inode(image.disk, "/usr/sbin/init")["link"] == "/lib/systemd/systemd"
    agent = "/etc/systemd/system/multi-user.target.wants/google-guest-agent.service"
    assert _inode(image.disk, agent)["link"] == "/lib/systemd/system/google-guest-agent.service"

    manifest = json.loads(image.manifest_path.read_text())
    installed = {line.split()[0] for line in manifest["packages"]}
    assert set(PACKAGES) <= installed
    assert not set(FORBIDDEN) & installed
    kernel = image.kernel.read_bytes()
    assert kernel[0x202:0x206] == b"HdrS"  # a bzImage qemu can boot directly
    modules = _debugfs(image.disk, "ls -l /usr/lib/modules")
    assert any(name.endswith("-cloud-amd64") for name in modules.split())
