"""App redeploys on the local VM under a steady request loop over HTTPS: what a visitor sees.

Boots the stack from a checkout (default: this one) on the local VM with pebble as its CA, waits
for HTTPS, then sends GET / at a fixed rate over HTTPS (verified against pebble's root) from one
thread the whole time. It first measures QUIET seconds with no deploy, then redeploys the app
REDEPLOYS times (the greeting alternates, as a code change would), each by replacing the
instance's metadata the way a deployment update does, and waits until /healthz reports the new
version. Prints, and writes to build/bench/redeploy.json:

- failed requests in all and per redeploy (not 200, or not one of the two greetings);
- p99 latency while a redeploy is under way (from the metadata change until 10 s after the new
  version answered) against p99 outside them;
- seconds from the metadata change to the new version answering /healthz.

`--stack DIR` deploys another checkout, such as a worktree of an earlier commit, so two versions
of the converge are measured with the same loop on the same machine. Numbers are printed, never
asserted. The VM runs under TCG, so latencies are far above a real VM's; compare ratios.

    bench-redeploy [--stack DIR] [--redeploys 3] [--rate 5] [--quiet 30]
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import shutil
import ssl
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from localvm.acme import Pebble
from localvm.stack import REPO, LocalStack, app_greeting, attributes, render_preview
from localvm.vm import NETWORK

IP = NETWORK["external-ip"]
SETTLE = 10  # seconds after the new version answered that still count as "during"


def version_of(stack_dir: Path, values: dict[str, str]) -> str:
    """The version a VM that applied `values` reports: the checkout's own startup.sh digest over
    the keys its vm.py deploys."""
    spec = importlib.util.spec_from_file_location("bench_stack_vm", stack_dir / "vm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    workdir = Path(tempfile.mkdtemp(prefix="bench-version-"))
    pairs = []
    for key in module.METADATA_FILES:
        (workdir / key).write_text(values[key])
        pairs.append(f"{key}={workdir / key}")
    digest = subprocess.run(
        ["bash", str(stack_dir / "app/startup.sh"), "version", *pairs],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    shutil.rmtree(workdir)
    return digest


class Loop:
    """GET / over HTTPS every 1/rate s; records (start time, latency or None if failed)."""

    def __init__(self, port: int, context: ssl.SSLContext, rate: float, bodies: set[str]):
        self.port, self.context, self.interval, self.bodies = port, context, 1 / rate, bodies
        self.samples: list[tuple[float, float | None]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _get(self) -> tuple[int, str]:
        connection = http.client.HTTPSConnection(IP, self.port, context=self.context, timeout=30)
        try:
            connection.request("GET", "/")
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                status, body = self._get()
            except OSError as error:
                status, body = 0, str(error)
            latency = time.monotonic() - started
            ok = status == 200 and body in self.bodies
            self.samples.append((started, latency if ok else None))
            if not ok:
                self.failures.append(f"{time.strftime('%H:%M:%S')} {status} {body[:80]!r}")
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def start(self) -> Loop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else float("nan")


def wait_version(stack: LocalStack, version: str, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = stack.vm.get("/healthz", timeout=10)
        if status == 200 and f'"version":"{version}"' in body.replace(" ", ""):
            return time.monotonic()
        time.sleep(0.5)
    raise SystemExit(f"the VM never reported version {version} in {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stack", type=Path, default=REPO, help="checkout to deploy from")
    parser.add_argument("--redeploys", type=int, default=3)
    parser.add_argument("--rate", type=float, default=5.0, help="requests per second")
    parser.add_argument("--quiet", type=float, default=30.0, help="seconds measured with no deploy")
    args = parser.parse_args()
    stack_dir = args.stack.resolve()

    workdir = Path(tempfile.mkdtemp(prefix="bench-redeploy-"))
    stack = LocalStack(workdir, expanded=render_preview(stack_dir / "deployment.yaml"))
    pebble = Pebble(workdir / "pebble", validation_port=stack.http_port)
    original = {**attributes(stack.instance), **pebble.attributes()}
    stack.set_attributes(original)
    greeting = app_greeting(stack_dir / "app/app.py")
    other = greeting.replace("!", ", redeployed!")
    loop = None
    try:
        pebble.start()
        stack.start()
        booted = time.monotonic()
        context = ssl.create_default_context(cadata=pebble.root_pem())
        print(f"bench-redeploy: booting {stack_dir} (cold boot under TCG)", flush=True)
        wait_version(stack, version_of(stack_dir, original), timeout=2400)
        deadline = time.monotonic() + 1800
        while True:
            try:
                probe = Loop(stack.vm.https_port, context, 1, {greeting})
                if probe._get() == (200, greeting):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("HTTPS never came up")
            time.sleep(3)
        print(f"bench-redeploy: HTTPS up after {time.monotonic() - booted:.0f} s", flush=True)

        loop = Loop(stack.vm.https_port, context, args.rate, {greeting, other}).start()
        time.sleep(args.quiet)
        windows, to_served, failed_per = [], [], []
        current = greeting
        for n in range(args.redeploys):
            current = other if current == greeting else greeting
            values = {**original, "app-py": original["app-py"].replace(greeting, current)}
            before = len(loop.failures)
            changed = time.monotonic()
            stack.set_attributes(values)
            served = wait_version(stack, version_of(stack_dir, values), timeout=1200)
            time.sleep(SETTLE)
            windows.append((changed, served + SETTLE))
            to_served.append(served - changed)
            failed_per.append(len(loop.failures) - before)
            print(
                f"bench-redeploy: redeploy {n + 1}: new version after {served - changed:.1f} s, "
                f"{failed_per[-1]} failed request(s)",
                flush=True,
            )
        time.sleep(args.quiet / 2)
        loop.stop()
    finally:
        if loop is not None:
            loop.stop()
        stack.stop()
        pebble.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    during = [
        latency
        for started, latency in loop.samples
        if latency is not None and any(a <= started <= b for a, b in windows)
    ]
    outside = [
        latency
        for started, latency in loop.samples
        if latency is not None and not any(a <= started <= b for a, b in windows)
    ]
    result = {
        "stack": str(stack_dir),
        "requests": len(loop.samples),
        "failed": len(loop.failures),
        "failed_per_redeploy": failed_per,
        "p99_during_ms": round(p99(during) * 1000, 1),
        "p99_outside_ms": round(p99(outside) * 1000, 1),
        "seconds_to_new_version": [round(s, 1) for s in to_served],
        "first_failures": loop.failures[:10],
    }
    out = REPO / "build" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "redeploy.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
