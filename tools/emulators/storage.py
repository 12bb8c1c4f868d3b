"""Cloud Storage on loopback: the maintained `gcp-storage-emulator` (PyPI), not a server of ours.

`gcloud infra-manager deployments apply --local-source=DIR` uploads DIR to a staging bucket
before it calls the API (gcloud's command_lib/infra_manager/deploy_util.py), so a test that runs
the real gcloud needs a Cloud Storage JSON API to talk to; gcloud reaches this one through its
`api_endpoint_overrides/storage` property (`endpoint`). The Infrastructure Manager emulator reads
the uploaded sources back through the same JSON API, as Google's service reads the bucket, and
stores preview plans here for `previews export` to download.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import urllib.error
import urllib.request
from functools import partial
from http.server import HTTPServer
from urllib.parse import quote

from gcp_storage_emulator import server as gcs_server
from gcp_storage_emulator.storage import Storage


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

    def parse_request(self) -> bool:
        ok = super().parse_request()
        content_type = self.headers.get("Content-Type") or ""
        quoted = re.search(r"boundary='([^']*)'", content_type)
        if ok and quoted:
            del self.headers["Content-Type"]
            self.headers["Content-Type"] = content_type.replace(
                quoted.group(0), f'boundary="{quoted.group(1)}"'
            )
        return ok


class _APIThread(gcs_server.APIThread):
    def run(self) -> None:
        self._httpd = HTTPServer((self._host, self._port), partial(_RequestHandler, self._storage))
        self.is_running.set()
        self._httpd.serve_forever()


class CloudStorage:
    """An in-memory Cloud Storage emulator in a background thread, with a small client."""

    def __init__(self) -> None:
        # The emulator logs every request at INFO; tests read what they need from the API.
        logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
        self.port = _free_port()
        self._api = _APIThread("127.0.0.1", self.port, Storage(use_memory_fs=True), daemon=True)
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

    # -- the JSON API, as a client ---------------------------------------------------------

    def _call(self, method: str, path: str, body: bytes | None = None, content_type: str = ""):
        request = urllib.request.Request(self.base_url + path, data=body, method=method)
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
        return f"{self.base_url}/download/storage/v1/b/{bucket}/o/{quote(name, safe='')}?alt=media"

    def read(self, bucket: str, name: str) -> bytes:
        with urllib.request.urlopen(self.download_url(bucket, name), timeout=30) as response:
            return response.read()

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
