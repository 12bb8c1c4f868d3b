"""`make up` as a person types it, then what an operator does on the stack it runs, in file order:

1. `make up`: one line per phase in order, one line about the emulated IP, the URLs last.
2. A rollback: `make smoke LOCAL=1` records the commit as the last good version; a wrong greeting
   deployed with `make up` (the VM accepts it: healthy, only wrong) fails `make smoke LOCAL=1`;
   `make rollback LOCAL=1` brings the greeting back.
3. The console incident: the VM deleted with `gcloud compute` powers off (its address stops
   answering); `make drift LOCAL=1` reports it; `make repair LOCAL=1` recreates it with the same
   static IP. The CA is unreachable (pebble stopped) while the fresh disk boots: :80 serves the
   app and the failed certificate attempt is logged with its retry. Once pebble runs again, HTTPS
   comes up by itself and `make smoke LOCAL=1` gets the greeting at the same address.
4. `make up` again redeploys and returns once the VM serves it; `source
   .state/localvm/gcloud.env` points the real gcloud at the stack.
5. HTTPS on the recreated VM: verified against pebble's root only, the IP as the only SAN, :80
   redirecting, the key root's alone, a forced renewal served with no failed request, the units
   sandboxed, Chromium.
6. Releases with HTTPS on: one that crashes once it takes traffic (an instance metadata edit with
   the real gcloud) is rolled back by the VM; a good one deployed over it with `make up` replaces
   the old one; no request over HTTPS fails.

Real: make, localvm, the real gcloud deploying through scripts/deploy.sh, the cached Debian 12
image booted under qemu, the startup script and app, nginx, certbot (installed by uv in the
guest), the app answering on the forwarded ports, pebble (Debian's, Let's Encrypt's ACME test
server) as the CA, by real http-01, Chromium. Emulated: Google's Deployment Manager, Compute
Engine, token endpoint and metadata server, served by the local cloud process (localvm.cloud).
Stand-ins: the external IP is 127.0.0.1 (the host end of qemu's forwards), and a stopped pebble
(SIGSTOP: it takes connections and never answers) is the CA's outage. Test-only: qemu's guest
agent, for running `journalctl`, `ss` and `stat` in the guest.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509

from app.app import GREETING
from localvm.cli import GCLOUD_ENV, STATE, STATE_FILE
from localvm.stack import ARTIFACTS, SERVING_UNIT, checkout_version
from localvm.vm import NETWORK, LocalVM
from tests.browser import chromium
from tests.conftest import REPO, VM_LANE_2, copy_stack
from tests.e2e.conftest import RequestLoop, guest, release_refused

pytestmark = [pytest.mark.e2e, VM_LANE_2]

IP = NETWORK["external-ip"]
ZONE = "--zone=us-central1-a"
ISSUE_TIMEOUT = 1500  # uv installs certbot in the guest, backoff, then http-01, under TCG
WRONG_GREETING = "Hello from a deploy that greets wrongly"
# Smoke's documented settings: a try every 5 s at most instead of 20, for about the same budget
# (2 + 4 + 5 s x 98, 8 minutes), so a rehearsal's step ends within 5 s of the VM serving.
SMOKE_POLL_5S = {"SMOKE_MAX_WAIT": "5", "SMOKE_ATTEMPTS": "100"}
HEAD = subprocess.run(
    ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
).stdout.strip()


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


def gcloud(command: str) -> subprocess.CompletedProcess:
    return timed(["bash", "-c", f"source {GCLOUD_ENV} && {command}"], 300)


def succeeded(step: subprocess.CompletedProcess) -> str:
    assert step.returncode == 0, step.stdout + step.stderr
    return step.stdout


class RunningStack:
    """The stack `make up` runs, driven the way tests/e2e/conftest.py's release helpers drive a
    VM: through qemu's channels (vm.json names the VM; a repair replaces it) and, for a metadata
    edit, the real gcloud through gcloud.env, as an operator's console edit would."""

    def __init__(self) -> None:
        self.steps: dict[str, subprocess.CompletedProcess] = {}
        self.accepted: dict[str, str] = {}  # the metadata the VM serves
        self.external_ip = ""  # the instance's, before the incident deletes it
        self._vm: LocalVM | None = None

    @property
    def state(self) -> dict:
        return json.loads(STATE_FILE.read_text())

    @property
    def vm(self) -> LocalVM:
        booted = json.loads((STATE / "vm.json").read_text())
        if self._vm is None or self._vm.pid != booted["pid"]:
            state = self.state
            self._vm = LocalVM.attach(
                Path(booted["workdir"]), pid=booted["pid"], http_port=state["http_port"]
            )
            self._vm.https_port = state["https_port"]
        return self._vm

    def wait_for_a_new_vm(self, old_pid: int, timeout: float) -> LocalVM:
        """The VM the local cloud boots for a recreated instance. The cloud boots it after the
        API call that created the instance returned, and then vm.json names it."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, ValueError):
                vm = self.vm
                if vm.pid != old_pid and vm.running():
                    return vm
            assert time.monotonic() < deadline, f"no new VM within {timeout} s"
            time.sleep(1)

    def root_pem(self) -> str:
        return (STATE / "ca-root.pem").read_text()

    def pebble(self, sig: signal.Signals) -> None:
        os.kill(self.state["pebble_pid"], sig)

    def metadata(self) -> dict[str, str]:
        described = succeeded(
            gcloud(f"gcloud compute instances describe hello-vm {ZONE} --format=json")
        )
        return {item["key"]: item["value"] for item in json.loads(described)["metadata"]["items"]}

    def set_attributes(self, values: dict[str, str]) -> None:
        """The items of `values` that differ from the instance's, set with `gcloud compute
        instances add-metadata`."""
        current = self.metadata()
        with tempfile.TemporaryDirectory() as files:
            pairs = []
            for key, value in values.items():
                if current.get(key) != value:
                    (Path(files) / key).write_text(value)
                    pairs.append(f"{key}={Path(files) / key}")
            succeeded(
                gcloud(
                    f"gcloud compute instances add-metadata hello-vm {ZONE}"
                    f" --metadata-from-file={','.join(pairs)}"
                )
            )


@pytest.fixture(scope="module")
def up():
    if STATE_FILE.exists():
        pytest.skip("a `make up` stack is already running in this clone; `make down` first")
    stack = RunningStack()
    try:
        stack.steps["make up"] = make("up", timeout=1800)
        yield stack
    finally:
        if STATE_FILE.exists():
            # A stopped pebble acts on make down's SIGTERM only once it runs again.
            with contextlib.suppress(ProcessLookupError):
                stack.pebble(signal.SIGCONT)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            logs = [(STATE / "pebble" / "pebble.log", "make-up-pebble.log")]
            if (STATE / "vm.json").exists():
                logs.append((stack.vm.serial_log, "make-up-serial.log"))
            for log, name in logs:
                if log.exists():
                    shutil.copyfile(log, ARTIFACTS / name)
        make("down", timeout=180)
        # What a person sees, step by step with what it cost: `pytest -rP`, and an artifact.
        transcript = "\n".join(
            f"--- {step} ({outcome.seconds:.0f} s)\n{outcome.stdout}{outcome.stderr}"
            for step, outcome in stack.steps.items()
        )
        print(transcript)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "make-up-rehearsals.txt").write_text(transcript)


@pytest.fixture
def stack(up):
    """The running stack, for the tests after `make up`'s own."""
    if up.steps["make up"].returncode != 0:
        pytest.fail("`make up` failed: see the first test of this module")
    return up


def test_make_up_prints_one_line_per_phase_in_order_and_ends_with_the_urls(up):
    result = up.steps["make up"]
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) <= 40, result.stdout
    last = re.fullmatch(
        r"(https://127\.0\.0\.1:\d+/)  \(HTTP: (http://127\.0\.0\.1:\d+/)\)", lines[-1]
    )
    assert last, lines[-5:]
    https_url, url = last.groups()
    version = checkout_version()
    assert (
        index("==> app: app/app.py compiles", lines)
        < index("==> host: packages (vm, https) and image", lines)
        < index("==> CA: pebble", lines)
        < index("==> cloud: Google's APIs on loopback", lines)
        < index(
            "==> deploy: scripts/deploy.sh with the real gcloud, DEPLOY_ENGINE=dm: deployment "
            "hello created",
            lines,
        )
        < index(f"ports 80 and 443 are forwarded to {url} and {https_url}", lines)
        < index(f"==> boot: the VM serves version {version}", lines)
        < index("==> HTTPS: verified against", lines)
        < len(lines) - 1
    )
    # The emulated cloud's address appears once, in the line that says where it really is.
    assert len([line for line in lines if "203.0.113." in line]) == 1
    assert "is up to date" not in result.stdout


def index(text: str, output: list[str]) -> int:
    found = [i for i, line in enumerate(output) if text in line]
    assert len(found) == 1, f"{text!r} appears {len(found)} times:\n{output}"
    return found[0]


def test_a_wrong_greeting_fails_smoke_and_make_rollback_brings_the_greeting_back(stack, tmp_path):
    """Smoke records the last good commit; a greeting changed in a copy of the checkout (this
    one stays as it is: other tests read it) deploys, and smoke fails on it; the rollback
    redeploys the recorded commit and smoke-tests it."""
    changed = copy_stack(tmp_path)
    app = changed / "app/app.py"
    app.write_text(app.read_text().replace(GREETING, WRONG_GREETING))
    steps = {
        "make smoke LOCAL=1": make("smoke", 600, "LOCAL=1"),
        "make up (a wrong greeting)": make("up", 900, f"CONFIG={changed / 'deployment.yaml'}"),
    }
    steps["make smoke LOCAL=1 (fails)"] = make(
        "smoke", 600, "LOCAL=1", SMOKE_CHECKOUT=str(changed), SMOKE_ATTEMPTS="3"
    )
    steps["make rollback LOCAL=1"] = make("rollback", 900, "LOCAL=1", **SMOKE_POLL_5S)
    stack.steps.update(steps)
    smoked, wrong, smoke_fails, rolled_back = steps.values()
    assert f"recorded {HEAD} as the last good version" in succeeded(smoked) + smoked.stderr
    succeeded(wrong)
    assert smoke_fails.returncode == 2, smoke_fails.stdout + smoke_fails.stderr  # make's, for 1
    assert WRONG_GREETING in smoke_fails.stderr, smoke_fails.stderr
    assert f"will redeploy {HEAD[:7]}" in succeeded(rolled_back) + rolled_back.stderr
    # The rollback's own smoke test: the greeting over HTTP and, verified, over HTTPS.
    assert f'answered "{GREETING}", version {checkout_version()}' in rolled_back.stdout


NAT_IP = (
    f"gcloud compute instances describe hello-vm {ZONE}"
    " --format='value(networkInterfaces[0].accessConfigs[0].natIP)'"
)


def test_a_deleted_vm_is_reported_repaired_and_boots_serving_http_while_the_ca_is_down(stack):
    """The incident the project exists for: someone deletes the VM in a terminal (the console's
    calls, through gcloud.env); drift and repair act on the local stack. The recreated
    instance's first boot (a fresh disk) meets the CA down: the app is served on :80, the
    failed certificate attempt is logged with its retry, and :443 stays closed."""
    stack.external_ip = gcloud(NAT_IP).stdout.strip()
    deleted_pid = stack.vm.pid
    steps = {
        "gcloud compute instances delete": gcloud(
            f"gcloud compute instances update hello-vm {ZONE} --no-deletion-protection && "
            f"gcloud compute instances delete hello-vm {ZONE} --quiet"
        ),
        # The VM powers off (an ACPI shutdown, slow under TCG): its address stops answering.
        "the address goes dark": gcloud(
            "down=0; for i in $(seq 1 240); do"
            ' if curl -s -o /dev/null --max-time 2 "http://$LOCAL_ADDRESS/healthz"; then down=0;'
            " else down=$((down + 1)); [ $down -ge 3 ] && exit 0; fi; sleep 1; done; exit 1"
        ),
        "make drift LOCAL=1": make("drift", 300, "LOCAL=1"),
    }
    stack.pebble(signal.SIGSTOP)
    steps["make repair LOCAL=1"] = make("repair", 600, "LOCAL=1")
    stack.steps.update(steps)
    deleted, dark, drifted, repaired = steps.values()
    succeeded(deleted)
    assert dark.returncode == 0, "the deleted instance's VM still answers after 4 min"
    assert drifted.returncode == 2, drifted.stdout + drifted.stderr  # make's, for drift's 10
    assert "DRIFT hello-vm (compute.v1.instance): deleted" in drifted.stdout, drifted.stdout
    assert "repair: recreate hello-vm (compute.v1.instance)" in succeeded(repaired)

    stack.wait_for_a_new_vm(deleted_pid, timeout=120).wait_http(
        "/", timeout=ISSUE_TIMEOUT, expect=GREETING
    )
    stack.vm.wait_guest_agent(timeout=120)
    deadline = time.monotonic() + ISSUE_TIMEOUT
    while True:
        journal = guest(stack, "journalctl -b -o cat -u hello-cert.service")
        retries = [line for line in journal.splitlines() if "FAILED: certificate" in line]
        if retries or time.monotonic() > deadline:
            break
        time.sleep(3)
    # One retry is enough here: the wait doubling from one to the next is the host test's
    # (tests/stack/test_https.py), which runs the same script.
    assert retries, journal
    directory = json.loads((STATE / "acme.json").read_text())["acme-directory"]
    assert f"for {IP} from {directory} (attempt 1/10)" in retries[0]
    assert "retrying in 15 s" in retries[0]
    # No certificate: :80 serves the app itself, :443 is closed.
    assert http_get(stack)[:2] == (200, GREETING)
    assert guest(stack, "ss -Hltn 'sport = :443'").strip() == ""


def test_https_comes_up_once_the_ca_is_back_and_smoke_passes_at_the_same_address(stack):
    stack.pebble(signal.SIGCONT)
    deadline = time.monotonic() + ISSUE_TIMEOUT
    last = None
    while time.monotonic() < deadline:
        try:
            last = https_get(stack)
            if last == (200, GREETING):
                break
        except OSError as error:
            last = error
        time.sleep(3)
    assert last == (200, GREETING), f"{last}\n{stack.vm.serial_tail()}"
    # activate logs this line just after the reload that began serving HTTPS.
    deadline = time.monotonic() + 60
    while True:
        journal = guest(stack, "journalctl -b -o cat -u hello-cert.service")
        if f"hello-tls: serving https://{IP}/" in journal or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert f"hello-tls: serving https://{IP}/" in journal, journal
    served = stack.steps["make smoke LOCAL=1 (the new VM)"] = make(
        "smoke", 600, "LOCAL=1", **SMOKE_POLL_5S
    )
    assert f'answered "{GREETING}", version {checkout_version()}' in succeeded(served)
    after = gcloud(NAT_IP).stdout.strip()
    assert stack.external_ip and after == stack.external_ip, "the recreated VM has another IP"


def test_make_up_again_redeploys_the_checkout_and_gcloud_env_points_gcloud_at_the_stack(stack):
    again = stack.steps["make up again"] = make("up", timeout=900)
    redeploy = succeeded(again).splitlines()
    assert len(redeploy) <= 25, again.stdout
    version = checkout_version()
    assert index("updated in place", redeploy) < index(
        f"==> converge: the VM serves version {version}", redeploy
    )
    assert redeploy[-1] == stack.steps["make up"].stdout.splitlines()[-1]
    assert https_get(stack) == (200, GREETING)
    listed = gcloud("gcloud deployment-manager deployments list")
    assert "hello" in succeeded(listed), listed.stdout + listed.stderr


# --- HTTPS on the recreated VM ----------------------------------------------------------------


def https_get(stack, path: str = "/", context: ssl.SSLContext | None = None):
    """GET over TLS to the forwarded :443, verifying the certificate for the IP itself."""
    context = context or ssl.create_default_context(cadata=stack.root_pem())
    connection = http.client.HTTPSConnection(IP, stack.vm.https_port, context=context, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def http_get(stack, path: str = "/"):
    connection = http.client.HTTPConnection(IP, stack.vm.http_port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode(), response.getheader("Location")
    finally:
        connection.close()


def served_certificate(stack) -> x509.Certificate:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((IP, stack.vm.https_port), timeout=10) as raw,
        context.wrap_socket(raw) as tls_socket,
    ):
        return x509.load_der_x509_certificate(tls_socket.getpeercert(binary_form=True))


def test_https_is_verified_against_the_ca_root_only(stack):
    assert https_get(stack) == (200, GREETING)
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(stack, context=ssl.create_default_context())


def test_the_certificate_names_exactly_the_ip(stack):
    certificate = served_certificate(stack)
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == [IP]
    assert san.get_values_for_type(x509.DNSName) == []


def test_http_redirects_to_https_but_not_the_health_check(stack):
    status, _, location = http_get(stack, "/hello")
    assert (status, location) == (301, f"https://{IP}/hello")
    # The converge and Google's checks reach the app's health on :80 itself.
    status, body, location = http_get(stack, "/healthz")
    assert (status, location) == (200, None), body


def test_the_key_is_readable_by_root_only(stack):
    assert guest(stack, "stat -c '%a %U %G' /etc/hello-tls/privkey.pem").split() == [
        "600",
        "root",
        "root",
    ]
    assert guest(stack, "stat -c '%a %U' /var/lib/hello-acme").split() == ["700", "hello-acme"]
    code, _, _ = stack.vm.guest_exec("runuser -u www-data -- cat /etc/hello-tls/privkey.pem")
    assert code != 0
    # nginx's workers, which talk to clients, run as www-data; only the master reads the key.
    workers = guest(stack, "ps -o user= -C nginx | sort | uniq -c")
    assert "www-data" in workers and "root" in workers, workers


def test_forced_renewal_is_served_without_a_failed_request_or_restart(stack):
    context = ssl.create_default_context(cadata=stack.root_pem())
    before = served_certificate(stack).serial_number
    main_pids = f"systemctl show -P MainPID {SERVING_UNIT}; systemctl show -P MainPID nginx.service"
    pids = guest(stack, main_pids).split()
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}
    errors: list[str] = []

    def loop():
        while not stop.is_set():
            try:
                assert https_get(stack, context=context) == (200, GREETING)
                counts["ok"] += 1
            except Exception as error:
                counts["failed"] += 1
                errors.append(repr(error))
            time.sleep(0.05)

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        guest(
            stack,
            "systemctl set-environment HELLO_TLS_FORCE_RENEWAL=1 && "
            "systemctl start hello-cert.service; status=$?; "
            "systemctl unset-environment HELLO_TLS_FORCE_RENEWAL; exit $status",
            timeout=600,
        )
        deadline = time.monotonic() + 60
        while served_certificate(stack).serial_number == before:
            assert time.monotonic() < deadline, "the renewed certificate was never served"
            time.sleep(1)
        time.sleep(2)
    finally:
        stop.set()
        worker.join(30)
    assert counts["failed"] == 0, errors[:5]
    assert counts["ok"] > 10
    assert guest(stack, main_pids).split() == pids


def test_units_are_sandboxed_and_log_no_errors(stack):
    for unit in ("hello-cert.service", "nginx.service"):
        report = guest(stack, f"systemd-analyze security --no-pager {unit}")
        score = float(report.rsplit("Overall exposure level for", 1)[1].split()[1])
        assert score <= 5.0, report
    # The app's own log is tests/e2e/test_vm.py's to check.
    journal = guest(stack, "journalctl -b -o cat -u nginx.service -u hello-cert.service")
    errors = [
        line
        for line in journal.splitlines()
        if ("ERROR" in line or "[error]" in line or "[emerg]" in line)
        and "hello-tls: FAILED" not in line
    ]
    assert errors == [], errors


@pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("certutil")), reason="needs chromium, certutil"
)
def test_chromium_trusting_the_ca_root_shows_the_greeting(stack, tmp_path):
    url = stack.vm.https_url
    root = stack.root_pem()
    assert GREETING in chromium(tmp_path / "trusting", "--dump-dom", url, trusting=root)
    # Without the root the same page is Chromium's certificate interstitial, not the greeting.
    assert GREETING not in chromium(tmp_path / "untrusting", "--dump-dom", url)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "hello-vm-https-screenshot.png"
    shot.unlink(missing_ok=True)
    chromium(tmp_path / "screenshot", f"--screenshot={shot}", url, trusting=root)
    assert shot.stat().st_size > 0


# --- releases with HTTPS on -------------------------------------------------------------------

# Serves until it has answered "/" (the traffic nginx sends once it switched), then its
# gunicorn master dies three seconds later, at every start: a crash loop.
CRASH_AFTER_TRAFFIC = """

import signal as _signal
import threading as _threading

from flask import request as _request

_armed = []


@app.before_request
def _crash_soon():
    if _request.path == "/" and not _armed:
        _armed.append(True)
        _threading.Timer(3, os.kill, (os.getppid(), _signal.SIGKILL)).start()
"""
RELEASED_GREETING = "Hello World from BenchSci, released with no failed request!"


def test_a_release_that_crashes_after_taking_traffic_is_rolled_back(stack):
    """The converge checks the app through :443 and an unredirected :80 /healthz, and the
    requests over HTTPS all succeed while it rolls back."""
    stack.accepted = stack.metadata()
    bad = {**stack.accepted, "app-py": stack.accepted["app-py"] + CRASH_AFTER_TRAFFIC}
    # The next test deploys over it: a refusal forgotten is tests/e2e/test_vm.py's to show.
    release_refused(
        stack, bad, "it crashed while serving", lambda: https_get(stack), then_restore=False
    )
    assert "rolled back to release" in stack.vm.serial_text()


def test_a_good_release_made_with_make_up_replaces_the_old_with_no_failed_request(stack, tmp_path):
    changed = copy_stack(tmp_path)
    app = changed / "app/app.py"
    app.write_text(app.read_text().replace(GREETING, RELEASED_GREETING))
    with RequestLoop(lambda: https_get(stack), {GREETING, RELEASED_GREETING}) as loop:
        released = stack.steps["make up (a good release over the crash)"] = make(
            "up", 900, f"CONFIG={changed / 'deployment.yaml'}"
        )
        time.sleep(5)
    succeeded(released)
    assert loop.failures == [], loop.failures
    assert loop.answers > 20
    assert https_get(stack) == (200, RELEASED_GREETING)
    assert http_get(stack, "/")[2] == f"https://{IP}/"
