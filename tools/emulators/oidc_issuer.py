"""A local OpenID Connect issuer shaped like CircleCI's, for Workload Identity Federation tests.

CircleCI's issuer for an organization is `https://oidc.circleci.com/org/<org-id>`; like every
OIDC issuer it publishes `<issuer>/.well-known/openid-configuration`, whose `jwks_uri` holds the
public keys that verify its RS256 ID tokens. This serves the same two documents on loopback under
the same paths, for an issuer URL the caller names (CircleCI's own, so the tokens carry the real
`iss`), and signs tokens with a throwaway RSA key made here. Whoever fetches the documents maps
the public origin to `base_url` (the STS emulator's `url_overrides`).
"""

from __future__ import annotations

import base64
import json
import secrets
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from emulators.loopback import LoopbackService

CIRCLECI_OIDC_ORIGIN = "https://oidc.circleci.com"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _int_b64url(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


class OidcIssuerEmulator(LoopbackService):
    """One issuer URL, one signing key; `mint(claims)` returns a compact RS256 JWT."""

    def __init__(self, issuer: str):
        self.issuer = issuer.rstrip("/")
        self.key_id = secrets.token_hex(8)
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/.well-known/jwks-pub.json"

    def jwks(self) -> dict:
        numbers = self._key.public_key().public_numbers()
        key = {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.key_id}
        return {"keys": [key | {"n": _int_b64url(numbers.n), "e": _int_b64url(numbers.e)}]}

    def discovery(self) -> dict:
        return {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    def mint(self, claims: dict, key: rsa.RSAPrivateKey | None = None) -> str:
        """Signs `claims` with this issuer's key (or `key`, to forge a token it never issued)."""
        header = b64url(json.dumps({"alg": "RS256", "kid": self.key_id, "typ": "JWT"}).encode())
        payload = b64url(json.dumps(claims).encode())
        signature = (key or self._key).sign(
            f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256()
        )
        return f"{header}.{payload}.{b64url(signature)}"

    def documents(self) -> dict[str, dict]:
        """What is served, by path."""
        path = urlsplit(self.issuer).path
        return {
            f"{path}/.well-known/openid-configuration": self.discovery(),
            urlsplit(self.jwks_uri).path: self.jwks(),
        }


class _Handler(BaseHTTPRequestHandler):
    emulator: OidcIssuerEmulator
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:
        pass

    def do_GET(self) -> None:
        document = self.emulator.documents().get(self.path.split("?")[0])
        status = HTTPStatus.OK if document is not None else HTTPStatus.NOT_FOUND
        data = json.dumps(document if document is not None else {"error": "not found"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


OidcIssuerEmulator.handler = _Handler
