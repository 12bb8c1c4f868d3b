"""How long `scripts/deploy.sh` takes with each engine, and how many gcloud calls it makes.

Both engines run in the same session, one after the other, each against its local emulators
(localvm.deploy.emulated_google): Deployment Manager, or Infrastructure Manager with Cloud
Storage. The real gcloud 528 and the real script run; Google's servers are emulated, so the
figures are the client side (gcloud start-up, uploads, operation polling) plus the emulators'
work, not Google's. A cloud deploy also waits for Compute Engine.

For each engine and run: the wall time of a create (an empty project, authentication with a
service-account key included, as in CI) and of an update (one firewall rule's source range
changed), and the gcloud processes each started, counted by a wrapper on PATH that logs its
arguments and then runs the real gcloud. Medians are printed, never asserted.

    bench-deploy [--runs 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from localvm.deploy import emulated_google
from localvm.stack import REPO

ENGINES = ("dm", "infra-manager")
STACK_FILES = (
    "deployment.yaml",
    "app",
    *(f"{t}{s}" for t in ("network.py", "firewall.py", "vm.py") for s in ("", ".schema")),
)


def counting_gcloud(directory: Path, log: Path) -> None:
    real = shutil.which("gcloud")
    script = directory / "gcloud"
    script.write_text(f'#!/bin/sh\necho "$1 $2 $3" >> "{log}"\nexec "{real}" "$@"\n')
    script.chmod(0o755)


def stack_copy(directory: Path, ssh_range: str) -> Path:
    """deployment.yaml, the templates and app/, with the SSH rule's source range set."""
    directory.mkdir(parents=True)
    for name in STACK_FILES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, directory / name)
        else:
            shutil.copy(REPO / name, directory / name)
    config = directory / "deployment.yaml"
    config.write_text(config.read_text().replace("- 104.154.0.0/15", f"- {ssh_range}", 1))
    return directory


def run_once(engine: str, project: str, work: Path) -> dict[str, tuple[float, int]]:
    log = work / "gcloud.log"
    bin_dir = work / "bin"
    bin_dir.mkdir()
    counting_gcloud(bin_dir, log)
    figures = {}
    with emulated_google(project, engine) as (env, _):
        env = {**env, "PATH": f"{bin_dir}:{env['PATH']}"}
        for step, ssh_range in (("create", "104.154.0.0/15"), ("update", "104.154.0.0/16")):
            stack = stack_copy(work / step, ssh_range)
            log.write_text("")
            start = time.perf_counter()
            result = subprocess.run(
                ["bash", str(REPO / "scripts" / "deploy.sh")],
                cwd=stack,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            elapsed = time.perf_counter() - start
            if result.returncode != 0:
                raise SystemExit(f"{engine} {step} failed ({result.returncode}):\n{result.stderr}")
            figures[step] = (elapsed, len(log.read_text().splitlines()))
            figures[step + "-calls"] = log.read_text().split("\n")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    results: dict[str, dict[str, list]] = {e: {"create": [], "update": []} for e in ENGINES}
    calls: dict[tuple[str, str], list[str]] = {}
    for run in range(args.runs):
        for engine in ENGINES:  # alternate, so both see the same machine load
            with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
                figures = run_once(engine, f"bench-{run}", Path(tmp))
            for step in ("create", "update"):
                results[engine][step].append(figures[step])
                calls[(engine, step)] = [c for c in figures[step + "-calls"] if c]
    print(f"scripts/deploy.sh, medians of {args.runs} runs (gcloud 528, local emulators)")
    print(f"{'engine':<14} {'create s':>9} {'update s':>9} {'gcloud calls create/update':>28}")
    for engine in ENGINES:
        create = statistics.median(t for t, _ in results[engine]["create"])
        update = statistics.median(t for t, _ in results[engine]["update"])
        counts = f"{results[engine]['create'][-1][1]} / {results[engine]['update'][-1][1]}"
        print(f"{engine:<14} {create:>9.1f} {update:>9.1f} {counts:>28}")
    for (engine, step), lines in calls.items():
        print(f"  {engine} {step}: " + "; ".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
