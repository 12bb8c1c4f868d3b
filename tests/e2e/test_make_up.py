"""`make up` as a person types it: one line per phase in order, one line about the emulated IP,
the URLs last; then `make up` again on the running stack redeploys and returns once the VM serves
the checkout's version, and `source .state/localvm/gcloud.env` points the real gcloud at it.
Then an operator's rehearsals on that stack:
- a rollback: `make smoke LOCAL=1` records the commit as the last good version; a wrong greeting
  deployed with `make up` (the VM accepts it: healthy, only wrong) fails `make smoke LOCAL=1`;
  `make rollback LOCAL=1` brings the greeting back;
- the console incident: the VM deleted with `gcloud compute` powers off (its address stops
  answering); `make drift LOCAL=1` reports it; `make repair LOCAL=1` recreates it with the same
  static IP, a fresh disk boots, and `make smoke LOCAL=1` gets the greeting at the same address.

Real: make, localvm, the real gcloud deploying through scripts/deploy.sh, the cached Debian 12
image booted under qemu, the app answering on the forwarded ports, pebble (Debian's, the ACME CA
the guest's certbot gets its certificate from). Emulated: Google's Deployment Manager API, token
endpoint and metadata server, served by the local cloud process (localvm.cloud). Shares a lane
with test_https.py, after it (tests/conftest.py), so the two never boot at once.
"""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from app.app import GREETING
from localvm.cli import GCLOUD_ENV, STATE_FILE
from localvm.stack import ARTIFACTS, checkout_version
from tests.conftest import REPO, VM_LANE_2, copy_stack

pytestmark = [pytest.mark.e2e, VM_LANE_2]


def timed(command: list[str], timeout: float, **options) -> subprocess.CompletedProcess:
    """Runs a step; its output and `seconds` (printed with each step: what a rehearsal costs)."""
    started = time.monotonic()
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, check=False, **options
    )
    result.seconds = time.monotonic() - started
    return result


def make(target: str, timeout: float, *args: str, **env: str) -> subprocess.CompletedProcess:
    return timed(
        ["make", "--no-print-directory", target, *args],
        timeout,
        cwd=REPO,
        env={**os.environ, **env},
    )


def test_make_up_prints_one_line_per_phase_in_order_ends_with_the_urls_and_redeploys(tmp_path):
    if STATE_FILE.exists():
        pytest.skip("a `make up` stack is already running in this clone; `make down` first")
    try:
        result = make("up", timeout=1800)
        rehearsal = rehearse_a_rollback(tmp_path) if result.returncode == 0 else {}
        incident = rehearse_a_deleted_vm() if result.returncode == 0 else {}
        again = make("up", timeout=900)
        listed = gcloud("gcloud deployment-manager deployments list")
    finally:
        make("down", timeout=180)
    # What a person sees, step by step with what it cost: `pytest -rP`, and kept as an artifact.
    steps = {"make up": result} | rehearsal | incident | {"make up again": again}
    transcript = "\n".join(
        f"--- {step} ({outcome.seconds:.0f} s)\n{outcome.stdout}{outcome.stderr}"
        for step, outcome in steps.items()
    )
    print(transcript)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "make-up-rehearsals.txt").write_text(transcript)
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

    # The rollback rehearsal, step by step (rehearse_a_rollback).
    smoked, wrong, smoke_fails, rolled_back = rehearsal.values()
    assert smoked.returncode == 0, smoked.stdout + smoked.stderr
    assert f"recorded {HEAD} as the last good version" in smoked.stdout + smoked.stderr
    assert wrong.returncode == 0, wrong.stdout + wrong.stderr
    assert smoke_fails.returncode == 2, smoke_fails.stdout + smoke_fails.stderr  # make's, for 1
    assert WRONG_GREETING in smoke_fails.stderr, smoke_fails.stderr
    assert rolled_back.returncode == 0, rolled_back.stdout + rolled_back.stderr
    assert f"will redeploy {HEAD[:7]}" in rolled_back.stderr + rolled_back.stdout
    # The rollback's own smoke test: the greeting over HTTP and, verified, over HTTPS.
    assert f'answered "{GREETING}", version {checkout_version()}' in rolled_back.stdout

    # The incident, step by step (rehearse_a_deleted_vm).
    deleted, dark, drifted, repaired, served, address = incident.values()
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert dark.returncode == 0, "the deleted instance's VM still answers after 4 min"
    assert drifted.returncode == 2, drifted.stdout + drifted.stderr  # make's, for drift's 10
    assert "DRIFT hello-vm (compute.v1.instance): deleted" in drifted.stdout, drifted.stdout
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "repair: recreate hello-vm (compute.v1.instance)" in repaired.stdout, repaired.stdout
    assert served.returncode == 0, served.stdout + served.stderr
    assert f'answered "{GREETING}", version {checkout_version()}' in served.stdout
    before, after = address.stdout.split()
    assert before == after, "the recreated VM has another external IP"


WRONG_GREETING = "Hello from a deploy that greets wrongly"
# Smoke's documented settings: a try every 5 s at most instead of 20, for about the same budget
# (2 + 4 + 5 s x 98, 8 minutes), so a rehearsal's step ends within 5 s of the VM serving.
SMOKE_POLL_5S = {"SMOKE_MAX_WAIT": "5", "SMOKE_ATTEMPTS": "100"}
HEAD = subprocess.run(
    ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
).stdout.strip()


def rehearse_a_rollback(tmp_path) -> dict[str, subprocess.CompletedProcess]:
    """On the running stack: smoke records the last good commit; a greeting changed in a copy of
    the checkout (this one stays as it is: other tests read it) deploys, and smoke fails on it;
    the rollback redeploys the recorded commit and smoke-tests it."""
    (tmp_path / "changed").mkdir()
    changed = copy_stack(tmp_path / "changed")
    app = changed / "app/app.py"
    app.write_text(app.read_text().replace(GREETING, WRONG_GREETING))
    steps = {"make smoke LOCAL=1": make("smoke", 600, "LOCAL=1")}
    steps["make up (a wrong greeting)"] = make("up", 900, f"CONFIG={changed / 'deployment.yaml'}")
    steps["make smoke LOCAL=1 (fails)"] = make(
        "smoke", 600, "LOCAL=1", SMOKE_CHECKOUT=str(changed), SMOKE_ATTEMPTS="3"
    )
    steps["make rollback LOCAL=1"] = make("rollback", 900, "LOCAL=1", **SMOKE_POLL_5S)
    return steps


def rehearse_a_deleted_vm() -> dict[str, subprocess.CompletedProcess]:
    """The incident the project exists for, on the running stack: someone deletes the VM in a
    terminal (the console's calls, through gcloud.env); drift and repair act on the local stack;
    smoke waits for the recreated instance's first boot (a fresh disk, as a new instance's)."""
    zone = "--zone=us-central1-a"
    nat_ip = (
        f"gcloud compute instances describe hello-vm {zone}"
        " --format='value(networkInterfaces[0].accessConfigs[0].natIP)'"
    )
    before = gcloud(nat_ip).stdout.strip()
    steps = {
        "gcloud compute instances delete": gcloud(
            f"gcloud compute instances update hello-vm {zone} --no-deletion-protection && "
            f"gcloud compute instances delete hello-vm {zone} --quiet"
        ),
        # The VM powers off (an ACPI shutdown, slow under TCG): its address stops answering.
        "the address goes dark": gcloud(
            "down=0; for i in $(seq 1 240); do"
            ' if curl -s -o /dev/null --max-time 2 "http://$LOCAL_ADDRESS/healthz"; then down=0;'
            " else down=$((down + 1)); [ $down -ge 3 ] && exit 0; fi; sleep 1; done; exit 1"
        ),
        "make drift LOCAL=1": make("drift", 300, "LOCAL=1"),
        "make repair LOCAL=1": make("repair", 600, "LOCAL=1"),
        "make smoke LOCAL=1 (the new VM)": make(
            "smoke", 1500, "LOCAL=1", **{**SMOKE_POLL_5S, "SMOKE_ATTEMPTS": "280"}
        ),
    }
    after = gcloud(nat_ip)
    after.stdout = f"{before or '-'} {after.stdout.strip() or '-'}"
    steps["the external IP before and after"] = after
    return steps


def gcloud(command: str) -> subprocess.CompletedProcess:
    return timed(["bash", "-c", f"source {GCLOUD_ENV} && {command}"], 300)
