"""Google's Security Token Service and IAM Credentials API, as Workload Identity Federation uses
them: an external OIDC token in, a service account's access token out.

Test infrastructure standing in for `https://sts.googleapis.com/v1/token` and
`https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/SA:generateAccessToken`.
The rules are Google's, from the API reference (the sts.v1, iamcredentials.v1 and iam.v1
discovery documents in google-api-python-client) and the Workload Identity Federation guide:

token exchange (`POST /v1/token`, form-encoded, no Authorization header)
  * `grant_type` token-exchange, `requested_token_type` access_token, `subject_token_type` jwt or
    id_token, a `scope`, and an `audience` naming a known provider as
    `//iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/providers/X`;
  * the JWT's header has `kid` and `alg` RS256; its `iss` is the provider's issuer URI; the
    signature verifies against a key in the issuer's JWKS, found through
    `<iss>/.well-known/openid-configuration`;
  * `iat` is in the past and at most 24 hours old, `exp` is in the future;
  * `aud` is one of the provider's allowed audiences, or, when it has none, the provider's full
    resource name with `//iam.googleapis.com/` or `https://iam.googleapis.com/` in front;
  * the attribute mapping is evaluated as CEL over `assertion` (the JWT's claims), then the
    attribute condition over `assertion`, `google` and `attribute`; the condition must be true;
  * `google.subject` is a string of at most 127 bytes; all mapped attributes together at most
    8 KB.

generateAccessToken (`POST /v1/projects/-/serviceAccounts/EMAIL:generateAccessToken`, JSON)
  * a bearer token this STS issued; the `-` project wildcard; at least one `scope`; a lifetime of
    at most 3600 s;
  * the federated identity needs iam.serviceAccounts.getAccessToken on the service account
    (emulators/iam.py, the policy the bootstrap grants: roles/iam.workloadIdentityUser bound to
    its principal `principal://iam.googleapis.com/POOL/subject/SUBJECT` or to a principal set
    it belongs to, `principalSet://iam.googleapis.com/POOL/attribute.NAME/VALUE`,
    `.../group/GROUP`, `.../*`).

The provider's configuration is checked when it is added, with the limits of the iam.v1
WorkloadIdentityPoolProvider schema (mapping keys, expression lengths, `google.subject` required
for OIDC). CEL is evaluated by cel-python, not by code here. Access tokens for the service account
come from `issue_access_token` (the OAuth emulator's `issue`), so the Deployment Manager emulator
accepts exactly those; the federated token itself authorizes nothing but impersonation.

Issuer URLs are fetched over HTTP after `url_overrides` maps their origin to loopback (the JWT
keeps CircleCI's real `https://oidc.circleci.com/...` issuer).
"""

from __future__ import annotations

import binascii
import json
import re
import secrets
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote

import celpy
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from emulators.iam import Identity, PermissionDenied, Policy
from emulators.loopback import LoopbackService
from emulators.oidc_issuer import b64url_decode

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_TOKEN_TYPES = (
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:id_token",
)
SUBJECT_MAX_BYTES = 127
ATTRIBUTES_MAX_BYTES = 8 * 1024
MAPPING_EXPRESSION_MAX = 2048
CONDITION_MAX = 4096
MAX_CUSTOM_ATTRIBUTES = 50
MAX_TOKEN_AGE = 24 * 3600
MAX_LIFETIME = 3600
PROVIDER_NAME = re.compile(
    r"^projects/[0-9]+/locations/global/workloadIdentityPools/[a-z0-9-]{4,32}"
    r"/providers/[a-z0-9-]{4,32}$"
)
ATTRIBUTE_KEY = re.compile(r"^(google\.(subject|groups)|attribute\.[a-z0-9_]{1,100})$")


class ExchangeError(Exception):
    """Becomes an OAuth 2.0 error response (RFC 6749 5.2), as STS answers."""

    def __init__(self, error: str, description: str):
        super().__init__(description)
        self.error = error
        self.description = description


class ApiError(Exception):
    """Becomes a Google API error body: {"error": {"code", "message", "status"}}."""

    def __init__(self, code: int, status: str, message: str):
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message


@dataclass
class Provider:
    name: str
    issuer_uri: str
    allowed_audiences: list[str]
    attribute_mapping: dict[str, str]
    attribute_condition: str | None
    programs: dict[str, celpy.Runner] = field(default_factory=dict)
    condition: celpy.Runner | None = None

    @property
    def pool(self) -> str:
        return self.name.split("/providers/")[0]


@dataclass
class FederatedToken:
    principal: str
    principal_sets: frozenset[str]
    expires_at: float


def parse_attribute_mapping(flag_value: str) -> dict[str, str]:
    """gcloud's `--attribute-mapping` value (KEY=EXPR,...) as the API's attributeMapping map."""
    mapping = {}
    for item in flag_value.split(","):
        key, sep, expression = item.partition("=")
        if not sep:
            raise ValueError(f"attribute mapping item {item!r} is not KEY=EXPRESSION")
        mapping[key.strip()] = expression.strip()
    return mapping


class WorkloadIdentityEmulator(LoopbackService):
    """STS at /v1/token and IAM Credentials' generateAccessToken, one listener."""

    def __init__(
        self,
        issue_access_token: Callable[[str, tuple[str, ...]], str],
        policy: Policy,
        url_overrides: dict[str, str] | None = None,
    ):
        self.issue_access_token = issue_access_token
        self.policy = policy
        self.url_overrides = dict(url_overrides or {})
        self.lock = threading.Lock()
        self.providers: dict[str, Provider] = {}
        self.tokens: dict[str, FederatedToken] = {}
        self.rejections: list[str] = []  # every refusal's message, for tests to inspect
        self.exchanges: list[dict] = []  # accepted exchanges: claims and mapped attributes
        self.impersonations: list[tuple[str, str]] = []  # (federated principal, sa email)
        self._cel = celpy.Environment()

    # -- configuration (what the IAM API's create/update and setIamPolicy would hold) ---------

    def add_provider(
        self,
        name: str,
        issuer_uri: str,
        attribute_mapping: dict[str, str],
        attribute_condition: str | None = None,
        allowed_audiences: list[str] | tuple[str, ...] = (),
    ) -> Provider:
        if not PROVIDER_NAME.match(name):
            raise ValueError(f"provider name {name!r} is not a workload identity pool provider")
        if "google.subject" not in attribute_mapping:
            raise ValueError("an OIDC provider's attribute mapping must map google.subject")
        custom = [k for k in attribute_mapping if k.startswith("attribute.")]
        if len(custom) > MAX_CUSTOM_ATTRIBUTES:
            raise ValueError(f"at most {MAX_CUSTOM_ATTRIBUTES} custom attributes")
        provider = Provider(
            name, issuer_uri, list(allowed_audiences), attribute_mapping, attribute_condition
        )
        for key, expression in attribute_mapping.items():
            if not ATTRIBUTE_KEY.match(key):
                raise ValueError(f"attribute mapping key {key!r}: keys may use [a-z0-9_] only")
            if len(expression) > MAPPING_EXPRESSION_MAX:
                raise ValueError(f"attribute mapping for {key} exceeds 2048 characters")
            provider.programs[key] = self._compile(expression, f"attribute mapping for {key}")
        if attribute_condition:
            if len(attribute_condition) > CONDITION_MAX:
                raise ValueError("attribute condition exceeds 4096 characters")
            provider.condition = self._compile(attribute_condition, "attribute condition")
        with self.lock:
            self.providers[name] = provider
        return provider

    def _compile(self, expression: str, what: str) -> celpy.Runner:
        try:
            return self._cel.program(self._cel.compile(expression))
        except celpy.CELParseError as error:
            raise ValueError(f"{what} is not valid CEL: {error}") from None

    # -- STS ------------------------------------------------------------------------------------

    def exchange(self, form: dict[str, str]) -> dict:
        if form.get("grant_type") != TOKEN_EXCHANGE:
            raise ExchangeError("unsupported_grant_type", "Unsupported grant_type.")
        if form.get("requested_token_type") != ACCESS_TOKEN_TYPE:
            raise ExchangeError("invalid_request", "Invalid requested_token_type.")
        if form.get("subject_token_type") not in JWT_TOKEN_TYPES:
            raise ExchangeError("invalid_request", "Invalid subject_token_type.")
        if not form.get("scope"):
            raise ExchangeError("invalid_request", "Scope is required.")
        audience = form.get("audience") or ""
        with self.lock:
            provider = self.providers.get(audience.removeprefix("//iam.googleapis.com/"))
        if not audience.startswith("//iam.googleapis.com/") or provider is None:
            raise ExchangeError(
                "invalid_target",
                'The target service indicated by the "audience" parameters is invalid. This '
                "might either be because the pool or provider is disabled or deleted or because "
                "it doesn't exist.",
            )
        claims = self._verify_jwt(provider, form.get("subject_token") or "")
        google, attributes = self._map(provider, claims)
        if provider.condition is not None:
            allowed = self._evaluate(
                provider.condition,
                {"assertion": claims, "google": google, "attribute": attributes},
                "attribute condition",
            )
            if not isinstance(allowed, celpy.celtypes.BoolType):
                raise ExchangeError("invalid_grant", "The attribute condition must return a bool.")
            if not allowed:
                raise ExchangeError(
                    "unauthorized_client",
                    "The given credential is rejected by the attribute condition.",
                )
        principal = f"principal://iam.googleapis.com/{provider.pool}/subject/{google['subject']}"
        sets = {f"principalSet://iam.googleapis.com/{provider.pool}/*"}
        sets |= {
            f"principalSet://iam.googleapis.com/{provider.pool}/attribute.{k}/{v}"
            for k, v in attributes.items()
            if isinstance(v, str)
        }
        sets |= {
            f"principalSet://iam.googleapis.com/{provider.pool}/group/{g}"
            for g in google.get("groups", [])
        }
        expires_in = int(min(MAX_LIFETIME, claims["exp"] - time.time()))
        token = "ya29.d.federated-" + secrets.token_urlsafe(32)
        with self.lock:
            self.tokens[token] = FederatedToken(
                principal, frozenset(sets), time.time() + expires_in
            )
            self.exchanges.append({"claims": claims, "google": google, "attribute": attributes})
        return {
            "access_token": token,
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": expires_in,
        }

    def _verify_jwt(self, provider: Provider, token: str) -> dict:
        try:
            header_b64, claims_b64, signature_b64 = token.split(".")
            header = json.loads(b64url_decode(header_b64))
            claims = json.loads(b64url_decode(claims_b64))
            signature = b64url_decode(signature_b64)
        except (ValueError, binascii.Error):
            raise ExchangeError("invalid_grant", "Unable to parse the ID Token.") from None
        if not header.get("kid"):
            raise ExchangeError("invalid_grant", "The JWT header is missing the kid field.")
        if header.get("alg") != "RS256":
            # ES256 is also valid at Google; nothing here mints it, so it is not verified here.
            raise ExchangeError("invalid_grant", f"Unsupported JWT algorithm {header.get('alg')}.")
        if claims.get("iss") != provider.issuer_uri:
            raise ExchangeError(
                "invalid_grant",
                f"The issuer in ID Token {claims.get('iss')} does not match the expected ones: "
                f"{provider.issuer_uri}.",
            )
        key = self._issuer_key(provider.issuer_uri, header["kid"])
        try:
            key.verify(
                signature,
                f"{header_b64}.{claims_b64}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            raise ExchangeError("invalid_grant", "Invalid JWT signature.") from None
        now = time.time()
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int | float) or not isinstance(exp, int | float):
            raise ExchangeError("invalid_grant", "The ID Token must carry iat and exp.")
        if iat > now or iat < now - MAX_TOKEN_AGE:
            raise ExchangeError("invalid_grant", f"ID Token issued at {iat} is stale to sign-in.")
        if exp <= now:
            raise ExchangeError("invalid_grant", f"ID Token expired at {exp}.")
        audiences = claims.get("aud")
        audiences = audiences if isinstance(audiences, list) else [audiences]
        expected = provider.allowed_audiences or [
            f"//iam.googleapis.com/{provider.name}",
            f"https://iam.googleapis.com/{provider.name}",
        ]
        if not set(audiences) & set(expected):
            raise ExchangeError(
                "invalid_grant",
                f"The audience in ID Token {audiences} does not match the expected audience.",
            )
        return claims

    def _issuer_key(self, issuer: str, kid: str) -> rsa.RSAPublicKey:
        discovery = self._fetch_json(f"{issuer}/.well-known/openid-configuration")
        if discovery.get("issuer") != issuer:
            raise ExchangeError(
                "invalid_grant", "The issuer's discovery document names another issuer."
            )
        for jwk in self._fetch_json(discovery["jwks_uri"]).get("keys", []):
            if jwk.get("kid") == kid and jwk.get("kty") == "RSA":
                n = int.from_bytes(b64url_decode(jwk["n"]), "big")
                e = int.from_bytes(b64url_decode(jwk["e"]), "big")
                return rsa.RSAPublicNumbers(e, n).public_key()
        raise ExchangeError("invalid_grant", f"No key with kid {kid} in the issuer's JWKS.")

    def _fetch_json(self, url: str) -> dict:
        for origin, local in self.url_overrides.items():
            if url.startswith(origin + "/"):
                url = local + url[len(origin) :]
        if not url.startswith("http://127."):
            raise ExchangeError("invalid_grant", f"Unable to fetch {url}: loopback only here.")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())
        except OSError as error:
            raise ExchangeError("invalid_grant", f"Unable to fetch {url}: {error}") from None

    def _map(self, provider: Provider, claims: dict) -> tuple[dict, dict]:
        google: dict = {}
        attributes: dict = {}
        for key, program in provider.programs.items():
            value = _plain(self._evaluate(program, {"assertion": claims}, f"mapping {key}"))
            if key.startswith("google."):
                google[key.removeprefix("google.")] = value
            else:
                attributes[key.removeprefix("attribute.")] = value
        subject = google.get("subject")
        if not isinstance(subject, str) or not subject:
            raise ExchangeError("invalid_grant", "The mapped attribute google.subject is empty.")
        if len(subject.encode()) > SUBJECT_MAX_BYTES:
            raise ExchangeError(
                "invalid_grant",
                "The size of mapped attribute google.subject exceeds the 127 bytes limit. Either "
                "modify your attribute mapping or the incoming assertion to produce a mapped "
                "attribute that is less than 127 bytes.",
            )
        if len(json.dumps([google, attributes]).encode()) > ATTRIBUTES_MAX_BYTES:
            raise ExchangeError("invalid_grant", "The mapped attributes exceed 8KB.")
        return google, attributes

    def _evaluate(self, program: celpy.Runner, activation: dict, what: str):
        try:
            result = program.evaluate({k: celpy.json_to_cel(v) for k, v in activation.items()})
        except celpy.CELEvalError as error:
            raise ExchangeError("invalid_grant", f"Error evaluating the {what}: {error}") from None
        if isinstance(result, celpy.CELEvalError):
            raise ExchangeError("invalid_grant", f"Error evaluating the {what}: {result}")
        return result

    # -- IAM Credentials ------------------------------------------------------------------------

    def generate_access_token(self, name: str, body: dict, bearer: str | None) -> dict:
        with self.lock:
            federated = self.tokens.get(bearer or "")
        if federated is None or federated.expires_at < time.time():
            raise ApiError(
                401, "UNAUTHENTICATED", "Request had invalid authentication credentials."
            )
        project, _, email = name.removeprefix("projects/").partition("/serviceAccounts/")
        if project != "-":
            raise ApiError(400, "INVALID_ARGUMENT", "The project must be the - wildcard.")
        scopes = body.get("scope")
        if not isinstance(scopes, list) or not scopes:
            raise ApiError(400, "INVALID_ARGUMENT", "At least one scope is required.")
        lifetime = str(body.get("lifetime") or "3600s")
        if not re.fullmatch(r"[0-9]+s", lifetime) or int(lifetime[:-1]) > MAX_LIFETIME:
            raise ApiError(400, "INVALID_ARGUMENT", f"Lifetime {lifetime} is not at most 3600s.")
        caller = Identity(federated.principal, member_sets=federated.principal_sets)
        owner = email.partition("@")[2].removesuffix(".iam.gserviceaccount.com")
        try:
            self.policy.check_permission(
                caller,
                "iam.serviceAccounts.getAccessToken",
                f"projects/{owner}/serviceAccounts/{email}",
            )
        except PermissionDenied:
            raise ApiError(
                403,
                "PERMISSION_DENIED",
                "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may "
                "not exist).",
            ) from None
        with self.lock:
            self.impersonations.append((federated.principal, email))
        expires = datetime.fromtimestamp(time.time() + int(lifetime[:-1]), UTC)
        return {
            "accessToken": self.issue_access_token(email, tuple(scopes)),
            "expireTime": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


def _plain(value):
    """A CEL value as plain JSON-like Python (strings stay strings, lists lists)."""
    if isinstance(value, celpy.celtypes.BoolType):
        return bool(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


GENERATE_ACCESS_TOKEN = re.compile(
    r"^/v1/(projects/[^/]+/serviceAccounts/[^/:]+):generateAccessToken$"
)


class _Handler(BaseHTTPRequestHandler):
    emulator: WorkloadIdentityEmulator
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode() if length else ""
        path = unquote(self.path.split("?")[0])
        match = GENERATE_ACCESS_TOKEN.match(path)
        if path == "/v1/token":
            status, payload = self._exchange(raw)
        elif match:
            status, payload = self._generate(match.group(1), raw)
        else:
            status, payload = HTTPStatus.NOT_FOUND, {"error": {"code": 404, "status": "NOT_FOUND"}}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _exchange(self, raw: str) -> tuple[int, dict]:
        try:
            if self.headers.get("Authorization"):
                raise ExchangeError("invalid_request", "Do not send an Authorization header.")
            if (self.headers.get("Content-Type") or "").startswith("application/json"):
                form = {k: str(v) for k, v in json.loads(raw or "{}").items()}
            else:
                form = {k: v[0] for k, v in parse_qs(raw).items()}
            return HTTPStatus.OK, self.emulator.exchange(form)
        except ExchangeError as error:
            self._reject(error.description)
            return HTTPStatus.BAD_REQUEST, {
                "error": error.error,
                "error_description": error.description,
            }

    def _generate(self, name: str, raw: str) -> tuple[int, dict]:
        auth = self.headers.get("Authorization") or ""
        bearer = auth[len("Bearer ") :] if auth.startswith("Bearer ") else None
        try:
            body = json.loads(raw or "{}")
            return HTTPStatus.OK, self.emulator.generate_access_token(name, body, bearer)
        except ApiError as error:
            self._reject(error.message)
            return error.code, {
                "error": {"code": error.code, "message": error.message, "status": error.status}
            }

    def _reject(self, message: str) -> None:
        with self.emulator.lock:
            self.emulator.rejections.append(message)


WorkloadIdentityEmulator.handler = _Handler
