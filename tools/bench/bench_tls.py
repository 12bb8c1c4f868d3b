"""The app over HTTPS against plain HTTP, side by side in one run, through the VM's own front.

Lays out nginx (the committed site and :443 server) in front of gunicorn (hello@.service's flags)
on loopback, gets a real certificate (ECDSA P-256, as on the VM) from pebble through
app/hello-tls.sh and certbot, and serves it on the HTTPS port while the HTTP port keeps serving
the app (the redirect is left off so both ports answer the same greeting). Then, taking turns
for ROUNDS rounds, wrk measures:

- keep-alive: CONNECTIONS connections, many requests each (TLS cost: encryption only);
- new connections: every request on a new TCP connection (`Connection: close`), so over HTTPS
  every request is a full TLS handshake: handshakes per second.

Prints medians and the HTTPS/HTTP ratios. Numbers are printed, never asserted. wrk, nginx,
gunicorn and pebble share this machine's cores.

    bench-tls [--duration 10] [--connections 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.bench_app import run_wrk
from localvm.front import IP, Front, http_get, wait_for


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-tls-"))
    root.chmod(0o755)  # nginx's workers (www-data) serve the challenge from under it
    front = Front(root)
    try:
        front.start()
        front.pebble.start()
        for step in ("obtain", "activate"):
            result = front.tls(step)
            if result.returncode != 0:
                raise SystemExit(f"hello-tls {step} failed:\n{result.stdout}{result.stderr}")
        # Both ports serve the app: drop the redirect that activate turned on.
        front.path("/etc/nginx/hello-tls/redirect.conf").unlink()
        subprocess.run([*front.nginx, "-s", "reload"], check=True)
        wait_for(lambda: http_get(front.http_port, "/")[0] == 200, "HTTP without the redirect")

        # wrk verifies nothing; the certificate is the real one from the CA, checked above.
        urls = {
            "http": f"http://{IP}:{front.http_port}/",
            "https": f"https://{IP}:{front.https_port}/",
        }
        modes = {"keep-alive": [], "new connection": ["-H", "Connection: close"]}
        runs: dict[tuple[str, str], list[dict]] = {}
        for _ in range(args.rounds):
            for mode, extra in modes.items():
                for scheme, url in urls.items():
                    runs.setdefault((mode, scheme), []).append(
                        run_wrk(url, args.duration, args.connections, extra)
                    )
    finally:
        front.stop()
        shutil.rmtree(root, ignore_errors=True)

    print(
        f"medians of {args.rounds} rounds of {args.duration} s, {args.connections} connections, "
        "nginx -> gunicorn on loopback"
    )
    print(f"{'mode':16} {'scheme':6} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    medians = {}
    for (mode, scheme), results in runs.items():
        rps = statistics.median(r["rps"] for r in results)
        medians[mode, scheme] = rps
        print(
            f"{mode:16} {scheme:6} {rps:9.0f} "
            f"{statistics.median(r['p50_ms'] for r in results):8.2f} "
            f"{statistics.median(r['p99_ms'] for r in results):8.2f} "
            f"{sum(r['errors'] for r in results):7d}"
        )
    for mode in modes:
        ratio = medians[mode, "https"] / medians[mode, "http"]
        print(f"{mode}: HTTPS/HTTP throughput {ratio:.2f}")
    print(
        "TLS handshakes per second (new connection, HTTPS): "
        f"{medians['new connection', 'https']:.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
