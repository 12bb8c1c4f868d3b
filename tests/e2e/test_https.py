"""HTTPS on the booted VM: a certificate for its "public IP" from an ACME CA, by real http-01.

Real: the Debian 12 image, systemd, nginx from Debian, certbot from app/acme-requirements.txt
(installed by uv in the guest), the committed units and app/hello-tls.sh; pebble, Let's Encrypt's
ACME test server, on the host as the CA; qemu's port forwards as the public IP's ports 80 and 443;
TLS verified against pebble's root; Chromium. Emulated: the metadata server
(emulators/metadata.py). Stand-ins: the external IP is 127.0.0.1 (the host end of the
forwards), and pebble reaches "<IP>:80" through the forwarded port (its httpPort).

Tests run in file order on one VM, which boots while pebble is down.
"""

from __future__ import annotations

import http.client
import shutil
import socket
import ssl
import tempfile
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509

from app.app import GREETING
from localvm.acme import Pebble
from localvm.stack import ARTIFACTS, SERVING_UNIT, LocalStack, attributes
from localvm.vm import NETWORK
from tests.browser import chromium
from tests.conftest import VM_LANE_2
from tests.e2e.conftest import (
    RequestLoop,
    greeting_of,
    release_refused,
    releasing,
    wait_converged,
    with_greeting,
)

pytestmark = [pytest.mark.e2e, VM_LANE_2]

IP = NETWORK["external-ip"]
COLD_BOOT_TIMEOUT = 2400  # TCG on a shared 2-core machine that other VMs load too
ISSUE_TIMEOUT = 1500  # uv installs certbot in the guest, backoff, then http-01, under TCG


def guest(stack, script: str, timeout: float = 60) -> str:
    code, out, err = stack.vm.guest_exec(script, timeout=timeout)
    assert code == 0, f"guest command failed ({code}): {script}\n{out}\n{err}"
    return out


@pytest.fixture(scope="module")
def tls(request):
    workdir = Path(tempfile.mkdtemp(prefix="hello-tls-e2e-"))
    local = LocalStack(workdir)
    pebble = Pebble(workdir / "pebble", validation_port=local.http_port)
    # The rendered instance's metadata, with pebble as its CA: what the VM serves once converged.
    local.accepted = {**attributes(local.instance), **pebble.attributes()}
    local.set_attributes(local.accepted)
    local.pebble = pebble
    local.start()
    try:
        yield local
    finally:
        local.stop(discard=True)  # the overlay is deleted below
        pebble.stop()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        if local.vm is not None and local.vm.serial_log.exists():
            shutil.copyfile(local.vm.serial_log, ARTIFACTS / "e2e-https-serial.log")
        if pebble.log.exists():
            shutil.copyfile(pebble.log, ARTIFACTS / "e2e-https-pebble.log")
        shutil.rmtree(workdir, ignore_errors=True)


def https_get(stack, path: str = "/", context: ssl.SSLContext | None = None):
    """GET over TLS to the forwarded :443, verifying the certificate for the IP itself."""
    context = context or ssl.create_default_context(cadata=stack.pebble.root_pem())
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


def test_first_boot_with_the_ca_down_serves_http_and_logs_retries(tls):
    tls.vm.wait_http("/", timeout=COLD_BOOT_TIMEOUT, expect=GREETING)
    tls.vm.wait_guest_agent(timeout=120)
    deadline = time.monotonic() + ISSUE_TIMEOUT
    while True:
        journal = guest(tls, "journalctl -b -o cat -u hello-cert.service")
        retries = [line for line in journal.splitlines() if "FAILED: certificate" in line]
        if retries or time.monotonic() > deadline:
            break
        time.sleep(3)
    # One retry is enough here: the wait doubling from one to the next is the host test's
    # (tests/stack/test_https.py), which runs the same script.
    assert retries, journal
    assert f"for {IP} from {tls.pebble.guest_directory} (attempt 1/10)" in retries[0]
    assert "retrying in 15 s" in retries[0]
    # No certificate: :80 serves the app itself, :443 is closed.
    assert http_get(tls)[:2] == (200, GREETING)
    assert guest(tls, "ss -Hltn 'sport = :443'").strip() == ""


def test_https_comes_up_once_the_ca_is_back(tls):
    tls.pebble.start()
    deadline = time.monotonic() + ISSUE_TIMEOUT
    last = None
    while time.monotonic() < deadline:
        try:
            last = https_get(tls)
            if last == (200, GREETING):
                break
        except OSError as error:
            last = error
        time.sleep(3)
    assert last == (200, GREETING), f"{last}\n{tls.vm.serial_tail()}"
    # activate logs this line just after the reload that began serving HTTPS.
    deadline = time.monotonic() + 60
    while True:
        journal = guest(tls, "journalctl -b -o cat -u hello-cert.service")
        if f"hello-tls: serving https://{IP}/" in journal or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert f"hello-tls: serving https://{IP}/" in journal, journal


def test_https_is_verified_against_the_ca_root_only(tls):
    assert https_get(tls) == (200, GREETING)
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(tls, context=ssl.create_default_context())


def test_the_certificate_names_exactly_the_ip(tls):
    certificate = served_certificate(tls)
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == [IP]
    assert san.get_values_for_type(x509.DNSName) == []


def test_http_redirects_to_https(tls):
    status, _, location = http_get(tls, "/hello")
    assert (status, location) == (301, f"https://{IP}/hello")


def test_the_key_is_readable_by_root_only(tls):
    assert guest(tls, "stat -c '%a %U %G' /etc/hello-tls/privkey.pem").split() == [
        "600",
        "root",
        "root",
    ]
    assert guest(tls, "stat -c '%a %U' /var/lib/hello-acme").split() == ["700", "hello-acme"]
    code, _, _ = tls.vm.guest_exec("runuser -u www-data -- cat /etc/hello-tls/privkey.pem")
    assert code != 0
    # nginx's workers, which talk to clients, run as www-data; only the master reads the key.
    workers = guest(tls, "ps -o user= -C nginx | sort | uniq -c")
    assert "www-data" in workers and "root" in workers, workers


def test_forced_renewal_is_served_without_a_failed_request_or_restart(tls):
    context = ssl.create_default_context(cadata=tls.pebble.root_pem())
    before = served_certificate(tls).serial_number
    pids = guest(
        tls, f"systemctl show -P MainPID {SERVING_UNIT}; systemctl show -P MainPID nginx.service"
    ).split()
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}
    errors: list[str] = []

    def loop():
        while not stop.is_set():
            try:
                assert https_get(tls, context=context) == (200, GREETING)
                counts["ok"] += 1
            except Exception as error:
                counts["failed"] += 1
                errors.append(repr(error))
            time.sleep(0.05)

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        guest(
            tls,
            "systemctl set-environment HELLO_TLS_FORCE_RENEWAL=1 && "
            "systemctl start hello-cert.service; status=$?; "
            "systemctl unset-environment HELLO_TLS_FORCE_RENEWAL; exit $status",
            timeout=600,
        )
        deadline = time.monotonic() + 60
        while served_certificate(tls).serial_number == before:
            assert time.monotonic() < deadline, "the renewed certificate was never served"
            time.sleep(1)
        time.sleep(2)
    finally:
        stop.set()
        worker.join(30)
    assert counts["failed"] == 0, errors[:5]
    assert counts["ok"] > 10
    assert (
        guest(
            tls,
            f"systemctl show -P MainPID {SERVING_UNIT}; systemctl show -P MainPID nginx.service",
        ).split()
        == pids
    )


def test_units_are_sandboxed_and_log_no_errors(tls):
    for unit in ("hello-cert.service", "nginx.service"):
        report = guest(tls, f"systemd-analyze security --no-pager {unit}")
        score = float(report.rsplit("Overall exposure level for", 1)[1].split()[1])
        assert score <= 5.0, report
    # The app's own log is tests/e2e/test_vm.py's to check.
    journal = guest(tls, "journalctl -b -o cat -u nginx.service -u hello-cert.service")
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
def test_chromium_trusting_the_ca_root_shows_the_greeting(tls, tmp_path):
    url = tls.vm.https_url
    root = tls.pebble.root_pem()
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


def test_a_release_that_crashes_after_taking_traffic_is_rolled_back(tls):
    """With HTTPS on: the converge checks the app through :443 and an unredirected :80
    /healthz, and the requests over HTTPS all succeed while it rolls back."""
    bad = {**tls.accepted, "app-py": tls.accepted["app-py"] + CRASH_AFTER_TRAFFIC}
    # The next scenario deploys over it: a refusal forgotten is tests/e2e/test_vm.py's to show.
    release_refused(
        tls, bad, "it crashed while serving", lambda: https_get(tls), then_restore=False
    )
    assert "rolled back to release" in tls.vm.serial_text()


def test_a_good_release_replaces_the_old_with_no_failed_request(tls):
    changed = "Hello World from BenchSci, released with no failed request!"
    good = with_greeting(tls.accepted, changed)
    with releasing(tls, good):
        with RequestLoop(lambda: https_get(tls), {greeting_of(tls.accepted), changed}) as loop:
            tls.set_attributes(good)
            wait_converged(tls, good)
            time.sleep(5)
        assert loop.failures == [], loop.failures
        assert loop.answers > 20
        assert https_get(tls) == (200, changed)
        assert http_get(tls, "/")[2] == f"https://{IP}/"
