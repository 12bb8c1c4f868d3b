"""`make up`'s deploy step as it prints: deploy.sh's own lines, in order, nothing emulated shown
as if it were reachable.

Real: the `gcloud` binary, scripts/deploy.sh, deployment.yaml and its templates. Emulated:
Google's Deployment Manager API and token endpoint (localvm.deploy starts both on loopback).
`tests/e2e/test_make_up.py` runs `make up` itself, VM boot included.
"""

from __future__ import annotations

import shutil

import pytest

from localvm import deploy
from localvm.cli import deploy_steps, forwarding

pytestmark = pytest.mark.skipif(shutil.which("gcloud") is None, reason="needs the real gcloud")


def test_deploy_steps_are_in_order_and_said_once():
    instance, _, output = deploy.deploy("deployment.yaml", "local-project")
    steps = deploy_steps(output)
    assert steps == [
        "deploy: authenticating with the service-account key in GCP_SA_KEY_B64 (fallback; prefer "
        "WIF)",
        "deploy: create-or-update of hello from deployment.yaml",
        "deploy: deployment hello does not exist: creating it",
        "deploy: deployment hello created",
    ]
    # The raw output has both the emulated address and the redundant closing line; `up` shows
    # neither as a step.
    assert "Public IP: 203.0.113." in output
    assert "deploy: deployment hello is up to date" in output
    nat_ip = instance["networkInterfaces"][0]["accessConfigs"][0]["natIP"]
    assert forwarding(instance, "http://127.0.0.1:8080/", "https://127.0.0.1:8443/") == (
        f"public IP {nat_ip} is the emulated cloud's address for hello-vm (not reachable from "
        "here); the VM is told its external IP is 127.0.0.1, where its ports 80 and 443 are "
        "forwarded to http://127.0.0.1:8080/ and https://127.0.0.1:8443/"
    )
