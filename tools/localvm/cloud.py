"""The local stack's cloud: one process that plays Google for the stack `make up` runs.

`make up` starts it in the background and `make down` stops it. Over ONE emulated cloud it serves,
on loopback:

  * Google's OAuth 2.0 token endpoint (emulators.oauth2), knowing one throwaway service-account
    key, the deployer's, written to the state directory for gcloud to activate;
  * the Deployment Manager v2 API (emulators.deploymentmanager), which holds the emulated cloud,
    and beside it the Compute Engine v1 API over that cloud (what the console and
    `gcloud compute` change behind DM's back);
  * the Infrastructure Manager API (emulators.inframanager) and the Cloud Storage it reads
    (emulators.storage), applying into that same cloud;
  * the Compute Engine metadata server (emulators.metadata) the local VM reads;

and it runs the cloud's one instance on this machine, as Compute Engine would (InstanceFollower):
the instance appearing boots the VM from a fresh disk of the cached image with the same forwarded
ports; the instance deleted (or stopped) powers the VM off; the instance's metadata changed is
what the metadata server serves next (a new ETag: the guest's watcher wakes and converges).

Everything this process serves is EMULATED Google. What talks to it is real: the `gcloud` binary,
scripts/deploy.sh, the templates, and the Debian guest with Google's guest agent.

    python -m localvm.cloud --state-dir DIR --image DIR --http-port N --https-port N
                            [--acme-json FILE] [--project ID]

Files in --state-dir: `cloud.json` (the endpoints, written once every listener is up),
`deployer-key.json` (the key, 0600), `vm.json` (the running VM: pid, instance, and the workdir
holding its serial log; absent while none runs). SIGTERM ends the VM (its disk is discarded)
and stops everything.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from emulators.deploymentmanager import DeploymentManagerEmulator
from emulators.iam import Policy, bootstrap_commands
from emulators.inframanager import InfraManagerEmulator
from emulators.metadata import MetadataEmulator
from emulators.oauth2 import OAuth2Emulator, new_service_account_key
from emulators.storage import CloudStorage
from localvm.image import Image
from localvm.stack import with_local_public_ip, without_public_ca
from localvm.vm import NETWORK, LocalVM, VMError

DEPLOYER = "deployer@{project}.iam.gserviceaccount.com"
INSTANCE_TYPES = ("compute.v1.instance", "compute.beta.instance")
# Instance states with no VM running (compute.v1 Instance.status). A started instance boots a fresh
# disk here, where Compute Engine keeps its boot disk: the local VM is not stateful across stops.
STOPPED = ("STOPPING", "TERMINATED", "SUSPENDING", "SUSPENDED")
# The follower looks at the cloud when its listeners hear a change, and at least this often.
FOLLOW_INTERVAL = 5.0
# The APIs served, by gcloud's api_endpoint_overrides name.
GOOGLE_APIS = ("deploymentmanager", "config", "storage", "compute")


def _short(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


class LocalCloud:
    """Google's servers for one project on loopback, over one emulated cloud (in this process).

    `gcloud_properties()` and `endpoints()` say how to reach them; `instance()` is what the cloud
    holds for the stack's VM.
    """

    def __init__(self, project: str = "local-project") -> None:
        self.project = project
        self.deployer = DEPLOYER.format(project=project)
        self.oauth = OAuth2Emulator()
        # The deployer holds what gcp-bootstrap.sh grants the deployer, for both engines (as in
        # a project moved from one to the other), and what it grants the operators who run
        # `make repair`, so that `gcloud compute` acts on the local stack as a person would.
        self.policy = Policy()
        bootstrap_deployer = f"serviceAccount:hello-deployer@{project}.iam.gserviceaccount.com"
        for engine in ("dm", "infra-manager"):
            self.policy.add_bootstrap(
                bootstrap_commands(
                    engine,
                    PROJECT_ID=project,
                    CIRCLE_ORG_ID="local",
                    CIRCLE_PROJECT_ID="local",
                    OPERATORS=bootstrap_deployer,
                ),
                rename={bootstrap_deployer: f"serviceAccount:{self.deployer}"},
            )
        self.dm = DeploymentManagerEmulator(verify_token=self.oauth.verify, policy=self.policy)
        self.storage: CloudStorage | None = None
        self.im: InfraManagerEmulator | None = None
        self.metadata: MetadataEmulator | None = None
        self.key: dict[str, str] = {}

    def start(self) -> LocalCloud:
        token_url = self.oauth.serve()
        self.key, public_pem = new_service_account_key(self.deployer, self.project, token_url)
        self.oauth.register_key(self.deployer, self.key["private_key_id"], public_pem)
        self.dm.serve()
        self.storage = CloudStorage(verify_token=self.oauth.verify, policy=self.policy)
        for bucket, owner in list(self.policy.bucket_projects.items()):
            self.storage.create_bucket(bucket, owner)
        self.im = InfraManagerEmulator(
            self.storage, compute=self.dm, verify_token=self.oauth.verify, policy=self.policy
        )
        self.im.serve()
        # Served before any instance exists (the VM is booted only once one does), so its port,
        # which qemu's guestfwd names, stays the same across a deleted and recreated instance.
        self.metadata = MetadataEmulator(
            {"name": "none"}, project_id=self.project, network=NETWORK
        ).start()
        return self

    def stop(self) -> None:
        if self.metadata:
            self.metadata.stop()
        if self.im:
            self.im.shutdown()
        if self.storage:
            self.storage.shutdown()
        self.dm.shutdown()
        self.oauth.shutdown()

    def __enter__(self) -> LocalCloud:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def endpoints(self) -> dict[str, str]:
        """Each API's root, as gcloud's api_endpoint_overrides/<api> (and google-api-python-
        client's client_options api_endpoint) take it; `token` is the OAuth token URI."""
        assert self.im and self.storage and self.metadata, "not started"
        return {
            "deploymentmanager": self.dm.url,
            "compute": self.dm.compute_url,
            "config": self.im.url,
            "storage": self.storage.endpoint,
            "token": self.oauth.token_url,
            "metadata": self.metadata.url,
        }

    def gcloud_properties(self) -> dict[str, dict[str, str]]:
        """gcloud's properties (section -> name -> value) that point it at this cloud."""
        apis = {k: v for k, v in self.endpoints().items() if k in GOOGLE_APIS}
        return {
            "core": {
                "project": self.project,
                "account": self.deployer,
                "disable_usage_reporting": "true",
                "check_gce_metadata": "false",
            },
            "auth": {"token_host": self.endpoints()["token"]},
            "component_manager": {"disable_update_check": "true"},
            "api_endpoint_overrides": apis,
        }

    def describe(self, http_port: int, https_port: int) -> dict[str, Any]:
        """cloud.json: how to reach this cloud, and the VM's forwarded ports."""
        return {
            "pid": os.getpid(),
            "project": self.project,
            "account": self.deployer,
            "endpoints": self.endpoints(),
            "gcloud_properties": self.gcloud_properties(),
            "http_port": http_port,
            "https_port": https_port,
        }

    def instance(self) -> dict[str, Any] | None:
        """The stack's instance as the emulated cloud holds it, or None when there is none."""
        resources = self.dm.cloud_resources(self.project)
        instances = [i for t in INSTANCE_TYPES for i in resources.get(t, {}).values()]
        if len(instances) > 1:
            raise RuntimeError(f"the local stack runs one VM; the cloud holds {len(instances)}")
        return instances[0] if instances else None

    def network_name(self, instance: dict[str, Any]) -> str:
        """The name of the network the instance's subnet belongs to, as the metadata server
        reports it."""
        subnet_link = (instance.get("networkInterfaces") or [{}])[0].get("subnetwork", "")
        subnets = self.dm.cloud_resources(self.project).get("compute.v1.subnetwork", {})
        for subnet in subnets.values():
            if subnet.get("selfLink") == subnet_link or subnet.get("name") == _short(subnet_link):
                return _short(subnet.get("network", "")) or "default"
        return "default"

    def serve_metadata(self, instance: dict[str, Any], acme: dict[str, str]) -> None:
        """Makes the metadata server serve `instance` as this machine runs it: with the local CA
        (`acme`, pebble's acme-* values) instead of a public one, and 127.0.0.1, where its ports
        are forwarded, as its external IP."""
        assert self.metadata is not None, "not started"
        served = with_local_public_ip(instance)
        without_public_ca(served, acme)
        self.metadata.network_name = self.network_name(instance)
        self.metadata.load_instance(served)


class VM(Protocol):
    """What the follower needs of a VM (localvm.vm.LocalVM, or a fake in unit tests)."""

    def stop(self) -> None: ...


class InstanceFollower:
    """Keeps the local VM and its metadata server in step with the cloud's instance.

    `boot(instance)` starts a VM for it (a fresh disk, the same ports) and returns it;
    `serve(instance)` makes the metadata server serve it. Call `follow` with the instance as the
    cloud now holds it, or None when it holds none; it returns what it did, one line each.
    """

    def __init__(
        self,
        boot: Callable[[dict[str, Any]], VM],
        serve: Callable[[dict[str, Any]], None],
    ) -> None:
        self.boot = boot
        self.serve = serve
        self.vm: VM | None = None
        self.instance: dict[str, Any] | None = None

    def follow(self, instance: dict[str, Any] | None) -> list[str]:
        if instance == self.instance:
            return []
        done: list[str] = []
        previous, self.instance = self.instance, instance
        replaced = previous is not None and (
            instance is None or instance.get("id") != previous.get("id")
        )
        stopped = instance is not None and instance.get("status") in STOPPED
        if (replaced or stopped) and self.vm is not None:
            self.vm.stop()
            self.vm = None
            if instance is None:
                gone = "deleted"
            else:
                gone = "replaced" if replaced else instance["status"].lower()
            done.append(f"instance {previous['name']} {gone}: VM powered off")
        if instance is None:
            return done
        self.serve(instance)
        if self.vm is None and not stopped:
            self.vm = self.boot(instance)
            done.append(f"instance {instance['name']} running: booting a fresh disk")
        elif not replaced and not stopped:
            done.append(f"instance {instance['name']} changed: the metadata server serves it")
        return done


def gcloud_environment(properties: dict[str, dict[str, str]]) -> dict[str, str]:
    """gcloud properties as its environment variables (CLOUDSDK_<SECTION>_<NAME>)."""
    return {
        f"CLOUDSDK_{section}_{name}".upper(): value
        for section, values in properties.items()
        for name, value in values.items()
    }


def configure_gcloud(config_dir: Path, properties: dict[str, dict[str, str]], key: Path) -> None:
    """A gcloud config directory whose default configuration holds `properties` and whose
    active account is the service account of `key` (`gcloud auth activate-service-account`)."""
    config_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (config_dir / "configurations").mkdir(exist_ok=True)
    (config_dir / "active_config").write_text("default")
    ini = configparser.ConfigParser()
    ini.read_dict(properties)
    with open(config_dir / "configurations" / "config_default", "w") as file:
        ini.write(file)
    # The caller's own CLOUDSDK_* (say, an older gcloud.env still sourced) would win over the
    # config just written.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDSDK_")}
    result = subprocess.run(
        ["gcloud", "auth", "activate-service-account", f"--key-file={key}", "--quiet"],
        env={**env, "CLOUDSDK_CONFIG": str(config_dir)},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"gcloud auth activate-service-account failed:\n{result.stderr}")


def gcloud_env(state: Path, cloud: dict[str, Any], *, engine: str, cacert: Path) -> str:
    """The text of gcloud.env: `source` it and gcloud, scripts/deploy.sh, scripts/smoke.sh and
    google-api-python-client act on the local stack. `cloud` is cloud.json's content."""
    endpoints = cloud["endpoints"]
    exports = {
        "CLOUDSDK_CONFIG": state / "gcloud",
        # The same properties again as variables: deploy.sh switches to a config of its own
        # when it logs in with a key or WIF, and these keep even that one on loopback.
        **gcloud_environment(cloud["gcloud_properties"]),
        "GCP_PROJECT": cloud["project"],
        "DEPLOY_ENGINE": engine,
        "DEPLOYMENT_NAME": "hello",
        "DEPLOY_OUT_DIR": state / "deploy",
        "DMLOCAL": Path(sys.executable).parent / "dmlocal",
        "GOOGLE_APPLICATION_CREDENTIALS": state / "deployer-key.json",
        "LOCAL_TOKEN_URI": endpoints["token"],
        **{f"LOCAL_{api.upper()}_API": endpoints[api] for api in GOOGLE_APIS if api in endpoints},
        "LOCAL_METADATA_URL": endpoints["metadata"],
        "LOCAL_ADDRESS": f"127.0.0.1:{cloud['http_port']}",
        "SMOKE_HTTPS_PORT": cloud["https_port"],
        "SMOKE_CACERT": cacert,
    }
    lines = [
        "# The local stack `make up` runs (docs/local-vm.md): `source` this file and gcloud and",
        "# the scripts act on it. Written by `make up`; gone after `make down`.",
        # Credentials for the real Google in the caller's shell must not win over the local ones.
        "unset GCP_SA_KEY_B64 GCP_WIF_PROVIDER GCP_DEPLOYER_SA CLOUDSDK_AUTH_ACCESS_TOKEN_FILE",
        *(f"export {name}={shlex.quote(str(value))}" for name, value in exports.items()),
    ]
    return "\n".join(lines) + "\n"


def write_json(path: Path, value: Any, mode: int = 0o644) -> None:
    """Writes atomically, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "w") as file:
        file.write(json.dumps(value, indent=1) + "\n")
    tmp.rename(path)


def run(args: argparse.Namespace) -> int:
    state = args.state_dir
    state.mkdir(parents=True, exist_ok=True)
    acme = json.loads(args.acme_json.read_text()) if args.acme_json else {}
    stopping, changed = threading.Event(), threading.Event()

    def stop(*_: object) -> None:
        stopping.set()
        changed.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def log(message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)

    with LocalCloud(args.project) as cloud:
        assert cloud.metadata is not None
        metadata = cloud.metadata

        # qemu's unix sockets must fit in sun_path (108 bytes); a deep clone falls back to /tmp.
        workdir = state / "vm"
        if len(str(workdir / "qmp.sock")) >= 100:
            workdir = Path(tempfile.mkdtemp(prefix="hello-localvm-"))

        def boot(instance: dict[str, Any]) -> LocalVM:
            vm = LocalVM(
                Image(args.image),
                workdir,
                metadata_port=metadata.port,
                name=instance["name"],
                http_port=args.http_port,
                https_port=args.https_port,
            ).start()
            write_json(
                state / "vm.json", {"pid": vm.pid, "instance": instance, "workdir": str(workdir)}
            )
            return vm

        follower = InstanceFollower(boot, lambda instance: cloud.serve_metadata(instance, acme))
        write_json(state / "deployer-key.json", cloud.key, mode=0o600)
        write_json(state / "cloud.json", cloud.describe(args.http_port, args.https_port))
        log(f"serving {json.dumps(cloud.endpoints())}")
        cloud.dm.cloud.listeners.append(lambda *_: changed.set())
        try:
            while True:
                changed.wait(FOLLOW_INTERVAL)
                changed.clear()
                if stopping.is_set():
                    break
                try:
                    done = follower.follow(cloud.instance())
                except (VMError, OSError, subprocess.CalledProcessError) as error:
                    # The cloud keeps serving: `make up` finds no vm.json and points here.
                    done = [f"the VM did not boot: {error}"]
                if follower.vm is None:
                    (state / "vm.json").unlink(missing_ok=True)
                for line in done:
                    log(line)
        finally:
            if follower.vm is not None:
                # Its disk is in the state directory `make down` deletes: nothing to shut down.
                log("stopping: ending the VM (its disk is discarded)")
                follower.vm.discard()
            (state / "vm.json").unlink(missing_ok=True)
            (state / "cloud.json").unlink(missing_ok=True)
            if not workdir.is_relative_to(state):
                shutil.rmtree(workdir, ignore_errors=True)
    log("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localvm.cloud",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--image", type=Path, required=True, help="the cached image directory")
    parser.add_argument("--http-port", type=int, required=True, help="forwarded to the VM's :80")
    parser.add_argument("--https-port", type=int, required=True, help="... and to its :443")
    parser.add_argument("--acme-json", type=Path, help="the local CA's acme-* metadata values")
    parser.add_argument("--project", default="local-project")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
