"""The local VM's recipe and qemu command line, without booting anything (tests/e2e/ boots)."""

from __future__ import annotations

import shutil

from localvm import image
from localvm.image import FORBIDDEN, PACKAGES, Image, recipe_key
from localvm.vm import METADATA_IP, NETWORK, LocalVM


def test_recipe_key_follows_the_overlay_and_host_cas(tmp_path, monkeypatch):
    overlay = tmp_path / "overlay"
    shutil.copytree(image.OVERLAY, overlay, symlinks=True)
    monkeypatch.setattr(image, "OVERLAY", overlay)
    monkeypatch.setattr(image, "HOST_EXTRA_CAS", tmp_path / "no-cas")
    base = recipe_key()
    assert recipe_key() == base  # stable
    hosts = overlay / "etc" / "hosts"
    hosts.write_text(hosts.read_text() + "# changed\n")
    changed = recipe_key()
    assert changed != base
    (overlay / "etc" / "masked.service").symlink_to("/dev/null")
    assert recipe_key() != changed
    cas = tmp_path / "cas"
    cas.mkdir()
    (cas / "corp.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setattr(image, "HOST_EXTRA_CAS", cas)
    assert recipe_key() not in (base, changed)


def test_image_leaves_the_apps_packages_to_the_startup_script():
    assert not set(PACKAGES) & set(FORBIDDEN)
    assert {"google-guest-agent", "linux-image-cloud-amd64", "python3", "curl"} <= set(PACKAGES)
    hosts = (image.OVERLAY / "etc" / "hosts").read_text()
    assert any(
        line.split()[:2] == [METADATA_IP, "metadata.google.internal"] for line in hosts.splitlines()
    )


def test_qemu_forwards_metadata_per_connection_and_port_80_to_loopback(tmp_path, monkeypatch):
    monkeypatch.delenv("LOCALVM_ACCEL", raising=False)
    vm = LocalVM(Image(tmp_path), tmp_path, metadata_port=4242, http_port=5151)
    command = vm.command()
    netdev = command[command.index("-netdev") + 1]
    options = netdev.split(",")
    # `cmd:` starts one proxy per guest connection; `tcp:` would share one host connection
    # among all of them and stall the agent's long polls.
    assert f"guestfwd=tcp:{METADATA_IP}:80-cmd:" in netdev
    assert any(o.endswith("STDIO TCP:127.0.0.1:4242") for o in options)
    assert "hostfwd=tcp:127.0.0.1:5151-:80" in options
    assert f"net={METADATA_IP.rsplit('.', 1)[0]}.0/24" in options  # guestfwd must be inside
    assert f"dhcpstart={NETWORK['ip']}" in options
    assert command[command.index("-accel") + 1].startswith("tcg")
