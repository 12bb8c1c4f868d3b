"""Which CPU model the local VM's guest should see under TCG: qemu's baseline `qemu64` against
`max` (and any other model named, with kernel arguments if given: "qemu64 mitigations=off"),
side by side.

Boots one fresh 1-vCPU VM per model at once (as the e2e lanes boot theirs) and records, per VM,
the wall-clock seconds and qemu's CPU seconds until the first converge logs that it serves its
version, and whether the guest kernel isolated page tables (its Meltdown mitigation, which it
turns on for Intel models that do not report themselves immune). Prints each model's ratio to
the first, writes build/bench/cpu-model.json. Numbers are printed, never asserted; the guest runs
under TCG.

    bench-cpu-model [--models qemu64 max "qemu64 mitigations=off"]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from bench.vms import first_converge, save, side_by_side
from localvm.stack import LocalStack

# LocalVM reads LOCALVM_CPU when it is made (in LocalStack.start): one start at a time.
STARTING = threading.Lock()


def boot(variant: str, results: dict[str, dict]) -> None:
    model, *kernel_args = variant.split()
    workdir = Path(tempfile.mkdtemp(prefix="hello-cpu-model-"))
    stack = LocalStack(workdir, kernel_args=tuple(kernel_args))
    with STARTING:
        os.environ["LOCALVM_CPU"] = model
        started = time.monotonic()
        stack.start()
    try:
        results[variant] = first_converge(stack, started) | {
            "page_table_isolation": "page tables isolation: enabled" in stack.vm.serial_text(),
        }
    finally:
        stack.stop(discard=True)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["qemu64", "max"],
        help='a -cpu model, then any kernel arguments: "qemu64 mitigations=off"',
    )
    args = parser.parse_args()
    os.environ["LOCALVM_VCPUS"] = "1"
    results: dict[str, dict] = {}
    side_by_side(boot, [(model, results) for model in args.models])
    if len(results) != len(args.models):
        raise SystemExit(f"{len(args.models) - len(results)} VMs did not converge")
    first = results[args.models[0]]
    for model in args.models:
        row = results[model]
        print(
            f"-cpu {model}: first converge {row['wall_s']:.0f} s"
            f" ({row['wall_s'] / first['wall_s']:.2f}x), qemu CPU {row['cpu_s']:.0f} s"
            f" ({row['cpu_s'] / first['cpu_s']:.2f}x), page table isolation"
            f" {'on' if row['page_table_isolation'] else 'off'}"
        )
    save("cpu-model.json", results)


if __name__ == "__main__":
    main()
