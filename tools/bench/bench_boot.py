"""Boot benchmark for the local VM (not a test: it prints figures, it asserts nothing).

Medians over N fresh VMs (default 3) of:
- cold boot -> first 200 on / (a new overlay on the image: the startup script installs
  nginx with apt, uv and the pinned requirements from PyPI), target <= 90 s under TCG;
- reset -> 200 (hard reset, like `gcloud compute instances reset`), target <= 25 s;
- kill -9 of gunicorn's main process -> 200 (systemd's Restart=always), target <= 5 s;
- image build, first (into an empty cache) and cached (a hit).
Also breaks the cold boot down from the serial log: kernel -> startup script start -> apt done ->
venv done -> serving.

Usage: bench-boot [--runs 3] [--image-runs 1] [--json build/artifacts/...]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from localvm import image as image_module
from localvm.stack import ARTIFACTS, SERVING_UNIT, LocalStack, app_greeting, render_preview

TARGETS = {"cold_boot_s": 90, "reset_s": 25, "kill9_s": 5}
_STAMP = re.compile(r"^\[\s*(\d+\.\d+)\]")


def serial_phases(text: str) -> dict[str, float]:
    """Guest-clock seconds (kernel timestamps on the serial log) at which each phase ended."""
    marks = {
        "startup_script_started": "Starting startup scripts",
        "packages_installed": "hello-startup: building venv",
        "venv_built": "hello-startup: venv built in",
        "serving": "hello-startup: serving on :80",
    }
    phases = {}
    for line in text.splitlines():
        match = _STAMP.match(line)
        for name, needle in marks.items():
            if match and needle in line and name not in phases:
                phases[name] = float(match.group(1))
    return phases


def bench_image(runs: int) -> dict[str, list[float]]:
    first, cached = [], []
    for _ in range(runs):
        root = Path(tempfile.mkdtemp(prefix="hello-image-bench-"))
        try:
            started = time.monotonic()
            image_module.ensure_image(root)
            first.append(time.monotonic() - started)
            started = time.monotonic()
            image_module.ensure_image(root)
            cached.append(time.monotonic() - started)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return {"image_build_first_s": first, "image_build_cached_s": cached}


def bench_boots(runs: int, kills: int) -> dict[str, list]:
    expanded = render_preview()
    image = image_module.ensure_image()
    greeting = app_greeting()
    results: dict[str, list] = {"cold_boot_s": [], "reset_s": [], "kill9_s": [], "phases": []}
    for run in range(runs):
        workdir = Path(tempfile.mkdtemp(prefix="hello-bench-"))
        stack = LocalStack(workdir, expanded=expanded, image=image)
        try:
            started = time.monotonic()
            stack.start()
            cold = stack.vm.wait_http("/", timeout=1200, expect=greeting, interval=0.1)
            results["cold_boot_s"].append(time.monotonic() - started)
            stack.vm.wait_serial("hello-startup: serving on :80", timeout=300)
            results["phases"].append(serial_phases(stack.vm.serial_text()))
            print(f"run {run + 1}: cold boot -> 200 in {cold:.1f} s", flush=True)

            stack.vm.wait_guest_agent(timeout=120)
            for _ in range(kills):
                _code, out, _ = stack.vm.guest_exec(
                    f"systemctl show --property=MainPID --value {SERVING_UNIT}"
                )
                pid = int(out)
                stack.vm.guest_exec(f"kill -9 {pid}")
                killed = time.monotonic()
                stack.vm.wait_http("/", timeout=120, expect=greeting, interval=0.05)
                results["kill9_s"].append(time.monotonic() - killed)
                print(f"run {run + 1}: kill -9 -> 200 in {results['kill9_s'][-1]:.2f} s")
                # Let the new master finish booting its workers before the next kill.
                time.sleep(3)

            mark = len(stack.vm.serial_text())
            reset = time.monotonic()
            stack.vm.reset()
            stack.vm.wait_http("/", timeout=600, expect=greeting, interval=0.1)
            results["reset_s"].append(time.monotonic() - reset)
            print(f"run {run + 1}: reset -> 200 in {results['reset_s'][-1]:.1f} s", flush=True)
            stack.vm.wait_serial("hello-startup: serving on :80", start=mark, timeout=300)
        finally:
            stack.stop()
            shutil.rmtree(workdir, ignore_errors=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh VMs (cold boots, resets)")
    parser.add_argument("--kills", type=int, default=3, help="kill -9 rounds per VM")
    parser.add_argument("--image-runs", type=int, default=1, help="image builds from scratch")
    parser.add_argument("--json", type=Path, default=ARTIFACTS / "bench_boot.json")
    args = parser.parse_args()

    results: dict[str, list] = {}
    if args.image_runs:
        results.update(bench_image(args.image_runs))
    if args.runs:
        results.update(bench_boots(args.runs, args.kills))

    print(f"\n{'measure':<24}{'median':>10}{'min':>10}{'max':>10}{'n':>4}{'target':>10}")
    for name, values in results.items():
        if name == "phases" or not values:
            continue
        target = TARGETS.get(name)
        digits = 3 if max(values) < 1 else 1  # a cache hit takes milliseconds
        print(
            f"{name:<24}{statistics.median(values):>10.{digits}f}{min(values):>10.{digits}f}"
            f"{max(values):>10.{digits}f}{len(values):>4}"
            f"{'<= ' + str(target) if target else '':>10}"
        )
    if results.get("phases"):
        print("\ncold boot phases (guest clock, s since kernel start; medians):")
        for phase in results["phases"][0]:
            values = [p[phase] for p in results["phases"] if phase in p]
            print(f"  {phase:<24}{statistics.median(values):>8.1f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nraw figures: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
