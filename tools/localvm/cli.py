"""`make up` / `make down`: the stack on this machine, with no cloud account.

`up` renders deployment.yaml (as `make preview` does), builds or reuses the cached Debian 12
image, starts the metadata emulator and the VM as background processes, follows the VM's startup
script on its serial log, and prints the instance's "public IP" URLs as its last line: HTTPS
(a certificate from pebble, the local ACME CA) and HTTP beside it.
Everything keeps running until `down`, which powers the VM off cleanly and stops the emulator.
State (pids, ports, the serial log) lives in .state/localvm/ in the clone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from app.app import GREETING
from emulators.metadata import from_expanded_config
from localvm import deploy
from localvm.acme import Pebble
from localvm.image import ensure_image
from localvm.stack import REPO, render_preview, with_local_public_ip, without_public_ca
from localvm.vm import NETWORK, LocalVM, VMError, free_port

STATE = REPO / ".state" / "localvm"
STATE_FILE = STATE / "state.json"
# TCG on a busy machine can need longer: LOCALVM_BOOT_TIMEOUT=seconds.
BOOT_TIMEOUT = float(os.environ.get("LOCALVM_BOOT_TIMEOUT") or 900)


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def _alive(pid: int, needle: bytes) -> bool:
    try:
        return needle in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _workdir() -> Path:
    # qemu's unix sockets must fit in sun_path (108 bytes); a deep clone falls back to /tmp.
    if len(str(STATE / "vm" / "qmp.sock")) < 100:
        return STATE / "vm"
    return Path(tempfile.mkdtemp(prefix="hello-localvm-"))


def _start_metadata(source: list[str], project: str) -> tuple[subprocess.Popen, dict]:
    ready = STATE / "metadata.json"
    ready.unlink(missing_ok=True)
    with open(STATE / "metadata.log", "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "emulators.metadata",
                *source,
                "--project",
                project,
                "--network-json",
                json.dumps(NETWORK),
                "--ready-file",
                str(ready),
            ],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"metadata emulator failed:\n{(STATE / 'metadata.log').read_text()}")
        time.sleep(0.1)
    return process, json.loads(ready.read_text())


def _follow_startup(vm: LocalVM, timeout: float) -> None:
    """Waits for the greeting, echoing the startup script's progress from the serial log."""
    deadline = time.monotonic() + timeout
    seen = 0
    while True:
        lines = [line for line in vm.serial_text().splitlines() if "hello-startup:" in line]
        for line in lines[seen:]:
            say("vm: " + line[line.index("hello-startup:") :])
        seen = len(lines)
        status, body = vm.get("/", timeout=3)
        if status == 200 and GREETING in body:
            return
        if not vm.running():
            raise SystemExit(f"the VM stopped while booting\n{vm.serial_tail()}")
        if time.monotonic() > deadline:
            raise SystemExit(f"no greeting after {timeout:.0f} s\n{vm.serial_tail()}")
        time.sleep(1)


def deploy_steps(output: str) -> list[str]:
    """deploy.sh's progress lines, in the order it wrote them, for `up` to echo.

    Its closing "is up to date" only repeats the created/updated line before it, and the public
    IP it prints is the emulated cloud's: `forwarding` says once where that address really is.
    """
    return [
        line
        for line in output.splitlines()
        if line.startswith("deploy:") and not line.endswith(" is up to date")
    ]


def forwarding(instance: dict, url: str, https_url: str) -> str:
    """The one line about the instance's public IP, which only exists in the emulated cloud."""
    ports = (
        f"the VM is told its external IP is {NETWORK['external-ip']}, where its ports 80 and 443 "
        f"are forwarded to {url} and {https_url}"
    )
    nics = instance.get("networkInterfaces") or [{}]
    nat_ip = ((nics[0].get("accessConfigs") or [{}])[0]).get("natIP")
    if not nat_ip or "$(" in str(nat_ip):
        return ports
    return (
        f"public IP {nat_ip} is the emulated cloud's address for {instance['name']} (not reachable "
        f"from here); {ports}"
    )


def up(config: str, project: str, from_preview: bool = False, engine: str = "dm") -> int:
    if STATE_FILE.exists():
        state = json.loads(STATE_FILE.read_text())
        if _alive(state["qemu_pid"], b"qemu-system") and _alive(
            state["metadata_pid"], b"emulators.metadata"
        ):
            say("already running (make down stops it)")
            print(f"{state['https_url']}  (HTTP: {state['url']})")
            return 0
        say("stale state from an earlier run: cleaning up")
        down()
    STATE.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    reason = "--from-preview was given" if from_preview else deploy.available()
    if reason is None:
        service = {"dm": "Deployment Manager", "infra-manager": "Infrastructure Manager"}[engine]
        say(
            f"deploying with the real gcloud (scripts/deploy.sh, DEPLOY_ENGINE={engine}) against "
            f"the local {service} API (emulated, like Google's token endpoint)"
        )
        instance, network_name, output = deploy.deploy(config, project, engine=engine)
        for line in deploy_steps(output):
            say(f"gcloud: {line}")
        say(f"instance {instance['name']} deployed: booting it from the deployment's resource")
    else:
        say(f"{reason}: booting from `make preview`'s expansion instead of a gcloud deploy")
        expanded = render_preview(config)
        (STATE / "expanded.yaml").write_text(yaml.safe_dump(expanded, sort_keys=False))
        instance, network_name = from_expanded_config(expanded)
        say(f"instance {instance['name']}: {len(expanded['resources'])} resources rendered")

    # The CA: pebble on loopback, validating http-01 on the port forwarded to the guest's :80.
    http_port = free_port()
    pebble = Pebble(STATE / "pebble", validation_port=http_port).start()
    without_public_ca(instance, pebble.attributes())
    root = STATE / "ca-root.pem"
    root.write_text(pebble.root_pem())
    say(f"ACME CA: pebble at {pebble.guest_directory} (the guest's view); its root: {root}")
    instance_path = STATE / "instance.json"
    instance_path.write_text(json.dumps(with_local_public_ip(instance), indent=1) + "\n")
    source = ["--instance-json", str(instance_path), "--network-name", network_name]

    say("Debian 12 image (cached by recipe; the first build takes a few minutes)")
    image = ensure_image()
    say(f"image {image.directory}")

    metadata, ports = _start_metadata(source, project)
    say(f"metadata emulator on 127.0.0.1:{ports['port']} (the guest's 169.254.169.254)")
    vm = LocalVM(
        image, _workdir(), metadata_port=ports["port"], name=instance["name"], http_port=http_port
    )
    vm.start(detach=True)
    state = {
        "qemu_pid": vm.pid,
        "metadata_pid": metadata.pid,
        "pebble_pid": pebble.process.pid,
        "https_url": vm.https_url,
        "metadata_port": ports["port"],
        "metadata_admin_port": ports["admin_port"],
        "workdir": str(vm.workdir),
        "image": str(image.directory),
        "http_port": vm.http_port,
        "url": vm.url,
    }
    STATE_FILE.write_text(json.dumps(state, indent=1) + "\n")
    say(f"booting {instance['name']} under qemu (TCG); serial log: {vm.serial_log}")
    say(forwarding(instance, vm.url, vm.https_url))
    try:
        _follow_startup(vm, BOOT_TIMEOUT)
    except BaseException:
        say("boot failed: stopping (make down also cleans up)")
        down()
        raise
    say(f"serving HTTP after {time.monotonic() - started:.0f} s; `make down` stops it")
    https = _wait_https(vm, root, BOOT_TIMEOUT)
    say(
        f"HTTPS {'verified against' if https else 'not up yet (see the serial log); trust'} "
        f"{root}; smoke: SMOKE_CACERT={root} SMOKE_HTTPS_PORT={vm.https_port} "
        f"make smoke IP=127.0.0.1:{vm.http_port}. Open:"
    )
    print(f"{vm.https_url}  (HTTP: {vm.url})", flush=True)
    return 0


def _wait_https(vm: LocalVM, root: Path, timeout: float) -> bool:
    """Waits for the greeting over HTTPS, verified against the CA's root (the guest installs
    certbot and asks pebble after it serves HTTP)."""
    context = ssl.create_default_context(cafile=str(root))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(vm.https_url, context=context, timeout=5) as response,
        ):
            if GREETING in response.read().decode():
                return True
        if not vm.running():
            return False
        time.sleep(2)
    return False


def down() -> int:
    if not STATE_FILE.exists():
        say("nothing running")
        return 0
    state = json.loads(STATE_FILE.read_text())
    workdir = Path(state["workdir"])
    if _alive(state["qemu_pid"], b"qemu-system"):
        say("powering off the VM (ACPI, then quit)")
        vm = LocalVM.attach(workdir, pid=state["qemu_pid"], http_port=state["http_port"])
        with contextlib.suppress(VMError):
            vm.stop()
    if _alive(state.get("pebble_pid", 0), b"pebble"):
        say("stopping pebble")
        os.kill(state["pebble_pid"], signal.SIGTERM)
    if _alive(state["metadata_pid"], b"emulators.metadata"):
        say("stopping the metadata emulator")
        os.kill(state["metadata_pid"], signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(state["metadata_pid"], b"emulators.metadata") and time.monotonic() < deadline:
            time.sleep(0.1)
    shutil.rmtree(STATE, ignore_errors=True)
    if not workdir.is_relative_to(STATE):
        shutil.rmtree(workdir, ignore_errors=True)
    say("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localvm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="render, boot and print the URL")
    start.add_argument("config", nargs="?", default="deployment.yaml")
    start.add_argument("--project", default="local-project")
    start.add_argument(
        "--from-preview", action="store_true", help="skip the gcloud deploy; boot the expansion"
    )
    start.add_argument(
        "--engine",
        choices=("dm", "infra-manager"),
        default=os.environ.get("DEPLOY_ENGINE") or "dm",
        help="the deploy engine scripts/deploy.sh uses (DEPLOY_ENGINE); default: dm",
    )
    commands.add_parser("down", help="stop what `up` started")
    commands.add_parser("image", help="build or reuse the cached image; print its directory")
    args = parser.parse_args(argv)
    if args.command == "up":
        return up(args.config, args.project, args.from_preview, args.engine)
    if args.command == "down":
        return down()
    print(ensure_image().directory)
    return 0
