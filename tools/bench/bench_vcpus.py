"""How many vCPUs a local VM should get when two boot at once on this machine (the e2e lanes).

For each vCPU count (default 1, then 2), boots VMS fresh VMs side by side (default 2, as the two
VM lanes do) and records, per VM, the wall-clock seconds and qemu's CPU seconds until the first
converge logs that it serves its version. Prints the medians and each count's ratio to the first,
and writes build/bench/vcpus.json. Numbers are printed, never asserted; the guest runs under
TCG.

    bench-vcpus [--vcpus 1 2] [--vms 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from localvm.stack import REPO, LocalStack

CONVERGED = "hello-startup: serving version"
TIMEOUT = 1500


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def first_converge(stack: LocalStack, started: float) -> dict[str, float]:
    """Waits for a started stack's first converge; its wall-clock and qemu CPU seconds."""
    while CONVERGED not in stack.vm.serial_text():
        if time.monotonic() - started > TIMEOUT:
            raise TimeoutError(f"no converge in {TIMEOUT} s: {stack.vm.serial_tail()}")
        time.sleep(0.5)
    return {"wall_s": time.monotonic() - started, "cpu_s": cpu_seconds(stack.vm.process.pid)}


def side_by_side(target: Callable[..., None], arguments: list[tuple]) -> None:
    """Runs target once per argument tuple, all at once, and waits for all."""
    threads = [threading.Thread(target=target, args=args) for args in arguments]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def save(name: str, report: dict) -> None:
    out = REPO / "build" / "bench" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


def boot(results: list[dict[str, float]]) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="hello-vcpus-"))
    stack = LocalStack(workdir)
    started = time.monotonic()
    stack.start()
    try:
        results.append(first_converge(stack, started))
    finally:
        stack.stop(discard=True)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vcpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--vms", type=int, default=2)
    args = parser.parse_args()
    report: dict[str, dict] = {}
    for vcpus in args.vcpus:
        os.environ["LOCALVM_VCPUS"] = str(vcpus)
        results: list[dict[str, float]] = []
        side_by_side(boot, [(results,)] * args.vms)
        if len(results) != args.vms:
            raise SystemExit(f"{args.vms - len(results)} of {args.vms} VMs did not converge")
        report[str(vcpus)] = {
            "runs": results,
            "wall_s": statistics.median(r["wall_s"] for r in results),
            "cpu_s": statistics.median(r["cpu_s"] for r in results),
        }
    first = report[str(args.vcpus[0])]
    for vcpus, row in report.items():
        print(
            f"{vcpus} vCPU(s), {args.vms} VMs side by side: first converge {row['wall_s']:.0f} s"
            f" ({row['wall_s'] / first['wall_s']:.2f}x), qemu CPU {row['cpu_s']:.0f} s"
            f" ({row['cpu_s'] / first['cpu_s']:.2f}x)"
        )
    save("vcpus.json", report)


if __name__ == "__main__":
    main()
