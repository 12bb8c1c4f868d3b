"""`make up` as a person types it: steps in order, one line about the emulated IP, the URLs last.

Real: make, localvm, the real gcloud deploying through scripts/deploy.sh, the cached Debian 12
image booted under qemu, the app answering on the forwarded ports, pebble (Debian's, the ACME CA
the guest's certbot gets its certificate from). Emulated: Google's Deployment
Manager API, token endpoint and metadata server. Shares a lane with test_https.py, after it
(tests/conftest.py), so the two never boot at once.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from localvm.cli import STATE_FILE
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


def test_make_up_prints_each_step_once_in_order_and_ends_with_the_urls():
    if STATE_FILE.exists():
        pytest.skip("a `make up` stack is already running in this clone; `make down` first")
    try:
        result = make("up", timeout=1800)
    finally:
        make("down", timeout=120)
    print(result.stdout)  # shown by `pytest -rP`: what a person sees
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    last = re.fullmatch(
        r"(https://127\.0\.0\.1:\d+/)  \(HTTP: (http://127\.0\.0\.1:\d+/)\)", lines[-1]
    )
    assert last, lines[-5:]
    https_url, url = last.groups()

    def index(text: str) -> int:
        found = [i for i, line in enumerate(lines) if text in line]
        assert len(found) == 1, f"{text!r} appears {len(found)} times:\n{result.stdout}"
        return found[0]

    assert (
        index("gcloud: deploy: authenticating")
        < index("gcloud: deploy: deployment hello created")
        < index(f"ports 80 and 443 are forwarded to {url} and {https_url}")
        < index("serving HTTP after")
        < index("HTTPS verified against")
        < len(lines) - 1
    )
    # The emulated cloud's address appears once, in the line that says where it really is.
    assert len([line for line in lines if "203.0.113." in line]) == 1
    assert "is up to date" not in result.stdout
