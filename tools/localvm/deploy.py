"""A one-off deploy with the real gcloud through scripts/deploy.sh, against a LocalCloud that
lives only as long as the deploy: for the tests and `make bench-deploy`. (`make up` deploys into
the persistent one, localvm.cloud, the same way.)

Real: the `gcloud` binary, scripts/deploy.sh (the same script CircleCI runs), deployment.yaml and
its templates; with engine "dm" the dmlocal engine the DM emulator expands them with, with engine
"infra-manager" the Terraform JSON `dmlocal terraform` writes, uploaded by gcloud. Emulated:
Google's servers only (localvm.cloud lists them), with a throwaway service-account key made here
and never stored.

The result is the compute.v1.instance as the emulated cloud holds it after the deployment
(references resolved, server-side id and selfLink filled in; with infra-manager, its metadata as
the applied Terraform carried it).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from localvm.cloud import LocalCloud, gcloud_environment
from localvm.stack import REPO


class DeployError(RuntimeError):
    pass


@contextlib.contextmanager
def emulated_google(
    project: str, engine: str = "dm", deployment: str = "hello"
) -> Iterator[tuple[dict[str, str], Any]]:
    """Google's servers on loopback (localvm.cloud.LocalCloud, in this process), and the
    environment that points gcloud and scripts/deploy.sh at them (the throwaway key in
    GCP_SA_KEY_B64, a private CLOUDSDK_CONFIG). Yields (environment, the LocalCloud)."""
    with (
        tempfile.TemporaryDirectory(prefix="hello-up-gcloud-") as tmp,
        LocalCloud(project) as cloud,
    ):
        env = {
            "PATH": os.environ["PATH"],
            "HOME": tmp,
            "LANG": "C.UTF-8",
            "CLOUDSDK_CONFIG": str(Path(tmp) / "gcloud"),
            **gcloud_environment(cloud.gcloud_properties()),
            "GCP_PROJECT": project,
            "DEPLOYMENT_NAME": deployment,
            "DEPLOY_OUT_DIR": str(Path(tmp) / "out"),
            "GCP_SA_KEY_B64": base64.b64encode(json.dumps(cloud.key).encode()).decode(),
            "DEPLOY_ENGINE": engine,
            "DMLOCAL": str(Path(sys.executable).parent / "dmlocal"),
        }
        # deploy.sh logs in on a private config of its own: the account is its to choose.
        env.pop("CLOUDSDK_CORE_ACCOUNT")
        yield env, cloud


def deploy(
    config: str, project: str, deployment: str = "hello", engine: str = "dm"
) -> tuple[dict[str, Any], str, str]:
    """Deploys through gcloud; returns (instance resource, its network's name, deploy.sh output)."""
    with emulated_google(project, engine, deployment) as (env, cloud):
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
        instance = cloud.instance()
        if instance is None:
            raise DeployError("the deployed cloud holds no instance")
        return instance, cloud.network_name(instance), result.stdout
