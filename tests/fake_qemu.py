"""A stand-in for `qemu-system-x86_64` and the guest in it, for testing `make up` on the host.

NOT a VM, and kinder than one: no kernel boots, no startup script runs, nothing is installed. It
takes qemu's command line as localvm.vm.LocalVM writes it and keeps only the contract `make up`
relies on: QMP on the named socket (`system_powerdown` and `quit` end it), the metadata server
reached through the guestfwd port, and HTTP on the port forwarded to :80, where `/healthz`
reports the version of the files the metadata carries (app/startup.sh's own digest) once they
pass a converge's first check, an import of app.py; an app that fails it is refused with the
error, as the VM of issue 20 reports a refused version, and the previous version keeps serving.
The real guest is tested by tests/e2e/.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STATUS: dict = {"status": "ok", "version": "unknown"}


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def serve_qmp(
    path: str, ends: tuple[str, ...] = ("system_powerdown", "quit"), log: str | None = None
) -> None:
    """QMP on `path`: answers every command, appends each to `log` if given, and exits on any
    of `ends` (a guest that ignores ACPI ends on `quit` only)."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()
    while True:
        connection, _ = server.accept()
        stream = connection.makefile("rwb")
        stream.write(b'{"QMP": {"version": {}, "capabilities": []}}\n')
        stream.flush()
        for line in stream:
            command = json.loads(line).get("execute")
            if log:
                with open(log, "a") as commands:
                    commands.write(f"{command}\n")
            stream.write(b'{"return": {}}\n')
            stream.flush()
            if command in ends:
                os._exit(0)
        connection.close()


class Front(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(STATUS).encode() if self.path == "/healthz" else b"fake guest"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def converge(attributes: dict[str, str], keys: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pairs = []
        for key in keys:
            (Path(tmp) / key).write_text(attributes.get(key, ""))
            pairs.append(f"{key}={Path(tmp) / key}")
        version = subprocess.run(
            ["bash", str(REPO / "app" / "startup.sh"), "version", *pairs],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        # The Python with Flask: this process's argv[0] is qemu's name, so not sys.executable.
        load = "import runpy, sys; runpy.run_path(sys.argv[1])"
        imported = subprocess.run(
            [os.environ["FAKE_GUEST_PYTHON"], "-c", load, str(Path(tmp) / "app-py")],
            capture_output=True,
            text=True,
            check=False,
        )
    if imported.returncode == 0:
        STATUS.pop("refused", None)
        STATUS["version"] = version
    else:
        reason = imported.stderr.strip().splitlines()[-1]
        STATUS["refused"] = {"version": version, "reason": f"app.py failed to import: {reason}"}


def main(args: list[str]) -> None:
    netdev = option(args, "-netdev")
    metadata = re.search(r"TCP:127\.0\.0\.1:(\d+)", netdev).group(1)
    http_port = re.search(r"hostfwd=tcp:127\.0\.0\.1:(\d+)-:80\b", netdev).group(1)
    qmp = option(args, "-qmp").removeprefix("unix:").split(",")[0]
    threading.Thread(target=serve_qmp, args=(qmp,), daemon=True).start()
    front = ThreadingHTTPServer(("127.0.0.1", int(http_port)), Front)
    threading.Thread(target=front.serve_forever, daemon=True).start()
    keys = list(runpy.run_path(str(REPO / "vm.py"))["METADATA_FILES"])
    url = f"http://127.0.0.1:{metadata}/computeMetadata/v1/instance/attributes/?recursive=true"
    etag = ""
    while True:
        wait = f"&wait_for_change=true&timeout_sec=30&last_etag={etag}" if etag else ""
        request = urllib.request.Request(
            url + wait,
            headers={"Metadata-Flavor": "Google"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            if response.headers["ETag"] != etag:
                etag = response.headers["ETag"]
                converge(json.loads(response.read()), keys)


if __name__ == "__main__":
    main(sys.argv[1:])
