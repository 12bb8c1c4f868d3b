"""The local stand-in for Let's Encrypt: Debian's `pebble`, Let's Encrypt's own ACME test server.

Real: pebble (the ACME protocol, http-01 validation by connecting to the identifier's IP, the
certificate chain it signs). Not like production: pebble makes a new root at every start, issues
certificates for years, and (version 2.4 in Debian 12) has neither profiles nor renewal info
(ARI); docs/https.md says what only Let's Encrypt itself can show.

Pebble listens on loopback. Its ACME API is HTTPS with a certificate made here for 127.0.0.1 (the
host's view) and the qemu user network's gateway (the guest's view of the host), signed by a CA
made here too: the VM gets that CA as `acme-directory-ca`. It validates http-01 by connecting to
<identifier IP>:`validation_port`, which on this host is the port forwarded to the guest's :80.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from localvm.vm import NETWORK, free_port


def _listener_certificates(ips: list[str]) -> tuple[bytes, bytes, bytes]:
    """(CA certificate, server certificate, server key), PEM, for pebble's own HTTPS."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "local ACME server CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost")]
                + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return (
        ca.public_bytes(serialization.Encoding.PEM),
        server.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


class Pebble:
    """One pebble process on loopback; start() and stop() may be called again (a new root)."""

    def __init__(
        self, workdir: Path, *, validation_port: int, certificate_lifetime: int | None = None
    ) -> None:
        """certificate_lifetime: seconds a certificate is valid (pebble's default: 5 years)."""
        self.workdir = Path(workdir)
        self.validation_port = validation_port
        self.port = free_port()
        self.management_port = free_port()
        self.process: subprocess.Popen | None = None
        self.workdir.mkdir(parents=True, exist_ok=True)
        ca, cert, key = _listener_certificates(["127.0.0.1", NETWORK["gateway"]])
        self.listener_ca_pem = ca.decode()
        (self.workdir / "listener-ca.pem").write_bytes(ca)
        (self.workdir / "listener.pem").write_bytes(cert)
        (self.workdir / "listener-key.pem").write_bytes(key)
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.port}",
                "managementListenAddress": f"127.0.0.1:{self.management_port}",
                "certificate": str(self.workdir / "listener.pem"),
                "privateKey": str(self.workdir / "listener-key.pem"),
                "httpPort": validation_port,
                "tlsPort": free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }
        }
        if certificate_lifetime is not None:
            config["pebble"]["certificateValidityPeriod"] = certificate_lifetime
        (self.workdir / "pebble-config.json").write_text(json.dumps(config, indent=1))

    @property
    def directory(self) -> str:
        """The directory URL as this host reaches it."""
        return f"https://127.0.0.1:{self.port}/dir"

    @property
    def guest_directory(self) -> str:
        """The directory URL as the local VM reaches it (qemu forwards the gateway to loopback)."""
        return f"https://{NETWORK['gateway']}:{self.port}/dir"

    @property
    def log(self) -> Path:
        return self.workdir / "pebble.log"

    def attributes(self, directory: str | None = None) -> dict[str, str]:
        """The instance metadata that points the VM at this CA (what acmeDirectory* render to)."""
        return {
            "acme-directory": directory or self.guest_directory,
            "acme-directory-ca": self.listener_ca_pem,
        }

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.workdir / "listener-ca.pem"))

    def start(self, timeout: float = 30) -> Pebble:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            # No artificial validation delay and no injected bad nonces: the protocol stays real,
            # the test just does not wait for chaos meant for client developers.
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": "0",
        }
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                ["pebble", "-config", str(self.workdir / "pebble-config.json")],
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.directory, timeout=2, context=self._context()):
                    return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"pebble did not start:\n{self.log.read_text()}") from None
                time.sleep(0.2)

    def root_pem(self) -> str:
        """The root that signs the certificates pebble issues (new at every start)."""
        url = f"https://127.0.0.1:{self.management_port}/roots/0"
        with urllib.request.urlopen(url, timeout=10, context=self._context()) as response:
            return response.read().decode()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None
