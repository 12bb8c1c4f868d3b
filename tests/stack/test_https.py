"""HTTPS on the host, no VM: the committed nginx site, app/hello-tls.sh, certbot from
app/acme-requirements.txt, the app under gunicorn as hello@.service runs it, and a real ACME CA.

Real: Debian's nginx and pebble (Let's Encrypt's ACME test server), certbot and its http-01
validation (pebble connects to nginx's port and fetches the token certbot wrote; no
PEBBLE_VA_ALWAYS_VALID), TLS verified against pebble's root, nginx's graceful reload.
Emulated: the metadata server (emulators/metadata.py), which serves the acme-* attributes and the
external IP. Relocated, not changed: paths move under a temporary root (HELLO_TLS_ROOT), and
nginx's listen ports and gunicorn's bind move to free loopback ports. Loopback only.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import json
import os
import shlex
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from app.app import GREETING
from localvm.acme import Pebble
from localvm.front import IP, Front, http_get, wait_for
from localvm.stack import ARTIFACTS
from localvm.vm import free_port
from tests.browser import chromium
from tests.conftest import REPO

pytestmark = [
    pytest.mark.tls_host,
    pytest.mark.skipif(
        not all(shutil.which(tool) for tool in ("nginx", "pebble", "openssl")),
        reason="needs Debian's nginx and pebble (scripts/install-system-deps.sh)",
    ),
]


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return False
    return True


def trusting(root_pem: str) -> ssl.SSLContext:
    """Verifies the server against pebble's root only (no system store), its IP included."""
    return ssl.create_default_context(cadata=root_pem)


def served_certificate(port: int) -> x509.Certificate:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with context.wrap_socket(raw) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


@pytest.fixture(scope="module")
def front():
    # Not under pytest's private (0700) temp dir: nginx's workers run as www-data, as on the VM.
    root = Path(tempfile.mkdtemp(prefix="hello-tls-"))
    root.chmod(0o755)
    front = Front(root)
    front.start()
    try:
        yield front
    finally:
        front.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_port_80_serves_the_app_and_443_is_closed_before_any_certificate(front):
    assert http_get(front.http_port, "/")[:2] == (200, GREETING)
    assert not port_open(front.https_port)
    result = front.tls("activate")
    assert result.returncode == 0, result.stderr
    assert http_get(front.http_port, "/")[:2] == (200, GREETING)


def test_ca_unreachable_at_first_issuance_is_retried_then_served(front):
    """The CA is down: each failed attempt logs one line, the wait between attempts doubles,
    HTTP keeps serving the app, and the certificate arrives on the first attempt after the CA is
    back (here started mid-backoff)."""
    obtain = subprocess.Popen(
        ["bash", str(REPO / "app/hello-tls.sh"), "obtain"],
        env=front.env(HELLO_TLS_ATTEMPTS="4"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    failures: list[str] = []
    try:
        for line in obtain.stderr:
            failures.append(line.rstrip())
            if sum("FAILED" in failure for failure in failures) == 2:
                break
        assert http_get(front.http_port, "/")[:2] == (200, GREETING)
        front.pebble.start()
        out, err = obtain.communicate(timeout=600)
    finally:
        if obtain.poll() is None:
            obtain.kill()
    failures += err.splitlines()
    assert obtain.returncode == 0, "\n".join(failures)
    retries = [line for line in failures if line.startswith("hello-tls: FAILED: certificate")]
    assert len(retries) == 2, failures
    assert f"for {IP} from {front.pebble.directory} (attempt 1/4)" in retries[0]
    assert "retrying in 15 s" in retries[0]
    assert "(attempt 2/4)" in retries[1] and "retrying in 30 s" in retries[1], retries[1]
    assert "Connection refused" in retries[0] or "connect" in retries[0].lower(), retries[0]
    assert f"new certificate for {IP}" in out

    result = front.tls("activate")
    assert result.returncode == 0, result.stderr
    assert f"serving https://{IP}/" in result.stdout


def test_http01_validation_really_fetched_the_token_from_nginx(front):
    pebble_log = front.pebble.log.read_text()
    assert f"http://{IP}:{front.http_port}/.well-known/acme-challenge/" in pebble_log
    challenge_gets = [
        line
        for line in front.access_log.read_text().splitlines()
        if "GET /.well-known/acme-challenge/" in line and '" 200 ' in line
    ]
    assert challenge_gets, front.access_log.read_text()


def test_https_serves_the_greeting_verified_against_the_ca_root(front):
    context = trusting(front.pebble.root_pem())
    url = f"https://{IP}:{front.https_port}/"
    with urllib.request.urlopen(url, context=context, timeout=5) as response:
        assert response.read().decode() == GREETING
    # Another root (the system store) does not trust it: the verification above is real.
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(url, context=ssl.create_default_context(), timeout=5)


def test_the_certificate_names_exactly_the_ip(front):
    certificate = served_certificate(front.https_port)
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == [IP]
    assert san.get_values_for_type(x509.DNSName) == []
    assert isinstance(certificate.public_key(), ec.EllipticCurvePublicKey)


def test_http_redirects_to_https_but_still_answers_challenges(front):
    status, _, headers = http_get(front.http_port, "/hello?x=1")
    assert status == 301
    assert headers["Location"] == f"https://{IP}/hello?x=1"
    assert http_get(front.http_port, "/.well-known/acme-challenge/absent")[0] == 404


def test_the_redirect_names_the_instance_address_not_the_clients_host_header(front):
    """A request with a forged Host header is still sent to the address the certificate names."""
    connection = http.client.HTTPConnection("127.0.0.1", front.http_port, timeout=5)
    try:
        connection.request("GET", "/hello?x=1", headers={"Host": "attacker.example"})
        response = connection.getresponse()
        assert response.status == 301
        assert response.getheader("Location") == f"https://{IP}/hello?x=1"
    finally:
        connection.close()


def test_nginx_names_no_version(front):
    """Neither the Server header nor nginx's own error pages give its version away."""
    status, body, headers = http_get(front.http_port, "/.well-known/acme-challenge/absent")
    assert status == 404
    assert headers["Server"] == "nginx"
    assert "nginx/" not in body
    context = trusting(front.pebble.root_pem())
    url = f"https://{IP}:{front.https_port}/"
    with urllib.request.urlopen(url, context=context, timeout=5) as response:
        assert response.headers["Server"] == "nginx"


def test_smoke_checks_the_redirect_and_the_verified_greeting(front, tmp_path):
    root = tmp_path / "root.pem"
    root.write_text(front.pebble.root_pem())
    env = {
        "PATH": os.environ["PATH"],
        "SMOKE_ATTEMPTS": "1",
        "SMOKE_HTTPS_PORT": str(front.https_port),
        # No converge runs here, so /healthz names no version; tests/pipeline/test_smoke.py and
        # the e2e tests check the version.
        "SMOKE_VERSION": "unknown",
    }
    target = f"{IP}:{front.http_port}"
    result = subprocess.run(
        ["bash", str(REPO / "scripts/smoke.sh"), target],
        env={**env, "SMOKE_CACERT": str(root)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert f"redirects to https://{IP}/, verified" in result.stdout
    # Without the CA's root the certificate does not verify, and smoke says so.
    result = subprocess.run(
        ["bash", str(REPO / "scripts/smoke.sh"), target], env=env, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "certificate" in result.stderr, result.stderr


def test_tls_settings_follow_mozilla_intermediate(front):
    def handshake(minimum, maximum, ciphers=None):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.minimum_version, context.maximum_version = minimum, maximum
        if ciphers:
            context.set_ciphers(ciphers)
        with (
            socket.create_connection(("127.0.0.1", front.https_port), timeout=5) as raw,
            context.wrap_socket(raw) as tls,
        ):
            return tls.version(), tls.cipher()[0]

    assert handshake(ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3)[0] == "TLSv1.3"
    conf = (REPO / "app/nginx-hello-tls.conf").read_text()
    allowed = conf.split("ssl_ciphers ", 1)[1].split(";", 1)[0].split(":")
    version, cipher = handshake(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)
    assert version == "TLSv1.2"
    assert cipher in allowed and cipher.startswith("ECDHE-ECDSA-"), cipher
    for refused in (
        (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0"),
        (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2, "AES128-GCM-SHA256"),
    ):
        with pytest.raises(ssl.SSLError):
            handshake(*refused)


def test_the_served_key_is_readable_by_its_owner_only(front):
    key = front.path("/etc/hello-tls/privkey.pem")
    assert key.stat().st_mode & 0o777 == 0o600
    assert front.path("/etc/hello-tls/fullchain.pem").stat().st_mode & 0o777 == 0o644
    assert front.path("/var/lib/hello-acme").stat().st_mode & 0o777 == 0o700


def test_forced_renewal_is_served_without_a_failed_request_or_restart(front):
    context = trusting(front.pebble.root_pem())
    before = served_certificate(front.https_port).serial_number
    nginx_pid = front.nginx_master_pid()
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0, "retried": 0}
    errors: list[str] = []

    def new_connections():
        while not stop.is_set():
            try:
                url = f"https://{IP}:{front.https_port}/"
                with urllib.request.urlopen(url, context=context, timeout=5) as response:
                    assert response.read().decode() == GREETING
                counts["ok"] += 1
            except Exception as error:
                counts["failed"] += 1
                errors.append(repr(error))

    def keep_alive():
        """One connection reused for every request, as a browser does. A reload closes idle
        keep-alive connections; a request sent at that instant gets no response, and HTTP lets
        a client retry it on a new connection (RFC 9112, 9.3.1), as browsers and curl do. So
        does this loop, once; a failure on the fresh connection counts as failed."""
        connection = http.client.HTTPSConnection(IP, front.https_port, context=context, timeout=5)
        reused = False
        while not stop.is_set():
            try:
                connection.request("GET", "/")
                assert connection.getresponse().read().decode() == GREETING
                counts["ok"] += 1
                reused = True
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as error:
                connection.close()
                if not reused:
                    counts["failed"] += 1
                    errors.append(repr(error))
                counts["retried"] += reused
                reused = False
            except Exception as error:
                counts["failed"] += 1
                errors.append(repr(error))
                connection.close()
                reused = False

    threads = [threading.Thread(target=f) for f in (new_connections, keep_alive)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1)
        renewed = front.tls("obtain", HELLO_TLS_FORCE_RENEWAL="1")
        assert renewed.returncode == 0, renewed.stdout + renewed.stderr
        activated = front.tls("activate")
        assert activated.returncode == 0, activated.stderr
        wait_for(
            lambda: served_certificate(front.https_port).serial_number != before,
            "nginx to serve the renewed certificate",
        )
        time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert counts["failed"] == 0, errors[:5]
    assert counts["ok"] > 20
    assert front.nginx_master_pid() == nginx_pid
    assert all(process.poll() is None for process in front.processes)


def test_validation_fails_when_the_token_is_not_served(front, tmp_path):
    """A CA that validates against a port where nothing serves the token refuses to issue."""
    elsewhere = Pebble(tmp_path / "pebble", validation_port=free_port())
    elsewhere.start()
    metadata = front.metadata(pebble=elsewhere)
    try:
        result = front.tls("obtain", metadata, HELLO_TLS_ATTEMPTS="1")
    finally:
        metadata.stop()
        elsewhere.stop()
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("hello-tls:")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"hello-tls: FAILED: no certificate for {IP} from ")
    assert "after 1 attempts" in lines[0]
    # The certificate from the CA that did issue is still the one served.
    assert front.tls("activate").returncode == 0
    assert http_get(front.http_port, "/")[0] == 301


def test_https_turns_off_when_the_certificate_does_not_match_the_ip(front):
    """An unusable certificate must not leave :80 redirecting to a broken :443."""
    moved = front.metadata(external_ip="127.0.0.2")
    try:
        result = front.tls("activate", moved)
        assert result.returncode == 0, result.stderr
        assert "HTTPS off: no valid certificate for 127.0.0.2" in result.stdout
        # A reload is a signal: the new workers take over a moment later.
        wait_for(lambda: http_get(front.http_port, "/")[:2] == (200, GREETING), ":80 serving")
        wait_for(lambda: not port_open(front.https_port), ":443 closed by the old workers")
    finally:
        moved.stop()
    result = front.tls("activate")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: http_get(front.http_port, "/")[0] == 301, ":80 redirecting again")


def certificate_directory(front) -> Path:
    """Where hello-tls keeps the certificate from the front's own CA, and its failed attempts."""
    name = front.path("/var/lib/hello-acme/current").read_text().strip()
    return front.path("/var/lib/hello-acme/certificates") / name


# certbot's own handling of an error it cannot recover from, as at the end of a failed run.
CERTBOT_REPORTS = """
import json, sys
from acme import messages
from certbot._internal import log
log.pre_arg_parse_setup()
raise messages.Error.from_json(json.loads(sys.argv[1]))
"""


def test_a_rate_limit_answer_is_logged_and_the_ca_is_not_asked_before_its_time(front, tmp_path):
    """pebble 2.4 never answers with a rate limit, so the CA's answer is recorded: an RFC 8555
    problem document of type urn:ietf:params:acme:error:rateLimited whose detail is in Let's
    Encrypt's documented format ("..., retry after <time> UTC", letsencrypt.org/docs/rate-limits).
    Real: the pinned certbot (the venv hello-tls installed) renders it with its own error handler
    into the output hello-tls reads; hello-tls's record_failure (the test sources the script to
    call it) reads that; then a real obtain, with pebble up, must not ask pebble before then."""
    python = next(front.path("/var/lib/hello-acme").glob("certbot-*/bin/python"))
    retry_at = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    retry_at += datetime.timedelta(hours=30)
    detail = (
        "too many certificates (5) already issued for this exact set of identifiers in the last"
        f" 168h0m0s, retry after {retry_at:%Y-%m-%d %H:%M:%S} UTC: see"
        " https://letsencrypt.org/docs/rate-limits/#new-certificates-per-exact-set-of-identifiers"
    )
    problem = {"type": "urn:ietf:params:acme:error:rateLimited", "status": 429, "detail": detail}
    rendered = subprocess.run(
        [python, "-c", CERTBOT_REPORTS, json.dumps(problem)],
        env={"PATH": os.environ["PATH"], "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert rendered.returncode == 1, rendered.stderr
    output = tmp_path / "certbot-output.txt"
    output.write_text(rendered.stdout + rendered.stderr)
    directory = certificate_directory(front)
    try:
        recorded = subprocess.run(
            [
                *("bash", "-c", 'source "$1" && shift && record_failure "$@"', "test"),
                *(REPO / "app/hello-tls.sh", directory, output, front.pebble.directory, IP),
            ],
            env=front.env(),
            capture_output=True,
            text=True,
        )
        assert recorded.returncode == 0, recorded.stderr
        when = f"{retry_at:%Y-%m-%d %H:%M:%S} UTC"
        assert recorded.stderr == (
            f"hello-tls: FAILED: rate limited: {front.pebble.directory} accepts no new request"
            f" for {IP} before {when}: {detail}\n"
        )
        asked = front.pebble.log.read_text()
        result = front.tls("obtain", HELLO_TLS_FORCE_RENEWAL="1")
        assert result.returncode == 1
        assert f"the CA answered with a rate limit; not asking it before {when}" in result.stderr
        assert front.pebble.log.read_text() == asked
    finally:
        for state in ("failures", "not-before"):
            (directory / state).unlink(missing_ok=True)


def test_failed_attempts_are_paced_within_the_cas_hourly_limit(front):
    """Five failed attempts in the last hour, the oldest 6 s short of an hour old (as earlier
    runs leave them: one time a line): the next attempt waits for it to age out, as Let's
    Encrypt's 5 failed authorizations per identifier per account per hour require, then asks the
    CA (pebble, real) and gets a certificate."""
    directory = certificate_directory(front)
    now = int(time.time())
    earlier = (now - 3600 + 6, now - 2400, now - 1200, now - 600, now - 5)
    (directory / "failures").write_text("".join(f"{when}\n" for when in earlier))
    started = time.monotonic()
    result = front.tls("obtain", HELLO_TLS_FORCE_RENEWAL="1", HELLO_TLS_ATTEMPTS="1")
    waited = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "5 failed attempts in the last 3600 s" in result.stdout
    assert waited >= 5
    assert not (directory / "failures").exists()
    assert front.tls("activate").returncode == 0


# Certificates from a second pebble live LIFETIME seconds, and hello-tls serves one only while it
# has more than LEAD left (8 hours on the VM, HELLO_TLS_LEAD here).
LIFETIME, LEAD = 30, 20


def serve_the_fronts_own_certificate(front):
    """Back to the certificate of the front's CA, still valid, so no new one is issued."""
    assert front.tls("obtain").returncode == 0
    assert front.tls("activate").returncode == 0
    wait_for(lambda: http_get(front.http_port, "/")[0] == 301, ":80 redirecting again")


@contextlib.contextmanager
def serving_a_short_lived_certificate(front, workdir: Path):
    """Serves a certificate from a second pebble that issues them for LIFETIME seconds; yields
    its metadata server, the pebble and when the certificate expires (epoch seconds)."""
    short = Pebble(workdir, validation_port=front.http_port, certificate_lifetime=LIFETIME)
    short.start()
    metadata = front.metadata(pebble=short)
    try:
        assert front.tls("obtain", metadata, HELLO_TLS_LEAD=str(LEAD)).returncode == 0
        activated = front.tls("activate", metadata, HELLO_TLS_LEAD=str(LEAD))
        assert "serving https://" in activated.stdout, activated.stderr
        pem = front.path("/etc/hello-tls/fullchain.pem").read_bytes()
        expires = x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()
        assert expires < time.time() + LIFETIME
        wait_for(lambda: http_get(front.http_port, "/")[0] == 301, ":80 redirecting")
        yield metadata, short, expires
    finally:
        metadata.stop()
        short.stop()


def test_a_certificate_is_not_served_in_its_last_hours_while_the_ca_refuses(front, tmp_path):
    """The CA stops answering (pebble stopped: connection refused) for longer than the served
    certificate has left. obtain keeps retrying, but never past the moment the certificate
    reaches the lead time: it ends the run then, and activate (hello-cert.service's
    ExecStopPost, run here by the test as systemd does once obtain exits) turns HTTPS off, so
    :80 serves the greeting before the certificate expires. Real: pebble issuing 30-second
    certificates (its certificateValidityPeriod), certbot, nginx; only the lead is scaled."""
    with serving_a_short_lived_certificate(front, tmp_path / "pebble") as (metadata, ca, expires):
        wait_for(
            lambda: served_certificate(front.https_port).not_valid_after_utc.timestamp() == expires,
            "nginx to serve the short-lived certificate",
        )
        ca.stop()
        retrying = subprocess.run(
            ["bash", str(REPO / "app/hello-tls.sh"), "obtain"],
            env=front.env(metadata, HELLO_TLS_FORCE_RENEWAL="1", HELLO_TLS_LEAD=str(LEAD)),
            capture_output=True,
            text=True,
            timeout=LIFETIME,
        )
        ended = time.time()
        assert retrying.returncode == 1
        assert "stopping the retries: the served certificate expires within 20 s" in (
            retrying.stderr
        )
        assert expires - LEAD - 2 <= ended < expires
        off = front.tls("activate", metadata, HELLO_TLS_LEAD=str(LEAD))
        assert off.returncode == 0, off.stderr
        assert f"no valid certificate for {IP} (one valid for more than 20 s)" in off.stdout
        wait_for(lambda: http_get(front.http_port, "/")[:2] == (200, GREETING), ":80 serving")
        wait_for(lambda: not port_open(front.https_port), ":443 closed")
        assert time.time() < expires
    serve_the_fronts_own_certificate(front)


def test_nginx_starts_without_https_after_the_certificate_expired_while_stopped(front, tmp_path):
    """nginx stops with HTTPS on (a VM stopped for longer than the certificate's life) and
    starts again as nginx.service does with the drop-in the VM installs: its ExecStartPre
    commands (app/nginx-hardening.conf) first. :80 serves the greeting and :443 stays closed,
    without the metadata server or the CA (both may be unreachable at boot)."""
    with serving_a_short_lived_certificate(front, tmp_path / "pebble") as (_, _, expires):
        subprocess.run([*front.nginx, "-s", "stop"], check=True)
    try:
        wait_for(lambda: not port_open(front.http_port), "nginx to stop")
        time.sleep(max(0.0, expires - LEAD + 1 - time.time()))
        drop_in = (REPO / "app/nginx-hardening.conf").read_text()
        for line in drop_in.splitlines():
            if line.startswith("ExecStartPre="):
                argv = shlex.split(line.removeprefix("ExecStartPre=").lstrip("+-!@:"))
                assert argv[0] == "/usr/local/sbin/hello-tls"
                subprocess.run(
                    ["bash", REPO / "app/hello-tls.sh", *argv[1:]],
                    # No metadata server answers here: the check must not need one.
                    env=front.env(
                        HELLO_TLS_LEAD=str(LEAD), HELLO_TLS_METADATA="http://127.0.0.1:9"
                    ),
                    check=True,
                )
        subprocess.run([*front.nginx, "-q"], check=True)
        wait_for(lambda: http_get(front.http_port, "/")[:2] == (200, GREETING), ":80 serving")
        assert not port_open(front.https_port)
    finally:
        if not port_open(front.http_port):
            subprocess.run([*front.nginx, "-q"], check=False)
    serve_the_fronts_own_certificate(front)


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_nginx_with_its_drop_in_scores_5_or_less_in_systemd_analyze_security(tmp_path):
    """Debian's nginx.service with the drop-in the VM installs, as systemd merges them. The units
    in app/ are tests/stack/test_units.py's."""
    debian = Path("/lib/systemd/system/nginx.service")
    if not debian.exists():
        pytest.skip("Debian's nginx.service is not installed")
    path = tmp_path / "nginx.service"
    path.write_text(debian.read_text() + (REPO / "app/nginx-hardening.conf").read_text())
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=50", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    score = float(result.stdout.rsplit("Overall exposure level for", 1)[1].split()[1])
    assert score <= 5.0


@pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("certutil")), reason="needs chromium, certutil"
)
def test_chromium_trusting_the_ca_root_shows_the_greeting(front, tmp_path):
    """The browser half of tests/e2e/test_https.py, against the same front on the host."""
    url = f"https://{IP}:{front.https_port}/"
    root = front.pebble.root_pem()
    assert GREETING in chromium(tmp_path / "trusting", "--dump-dom", url, trusting=root)
    assert GREETING not in chromium(tmp_path / "untrusting", "--dump-dom", url)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "host-https-screenshot.png"
    chromium(tmp_path / "screenshot", f"--screenshot={shot}", url, trusting=root)
    assert shot.stat().st_size > 0
