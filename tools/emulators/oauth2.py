"""A local OAuth 2.0 token endpoint for service-account keys (the JWT-bearer grant, RFC 7523).

Test infrastructure: it stands in for https://oauth2.googleapis.com/token so the real `gcloud`
can run `auth activate-service-account --key-file=KEY` against loopback (gcloud's
`auth/token_host` property points it here). What it checks is what Google checks:

  * `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` and an `assertion`;
  * the assertion is a compact JWS, `alg: RS256`, whose `kid` names a key registered for the
    issuer (`iss`, the service account's email), and whose signature verifies with that key;
  * `aud` is Google's token URI (what google-auth signs for) or this endpoint's own URL;
  * `iat`/`exp` are present, not expired, and at most an hour apart.

It answers like Google: an access token (`scope` in the assertion) or an ID token
(`target_audience`, which gcloud also asks for on activation), or HTTP 400 `invalid_grant`.
Tokens carry the principal and the scopes they were issued for: `verify` returns them as an
emulators.iam.Identity, and every emulated API takes it as its `verify_token`, checking the
scope and the principal's permissions (emulators/iam.py). Keys are generated in the test (never
a real key); tokens are random and live in memory only.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from emulators.iam import Identity
from emulators.loopback import LoopbackService

GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MAX_LIFETIME = 3600
CLOCK_SKEW = 300


class GrantError(Exception):
    """Becomes an RFC 6749 error response."""

    def __init__(self, error: str, description: str):
        super().__init__(description)
        self.error = error
        self.description = description


@dataclass
class Issued:
    principal: str
    scopes: tuple[str, ...]
    expires_at: float


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_service_account_key(
    email: str, project: str, token_uri: str, key_id: str | None = None
) -> tuple[dict, str]:
    """A throwaway key in Google's JSON key-file format, and its public key (PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    key_file = {
        "type": "service_account",
        "project_id": project,
        "private_key_id": key_id or secrets.token_hex(20),
        "private_key": private_pem,
        "client_email": email,
        "client_id": str(secrets.randbelow(10**20)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "universe_domain": "googleapis.com",
    }
    return key_file, public_pem


class OAuth2Emulator(LoopbackService):
    """Registered public keys in, bearer tokens out."""

    def __init__(self, token_lifetime: int = MAX_LIFETIME):
        self.token_lifetime = token_lifetime
        self.lock = threading.Lock()
        self.keys: dict[tuple[str, str], rsa.RSAPublicKey] = {}  # (email, key id) -> key
        self.tokens: dict[str, Issued] = {}
        self.grants: list[dict] = []  # verified assertion claims, for tests to inspect
        self.rejections: list[str] = []

    def register_key(self, email: str, key_id: str, public_pem: str) -> None:
        public = serialization.load_pem_public_key(public_pem.encode())
        assert isinstance(public, rsa.RSAPublicKey)
        with self.lock:
            self.keys[(email, key_id)] = public

    def issue(self, principal: str, scopes: tuple[str, ...] = ()) -> str:
        """A token for `principal` without the JWT grant: for tests that seed state directly."""
        token = "ya29.local-" + secrets.token_urlsafe(32)
        with self.lock:
            self.tokens[token] = Issued(principal, scopes, time.time() + self.token_lifetime)
        return token

    def verify(self, token: str) -> Identity | None:
        """Who an access token was issued to, and for which scopes, if it is ours and unexpired."""
        with self.lock:
            issued = self.tokens.get(token)
        if issued is None or issued.expires_at < time.time():
            return None
        return Identity(issued.principal, issued.scopes)

    # -- the grant ---------------------------------------------------------------------------

    def grant(self, form: dict[str, str]) -> dict:
        if form.get("grant_type") != JWT_BEARER:
            raise GrantError(
                "unsupported_grant_type", f"Invalid grant_type: {form.get('grant_type')}"
            )
        claims = self._verify_assertion(form.get("assertion") or "")
        with self.lock:
            self.grants.append(claims)
        if claims.get("target_audience"):
            return {"id_token": self._id_token(claims)}
        token = self.issue(claims["iss"], tuple((claims.get("scope") or "").split()))
        return {"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"}

    def _verify_assertion(self, assertion: str) -> dict:
        try:
            header_b64, claims_b64, signature_b64 = assertion.split(".")
            header = json.loads(_b64url_decode(header_b64))
            claims = json.loads(_b64url_decode(claims_b64))
            signature = _b64url_decode(signature_b64)
        except (ValueError, binascii.Error):
            raise GrantError("invalid_grant", "Invalid JWT: not a compact JWS.") from None
        if header.get("alg") != "RS256":
            raise GrantError("invalid_grant", f"Invalid JWT: alg {header.get('alg')} not RS256.")
        with self.lock:
            key = self.keys.get((claims.get("iss"), header.get("kid")))
        if key is None:
            raise GrantError("invalid_grant", "Invalid JWT Signature.")  # Google's wording
        try:
            key.verify(
                signature,
                f"{header_b64}.{claims_b64}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            raise GrantError("invalid_grant", "Invalid JWT Signature.") from None
        if claims.get("aud") not in (GOOGLE_TOKEN_URI, self._own_url()):
            raise GrantError("invalid_grant", f"Invalid JWT: audience {claims.get('aud')!r}.")
        now = time.time()
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int | float) or not isinstance(exp, int | float):
            raise GrantError("invalid_grant", "Invalid JWT: iat and exp are required.")
        if iat > now + CLOCK_SKEW or exp < now - CLOCK_SKEW or exp - iat > MAX_LIFETIME:
            raise GrantError(
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
                "timeframe. Check your iat and exp values in the JWT claim.",
            )
        return claims

    def _id_token(self, claims: dict) -> str:
        # Shaped like Google's (a JWT gcloud decodes for its expiry); signed by nobody, since
        # nothing in these tests verifies ID tokens.
        now = int(time.time())
        header = _b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        payload = {
            "iss": "https://accounts.google.com",
            "aud": claims["target_audience"],
            "email": claims["iss"],
            "iat": now,
            "exp": now + self.token_lifetime,
        }
        return f"{header}.{_b64url(json.dumps(payload).encode())}."

    # -- HTTP --------------------------------------------------------------------------------

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> str:
        super().serve(host, port)
        return self.token_url

    def _own_url(self) -> str | None:
        return self.token_url if self._server else None

    @property
    def token_url(self) -> str:
        return self.base_url + "/token"


class _Handler(BaseHTTPRequestHandler):
    emulator: OAuth2Emulator
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode() if length else ""
        form = {k: v[0] for k, v in parse_qs(raw).items()}
        if self.path.split("?")[0] != "/token":
            status, payload = HTTPStatus.NOT_FOUND, {"error": "not_found"}
        else:
            try:
                status, payload = HTTPStatus.OK, self.emulator.grant(form)
            except GrantError as error:
                with self.emulator.lock:
                    self.emulator.rejections.append(error.description)
                status = HTTPStatus.BAD_REQUEST
                payload = {"error": error.error, "error_description": error.description}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


OAuth2Emulator.handler = _Handler
