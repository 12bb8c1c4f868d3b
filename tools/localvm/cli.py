"""`make up` / `make down`: the stack on this machine, with no cloud account.

`up` on a stopped stack checks app/app.py, installs the host packages it runs and builds or reuses
the cached Debian 12 image (their output goes to .state/up.log), starts the local ACME CA
(pebble) and the local cloud (localvm.cloud: Google's APIs on loopback, and the VM its instance
runs on), writes .state/localvm/gcloud.env, deploys the checkout with the real gcloud through
scripts/deploy.sh as CI does, waits until the VM serves this checkout's version over HTTP and
HTTPS, and prints the URLs as its last line.

`up` on a running stack redeploys the checkout the same way, waits until the VM's /healthz reports
the new version, and exits non-zero with the VM's reason when the VM refused it.

`down` stops the local cloud (which powers the VM off) and the CA.
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
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from localvm.acme import Pebble
from localvm.cloud import configure_gcloud, gcloud_env, write_json
from localvm.image import ensure_image
from localvm.stack import REPO, AppError, app_source, checkout_version
from localvm.vm import NETWORK, free_port

# LOCALVM_STATE: another directory, for a second stack beside the clone's (tests).
STATE = Path(os.environ.get("LOCALVM_STATE") or REPO / ".state" / "localvm")
STATE_FILE = STATE / "state.json"
GCLOUD_ENV = STATE / "gcloud.env"
# apt, pip, image-build and deploy output: outside STATE, so a failed first run keeps it.
LOG = STATE.parent / "up.log"
# TCG on a busy machine can need longer: LOCALVM_BOOT_TIMEOUT=seconds.
BOOT_TIMEOUT = float(os.environ.get("LOCALVM_BOOT_TIMEOUT") or 900)
# A converge on a running VM: a new venv when the requirements changed, else a restart.
REDEPLOY_TIMEOUT = float(os.environ.get("LOCALVM_REDEPLOY_TIMEOUT") or 600)
# What `make up` runs on the host (scripts/install-system-deps.sh purposes); the tests' browser
# is not among them.
HOST_PURPOSES = ("vm", "https")


class UpError(Exception):
    """`make up` cannot go on; the message says why and what to look at."""


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


@contextlib.contextmanager
def phase(name: str) -> Iterator[dict[str, str]]:
    """Prints one line when the phase ends: its name, what it did (`done["what"]`), its time."""
    started = time.monotonic()
    done = {"what": ""}
    yield done
    say(f"{name}: {done['what']} ({time.monotonic() - started:.0f} s)")


def logged(command: list[str], env: dict[str, str] | None = None, timeout: float = 3600) -> str:
    """Runs a noisy command with its output appended to LOG; returns that output. On a failure
    the error carries the log's last lines and its path."""
    LOG.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        command,
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    with open(LOG, "a") as log:
        log.write(f"$ {' '.join(command)}\n{result.stdout}")
    if result.returncode != 0:
        tail = "\n".join(LOG.read_text().splitlines()[-20:])
        raise UpError(
            f"{command[0]} {command[1]} failed (exit {result.returncode}):\n{tail}\nfull log: {LOG}"
        )
    return result.stdout


def _alive(pid: int, needle: bytes) -> bool:
    try:
        return needle in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def deploy_summary(output: str) -> str:
    """deploy.sh's last progress line ("deployment hello created", "... updated in place", ...),
    leaving out its closing "is up to date", which only repeats it."""
    steps = [
        line.removeprefix("deploy: ")
        for line in output.splitlines()
        if line.startswith("deploy: ") and not line.endswith(" is up to date")
    ]
    return steps[-1] if steps else "done"


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


def local_environment() -> dict[str, str]:
    """The caller's environment with gcloud.env applied on top, as `source gcloud.env` would."""
    script = f"set -a; source {GCLOUD_ENV}; env -0"
    result = subprocess.run(["bash", "-c", script], capture_output=True, check=True)
    return dict(entry.split("=", 1) for entry in result.stdout.decode().split("\0") if "=" in entry)


def healthz(http_port: int, https_port: int, cacert: Path) -> dict[str, Any] | None:
    """The VM's /healthz JSON over HTTPS (verified against the local CA), else over HTTP; None
    when neither answers 200 with JSON (a redirect is not an answer)."""
    context = ssl.create_default_context(cafile=str(cacert)) if cacert.exists() else None
    urls = [f"https://127.0.0.1:{https_port}/healthz"] if context else []
    urls.append(f"http://127.0.0.1:{http_port}/healthz")
    opener = urllib.request.build_opener(_NoRedirect, urllib.request.HTTPSHandler(context=context))
    for url in urls:
        with contextlib.suppress(OSError, ValueError), opener.open(url, timeout=5) as response:
            if response.status == 200:
                return json.loads(response.read())
    return None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any) -> None:
        return None


def wait_for_version(
    expected: str,
    health: Callable[[], dict[str, Any] | None],
    vm_running: Callable[[], bool],
    timeout: float,
    interval: float = 1.0,
) -> dict[str, Any]:
    """Waits until /healthz reports `expected`; raises UpError when the VM refused that version
    (with the VM's reason), when the VM stopped, or when time runs out."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    while True:
        last = health() or last
        if last and last.get("version") == expected:
            return last
        refused = (last or {}).get("refused") or {}
        if refused.get("version") == expected:
            raise UpError(
                f"the VM refused version {expected}: {refused.get('reason', 'no reason given')}; "
                f"it still serves version {last.get('version')}"
            )
        if not vm_running():
            raise UpError("the VM is not running (was the instance deleted?)")
        if time.monotonic() > deadline:
            serving = f"it serves version {last.get('version')}" if last else "nothing answered"
            raise UpError(f"no version {expected} after {timeout:.0f} s: {serving}")
        time.sleep(interval)


def _serial_log() -> Path:
    """The VM's serial log: in its workdir, which vm.json names (STATE/vm, or /tmp for a clone
    too deep for qemu's socket paths)."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        return Path(json.loads((STATE / "vm.json").read_text())["workdir"]) / "serial.log"
    return STATE / "vm" / "serial.log"


def _vm_running() -> bool:
    try:
        pid = json.loads((STATE / "vm.json").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return False
    return _alive(pid, b"qemu-system")


def _running_state() -> dict[str, Any] | None:
    """state.json when the local cloud it names still runs."""
    if not STATE_FILE.exists():
        return None
    state = json.loads(STATE_FILE.read_text())
    return state if _alive(state.get("cloud_pid", 0), b"localvm.cloud") else None


def _deploy(config: str, engine: str) -> tuple[str, str]:
    """scripts/deploy.sh with the real gcloud, in gcloud.env's environment; (summary, version)."""
    version = checkout_version(Path(config).resolve().parent)
    env = {**local_environment(), "DM_CONFIG": config, "DEPLOY_ENGINE": engine}
    output = logged(["bash", "scripts/deploy.sh"], env=env, timeout=900)
    return deploy_summary(output), version


def check_app(config: str) -> None:
    """app.py beside CONFIG compiles (a deploy of one that does not would only be refused)."""
    app = Path(config).resolve().parent / "app" / "app.py"
    with phase("app") as done:
        app_source(app)
        done["what"] = f"{os.path.relpath(app, REPO)} compiles"


def _urls(state: dict[str, Any]) -> str:
    return (
        f"https://127.0.0.1:{state['https_port']}/  (HTTP: http://127.0.0.1:{state['http_port']}/)"
    )


def redeploy(state: dict[str, Any], config: str, engine: str) -> int:
    if engine != state["engine"]:
        raise UpError(
            f"the local stack runs DEPLOY_ENGINE={state['engine']}, not {engine}: two engines "
            "must not manage the same resources; `make down` first to switch"
        )
    check_app(config)
    with phase("deploy") as done:
        summary, version = _deploy(config, engine)
        done["what"] = f"scripts/deploy.sh with the real gcloud: {summary}"
    with phase("converge") as done:
        health = wait_for_version(
            version,
            lambda: healthz(state["http_port"], state["https_port"], STATE / "ca-root.pem"),
            _vm_running,
            REDEPLOY_TIMEOUT,
        )
        done["what"] = f"the VM serves version {health['version']}"
    print(_urls(state), flush=True)
    return 0


def start(config: str, project: str, engine: str) -> int:
    check_app(config)
    with phase("host") as done:
        logged(["bash", "scripts/install-system-deps.sh", *HOST_PURPOSES])
        logged([sys.executable, "-m", "localvm.image"])
        image = ensure_image()
        done["what"] = f"packages ({', '.join(HOST_PURPOSES)}) and image {image.directory}"
    STATE.mkdir(parents=True, exist_ok=True)
    http_port, https_port = free_port(), free_port()
    state: dict[str, Any] = {
        "engine": engine,
        "project": project,
        "http_port": http_port,
        "https_port": https_port,
    }
    with phase("CA") as done:
        # pebble on loopback, validating http-01 on the port forwarded to the guest's :80.
        pebble = Pebble(STATE / "pebble", validation_port=http_port).start()
        state["pebble_pid"] = pebble.process.pid
        write_json(STATE_FILE, state)
        root = STATE / "ca-root.pem"
        root.write_text(pebble.root_pem())
        write_json(STATE / "acme.json", pebble.attributes())
        done["what"] = f"pebble at {pebble.guest_directory} (the guest's view); its root: {root}"
    with phase("cloud") as done:
        state["cloud_pid"] = _start_cloud(image.directory, state)
        write_json(STATE_FILE, state)
        cloud = json.loads((STATE / "cloud.json").read_text())
        configure_gcloud(STATE / "gcloud", cloud["gcloud_properties"], STATE / "deployer-key.json")
        GCLOUD_ENV.write_text(gcloud_env(STATE, cloud, engine=engine, cacert=root))
        done["what"] = (
            "Google's APIs on loopback (emulated: token, Compute Engine, Deployment Manager, "
            f"Infrastructure Manager, Cloud Storage, metadata); `source "
            f"{os.path.relpath(GCLOUD_ENV, REPO)}` points gcloud at them"
        )
    with phase("deploy") as done:
        summary, version = _deploy(config, engine)
        done["what"] = f"scripts/deploy.sh with the real gcloud, DEPLOY_ENGINE={engine}: {summary}"
    http_url, https_url = f"http://127.0.0.1:{http_port}/", f"https://127.0.0.1:{https_port}/"
    say(forwarding(_booted_instance(), http_url, https_url))
    say(f"boot: qemu (TCG) runs the instance; serial log: {_serial_log()}")
    with phase("boot") as done:
        try:
            health = wait_for_version(
                version, lambda: healthz(http_port, https_port, root), _vm_running, BOOT_TIMEOUT
            )
        except UpError as error:
            log = _serial_log()
            serial = log.read_text(errors="replace").splitlines() if log.exists() else []
            raise UpError("\n".join([str(error), "the serial log ends:", *serial[-15:]])) from None
        done["what"] = f"the VM serves version {health['version']}"
    with phase("HTTPS") as done:
        done["what"] = _wait_https(https_port, root)
    say("`make smoke LOCAL=1` tests it; `make up` again redeploys; `make down` stops it. Open:")
    print(_urls(state), flush=True)
    return 0


def _booted_instance(timeout: float = 60) -> dict[str, Any]:
    """The instance the local cloud booted a VM for, once it has (vm.json)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            return json.loads((STATE / "vm.json").read_text())["instance"]
        time.sleep(0.2)
    tail = "\n".join((STATE / "cloud.log").read_text().splitlines()[-5:])
    raise UpError(f"the local cloud booted no VM:\n{tail}")


def _start_cloud(image: Path, state: dict[str, Any]) -> int:
    ready = STATE / "cloud.json"
    ready.unlink(missing_ok=True)
    with open(STATE / "cloud.log", "ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "localvm.cloud",
                "--state-dir",
                str(STATE),
                "--image",
                str(image),
                "--http-port",
                str(state["http_port"]),
                "--https-port",
                str(state["https_port"]),
                "--acme-json",
                str(STATE / "acme.json"),
                "--project",
                state["project"],
            ],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise UpError(f"the local cloud did not start:\n{(STATE / 'cloud.log').read_text()}")
        time.sleep(0.1)
    return process.pid


def _wait_https(https_port: int, root: Path) -> str:
    """Waits for the greeting's page over HTTPS, verified against the CA's root (the guest
    installs certbot and asks pebble after it serves HTTP)."""
    context = ssl.create_default_context(cafile=str(root))
    deadline = time.monotonic() + BOOT_TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            url = f"https://127.0.0.1:{https_port}/"
            with urllib.request.urlopen(url, context=context, timeout=5) as response:
                if response.status == 200:
                    return f"verified against {root}"
        if not _vm_running():
            break
        time.sleep(2)
    return f"not up yet (see the serial log); trust {root}"


def _keep_logs() -> str:
    """Copies the VM's serial log and the local cloud's log beside LOG, which `down` leaves, and
    returns where they are."""
    kept = []
    for log in (_serial_log(), STATE / "cloud.log"):
        if log.exists():
            shutil.copy(log, LOG.parent / log.name)
            kept.append(os.path.relpath(LOG.parent / log.name, REPO))
    return ", ".join([os.path.relpath(LOG, REPO), *kept])


def up(config: str, project: str, engine: str) -> int:
    try:
        state = _running_state()
        if state is not None:
            return redeploy(state, config, engine)
        if STATE_FILE.exists():
            say("stale state from an earlier run: cleaning up")
            down()
        try:
            return start(config, project, engine)
        except BaseException:
            kept = _keep_logs()
            say(f"make up failed: stopping what it started; its logs: {kept}")
            down(quiet=True)
            raise
    except (UpError, AppError) as error:
        print(f"make up: {error}", file=sys.stderr, flush=True)
        return 1


def down(quiet: bool = False) -> int:
    if not STATE_FILE.exists():
        if not quiet:
            say("nothing running")
        return 0
    state = json.loads(STATE_FILE.read_text())
    cloud_pid = state.get("cloud_pid", 0)
    if _alive(cloud_pid, b"localvm.cloud"):
        if not quiet:
            say("stopping the local cloud and its VM (whose disk is discarded)")
        os.kill(cloud_pid, signal.SIGTERM)
        deadline = time.monotonic() + 120
        while _alive(cloud_pid, b"localvm.cloud") and time.monotonic() < deadline:
            time.sleep(0.2)
    if _alive(state.get("pebble_pid", 0), b"pebble"):
        os.kill(state["pebble_pid"], signal.SIGTERM)
    shutil.rmtree(STATE, ignore_errors=True)
    if not quiet:
        say("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localvm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    start_parser = commands.add_parser("up", help="deploy and boot, or redeploy; print the URL")
    start_parser.add_argument("config", nargs="?", default="deployment.yaml")
    start_parser.add_argument("--project", default="local-project")
    start_parser.add_argument(
        "--engine",
        choices=("dm", "infra-manager"),
        default=os.environ.get("DEPLOY_ENGINE") or "dm",
        help="the deploy engine scripts/deploy.sh uses (DEPLOY_ENGINE); default: dm",
    )
    commands.add_parser("down", help="stop what `up` started")
    commands.add_parser("image", help="build or reuse the cached image; print its directory")
    args = parser.parse_args(argv)
    if args.command == "up":
        return up(args.config, args.project, args.engine)
    if args.command == "down":
        return down()
    print(ensure_image().directory)
    return 0
