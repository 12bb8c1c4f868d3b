"""`make up`'s deploy step: the real gcloud runs scripts/deploy.sh against local Google APIs.

Real: the `gcloud` binary, scripts/deploy.sh (the same script CircleCI runs), deployment.yaml and
its templates; with engine "dm" the dmlocal engine the DM emulator expands them with, with engine
"infra-manager" the Terraform JSON `dmlocal terraform` writes, uploaded by gcloud. Emulated:
Google's servers only, namely the Deployment Manager v2 API (emulators/deploymentmanager/) or
the Infrastructure Manager API (emulators/inframanager.py) with Cloud Storage
(emulators/storage.py), and the OAuth 2.0 token endpoint (emulators/oauth2.py), with a throwaway
service-account key made here and never stored.

The result is the compute.v1.instance as the emulated cloud holds it after the deployment
(references resolved, server-side id and selfLink filled in; with infra-manager, its metadata as
the applied Terraform carried it): the VM boots from that.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from localvm.stack import REPO

DEPLOYER = "deployer@{project}.iam.gserviceaccount.com"


class DeployError(RuntimeError):
    pass


def available() -> str | None:
    """Why the gcloud path cannot run here, or None when it can."""
    if shutil.which("gcloud") is None:
        return "gcloud is not installed"
    try:
        import emulators.deploymentmanager
        import emulators.oauth2  # noqa: F401
    except ImportError as error:
        return f"the local Deployment Manager API is not available ({error})"
    return None


def _short(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


@contextlib.contextmanager
def emulated_google(
    project: str, engine: str = "dm", deployment: str = "hello"
) -> Iterator[tuple[dict[str, str], Any]]:
    """Google's servers for `engine` on loopback, and the environment that points gcloud and
    scripts/deploy.sh at them (a throwaway key in GCP_SA_KEY_B64, a private CLOUDSDK_CONFIG).
    Yields (environment, the DM emulator, whose `cloud_resources` both engines write)."""
    from emulators.deploymentmanager import DeploymentManagerEmulator
    from emulators.iam import Policy
    from emulators.inframanager import InfraManagerEmulator
    from emulators.oauth2 import OAuth2Emulator, new_service_account_key
    from emulators.storage import CloudStorage

    email = DEPLOYER.format(project=project)
    with tempfile.TemporaryDirectory(prefix="hello-up-gcloud-") as tmp:
        oauth = OAuth2Emulator()
        # The deployer holds what gcp-bootstrap.sh grants the deployer of `engine`.
        bootstrap_deployer = f"serviceAccount:hello-deployer@{project}.iam.gserviceaccount.com"
        policy = Policy.from_bootstrap(
            engine,
            rename={bootstrap_deployer: f"serviceAccount:{email}"},
            PROJECT_ID=project,
            CIRCLE_ORG_ID="local",
            CIRCLE_PROJECT_ID="local",
        )
        dm = DeploymentManagerEmulator(verify_token=oauth.verify, policy=policy)
        storage = None
        if engine == "infra-manager":
            storage = CloudStorage(verify_token=oauth.verify, policy=policy)
            for bucket, owner in list(policy.bucket_projects.items()):
                storage.create_bucket(bucket, owner)
        im = storage and InfraManagerEmulator(
            storage, compute=dm, verify_token=oauth.verify, policy=policy
        )
        try:
            token_url = oauth.serve()
            key, public_pem = new_service_account_key(email, project, token_url)
            oauth.register_key(email, key["private_key_id"], public_pem)
            env = {
                "PATH": os.environ["PATH"],
                "HOME": tmp,
                "LANG": "C.UTF-8",
                "CLOUDSDK_CONFIG": str(Path(tmp) / "gcloud"),
                "CLOUDSDK_API_ENDPOINT_OVERRIDES_DEPLOYMENTMANAGER": dm.serve(),
                "CLOUDSDK_AUTH_TOKEN_HOST": token_url,
                "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
                "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "1",
                "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false",
                "GCP_PROJECT": project,
                "DEPLOYMENT_NAME": deployment,
                "DEPLOY_OUT_DIR": str(Path(tmp) / "out"),
                "GCP_SA_KEY_B64": base64.b64encode(json.dumps(key).encode()).decode(),
                "DEPLOY_ENGINE": engine,
            }
            if im:
                im.serve()
                env["CLOUDSDK_API_ENDPOINT_OVERRIDES_CONFIG"] = im.url
                env["CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE"] = storage.endpoint
                env["DMLOCAL"] = str(Path(sys.executable).parent / "dmlocal")
            yield env, dm
        finally:
            if im:
                im.shutdown()
                storage.shutdown()
            dm.shutdown()
            oauth.shutdown()


def deploy(
    config: str, project: str, deployment: str = "hello", engine: str = "dm"
) -> tuple[dict[str, Any], str, str]:
    """Deploys through gcloud; returns (instance resource, its network's name, deploy.sh output)."""
    with emulated_google(project, engine, deployment) as (env, dm):
        # One stream, stderr into stdout, so the lines keep the order deploy.sh wrote them.
        result = subprocess.run(
            ["bash", str(REPO / "scripts" / "deploy.sh")],
            cwd=REPO,
            env={**env, "DM_CONFIG": config},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=600,
        )
        if result.returncode != 0:
            raise DeployError(f"scripts/deploy.sh exited {result.returncode}\n{result.stdout}")
        cloud = dm.cloud_resources(project)
    instances = list(cloud.get("compute.v1.instance", {}).values())
    if len(instances) != 1:
        raise DeployError(f"expected one instance in the deployed cloud, found {len(instances)}")
    instance = instances[0]
    network = "default"
    subnet_link = (instance.get("networkInterfaces") or [{}])[0].get("subnetwork", "")
    for subnet in cloud.get("compute.v1.subnetwork", {}).values():
        if subnet.get("selfLink") == subnet_link or subnet.get("name") == _short(subnet_link):
            network = _short(subnet.get("network", "")) or network
    return instance, network, result.stdout
