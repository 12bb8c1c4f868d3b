"""Runs one VM from the cached image under qemu, the way Compute Engine would run the instance.

- Accelerator: TCG (`-accel tcg,thread=multi`). This host's /dev/kvm is paravirtual (PVM) and
  cannot boot a stock Debian kernel, so KVM is used only when LOCALVM_ACCEL asks for it.
- Disk: a qcow2 overlay on the cached raw image, so the image stays pristine and every run starts
  from the same bytes, like a new boot disk from an image; reboots of one run keep the overlay.
- Network: qemu user networking. The guest's metadata server address, 169.254.169.254:80, is a
  guestfwd that starts one `socat` per connection to the local metadata emulator (a shared
  connection would serialise the agent's long polls). Guest ports 80 and 443 are forwarded
  to free loopback ports: the instance's "public IP" (127.0.0.1 stands in for it). The guest
  reaches Debian's mirror and PyPI through the user network's NAT, as a GCE VM reaches them
  through its external IP.
- Console: the serial port is the VM's serial log (what `gcloud compute instances
  get-serial-port-output` shows on GCE).
- Control: QMP for power (system_powerdown, quit; a reset is a new qemu process on the same
  disk) and, for tests only, the qemu guest agent over virtio-serial for running a command
  inside the guest (there is no SSH).
"""

from __future__ import annotations

import ast
import base64
import contextlib
import ctypes
import gzip
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from localvm.image import Image

# The guest's view of its network, also served by the metadata emulator as network-interfaces/0.
# The metadata address must be inside qemu's user network for guestfwd to intercept it.
NETWORK = {
    "ip": "169.254.169.15",
    "gateway": "169.254.169.2",
    "dns": "169.254.169.3",
    "subnetmask": "255.255.255.0",
    "mac": "42:01:0a:80:00:02",
    "mtu": "1500",
    "external-ip": "127.0.0.1",
}
METADATA_IP = "169.254.169.254"


class VMError(RuntimeError):
    pass


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range. A port the kernel hands out itself
    (a bind to port 0, an outgoing connection's local end) could be taken by another process, such
    as a parallel test worker, between this check and the server binding it; ports below the
    range are only ever taken by name. The random pick keeps parallel callers apart."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(10000, low), min(200, max(0, low - 10000))):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # an unusual ephemeral range: let the kernel choose
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# x86 Linux keeps the first COMMAND_LINE_SIZE - 1 bytes (2048 with its NUL) and drops the rest
# without a word: a truncated systemd.run= would fail only inside the guest.
KERNEL_COMMAND_LINE_MAX = 2047


def hold_apt_locks_at_boot(lists_seconds: int, dpkg_seconds: int) -> tuple[str, ...]:
    """Kernel arguments that make every boot hold apt's locks the way Google's OS Config agent
    (its `apt-get update`) and apt-daily-upgrade do on a GCE image at boot.

    Test infrastructure: a command systemd runs from the kernel command line
    (systemd-run-generator), so the cached image stays the same. It holds the lists lock from
    early boot until `lists_seconds` after an `apt-get update` started, and dpkg's locks until
    `dpkg_seconds` after an `apt-get install` began waiting for them (or a `dpkg --configure`
    started), so a startup script meets both however long the boot took to get there: the
    lists lock at `apt-get update` and dpkg's at `apt-get install`. Same locks as apt takes
    (fcntl locks on the same files).
    """
    # Without its comments and docstrings, and compressed: the whole kernel command line must
    # fit in KERNEL_COMMAND_LINE_MAX bytes.
    script = ast.parse((Path(__file__).parent / "hold_apt_locks.py").read_text())
    for node in ast.walk(script):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            body[0] = ast.Pass()
    code = ast.unparse(script).encode()
    payload = base64.b64encode(gzip.compress(code, mtime=0)).decode()
    holds = f"{lists_seconds} {dpkg_seconds}"
    command = f"/bin/sh -c 'echo {payload} | base64 -d | gzip -d | /usr/bin/python3 - {holds}'"
    return (
        f'systemd.run="{command}"',
        "systemd.run_success_action=none",
        "systemd.run_failure_action=none",
        # systemd.run= alone boots into kernel-command-line.target instead of the usual target;
        # boot the usual one and pull the command in beside it.
        "systemd.unit=multi-user.target",
        "systemd.wants=kernel-command-line.service",
    )


def _accel() -> str:
    return os.environ.get("LOCALVM_ACCEL", "tcg,thread=multi")


class LocalVM:
    """One qemu process: start, wait for HTTP, reset, power off, run a guest command."""

    def __init__(
        self,
        image: Image,
        workdir: Path,
        *,
        metadata_port: int,
        name: str = "hello-vm",
        http_port: int | None = None,
        https_port: int | None = None,
        memory_mb: int = 1024,
        cpus: int | None = None,
        kernel_args: tuple[str, ...] = (),
    ) -> None:
        self.image = image
        self.workdir = Path(workdir)
        self.metadata_port = metadata_port
        self.name = name
        self.http_port = http_port or free_port()
        self.https_port = https_port or free_port()
        self.memory_mb = memory_mb
        # e2-small's 2 vCPUs by default; the e2e tests ask for fewer when two VMs share the
        # cores (docs/benchmarks.md, `make bench-vcpus`).
        self.cpus = cpus or int(os.environ.get("LOCALVM_VCPUS", "2"))
        # qemu's own baseline model: a first converge costs about 10% less qemu CPU than with
        # `max`, and an Intel model makes the kernel isolate page tables (Meltdown), which costs
        # 40% more under TCG (docs/benchmarks.md, `make bench-cpu-model`).
        self.cpu_model = os.environ.get("LOCALVM_CPU", "qemu64")
        self.kernel_args = kernel_args
        self.process: subprocess.Popen | None = None
        self._detach = False
        self.pid: int | None = None

    @classmethod
    def attach(cls, workdir: Path, *, pid: int, http_port: int) -> LocalVM:
        """A handle on a VM another process started (for `make down`): QMP and serial only."""
        vm = cls(None, workdir, metadata_port=0, http_port=http_port)  # type: ignore[arg-type]
        vm.pid = pid
        return vm

    @property
    def serial_log(self) -> Path:
        return self.workdir / "serial.log"

    @property
    def qmp_socket(self) -> Path:
        return self.workdir / "qmp.sock"

    @property
    def qga_socket(self) -> Path:
        return self.workdir / "qga.sock"

    @property
    def overlay(self) -> Path:
        return self.workdir / "disk.qcow2"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}/"

    def command(self) -> list[str]:
        socat = shutil.which("socat") or "socat"
        metadata = self.metadata_port
        netdev = ",".join(
            [
                "user",
                "id=net0",
                "net=169.254.169.0/24",
                f"host={NETWORK['gateway']}",
                f"dns={NETWORK['dns']}",
                f"dhcpstart={NETWORK['ip']}",
                f"hostname={self.name}",
                "ipv6=off",
                f"guestfwd=tcp:{METADATA_IP}:80-cmd:{socat} STDIO TCP:127.0.0.1:{metadata}",
                f"hostfwd=tcp:127.0.0.1:{self.http_port}-:80",
                f"hostfwd=tcp:127.0.0.1:{self.https_port}-:443",
            ]
        )
        return [
            "qemu-system-x86_64",
            "-name",
            self.name,
            "-nodefaults",
            "-no-user-config",
            "-machine",
            "q35",
            "-accel",
            _accel(),
            "-cpu",
            self.cpu_model,
            "-smp",
            str(self.cpus),
            "-m",
            str(self.memory_mb),
            "-display",
            "none",
            "-kernel",
            str(self.image.kernel),
            "-initrd",
            str(self.image.initrd),
            "-append",
            self.kernel_command_line(),
            "-drive",
            f"if=none,id=disk0,file={self.overlay},format=qcow2,cache=unsafe,discard=unmap",
            "-device",
            "virtio-blk-pci,drive=disk0",
            "-netdev",
            netdev,
            "-device",
            f"virtio-net-pci,netdev=net0,mac={NETWORK['mac']}",
            "-device",
            "virtio-rng-pci",
            # Appended to, so a reset's new process continues the log.
            "-chardev",
            f"file,id=serial0,path={self.serial_log},append=on",
            "-serial",
            "chardev:serial0",
            "-qmp",
            f"unix:{self.qmp_socket},server=on,wait=off",
            "-chardev",
            f"socket,id=qga0,path={self.qga_socket},server=on,wait=off",
            "-device",
            "virtio-serial-pci",
            "-device",
            "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        ]

    def start(self, *, detach: bool = False) -> LocalVM:
        """Creates a fresh overlay and starts qemu.

        By default qemu dies with the process that started it (tests, benchmarks: a killed
        pytest leaves no VM behind). `detach=True` (for `make up`) lets it outlive the caller.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        for path in (self.overlay, self.serial_log, self.workdir / "qemu.log"):
            path.unlink(missing_ok=True)
        subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                str(self.image.disk),
                "-F",
                "raw",
                str(self.overlay),
            ],
            check=True,
        )
        self._detach = detach
        return self._launch()

    def kernel_command_line(self) -> str:
        line = " ".join((self.image.cmdline, *self.kernel_args))
        size = len(line.encode())
        if size > KERNEL_COMMAND_LINE_MAX:
            raise ValueError(f"kernel command line of {size} bytes, over {KERNEL_COMMAND_LINE_MAX}")
        return line

    def _launch(self) -> LocalVM:
        for path in (self.qmp_socket, self.qga_socket):
            path.unlink(missing_ok=True)
        with open(self.workdir / "qemu.log", "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=None if self._detach else _die_with_parent,
            )
        self.pid = self.process.pid
        deadline = time.monotonic() + 30
        while not self.qmp_socket.exists():
            if not self.running():
                raise VMError(f"qemu exited at start: {self.qemu_log()}")
            if time.monotonic() > deadline:
                raise VMError("qemu did not open its QMP socket within 30 s")
            time.sleep(0.1)
        return self

    def qemu_log(self) -> str:
        path = self.workdir / "qemu.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def running(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        if self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        # A zombie or a recycled pid is not our qemu.
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes()
            return b"qemu-system" in cmdline
        return False

    # --- HTTP -------------------------------------------------------------------------------

    def get(self, path: str = "/", timeout: float = 5) -> tuple[int, str]:
        """One GET on the forwarded port; (0, reason) when nothing answered."""
        try:
            with urllib.request.urlopen(self.url.rstrip("/") + path, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")
        except (OSError, urllib.error.URLError) as error:
            return 0, str(error)

    def wait_http(
        self, path: str = "/", *, timeout: float, expect: str | None = None, interval: float = 0.25
    ) -> float:
        """Polls until GET path is 200 (with `expect` in the body); returns the seconds waited."""
        started = time.monotonic()
        deadline = started + timeout
        last: tuple[int, str] = (0, "not tried")
        while time.monotonic() < deadline:
            if not self.running():
                raise VMError(f"qemu exited while waiting for {path}\n{self.serial_tail()}")
            last = self.get(path, timeout=min(5, max(0.5, deadline - time.monotonic())))
            if last[0] == 200 and (expect is None or expect in last[1]):
                return time.monotonic() - started
            time.sleep(interval)
        raise VMError(
            f"GET {path} did not return 200{f' with {expect!r}' if expect else ''} within "
            f"{timeout:.0f} s (last: {last[0]} {last[1][:200]!r})\n{self.serial_tail()}"
        )

    # --- serial log -------------------------------------------------------------------------

    def serial_text(self) -> str:
        return self.serial_log.read_text(errors="replace") if self.serial_log.exists() else ""

    def wait_serial(self, text: str, *, start: int = 0, timeout: float) -> str:
        """Polls the serial log until `text` appears after offset `start`; returns that part."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            segment = self.serial_text()[start:]
            if text in segment:
                return segment
            if not self.running():
                break
            time.sleep(0.5)
        raise VMError(
            f"{text!r} not in the serial log within {timeout:.0f} s\n{self.serial_tail()}"
        )

    def serial_tail(self, lines: int = 60) -> str:
        tail = "\n".join(self.serial_text().splitlines()[-lines:])
        return f"--- serial log tail ({self.serial_log}) ---\n{tail}\n--- end of serial log ---"

    # --- QMP --------------------------------------------------------------------------------

    def qmp(self, command: str, arguments: dict | None = None, timeout: float = 10) -> dict:
        """Runs one QMP command on a fresh connection (the socket takes one client at a time)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(timeout)
            # The socket's file exists from bind(); it refuses until listen(), a moment later.
            deadline = time.monotonic() + timeout
            while True:
                try:
                    sock.connect(str(self.qmp_socket))
                    break
                except ConnectionRefusedError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            stream = sock.makefile("rwb")
            json.loads(stream.readline())  # greeting
            for message in ({"execute": "qmp_capabilities"}, {"execute": command}):
                if arguments and message["execute"] == command:
                    message["arguments"] = arguments
                stream.write(json.dumps(message).encode() + b"\n")
                stream.flush()
                while True:
                    reply = json.loads(stream.readline())
                    if "return" in reply or "error" in reply:
                        break  # skip asynchronous events
                if "error" in reply:
                    raise VMError(f"QMP {message['execute']}: {reply['error']}")
            return reply["return"]

    def set_link(self, up: bool) -> None:
        """Plugs or unplugs the VM's network cable (its one NIC loses carrier), like an outage."""
        self.qmp("set_link", {"name": "net0", "up": up})

    def reset(self) -> None:
        """Hard reset, like `gcloud compute instances reset`: the guest's memory is lost, its disk
        keeps what the guest wrote. A new qemu process boots the same disk. After QMP's
        system_reset, which keeps the process (and, we think, TCG's translations of the RAM's old
        contents), the boot stalled the vCPU for up to 21 s at a time and reached the startup
        script after 197 to 339 s instead of 62 to 74 (docs/local-vm.md, `make bench-reset`)."""
        # quit writes out qemu's own disk caches: the disk as the guest left it.
        with contextlib.suppress(OSError, VMError, ValueError):
            self.qmp("quit")
        if not self._wait_exit(30):
            raise VMError("qemu did not quit for the reset within 30 s")
        self._launch()

    def stop(self, timeout: float = 60) -> None:
        """ACPI power-off (a clean guest shutdown), then quit, then SIGKILL, each with a bound."""
        if not self.running():
            return
        with contextlib.suppress(OSError, VMError, ValueError):
            self.qmp("system_powerdown")
        if not self._wait_exit(timeout):
            self.discard()

    def discard(self) -> None:
        """Ends qemu at once, for a VM whose disk is thrown away (a test's): a clean shutdown
        under TCG takes about 40 s and protects nothing."""
        if not self.running():
            return
        with contextlib.suppress(OSError, VMError, ValueError):
            self.qmp("quit")
        if self._wait_exit(10):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self._wait_exit(10)

    def _wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                return True
            if self.process is None and not self.running():
                return True
            time.sleep(0.2)
        return False

    # --- guest agent (tests only) -----------------------------------------------------------

    def _qga(self, stream, request: dict, sync_id: int) -> dict:
        # guest-sync-delimited discards anything a previous client left unread in the channel.
        stream.write(
            b"\xff"
            + json.dumps({"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}).encode()
            + b"\n"
        )
        stream.flush()
        while True:
            line = stream.readline()
            if not line:
                raise VMError("guest agent closed the channel")
            line = line.lstrip(b"\xff").strip()
            if line and json.loads(line).get("return") == sync_id:
                break
        stream.write(json.dumps(request).encode() + b"\n")
        stream.flush()
        reply = json.loads(stream.readline())
        if "error" in reply:
            raise VMError(f"guest agent {request['execute']}: {reply['error']}")
        return reply["return"]

    def guest_exec(self, script: str, timeout: float = 60) -> tuple[int, str, str]:
        """Runs `sh -c script` in the guest through qemu-guest-agent: (exit code, stdout, stderr).

        Test infrastructure only (the image carries qemu-guest-agent for it); nothing on the
        app's path uses it.
        """
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(max(1.0, deadline - time.monotonic()))
            sock.connect(str(self.qga_socket))
            stream = sock.makefile("rwb")
            sync_id = int(time.monotonic() * 1000) % 2**31
            started = self._qga(
                stream,
                {
                    "execute": "guest-exec",
                    "arguments": {"path": "/bin/sh", "arg": ["-c", script], "capture-output": True},
                },
                sync_id,
            )
            # Quick commands are seen to end at once; a long one is asked about once a second,
            # since each question costs the guest's one vCPU, which the command needs.
            interval = 0.05
            while True:
                status = self._qga(
                    stream,
                    {"execute": "guest-exec-status", "arguments": {"pid": started["pid"]}},
                    sync_id + 1,
                )
                if status.get("exited"):
                    break
                if time.monotonic() > deadline:
                    raise VMError(f"guest command did not finish within {timeout} s: {script}")
                time.sleep(interval)
                interval = min(1.0, interval * 2)

        def decode(key: str) -> str:
            return base64.b64decode(status.get(key, "")).decode(errors="replace")

        return status.get("exitcode", -1), decode("out-data"), decode("err-data")

    def wait_guest_agent(self, timeout: float) -> None:
        """Polls until the in-guest agent answers (it starts late in boot)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                self.guest_exec("true", timeout=min(10, max(1, deadline - time.monotonic())))
                return
            except (OSError, VMError, ValueError) as error:
                last = error
                time.sleep(1)
        raise VMError(f"qemu guest agent did not answer within {timeout} s: {last}")
