"""The rendered stack on a local VM: expanded config -> metadata emulator -> qemu VM.

LocalStack is for the e2e tests and the benchmarks: they boot the instance exactly as `make
preview` renders it (the metadata is read from the expansion, never hard-coded). `make up` boots
the instance its deploy created instead (localvm.cloud); both show the VM the same host view of
it (with_local_public_ip, without_public_ca). The app is read here, never imported (app_source).
"""

from __future__ import annotations

import ast
import copy
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from emulators.metadata import MetadataEmulator, from_expanded_config
from localvm.image import Image, ensure_image
from localvm.vm import NETWORK, LocalVM, free_port

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "build" / "artifacts"  # gitignored; CI stores it
# The unit serving the app in the guest, as a shell word: hello@<port> of the serving slot.
SERVING_UNIT = "hello@$(readlink /opt/hello/serving | sed 's/.*-//').service"
APP = REPO / "app" / "app.py"


class AppError(ValueError):
    """app/app.py cannot be deployed: the message names the file, the line and the fix."""


def app_source(path: Path = APP) -> ast.Module:
    """app.py parsed, not imported: the tools never import what they deploy, so an app that
    cannot run is refused with a message instead of crashing them."""
    try:
        source = path.read_text()
        return ast.parse(source, str(path))
    except OSError as error:
        raise AppError(f"{path}: cannot read it ({error.strerror})") from None
    except SyntaxError as error:
        raise AppError(
            f"{path}, line {error.lineno}: {error.msg}; the VM could not import it: fix it "
            "(`python3 -m py_compile app/app.py` shows the same) and run it again"
        ) from None


def app_greeting(path: Path = APP) -> str:
    """The GREETING string app.py serves at /, read from its source."""
    for node in app_source(path).body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "GREETING" for t in node.targets)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    raise AppError(f'{path}: no `GREETING = "..."` string at the top level; put it back')


def checkout_version(repo: Path = REPO) -> str:
    """The version a VM reports in /healthz once it runs this checkout's files: app/startup.sh's
    digest over the files vm.py puts in the instance's metadata (what scripts/smoke.sh waits
    for)."""
    files = runpy.run_path(str(repo / "vm.py"))["METADATA_FILES"]
    result = subprocess.run(
        ["bash", str(repo / "app" / "startup.sh"), "version"]
        + [f"{key}={repo / path}" for key, path in files.items()],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def render_preview(config: str | Path = "deployment.yaml") -> dict[str, Any]:
    """Runs `dmlocal preview CONFIG` (what `make preview` runs) and parses its YAML."""
    result = subprocess.run(
        [sys.executable, "-m", "dmlocal", "preview", str(config)],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    return yaml.safe_load(result.stdout)


def attributes(instance: dict[str, Any]) -> dict[str, str]:
    return {i["key"]: i.get("value", "") for i in instance.get("metadata", {}).get("items", [])}


def without_public_ca(instance: dict[str, Any], local_ca: dict[str, str] | None = None) -> None:
    """Points the instance at `local_ca` (pebble's acme-* attributes), or turns HTTPS off.

    A local VM must never ask Let's Encrypt for a certificate: its "public IP" is a loopback
    stand-in that no public CA could validate, and nothing here reaches the internet but package
    registries. On GCE the deployment's acmeDirectory reaches the instance unchanged.
    """
    values = {**attributes(instance), "acme-directory": ""}
    values.pop("acme-directory-ca", None)
    values.update(local_ca or {})
    instance.setdefault("metadata", {})["items"] = [
        {"key": key, "value": value} for key, value in values.items()
    ]


def with_local_public_ip(instance: dict[str, Any]) -> dict[str, Any]:
    """The instance as this machine boots it: its external IP is the host end of qemu's port
    forwards (NETWORK's external-ip, 127.0.0.1), not the address the emulated cloud reserved.

    On GCE the metadata server reports the reserved static IP, and the ACME CA validates the
    certificate for it on that address's port 80. Here the emulated cloud's address (203.0.113.x)
    leads nowhere, so the VM is told the one address where its ports really are reachable.
    """
    booted = copy.deepcopy(instance)
    for access in (booted.get("networkInterfaces") or [{}])[0].get("accessConfigs") or []:
        access["natIP"] = NETWORK["external-ip"]
    return booted


class LocalStack:
    """In-process metadata emulator + one VM; a context manager that always cleans up."""

    def __init__(
        self,
        workdir: Path,
        *,
        expanded: dict[str, Any] | None = None,
        image: Image | None = None,
        project: str = "local-project",
        kernel_args: tuple[str, ...] = (),
    ) -> None:
        self.workdir = workdir
        self.kernel_args = kernel_args
        # Chosen now, before the VM exists: a local ACME CA validates http-01 on this port.
        self.http_port = free_port()
        self.expanded = expanded if expanded is not None else render_preview()
        self.instance, network_name = from_expanded_config(self.expanded)
        without_public_ca(self.instance)
        self.image = image or ensure_image()
        self.metadata = MetadataEmulator(
            self.instance, project_id=project, network=NETWORK, network_name=network_name
        )
        self.vm: LocalVM | None = None

    def start(self) -> LocalStack:
        self.metadata.start()
        self.vm = LocalVM(
            self.image,
            self.workdir,
            metadata_port=self.metadata.port,
            name=self.instance["name"],
            kernel_args=self.kernel_args,
            http_port=self.http_port,
        )
        try:
            self.vm.start()
        except BaseException:
            self.metadata.stop()
            raise
        return self

    def set_attributes(self, values: dict[str, str]) -> None:
        """What a redeploy does to the running instance: replace its metadata items."""
        self.metadata.store.set_instance_attributes(values)

    def stop(self, *, discard: bool = False) -> None:
        """Powers the VM off cleanly, or with `discard` ends it at once (its disk is not kept)."""
        try:
            if self.vm is not None:
                if discard:
                    self.vm.discard()
                else:
                    self.vm.stop()
        finally:
            self.metadata.stop()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
