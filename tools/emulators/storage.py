"""Cloud Storage on loopback: the maintained `gcp-storage-emulator` (PyPI), not a server of ours.

`gcloud infra-manager deployments apply --local-source=DIR` uploads DIR to a staging bucket
before it calls the API (gcloud's command_lib/infra_manager/deploy_util.py), so a test that runs
the real gcloud needs a Cloud Storage JSON API to talk to; gcloud reaches this one through its
`api_endpoint_overrides/storage` property (`endpoint`). The Infrastructure Manager emulator reads
the uploaded sources back through the same JSON API, as Google's service reads the bucket, and
stores preview plans here for `previews export` to download.

Authorization is ours, in front of the package (which checks none): every JSON API call needs a
bearer token the verifier knows, holding the method's permission (emulators/iam.py) on the
bucket, or on the project that owns it: buckets.get storage.buckets.get, buckets.insert and
buckets.list storage.buckets.create/list on the project, objects.insert storage.objects.create,
objects.list, objects.get, objects.delete likewise. A denial is Cloud Storage's 403 body
(`error.errors[].reason` "forbidden"); a token without a scope the method accepts (the storage.v1
discovery document's: devstorage.read_only reads, cannot write) gets Cloud Storage's 403
"Provided scope(s) are not authorized". Two callers need no token, as at Google: the emulated
Infrastructure Manager (Google's service, reading sources and writing plans; it uses this
module's client) and a download URL this module signed (`download_url`, what `previews export`
hands out as a signed URL). A bucket's owner is recorded when `create_bucket` makes it (what
the bootstrap's `gcloud storage buckets create` does); a bucket made through buckets.insert has
none recorded, so only grants on the bucket itself reach it (stricter than Google).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import socket
import urllib.error
import urllib.request
from functools import partial
from http.server import HTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

from gcp_storage_emulator import server as gcs_server
from gcp_storage_emulator.storage import Storage

from emulators.deploymentmanager.api import TokenVerifier
from emulators.iam import InsufficientScopes, PermissionDenied, Policy

# JSON API paths -> (method, what it names): the bucket, the object's bucket, or the project.
_METHODS = (
    (
        re.compile(r"^/storage/v1/b$"),
        {"GET": "storage.buckets.list", "POST": "storage.buckets.insert"},
    ),
    (re.compile(r"^/storage/v1/b/([^/]+)$"), {"GET": "storage.buckets.get"}),
    (
        re.compile(r"^/(?:upload/)?storage/v1/b/([^/]+)/o$"),
        {
            "GET": "storage.objects.list",
            "POST": "storage.objects.insert",
            "PUT": "storage.objects.insert",
        },
    ),
    (
        re.compile(r"^/(?:download/)?storage/v1/b/([^/]+)/o/.+$"),
        {"GET": "storage.objects.get", "DELETE": "storage.objects.delete"},
    ),
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _RequestHandler(gcs_server.RequestHandler):
    """The emulator's handler, accepting the multipart boundary the way Cloud Storage does.

    gcloud's HTTP library (apitools) writes `multipart/related; boundary='=====...=='` with
    single quotes; Cloud Storage accepts it, but the emulator's MIME parser keeps the quotes as
    part of the boundary and fails on every upload. Unquoting that one parameter is the only
    change; parsing and storing stay the emulator's own.
    """

    cloud_storage: CloudStorage

    def parse_request(self) -> bool:
        ok = super().parse_request()
        if ok:
            denied = self.cloud_storage.refusal(self.command, self.path, self.headers)
            if denied:
                status, body = denied
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
                self.close_connection = True
                return False
        content_type = self.headers.get("Content-Type") or ""
        quoted = re.search(r"boundary='([^']*)'", content_type)
        if ok and quoted:
            del self.headers["Content-Type"]
            self.headers["Content-Type"] = content_type.replace(
                quoted.group(0), f'boundary="{quoted.group(1)}"'
            )
        return ok


class _APIThread(gcs_server.APIThread):
    handler: type[_RequestHandler]

    def run(self) -> None:
        self._httpd = HTTPServer((self._host, self._port), partial(self.handler, self._storage))
        self.is_running.set()
        self._httpd.serve_forever()


class CloudStorage:
    """An in-memory Cloud Storage emulator in a background thread, with a small client."""

    def __init__(self, verify_token: TokenVerifier | None = None, policy: Policy | None = None):
        # The emulator logs every request at INFO; tests read what they need from the API.
        logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
        self.verify_token = verify_token
        self.policy = policy
        self._service_token = secrets.token_urlsafe(24)  # the emulated Google services' own
        self._signing_key = secrets.token_bytes(32)
        self.port = _free_port()
        self._storage = Storage(use_memory_fs=True)
        self._api = _APIThread("127.0.0.1", self.port, self._storage, daemon=True)
        self._api.handler = type("Handler", (_RequestHandler,), {"cloud_storage": self})
        self._api.start()
        self._api.is_running.wait()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        """The value for gcloud's api_endpoint_overrides/storage."""
        return self.base_url + "/storage/v1/"

    def shutdown(self) -> None:
        self._api.join(timeout=1)

    # -- authorization ------------------------------------------------------------------------

    def _signature(self, path: str) -> str:
        return hmac.new(self._signing_key, path.encode(), hashlib.sha256).hexdigest()

    def refusal(self, method: str, raw_path: str, headers) -> tuple[int, dict] | None:
        """None when the request may proceed, else (status, Cloud Storage's error body)."""
        if self.verify_token is None:
            return None
        url = urlsplit(raw_path)
        path, query = unquote(url.path), parse_qs(url.query)
        if hmac.compare_digest((query.get("X-Goog-Signature") or [""])[0], self._signature(path)):
            return None
        auth = headers.get("Authorization") or ""
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if token and hmac.compare_digest(token, self._service_token):
            return None
        identity = self.verify_token(token) if token else None
        if identity is None:
            return 401, _error(401, "required", "Anonymous caller does not have access.")
        for pattern, methods in _METHODS:
            match = pattern.match(path)
            if match and method in methods:
                break
        else:
            return 403, _error(403, "forbidden", f"{method} {path} is not emulated here.")
        name = methods[method]
        if match.groups():
            resource = f"projects/_/buckets/{match.group(1)}"
            if name == "storage.buckets.get" and not self._bucket_exists(match.group(1)):
                return None  # the package answers 404
        else:
            resource = f"projects/{(query.get('project') or [''])[0]}"
        try:
            self.policy.authorize(identity, name, resource)
        except InsufficientScopes:
            # Cloud Storage's own wording (its JSON API does not use the ErrorInfo form)
            return 403, _error(403, "forbidden", "Provided scope(s) are not authorized")
        except PermissionDenied as denied:
            message = (
                f"{identity.principal} does not have {denied.permission} access to "
                f"{resource.removeprefix('projects/_/')}. {denied.message}"
            )
            return 403, _error(403, "forbidden", message)
        return None

    def _bucket_exists(self, bucket: str) -> bool:
        try:
            self._storage.get_bucket(bucket)
        except Exception:  # the package raises its own NotFound
            return False
        return True

    def create_bucket(self, bucket: str, project: str) -> None:
        """A bucket owned by `project`, as `gcloud storage buckets create` makes it."""
        body = json.dumps({"name": bucket}).encode()
        self._call("POST", f"/storage/v1/b?project={project}", body, "application/json")
        if self.policy is not None:
            self.policy.bucket_projects[bucket] = project

    # -- the JSON API, as a client (the emulated Google services) ------------------------------

    def _call(self, method: str, path: str, body: bytes | None = None, content_type: str = ""):
        request = urllib.request.Request(self.base_url + path, data=body, method=method)
        request.add_header("Authorization", f"Bearer {self._service_token}")
        if content_type:
            request.add_header("Content-Type", content_type)
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    def list(self, bucket: str, prefix: str) -> list[str]:
        """Object names under `prefix`; [] when the bucket does not exist."""
        names: list[str] = []
        token = ""
        while True:
            query = f"prefix={quote(prefix, safe='')}" + (f"&pageToken={token}" if token else "")
            try:
                page = json.loads(self._call("GET", f"/storage/v1/b/{bucket}/o?{query}"))
            except urllib.error.HTTPError as error:
                if error.code == 404:
                    return []
                raise
            names += [item["name"] for item in page.get("items") or []]
            token = page.get("nextPageToken") or ""
            if not token:
                return names

    def download_url(self, bucket: str, name: str) -> str:
        """A signed URL: anyone holding it may download the object, as with Google's."""
        signature = self._signature(f"/download/storage/v1/b/{bucket}/o/{name}")
        path = f"/download/storage/v1/b/{bucket}/o/{quote(name, safe='')}"
        return f"{self.base_url}{path}?alt=media&X-Goog-Signature={signature}"

    def read(self, bucket: str, name: str) -> bytes:
        return self._call(
            "GET", f"/download/storage/v1/b/{bucket}/o/{quote(name, safe='')}?alt=media"
        )

    def write(self, bucket: str, name: str, data: bytes, content_type: str) -> None:
        try:
            bucket_json = json.dumps({"name": bucket}).encode()
            self._call("POST", "/storage/v1/b", bucket_json, "application/json")
        except urllib.error.HTTPError as error:
            if error.code != 409:  # already exists
                raise
        self._call(
            "POST",
            f"/upload/storage/v1/b/{bucket}/o?uploadType=media&name={quote(name, safe='')}",
            data,
            content_type,
        )


def _error(code: int, reason: str, message: str) -> dict:
    return {
        "error": {
            "code": code,
            "message": message,
            "errors": [{"message": message, "domain": "global", "reason": reason}],
        }
    }
