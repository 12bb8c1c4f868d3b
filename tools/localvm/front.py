"""The VM's front (nginx + gunicorn + app/hello-tls.sh) run on this host's loopback, no VM.

The committed nginx site and :443 server, hello@.service's own gunicorn command, and
app/hello-tls.sh with certbot from app/acme-requirements.txt, laid out as on the VM under a
temporary root (HELLO_TLS_ROOT). Only ports and paths are relocated: nginx listens on free
loopback ports instead of 80 and 443, gunicorn binds a free port instead of a slot's. The CA is
pebble (localvm.acme) and the metadata server the emulator, serving the rendered instance.
Used by tests/stack/test_https.py and the TLS benchmark.
"""

from __future__ import annotations

import http.client
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from emulators.metadata import MetadataEmulator, from_expanded_config
from localvm.acme import Pebble
from localvm.stack import REPO, render_preview
from localvm.vm import NETWORK, free_port

IP = NETWORK["external-ip"]  # the local stand-in for the static IP: 127.0.0.1


class Front:
    """gunicorn + nginx + metadata emulator + pebble, laid out as on the VM under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.app_port, self.http_port, self.https_port = free_port(), free_port(), free_port()
        self.pebble = Pebble(root / "pebble", validation_port=self.http_port)
        self.processes: list[subprocess.Popen] = []
        self.expanded = render_preview()

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def relocate(self, text: str) -> str:
        for absolute in ("/etc/nginx/hello-tls", "/var/www/hello-acme", "/etc/hello-tls"):
            text = text.replace(absolute, str(self.path(absolute)))
        return text.replace("listen 80 ", f"listen 127.0.0.1:{self.http_port} ").replace(
            "listen 443 ", f"listen 127.0.0.1:{self.https_port} "
        )

    def upstream(self) -> str:
        """nginx's upstream for the app as the converge writes it, pointing at this gunicorn."""
        return subprocess.run(
            ["bash", str(REPO / "app/startup.sh"), "upstream", str(self.app_port)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def metadata(self, external_ip: str = IP, pebble: Pebble | None = None) -> MetadataEmulator:
        """A metadata server for this instance pointing at `pebble` (default: the front's own)."""
        pebble = pebble or self.pebble
        instance, network_name = from_expanded_config(self.expanded)
        emulator = MetadataEmulator(
            instance, network={**NETWORK, "external-ip": external_ip}, network_name=network_name
        )
        emulator.store.set_instance_attributes(pebble.attributes(pebble.directory))
        emulator.start()
        return emulator

    def start(self) -> Front:
        directories = ("/etc/nginx/hello-tls", "/var/www/hello-acme", "/usr/local/share", "/run")
        for directory in directories:
            self.path(directory).mkdir(parents=True, exist_ok=True)
        self.path("/var/lib/hello-acme").mkdir(parents=True, mode=0o700)
        share = self.path("/usr/local/share/hello-tls")
        share.mkdir()
        shutil.copy(REPO / "app/acme-requirements.txt", share)
        (share / "nginx-https.conf").write_text(
            self.relocate((REPO / "app/nginx-hello-tls.conf").read_text())
        )
        site = self.path("/etc/nginx/sites-available/hello")
        site.parent.mkdir(parents=True)
        site.write_text(self.relocate((REPO / "app/nginx-hello.conf").read_text()))
        upstream = self.path("/etc/nginx/conf.d/hello-upstream.conf")
        upstream.parent.mkdir(parents=True)
        upstream.write_text(self.upstream())
        nginx_dir = self.path("/nginx")
        nginx_dir.mkdir()
        self.nginx_conf = nginx_dir / "nginx.conf"
        self.access_log = nginx_dir / "access.log"
        # The parts of Debian's nginx.conf the site relies on, with state in the temporary root.
        self.nginx_conf.write_text(
            f"user www-data;\npid {self.path('/run/nginx.pid')};\n"
            f"error_log {nginx_dir}/error.log;\n"
            "events {}\nhttp {\n"
            f"  access_log {self.access_log};\n"
            f"  client_body_temp_path {nginx_dir}/body;\n  proxy_temp_path {nginx_dir}/proxy;\n"
            f"  include {upstream};\n  include {site};\n}}\n"
        )
        self.nginx = ["nginx", "-e", str(nginx_dir / "error.log"), "-c", str(self.nginx_conf)]
        self.processes.append(self._gunicorn())
        subprocess.run([*self.nginx, "-q"], check=True)
        self.metadata_server = self.metadata()
        wait_for(lambda: http_get(self.http_port, "/")[0] == 200, "nginx -> gunicorn on :80")
        return self

    def _gunicorn(self) -> subprocess.Popen:
        """hello@.service's own ExecStart, with the venv's gunicorn and a free port."""
        text = (REPO / "app/hello@.service").read_text().replace("\\\n", " ")
        exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
        argv = shlex.split(exec_start.removeprefix("ExecStart="))
        argv[0] = str(Path(sys.executable).with_name("gunicorn"))
        argv[argv.index("--bind") + 1] = f"127.0.0.1:{self.app_port}"
        return subprocess.Popen(
            argv, cwd=REPO / "app", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def nginx_master_pid(self) -> int:
        return int(self.path("/run/nginx.pid").read_text())

    def env(self, metadata: MetadataEmulator | None = None, **extra: str) -> dict[str, str]:
        server = metadata or self.metadata_server
        return {
            "PATH": os.environ["PATH"],
            "HELLO_TLS_ROOT": str(self.root),
            "HELLO_TLS_METADATA": f"http://127.0.0.1:{server.port}",
            "HELLO_TLS_NGINX": shlex.join(self.nginx),
            # certbot's venv is built by app/startup.sh's `venv`, with uv under this root.
            "HELLO_TLS_STARTUP": shlex.join(["bash", str(REPO / "app/startup.sh")]),
            "HELLO_UV_DIR": str(self.path("/usr/local/lib/hello")),
            **extra,
        }

    def tls(self, command: str, metadata: MetadataEmulator | None = None, **extra: str):
        return subprocess.run(
            ["bash", str(REPO / "app/hello-tls.sh"), command],
            env=self.env(metadata, **extra),
            capture_output=True,
            text=True,
            timeout=900,
        )

    def stop(self) -> None:
        subprocess.run([*self.nginx, "-s", "stop"], check=False, capture_output=True)
        self.pebble.stop()
        self.metadata_server.stop()
        for process in self.processes:
            process.terminate()
            process.wait(10)


def wait_for(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def http_get(port: int, path: str) -> tuple[int, str, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode(), dict(response.getheaders())
    except OSError as error:
        return 0, str(error), {}
    finally:
        connection.close()
