"""Production server vs Flask's development server, side by side in one run.

Starts the app twice on loopback: under gunicorn with exactly the flags in app/hello@.service
(only the bind address changes, from 0.0.0.0:80 to a free loopback port), and under Flask's
development server. Loads each with wrk (50 connections, 2 threads, DURATION seconds), taking
turns for ROUNDS rounds so both see the same machine, and prints the median requests/s, p50,
p99 and total errors for each, and the throughput ratio. wrk runs on the same 2 cores.

Targets, which justify running gunicorn rather than the simpler development server: gunicorn
>= 5x the development server's throughput, p99 <= 20 ms, 0 errors.
The numbers are printed, never asserted: a loaded CI machine must not fail the build.

    bench-app [--duration 10] [--connections 50]
"""

from __future__ import annotations

import argparse
import configparser
import re
import shlex
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from localvm.stack import REPO, app_greeting


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gunicorn_command(port: int) -> list[str]:
    """ExecStart from the production unit, run from this venv and bound to loopback."""
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string((REPO / "app/hello@.service").read_text().replace("\\\n", " "))
    argv = shlex.split(unit["Service"]["ExecStart"])
    argv[0] = str(Path(sys.executable).with_name("gunicorn"))
    bind = argv.index("--bind")
    argv[bind + 1] = f"127.0.0.1:{port}"
    return argv


def dev_server_command(port: int) -> list[str]:
    return [sys.executable, "-m", "flask", "--app", "app", "run", "--port", str(port)]


def wait_until_serving(url: str, process: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.read().decode() == app_greeting():
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not serve the greeting within {timeout} s")


def run_wrk(url: str, duration: int, connections: int, extra: list[str] | None = None) -> dict:
    output = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", *(extra or []), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    latency = {}
    for percentile, value, unit in re.findall(
        r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", output, re.M
    ):
        latency[percentile] = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = sum(map(int, socket_errors.groups())) if socket_errors else 0
    errors += int(non_2xx.group(1)) if non_2xx else 0
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "p50_ms": latency["50"],
        "p99_ms": latency["99"],
        "errors": errors,
    }


def measure(name: str, command: list[str], port: int, duration: int, connections: int) -> dict:
    url = f"http://127.0.0.1:{port}/"
    process = subprocess.Popen(
        command, cwd=REPO / "app", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until_serving(url, process)
        return {"server": name, **run_wrk(url, duration, connections)}
    finally:
        process.terminate()
        process.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    servers = {
        "gunicorn (hello@.service)": gunicorn_command,
        "flask dev server": dev_server_command,
    }
    rounds: dict[str, list[dict]] = {name: [] for name in servers}
    for _ in range(args.rounds):
        for name, command in servers.items():
            port = free_port()
            rounds[name].append(measure(name, command(port), port, args.duration, args.connections))
    results = [
        {
            "server": name,
            "rps": statistics.median(r["rps"] for r in runs),
            "p50_ms": statistics.median(r["p50_ms"] for r in runs),
            "p99_ms": statistics.median(r["p99_ms"] for r in runs),
            "errors": sum(r["errors"] for r in runs),
        }
        for name, runs in rounds.items()
    ]
    print(f"medians of {args.rounds} rounds of {args.duration} s, {args.connections} connections")
    print(f"{'server':28} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for r in results:
        print(
            f"{r['server']:28} {r['rps']:10.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
            f"{r['errors']:7d}"
        )
    production, development = results
    ratio = production["rps"] / development["rps"]
    print(f"throughput ratio gunicorn/dev server: {ratio:.1f}x (target >= 5x)")
    print(f"gunicorn p99: {production['p99_ms']:.2f} ms (target <= 20 ms)")
    print(f"gunicorn errors: {production['errors']} (target 0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
