"""A hard reset of the local VM: a new qemu process on the same disk (LocalVM.reset) against
QMP's `system_reset` in the same process, side by side.

Boots two fresh VMs at once (1 vCPU each, as the e2e lanes run them), lets each converge, gives
both the same work (an `apt-get update` and a reinstall of nginx, as the reset test's converge
does before its power cut), then resets both at once, one each way, and records the seconds from
the reset until the next boot's converge serves, and the vCPU stalls its kernel reported (`soft
lockup`, `Long readout interval`). Prints both and their ratio, writes build/bench/reset.json.
Numbers are printed, never asserted; the guest runs under TCG.

    bench-reset
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

from bench.vms import CONVERGED, TIMEOUT, save, side_by_side
from localvm.stack import LocalStack

WORK = "apt-get update -q && apt-get install -y -q --reinstall nginx-common nginx"
STAMP = r"\[\s*(\d+\.\d+)\][^\n]*"


def run(how: str, ready: threading.Barrier, results: dict[str, dict]) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="hello-reset-"))
    stack = LocalStack(workdir)
    stack.start()
    try:
        stack.vm.wait_serial(CONVERGED, timeout=TIMEOUT)
        stack.vm.wait_guest_agent(timeout=300)
        code, _, err = stack.vm.guest_exec(WORK, timeout=TIMEOUT)
        if code != 0:
            raise RuntimeError(f"the guest's work failed: {err}")
        ready.wait()
        mark = len(stack.vm.serial_text())
        started = time.monotonic()
        if how == "system_reset":
            stack.vm.qmp("system_reset")
        else:
            stack.vm.reset()
        log = stack.vm.wait_serial(CONVERGED, start=mark, timeout=TIMEOUT)
        startup = re.search(STAMP + "hello-startup: converging", log)
        results[how] = {
            "reset_to_converged_s": time.monotonic() - started,
            "kernel_to_startup_script_s": float(startup.group(1)) if startup else None,
            "stalls": log.count("soft lockup") + log.count("Long readout interval"),
        }
    finally:
        stack.stop(discard=True)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    os.environ.setdefault("LOCALVM_VCPUS", "1")
    results: dict[str, dict] = {}
    ready = threading.Barrier(2, timeout=TIMEOUT)
    side_by_side(run, [(how, ready, results) for how in ("new process", "system_reset")])
    if len(results) != 2:
        raise SystemExit(f"only {list(results)} finished")
    for how, row in results.items():
        print(
            f"{how}: reset -> converged {row['reset_to_converged_s']:.0f} s, kernel -> startup"
            f" script {row['kernel_to_startup_script_s'] or 0:.0f} s, vCPU stalls reported"
            f" {row['stalls']}"
        )
    old, new = (results[how]["reset_to_converged_s"] for how in ("system_reset", "new process"))
    print(f"system_reset / new process: {old / new:.2f}x")
    save("reset.json", results)


if __name__ == "__main__":
    main()
