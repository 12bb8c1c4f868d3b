"""`make up` as a person types it: one line per phase in order, one line about the emulated IP,
the URLs last; then `make up` again on the running stack redeploys and returns once the VM serves
the checkout's version, and `source .state/localvm/gcloud.env` points the real gcloud at it.

Real: make, localvm, the real gcloud deploying through scripts/deploy.sh, the cached Debian 12
image booted under qemu, the app answering on the forwarded ports, pebble (Debian's, the ACME CA
the guest's certbot gets its certificate from). Emulated: Google's Deployment Manager API, token
endpoint and metadata server, served by the local cloud process (localvm.cloud). Shares a lane
with test_https.py, after it (tests/conftest.py), so the two never boot at once.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from localvm.cli import GCLOUD_ENV, STATE_FILE
from localvm.stack import checkout_version
from tests.conftest import REPO, VM_LANE_2

pytestmark = [pytest.mark.e2e, VM_LANE_2]


def make(target: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", target],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_make_up_prints_one_line_per_phase_in_order_ends_with_the_urls_and_redeploys():
    if STATE_FILE.exists():
        pytest.skip("a `make up` stack is already running in this clone; `make down` first")
    try:
        result = make("up", timeout=1800)
        again = make("up", timeout=900)
        listed = subprocess.run(
            ["bash", "-c", f"source {GCLOUD_ENV} && gcloud deployment-manager deployments list"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        make("down", timeout=180)
    print(result.stdout, again.stdout)  # shown by `pytest -rP`: what a person sees
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) <= 40, result.stdout
    last = re.fullmatch(
        r"(https://127\.0\.0\.1:\d+/)  \(HTTP: (http://127\.0\.0\.1:\d+/)\)", lines[-1]
    )
    assert last, lines[-5:]
    https_url, url = last.groups()

    def index(text: str, output: list[str] = lines) -> int:
        found = [i for i, line in enumerate(output) if text in line]
        assert len(found) == 1, f"{text!r} appears {len(found)} times:\n{output}"
        return found[0]

    version = checkout_version()
    assert (
        index("==> app: app/app.py compiles")
        < index("==> host: packages (vm, https) and image")
        < index("==> CA: pebble")
        < index("==> cloud: Google's APIs on loopback")
        < index(
            "==> deploy: scripts/deploy.sh with the real gcloud, DEPLOY_ENGINE=dm: deployment "
            "hello created"
        )
        < index(f"ports 80 and 443 are forwarded to {url} and {https_url}")
        < index(f"==> boot: the VM serves version {version}")
        < index("==> HTTPS: verified against")
        < len(lines) - 1
    )
    # The emulated cloud's address appears once, in the line that says where it really is.
    assert len([line for line in lines if "203.0.113." in line]) == 1
    assert "is up to date" not in result.stdout

    assert again.returncode == 0, again.stdout + again.stderr
    redeploy = again.stdout.splitlines()
    assert len(redeploy) <= 25, again.stdout
    assert index("updated in place", redeploy) < index(
        f"==> converge: the VM serves version {version}", redeploy
    )
    assert redeploy[-1] == lines[-1]
    assert listed.returncode == 0 and "hello" in listed.stdout, listed.stdout + listed.stderr
