"""The local VM's recipe and qemu command line, without booting anything (tests/e2e/ boots)."""

from __future__ import annotations

import base64
import gzip
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from emulators.metadata import instance_tree
from localvm import image
from localvm.acme import Pebble
from localvm.image import FORBIDDEN, PACKAGES, Image, recipe_key
from localvm.stack import REPO, attributes, with_local_public_ip, without_public_ca
from localvm.vm import (
    KERNEL_COMMAND_LINE_MAX,
    METADATA_IP,
    NETWORK,
    LocalVM,
    free_port,
    hold_apt_locks_at_boot,
)
from tests.e2e.conftest import APT_DPKG_LOCK_HOLD, APT_LISTS_LOCK_HOLD


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


def test_the_e2e_apt_lock_holder_fits_the_kernel_command_line(tmp_path):
    """The holder travels in the kernel command line, which x86 Linux truncates at 2047 bytes
    without a word; the script may grow only while it still fits."""
    args = hold_apt_locks_at_boot(APT_LISTS_LOCK_HOLD, APT_DPKG_LOCK_HOLD)
    vm = LocalVM(Image(tmp_path), tmp_path, metadata_port=1, kernel_args=args)
    line = vm.kernel_command_line()
    command = vm.command()
    assert command[command.index("-append") + 1] == line
    assert line.endswith(args[-1])
    # What the guest's python3 runs: the holder without its comments and docstrings, still Python.
    payload = re.search(r"echo (\S+) \| base64 -d", args[0]).group(1)
    holder = gzip.decompress(base64.b64decode(payload)).decode()
    compile(holder, "hold_apt_locks.py", "exec")
    assert "Holds apt's locks" not in holder
    assert not any(line.lstrip().startswith("#") for line in holder.splitlines())
    # One more argument (and its separating space) fills the rest exactly; a byte more is refused.
    room = KERNEL_COMMAND_LINE_MAX - len(line.encode()) - 1
    full = LocalVM(Image(tmp_path), tmp_path, metadata_port=1, kernel_args=(*args, "x" * room))
    assert len(full.kernel_command_line().encode()) == KERNEL_COMMAND_LINE_MAX
    too_long = LocalVM(
        Image(tmp_path), tmp_path, metadata_port=1, kernel_args=(*args, "x" * (room + 1))
    )
    with pytest.raises(ValueError, match="over 2047"):
        too_long.command()


def test_qemu_forwards_port_443_and_the_gateway_is_where_the_guest_finds_pebble(tmp_path):
    vm = LocalVM(Image(tmp_path), tmp_path, metadata_port=4242, http_port=5151, https_port=5252)
    netdev = vm.command()[vm.command().index("-netdev") + 1]
    assert "hostfwd=tcp:127.0.0.1:5252-:443" in netdev.split(",")
    # pebble's directory as the guest sees it: qemu maps the gateway to the host's loopback.
    assert f"host={NETWORK['gateway']}" in netdev.split(",")
    pebble = Pebble(tmp_path / "pebble", validation_port=5151)
    assert pebble.guest_directory == f"https://{NETWORK['gateway']}:{pebble.port}/dir"
    config = json.loads((tmp_path / "pebble/pebble-config.json").read_text())["pebble"]
    assert config["httpPort"] == 5151  # http-01 goes to the port forwarded to the guest's :80


def test_a_local_instance_never_asks_the_public_ca(tmp_path):
    instance = {"metadata": {"items": [{"key": "acme-directory", "value": "https://le/dir"}]}}
    without_public_ca(instance)
    assert attributes(instance)["acme-directory"] == ""
    pebble = Pebble(tmp_path / "pebble", validation_port=5151)
    without_public_ca(instance, pebble.attributes())
    assert attributes(instance)["acme-directory"] == pebble.guest_directory
    assert attributes(instance)["acme-directory-ca"] == pebble.listener_ca_pem


def test_a_deployed_instance_is_told_the_address_its_forwards_are_on():
    """The emulated cloud reserves 203.0.113.x, which leads nowhere here: the CA validating the
    certificate's IP must reach the VM's port 80, so the VM is told the forwards' 127.0.0.1."""
    deployed = {
        "name": "hello-vm",
        "networkInterfaces": [{"accessConfigs": [{"natIP": "203.0.113.10"}]}],
    }
    booted = with_local_public_ip(deployed)
    tree = instance_tree(booted, project_id="p", project_number=1)
    assert tree["network-interfaces"][0]["access-configs"][0]["external-ip"] == "127.0.0.1"
    assert deployed["networkInterfaces"][0]["accessConfigs"][0]["natIP"] == "203.0.113.10"


def test_free_ports_are_outside_the_range_the_kernel_hands_out():
    """A port from the ephemeral range can be taken by anyone's bind to port 0 before our server
    binds it (a parallel test worker took the HTTPS front's port that way)."""
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = {free_port() for _ in range(20)}
    assert all(10000 <= port < low for port in ports), (ports, low, high)
    assert len(ports) > 1  # random, so parallel callers rarely meet


# tests/fake_qemu.py's QMP, recording each command, for a guest that ignores ACPI.
QMP_RECORDER = (
    "import sys; from tests.fake_qemu import serve_qmp;"
    " serve_qmp(sys.argv[1], ('quit',), sys.argv[2])"
)


@pytest.mark.parametrize(
    ("end", "commands"),
    [
        ("discard", ["quit"]),  # `make down`, a test's VM: the disk is thrown away
        ("stop", ["system_powerdown", "quit"]),  # a deleted instance: ACPI, quit once it times out
    ],
)
def test_a_discarded_vm_quits_at_once_and_a_stopped_one_is_asked_to_power_off_first(
    tmp_path, end, commands
):
    vm = LocalVM(Image(tmp_path), tmp_path, metadata_port=1)
    log = tmp_path / "qmp.log"
    vm.process = subprocess.Popen(
        [sys.executable, "-c", QMP_RECORDER, vm.qmp_socket, log], cwd=REPO
    )
    try:
        deadline = time.monotonic() + 30
        while not vm.qmp_socket.exists():
            assert time.monotonic() < deadline, "the QMP recorder did not start"
            time.sleep(0.05)
        if end == "discard":
            vm.discard()
        else:
            vm.stop(timeout=1)
        assert vm.process.poll() == 0
        recorded = log.read_text().split()
        assert [c for c in recorded if c != "qmp_capabilities"] == commands
    finally:
        vm.process.kill()


def test_qmp_waits_for_a_socket_that_exists_but_does_not_listen_yet(tmp_path):
    """qemu binds its QMP socket, then listens: a command sent in between is refused, not lost
    (a reset sent right after a launch under load waited 30 s for a quit qemu never received)."""
    vm = LocalVM(Image(tmp_path), tmp_path, metadata_port=1)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(vm.qmp_socket))

    def listen_late() -> None:
        time.sleep(0.5)
        server.listen()
        connection, _ = server.accept()
        stream = connection.makefile("rwb")
        stream.write(b'{"QMP": {}}\n')
        stream.flush()
        for line in stream:
            stream.write(json.dumps({"return": {"asked": json.loads(line)["execute"]}}).encode())
            stream.write(b"\n")
            stream.flush()

    threading.Thread(target=listen_late, daemon=True).start()
    try:
        assert vm.qmp("query-status") == {"asked": "query-status"}
    finally:
        server.close()


def test_a_reset_is_a_new_qemu_process_on_the_same_disk_and_serial_log(tmp_path, monkeypatch):
    """`gcloud compute instances reset`: the guest's memory is lost, its disk is not. The old
    process is asked to quit (qemu then writes out its disk caches) and a new one starts on the
    same overlay; the serial console appends, so the log shows both boots (vm.LocalVM.reset)."""
    vm = LocalVM(Image(tmp_path), tmp_path, metadata_port=1)
    assert f"file,id=serial0,path={vm.serial_log},append=on" in vm.command()
    log = tmp_path / "qmp.log"
    recorder = [sys.executable, "-c", QMP_RECORDER, str(vm.qmp_socket), str(log)]
    monkeypatch.setattr(vm, "command", lambda: recorder)
    monkeypatch.chdir(REPO)  # the recorder imports tests.fake_qemu
    vm.overlay.write_text("the guest's disk")
    vm._launch()
    first = vm.process
    try:
        vm.reset()
        assert first.poll() == 0, "the old process was not asked to quit"
        assert vm.process is not first and vm.running()
        assert [c for c in log.read_text().split() if c != "qmp_capabilities"] == ["quit"]
        assert vm.overlay.read_text() == "the guest's disk"
    finally:
        first.kill()
        vm.discard()
