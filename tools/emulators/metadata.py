"""An emulator of the Compute Engine metadata server, for one local VM.

EMULATED, not Google's server: it serves the metadata of the instance that `make preview` renders
(or that the local Deployment Manager API holds) to a qemu guest, so the real google-guest-agent
inside the guest runs the real startup script from it. It follows the documented behaviour
(https://cloud.google.com/compute/docs/metadata/querying-metadata):

- every request under /computeMetadata/v1/ needs `Metadata-Flavor: Google` (else 403), and a
  request carrying `X-Forwarded-For` is refused (403) the way GCE refuses proxied requests;
- every response carries `Metadata-Flavor: Google` and an `ETag` of the content it returned;
- directories list their children (`name/` for sub-directories); `recursive=true` returns the
  whole subtree as JSON with camelCase keys (custom attribute keys kept verbatim);
  `alt=text|json` chooses the format;
- `wait_for_change=true` blocks until the content at that path changes from `last_etag` (or from
  the current content when no etag is given), answering at once when `last_etag` is already
  stale; `timeout_sec` bounds the wait, after which the unchanged content is returned;
- guest attributes (`instance/guest-attributes/<namespace>/<key>`) accept PUT and GET when
  `enable-guest-attributes` is TRUE in instance or project metadata; they are not part of the
  instance's content, so writing them never changes an ETag or wakes a waiter;
- unknown keys get 404; repeated slashes collapse (the agent asks for `/computeMetadata/v1//`).

A second listener, the admin API (not part of GCE), lets the host replace the instance's metadata
as a redeploy would (`PUT /instance/metadata` with `{"items": [{"key", "value"}...]}`) or the
whole instance resource (`PUT /instance`). Both listeners bind to loopback only; the guest reaches
the metadata listener through qemu's guestfwd, and never the admin one.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from emulators.loopback import LoopbackService

PREFIX = "/computeMetadata/v1"
MAX_WAIT_SEC = 3600
_REF = re.compile(r"^\$\(ref\.([^.]+)\.[A-Za-z]+\)$")
# Keys under these directories are user data and keep their spelling in recursive JSON.
_VERBATIM_DIRS = {"attributes", "guest-attributes"}


class NotFound(Exception):
    pass


def _camel(key: str) -> str:
    head, *rest = key.split("-")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _short(url: str) -> str:
    """`zones/us-central1-a/machineTypes/e2-small` -> `e2-small`."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def _ref_name(value: str) -> str:
    match = _REF.match(value or "")
    return match.group(1) if match else _short(value or "")


def instance_id(project: str, name: str) -> int:
    """A stable 64-bit numeric id, like GCE's, derived from the instance's identity."""
    return int.from_bytes(hashlib.sha256(f"{project}/{name}".encode()).digest()[:8], "big") >> 1


def instance_tree(
    instance: dict[str, Any],
    *,
    project_id: str,
    project_number: int,
    network: dict[str, Any] | None = None,
    network_name: str = "default",
) -> dict[str, Any]:
    """The `instance/` directory GCE serves for a compute.v1 instance resource.

    `instance` is the resource as DM holds it: `name` plus the API body (`properties` in an
    expanded config, merged in at top level by the caller). `network` describes the NIC as the
    guest really sees it (ip, gateway, mac, external-ip), since the local network is not GCE's.
    """
    network = network or {}
    name = instance["name"]
    zone = _short(instance.get("zone", "us-central1-a"))
    items = (instance.get("metadata") or {}).get("items") or []
    disks = instance.get("disks") or []
    nics = instance.get("networkInterfaces") or [{}]
    scheduling = instance.get("scheduling") or {}
    boot = next((d for d in disks if d.get("boot")), disks[0] if disks else {})
    access = (nics[0].get("accessConfigs") or [{}])[0] if nics else {}
    return {
        "attributes": {item["key"]: item.get("value", "") for item in items},
        "cpu-platform": "Unknown CPU Platform",
        "description": instance.get("description", ""),
        "disks": [
            {
                "device-name": disk.get("deviceName", f"persistent-disk-{index}"),
                "index": index,
                "interface": disk.get("interface", "SCSI"),
                "mode": disk.get("mode", "READ_WRITE"),
                "type": disk.get("type", "PERSISTENT"),
            }
            for index, disk in enumerate(disks)
        ],
        "hostname": f"{name}.{zone}.c.{project_id}.internal",
        "id": (instance.get("id") and int(instance["id"])) or instance_id(project_id, name),
        "image": (boot.get("initializeParams") or {}).get("sourceImage", ""),
        "machine-type": f"projects/{project_number}/machineTypes/"
        + _short(instance.get("machineType", "e2-small")),
        "maintenance-event": "NONE",
        "name": name,
        "network-interfaces": [
            {
                "access-configs": [
                    {
                        # The deployed static IP once DM resolved it; else the local stand-in.
                        "external-ip": access.get("natIP")
                        if re.fullmatch(r"[0-9.]+", access.get("natIP") or "")
                        else network.get("external-ip", "127.0.0.1"),
                        "type": access.get("type", "ONE_TO_ONE_NAT"),
                    }
                ]
                if nics[0].get("accessConfigs")
                else [],
                "dns-servers": network.get("dns", "169.254.169.254"),
                "forwarded-ips": [],
                "gateway": network.get("gateway", "10.128.0.1"),
                "ip": network.get("ip", "10.128.0.2"),
                "ip-aliases": [],
                "mac": network.get("mac", "42:01:0a:80:00:02"),
                "mtu": network.get("mtu", "1460"),
                "network": f"projects/{project_number}/networks/{network_name}",
                "subnetmask": network.get("subnetmask", "255.255.240.0"),
                "target-instance-ips": [],
            }
        ],
        "preempted": "FALSE",
        "remaining-cpu-time": -1,
        "scheduling": {
            "automatic-restart": str(scheduling.get("automaticRestart", True)).upper(),
            "on-host-maintenance": scheduling.get("onHostMaintenance", "MIGRATE"),
            "preemptible": str(scheduling.get("preemptible", False)).upper(),
        },
        "service-accounts": {
            sa["email"]: {"aliases": ["default"], "email": sa["email"], "scopes": sa["scopes"]}
            for sa in instance.get("serviceAccounts") or []
            if "email" in sa and "scopes" in sa
        },
        "tags": list((instance.get("tags") or {}).get("items") or []),
        "virtual-clock": {"drift-token": "0"},
        "zone": f"projects/{project_number}/zones/{zone}",
    }


def from_expanded_config(
    config: dict[str, Any], *, instance_name: str | None = None
) -> tuple[dict[str, Any], str]:
    """Picks the compute.v1.instance out of an expanded config (dmlocal preview's YAML).

    Returns the instance as a flat resource (name + properties) and its network's name, found by
    following the subnetwork reference, so the NIC's `network` reads as on GCE.
    """
    resources = {r["name"]: r for r in config.get("resources", [])}
    instances = [
        r
        for r in resources.values()
        if r["type"] in ("compute.v1.instance", "compute.beta.instance")
        and instance_name in (None, r["name"])
    ]
    if len(instances) != 1:
        names = [r["name"] for r in instances]
        raise ValueError(f"expected exactly one compute.v1.instance, found {names}")
    resource = instances[0]
    instance = {"name": resource["name"], **copy.deepcopy(resource.get("properties", {}))}
    nic = (instance.get("networkInterfaces") or [{}])[0]
    network_name = _ref_name(nic.get("network", ""))
    subnet = resources.get(_ref_name(nic.get("subnetwork", "")))
    if subnet is not None and subnet["type"].endswith(".network"):
        # `$(ref.hello-vpc.subnetwork)`: an output of the network template, which names its
        # network after itself (the expanded YAML carries no layout to follow the output by).
        network_name = subnet["name"]
    elif subnet is not None:
        network_name = _ref_name(subnet.get("properties", {}).get("network", "")) or network_name
    return instance, network_name or "default"


def _etag(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]


def _lookup(tree: Any, parts: list[str]) -> Any:
    node = tree
    for part in parts:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise NotFound("/".join(parts))
    return node


def _is_dir(node: Any) -> bool:
    # Lists of scalars (tags, forwarded-ips) are leaves holding a JSON array, as on GCE;
    # lists of objects (disks, network-interfaces) are directories indexed 0, 1, ...
    return isinstance(node, dict) or (
        isinstance(node, list) and bool(node) and isinstance(node[0], dict)
    )


def to_json(node: Any, *, verbatim: bool = False) -> Any:
    """Recursive JSON view: camelCase keys, except user keys (attributes) kept verbatim."""
    if isinstance(node, dict):
        return {
            (key if verbatim else _camel(key)): to_json(value, verbatim=key in _VERBATIM_DIRS)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [to_json(value) for value in node]
    return node


def _text(node: Any) -> str:
    if isinstance(node, str):
        return node
    return json.dumps(node)


def _flatten(node: Any, prefix: str = "") -> list[str]:
    if _is_dir(node):
        children = node.items() if isinstance(node, dict) else enumerate(node)
        lines: list[str] = []
        for key, value in children:
            lines += _flatten(value, f"{prefix}{key}/" if _is_dir(value) else f"{prefix}{key}")
        return lines
    return [f"{prefix} {_text(node)}"]


def _listing(node: Any) -> list[str]:
    keys = node.keys() if isinstance(node, dict) else range(len(node))
    values = node.values() if isinstance(node, dict) else node
    return [
        f"{key}/" if _is_dir(value) else str(key) for key, value in zip(keys, values, strict=True)
    ]


class MetadataStore:
    """The served content, plus guest attributes, guarded by one condition variable."""

    def __init__(self, instance: dict[str, Any], project: dict[str, Any]) -> None:
        self._cond = threading.Condition()
        self._tree = {"instance": instance, "project": project}
        self._guest_attributes: dict[str, dict[str, str]] = {}
        self._closed = False
        self.generation = 0

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            return copy.deepcopy(self._tree)

    def replace_instance(self, instance: dict[str, Any]) -> None:
        with self._cond:
            self._tree["instance"] = copy.deepcopy(instance)
            self.generation += 1
            self._cond.notify_all()

    def set_instance_attributes(self, attributes: dict[str, str]) -> None:
        """Replaces the instance's custom metadata, as `instances.setMetadata` does."""
        with self._cond:
            self._tree["instance"]["attributes"] = dict(attributes)
            self.generation += 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def guest_attributes_enabled(self) -> bool:
        for scope in ("instance", "project"):
            value = self._tree[scope].get("attributes", {}).get("enable-guest-attributes", "")
            if value.strip().lower() == "true":
                return True
        return False

    def get(self, parts: list[str]) -> Any:
        with self._cond:
            return copy.deepcopy(_lookup(self._tree, parts))

    def wait(self, parts: list[str], last_etag: str | None, timeout: float) -> Any:
        """Returns the node at `parts` once its ETag differs from `last_etag` (or timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            baseline = last_etag or _etag(_lookup(self._tree, parts))
            while True:
                node = _lookup(self._tree, parts)
                remaining = deadline - time.monotonic()
                if _etag(node) != baseline or remaining <= 0 or self._closed:
                    return copy.deepcopy(node)
                self._cond.wait(remaining)

    def put_guest_attribute(self, namespace: str, key: str, value: str) -> None:
        with self._cond:
            self._guest_attributes.setdefault(namespace, {})[key] = value

    def get_guest_attributes(self, parts: list[str]) -> Any:
        with self._cond:
            return copy.deepcopy(_lookup(self._guest_attributes, parts))


class _Handler(BaseHTTPRequestHandler):
    server_version = "Metadata Server for VM"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    emulator: MetadataEmulator  # set by LoopbackService

    @property
    def store(self) -> MetadataStore:
        return self.emulator.store

    def log_message(self, format: str, *args: Any) -> None:
        if self.emulator.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, body: str, content_type: str, etag: str | None = None) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if etag:
            self.send_header("ETag", etag)
        self.send_header("X-XSS-Protection", "0")
        self.send_header("X-Frame-Options", "SAMEORIGIN")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._send(status, message + "\n", "text/html; charset=UTF-8")

    def _route(self) -> tuple[list[str], dict[str, str]] | None:
        """Parses the path; answers the request itself (and returns None) when it must."""
        url = urlsplit(self.path)
        path = re.sub("/{2,}", "/", url.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        if path == "/":
            self._send(200, "computeMetadata/\n", "application/text")
            return None
        if self.headers.get("X-Forwarded-For"):
            self._error(403, "Request denied: X-Forwarded-For header present.")
            return None
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            self._error(404, f"The requested URL {url.path} was not found on this server.")
            return None
        if self.headers.get("Metadata-Flavor") != "Google":
            self._error(
                403,
                f"Your client does not have permission to get URL {url.path} from this server. "
                "Missing Metadata-Flavor:Google header.",
            )
            return None
        parts = [p for p in path[len(PREFIX) :].split("/") if p]
        return parts, query

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        routed = self._route()
        if routed is None:
            return
        parts, query = routed
        for flag in ("recursive", "wait_for_change"):
            if query.get(flag, "false").lower() not in ("true", "false"):
                self._error(400, f"Invalid value for {flag}: {query[flag]!r}")
                return
        recursive = query.get("recursive", "false").lower() == "true"
        alt = query.get("alt", "json" if recursive else "text")
        if alt not in ("json", "text"):
            self._error(400, f"Invalid value for alt: {alt!r}")
            return
        try:
            timeout = min(float(query.get("timeout_sec", MAX_WAIT_SEC)), MAX_WAIT_SEC)
        except ValueError:
            self._error(400, f"Invalid value for timeout_sec: {query['timeout_sec']!r}")
            return
        try:
            if parts[:2] == ["instance", "guest-attributes"]:
                if not self.store.guest_attributes_enabled():
                    self._error(403, "Guest attributes endpoint access is disabled.")
                    return
                node = self.store.get_guest_attributes(parts[2:])
            elif query.get("wait_for_change", "false").lower() == "true":
                node = self.store.wait(parts, query.get("last_etag"), timeout)
            else:
                node = self.store.get(parts)
        except NotFound:
            self._error(404, f"The requested URL {self.path} was not found on this server.")
            return
        etag = _etag(node)
        if recursive or not _is_dir(node):
            if alt == "json":
                value = to_json(node, verbatim=bool(parts) and parts[-1] in _VERBATIM_DIRS)
                self._send(200, json.dumps(value), "application/json", etag)
            elif _is_dir(node):
                self._send(200, "\n".join(_flatten(node)) + "\n", "application/text", etag)
            else:
                self._send(200, _text(node), "application/text", etag)
        elif alt == "json":
            self._send(200, json.dumps(_listing(node)), "application/json", etag)
        else:
            self._send(
                200, "".join(f"{name}\n" for name in _listing(node)), "application/text", etag
            )

    def do_PUT(self) -> None:
        routed = self._route()
        if routed is None:
            return
        parts, _ = routed
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        if parts[:2] != ["instance", "guest-attributes"] or len(parts) != 4:
            self._error(405, "Only instance/guest-attributes/<namespace>/<key> accepts PUT.")
            return
        if not self.store.guest_attributes_enabled():
            self._error(403, "Guest attributes endpoint access is disabled.")
            return
        self.store.put_guest_attribute(parts[2], parts[3], body)
        self._send(200, "", "application/text")

    def do_POST(self) -> None:
        if self._route() is not None:
            self._error(405, "Method not allowed.")


class _AdminHandler(BaseHTTPRequestHandler):
    """Host-side control, not a GCE API: what a redeploy changes on the running instance."""

    protocol_version = "HTTP/1.1"
    emulator: _AdminAPI  # set by LoopbackService

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json(self, status: int, value: Any) -> None:
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/instance":
            self._json(200, self.emulator.metadata.store.snapshot()["instance"])
        else:
            self._json(404, {"error": "unknown path"})

    def do_PUT(self) -> None:
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            if self.path == "/instance/metadata":
                attributes = {item["key"]: item.get("value", "") for item in body["items"]}
                self.emulator.metadata.store.set_instance_attributes(attributes)
            elif self.path == "/instance":
                self.emulator.metadata.load_instance(body)
            else:
                self._json(404, {"error": "unknown path"})
                return
        except (ValueError, KeyError, TypeError) as error:
            self._json(400, {"error": f"{type(error).__name__}: {error}"})
            return
        self._json(200, {"generation": self.emulator.metadata.store.generation})


class _AdminAPI(LoopbackService):
    handler = _AdminHandler

    def __init__(self, metadata: MetadataEmulator) -> None:
        self.metadata = metadata


class MetadataEmulator(LoopbackService):
    """The metadata listener and the admin one, on loopback, in background threads."""

    handler = _Handler

    def __init__(
        self,
        instance: dict[str, Any],
        *,
        project_id: str = "local-project",
        project_number: int = 123456789012,
        project_attributes: dict[str, str] | None = None,
        network: dict[str, Any] | None = None,
        network_name: str = "default",
        host: str = "127.0.0.1",
        port: int = 0,
        admin_port: int = 0,
        verbose: bool = False,
    ) -> None:
        self.project_id = project_id
        self.project_number = project_number
        self.network = dict(network or {})
        self.network_name = network_name
        self.verbose = verbose
        self._address = (host, port, admin_port)
        project = {
            "attributes": dict(project_attributes or {}),
            "numeric-project-id": project_number,
            "project-id": project_id,
        }
        self.store = MetadataStore(self._tree(instance), project)
        self.admin = _AdminAPI(self)

    def _tree(self, instance: dict[str, Any]) -> dict[str, Any]:
        return instance_tree(
            instance,
            project_id=self.project_id,
            project_number=self.project_number,
            network=self.network,
            network_name=self.network_name,
        )

    def load_instance(self, instance: dict[str, Any]) -> None:
        """Serves a new instance resource (e.g. after a DM update): changes ETags, wakes waiters."""
        self.store.replace_instance(self._tree(instance))

    @property
    def admin_port(self) -> int:
        return self.admin.port

    @property
    def url(self) -> str:
        return self.base_url

    def start(self) -> Self:
        host, port, admin_port = self._address
        self.serve(host, port)
        self.admin.serve(host, admin_port)
        return self

    def stop(self) -> None:
        self.store.close()  # answers the long polls still waiting
        self.shutdown()
        self.admin.shutdown()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    import signal

    import yaml

    parser = argparse.ArgumentParser(prog="python -m emulators.metadata", description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="expanded config YAML (dmlocal preview)")
    source.add_argument("--instance-json", type=Path, help="a compute.v1 instance resource")
    parser.add_argument("--instance", help="instance name, when the config has several")
    parser.add_argument("--network-name", default="default", help="with --instance-json")
    parser.add_argument("--project", default="local-project")
    parser.add_argument("--project-number", type=int, default=123456789012)
    parser.add_argument("--network-json", help="the guest's NIC as seen locally (JSON)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--admin-port", type=int, default=0)
    parser.add_argument("--ready-file", type=Path, help="write {port, admin_port} here when up")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    if args.config:
        instance, network_name = from_expanded_config(
            yaml.safe_load(args.config.read_text()), instance_name=args.instance
        )
    else:
        instance, network_name = json.loads(args.instance_json.read_text()), args.network_name
    emulator = MetadataEmulator(
        instance,
        project_id=args.project,
        project_number=args.project_number,
        network=json.loads(args.network_json) if args.network_json else None,
        network_name=network_name,
        port=args.port,
        admin_port=args.admin_port,
        verbose=args.verbose,
    ).start()
    ready = {"port": emulator.port, "admin_port": emulator.admin_port}
    if args.ready_file:
        tmp = args.ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(ready))
        tmp.rename(args.ready_file)
    print(f"metadata emulator on {emulator.url} (admin port {emulator.admin_port})", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
