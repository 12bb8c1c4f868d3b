"""What the local-VM benchmarks share: fresh VMs started side by side, the wait for a first
converge with what it cost, and the report under build/bench/."""

from __future__ import annotations

import json
import os
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
    stack.vm.wait_serial(CONVERGED, timeout=TIMEOUT - (time.monotonic() - started))
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
