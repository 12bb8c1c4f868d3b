"""How long an operator waits for `make preview`: render plus full validation of deployment.yaml.

Two figures, both medians over N runs:
  * cli:        wall time of `dmlocal preview deployment.yaml` as a fresh process,
                exactly what `make preview` runs (interpreter start, imports, reading the
                5 MB Compute Engine discovery document, expansion, API and semantic checks,
                firewall table, YAML output). This is the number the 1 s target is about.
  * in-process: the same work inside one Python process with every cache cleared per run
                (expand, validate, firewall table, YAML render), i.e. the cost without start-up.
Plus a per-stage breakdown of one in-process run. Target: cli median <= 1 s, so previewing
after every edit costs nothing. The same figures, measured in the same run, for a larger config
(tools/bench/nested50: 50 resources from three levels of templates), whose target is 2 s: a
team's deployment grows, and the dry run must stay something they run on every edit. The
figures are printed, never asserted: a busy CI machine must not fail the build.

    bench-preview [--runs 15] [--config deployment.yaml] [--large tools/bench/nested50/config.yaml]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time

from dmlocal import compute_api, preview, reachability
from dmlocal.expand import default_env, expand_path
from dmlocal.schema import load_schema
from dmlocal.validate import validate
from localvm.stack import REPO

TARGET_S = 1.0
LARGE_CONFIG = "tools/bench/nested50/config.yaml"
LARGE_TARGET_S = 2.0


def cli_once(config: str) -> tuple[float, float]:
    """(wall, CPU) seconds of one `dmlocal preview`; CPU time stays honest on a busy machine."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "dmlocal", "preview", config],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"preview failed (exit {result.returncode}):\n{result.stderr}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return elapsed, cpu


def in_process_once(config: str) -> dict[str, float]:
    compute_api.discovery.cache_clear()
    compute_api.method_for.cache_clear()
    load_schema.cache_clear()
    marks = {}
    t0 = time.perf_counter()
    expansion = expand_path(config, default_env())
    t1 = time.perf_counter()
    findings = validate(expansion)
    t2 = time.perf_counter()
    for vm in reachability.instance_targets(expansion.resources, expansion.layout):
        preview.firewall_table(expansion.resources, vm, expansion.layout)
    t3 = time.perf_counter()
    preview.render_yaml(expansion)
    t4 = time.perf_counter()
    if any(f.severity == "error" for f in findings):
        sys.exit("the config has errors; benchmark a valid one")
    marks["expand"] = t1 - t0
    marks["validate (API schema + semantics)"] = t2 - t1
    marks["firewall table"] = t3 - t2
    marks["YAML render"] = t4 - t3
    marks["total"] = t4 - t0
    return marks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--config", default="deployment.yaml")
    parser.add_argument("--large", default=LARGE_CONFIG)
    args = parser.parse_args()
    print(f"bench_preview: {args.runs} runs each, Python {sys.version.split()[0]}")
    for config, target in ((args.config, TARGET_S), (args.large, LARGE_TARGET_S)):
        report(config, args.runs, target)
    return 0


def report(config: str, runs_wanted: int, target: float) -> None:
    cli_once(config)  # warm the OS page cache and .pyc files, as a second `make preview` is
    measured = [cli_once(config) for _ in range(runs_wanted)]
    cli = [wall for wall, _ in measured]
    cpu = [used for _, used in measured]
    runs = [in_process_once(config) for _ in range(runs_wanted)]

    def ms(seconds: float) -> str:
        return f"{seconds * 1000:7.1f} ms"

    print(f"{config}:")
    print(
        f"  cli        median {ms(statistics.median(cli))}  min {ms(min(cli))}  "
        f"max {ms(max(cli))}   (target <= {target * 1000:.0f} ms)"
    )
    print(f"  cli CPU    median {ms(statistics.median(cpu))}  (user + system, the process alone)")
    totals = [r["total"] for r in runs]
    print(
        f"  in-process median {ms(statistics.median(totals))}  min {ms(min(totals))}  "
        f"max {ms(max(totals))}"
    )
    print("  in-process stages (median):")
    for stage in runs[0]:
        if stage != "total":
            print(f"    {stage:<36} {ms(statistics.median(r[stage] for r in runs))}")
    verdict = "meets" if statistics.median(cli) <= target else "MISSES"
    print(f"  {verdict} the {target:.0f} s target ({statistics.median(cli) / target:.2f}x)")


if __name__ == "__main__":
    sys.exit(main())
