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
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.vms import first_converge, save, side_by_side
from localvm.stack import LocalStack


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
