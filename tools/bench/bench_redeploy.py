"""App redeploys on the local VM under a steady request loop over HTTPS: what a visitor sees.

Boots the stack from a checkout (default: this one) on the local VM with pebble as its CA, waits
until HTTPS serves the booted version, then sends GET / over HTTPS (verified against pebble's
root) at a fixed rate the whole time. The loop is open: each request leaves at its scheduled
time on its own connection and thread, and its latency counts from that time, so a slow answer
neither delays nor hides the requests after it. It first measures QUIET seconds with no deploy,
then redeploys the app REDEPLOYS times (the greeting alternates, as a code change would), each
by replacing the instance's metadata the way a deployment update does, and waits until /healthz
over HTTPS reports the new version. Prints, and writes to build/bench/redeploy.json:

- failed requests (not 200, or not one of the two greetings) in all, by status, per redeploy
  (by the time they were sent, from the metadata change until SETTLE s after the new version
  answered, or after the converge logged that it is done where its converges write to the
  serial console), and outside the redeploys;
- p99 latency of the requests that succeeded during the redeploys against p99 outside them;
- seconds from the metadata change to the new version answering /healthz over HTTPS (and to
  the converge's end, where the serial console shows it).

`--stack DIR`, repeated, measures several checkouts in turn (such as a worktree of an earlier
commit, then this one), each on a fresh VM with the same loop, and prints each later one's ratios
to the first. Numbers are printed, never asserted. The VM runs under TCG, so latencies are far
above a real VM's; compare ratios.

    bench-redeploy [--stack DIR]... [--redeploys 3] [--rate 5] [--quiet 30]
"""

from __future__ import annotations

import argparse
import collections
import http.client
import importlib.util
import json
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from localvm.acme import Pebble
from localvm.stack import REPO, LocalStack, app_greeting, attributes, render_preview
from localvm.vm import NETWORK

IP = NETWORK["external-ip"]
SETTLE = 10  # seconds after the new version answered (or its converge ended) still "during"
CONVERGED = "hello-startup: serving version "  # a converge's last line
TIMEOUT = 30  # seconds a request may take before it counts as failed


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


def https_get(port: int, context: ssl.SSLContext, path: str, timeout: float) -> tuple[int, str]:
    """One GET over HTTPS on a new connection; (0, reason) when nothing answered."""
    connection = http.client.HTTPSConnection(IP, port, context=context, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    except OSError as error:
        return 0, str(error)
    finally:
        connection.close()


class Loop:
    """GET / over HTTPS every 1/rate s, open loop; records (scheduled time, latency or None if
    failed, what failed: "STATUS at HH:MM:SS: BODY", STATUS 0 when nothing answered)."""

    def __init__(self, port: int, context: ssl.SSLContext, rate: float, bodies: set[str]):
        self.port, self.context, self.interval, self.bodies = port, context, 1 / rate, bodies
        self.samples: list[tuple[float, float | None, str]] = []
        self._requests: list[threading.Thread] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _one(self, scheduled: float) -> None:
        status, body = https_get(self.port, self.context, "/", TIMEOUT)
        latency = time.monotonic() - scheduled
        if status == 200 and body in self.bodies:
            self.samples.append((scheduled, latency, ""))
        else:
            answer = f"{status} at {time.strftime('%H:%M:%S')}: {body[:80]!r}"
            self.samples.append((scheduled, None, answer))

    def _run(self) -> None:
        scheduled = time.monotonic()
        while not self._stop.is_set():
            request = threading.Thread(target=self._one, args=(scheduled,), daemon=True)
            request.start()
            self._requests.append(request)
            scheduled += self.interval
            self._stop.wait(max(0.0, scheduled - time.monotonic()))

    def start(self) -> Loop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        for request in self._requests:
            request.join(TIMEOUT + 5)


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else float("nan")


def ratio(later: float, first: float) -> float | None:
    return round(later / first, 2) if first else None


def summarize(
    samples: list[tuple[float, float | None, str]], windows: list[tuple[float, float]]
) -> dict:
    """Failed requests and p99s, each request assigned by the time it was sent: to the redeploy
    whose window holds it, or to "outside"."""

    def window_of(sent: float) -> int | None:
        return next((n for n, (a, b) in enumerate(windows) if a <= sent <= b), None)

    failed_per = [0] * len(windows)
    during, outside, failed_outside = [], [], 0
    failures_by_status: collections.Counter[str] = collections.Counter()
    for sent, latency, answer in samples:
        n = window_of(sent)
        if latency is None:
            failures_by_status[answer.split(" ", 1)[0]] += 1
            if n is None:
                failed_outside += 1
            else:
                failed_per[n] += 1
        else:
            (outside if n is None else during).append(latency)
    return {
        "requests": len(samples),
        "failed": sum(failed_per) + failed_outside,
        "failed_per_redeploy": failed_per,
        "failed_per_redeploy_mean": round(statistics.mean(failed_per), 2) if windows else None,
        "failed_outside_redeploys": failed_outside,
        "failures_by_status": dict(failures_by_status),  # "0": no answer within TIMEOUT
        "requests_during_redeploys": len(during) + sum(failed_per),
        "p99_during_ms": round(p99(during) * 1000, 1),
        "p99_outside_ms": round(p99(outside) * 1000, 1),
        "p99_during_over_outside": ratio(p99(during), p99(outside)),
    }


def wait_version(port: int, context: ssl.SSLContext, version: str, timeout: float) -> float:
    """Polls /healthz over HTTPS (which every version serves; before the two-slot releases :80
    redirected /healthz too) until it reports `version`; returns when it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = https_get(port, context, "/healthz", 10)
        if status == 200 and f'"version":"{version}"' in body.replace(" ", ""):
            return time.monotonic()
        time.sleep(0.5)
    raise SystemExit(f"the VM never reported version {version} over HTTPS in {timeout:.0f} s")


def measure(stack_dir: Path, args: argparse.Namespace) -> dict:
    """One checkout on a fresh VM: boot, QUIET s, REDEPLOYS redeploys, QUIET/2 s."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-redeploy-"))
    stack = LocalStack(workdir, expanded=render_preview(stack_dir / "deployment.yaml"))
    pebble = Pebble(workdir / "pebble", validation_port=stack.http_port)
    original = {**attributes(stack.instance), **pebble.attributes()}
    stack.set_attributes(original)
    greeting = app_greeting(stack_dir / "app/app.py")
    other = greeting.replace("!", ", redeployed!")
    # A checkout whose redeploy converges write to the serial console says when each is done (the
    # two-slot release still watches the new slot after /healthz reports it), and its window
    # lasts until then. Before that, the version file was the converge's last step.
    logs_converges = "console" in (stack_dir / "app/hello-converge.service").read_text()
    loop = None
    try:
        pebble.start()
        stack.start()
        booted = time.monotonic()
        context = ssl.create_default_context(cadata=pebble.root_pem())
        port = stack.vm.https_port
        print(f"bench-redeploy: booting {stack_dir} (cold boot under TCG)", flush=True)
        wait_version(port, context, version_of(stack_dir, original), timeout=2400)
        if https_get(port, context, "/", 10) != (200, greeting):
            raise SystemExit(f"https://{IP}:{port}/ does not serve {greeting!r}")
        print(
            f"bench-redeploy: HTTPS serves it after {time.monotonic() - booted:.0f} s", flush=True
        )

        loop = Loop(port, context, args.rate, {greeting, other}).start()
        time.sleep(args.quiet)
        windows, to_served, to_converged = [], [], []
        current = greeting
        for n in range(args.redeploys):
            current = other if current == greeting else greeting
            values = {**original, "app-py": original["app-py"].replace(greeting, current)}
            version = version_of(stack_dir, values)
            mark = len(stack.vm.serial_text())
            changed = time.monotonic()
            stack.set_attributes(values)
            served = ended = wait_version(port, context, version, timeout=1200)
            if logs_converges:
                stack.vm.wait_serial(CONVERGED + version, start=mark, timeout=1200)
                ended = time.monotonic()
                to_converged.append(round(ended - changed, 1))
            time.sleep(max(0.0, ended + SETTLE - time.monotonic()))
            windows.append((changed, ended + SETTLE))
            to_served.append(served - changed)
            print(
                f"bench-redeploy: redeploy {n + 1}: new version after {served - changed:.1f} s"
                + (f", converge done after {ended - changed:.1f} s" if logs_converges else ""),
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

    return {
        "stack": str(stack_dir),
        **summarize(loop.samples, windows),
        "seconds_to_new_version": [round(s, 1) for s in to_served],
        "seconds_to_converge_done": to_converged if logs_converges else None,
        "first_failures": sorted(f for _, latency, f in loop.samples if latency is None)[:10],
    }


def ratios(later: dict, first: dict) -> dict:
    """later / first for what the table compares (None where the first measured 0)."""

    def median_to_new_version(run: dict) -> float:
        return statistics.median(run["seconds_to_new_version"])

    return {
        "stack": later["stack"],
        "against": first["stack"],
        **{
            key: ratio(later[key], first[key])
            for key in ("failed_per_redeploy_mean", "p99_during_ms", "p99_outside_ms")
        },
        "median_seconds_to_new_version": ratio(
            median_to_new_version(later), median_to_new_version(first)
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--stack", type=Path, action="append", help="checkout to deploy from (repeat to compare)"
    )
    parser.add_argument("--redeploys", type=int, default=3)
    parser.add_argument("--rate", type=float, default=5.0, help="requests per second")
    parser.add_argument("--quiet", type=float, default=30.0, help="seconds measured with no deploy")
    args = parser.parse_args()
    if args.redeploys < 1 or args.rate <= 0:
        parser.error("--redeploys must be at least 1 and --rate above 0")
    # A plain `kill` still stops the VM and pebble (the finally blocks run on SystemExit).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    out = REPO / "build" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"runs": [], "ratios": []}
    for stack_dir in [s.resolve() for s in args.stack or [REPO]]:
        run = measure(stack_dir, args)
        report["runs"].append(run)
        if len(report["runs"]) > 1:
            report["ratios"].append(ratios(run, report["runs"][0]))
        (out / "redeploy.json").write_text(json.dumps(report, indent=1) + "\n")
        print(json.dumps(run, indent=1), flush=True)
    for compared in report["ratios"]:
        print(json.dumps(compared, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
