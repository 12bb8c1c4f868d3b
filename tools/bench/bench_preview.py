"""How long an operator waits for `make preview`: render plus full validation of deployment.yaml.

Two figures, both medians over N runs:
  * cli:        wall time of `dmlocal preview deployment.yaml` as a fresh process,
                exactly what `make preview` runs (interpreter start, imports, reading the
                5 MB Compute Engine discovery document, expansion, API and semantic checks,
                firewall table, YAML output). This is the number the 1 s target is about.
  * in-process: the same work inside one Python process with every cache cleared per run
                (expand, validate, firewall table, YAML render), i.e. the cost without start-up.
Plus a per-stage breakdown of one in-process run. Target: cli median <= 1 s, so previewing
after every edit costs nothing. The figures are printed, never asserted: a busy CI machine must
not fail the build.

    bench-preview [--runs 15] [--config deployment.yaml]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from dmlocal import compute_api, preview, reachability
from dmlocal.expand import default_env, expand_path
from dmlocal.validate import validate
from localvm.stack import REPO

TARGET_S = 1.0


def cli_once(config: str) -> float:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "dmlocal", "preview", config],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"preview failed (exit {result.returncode}):\n{result.stderr}")
    return elapsed


def in_process_once(config: str) -> dict[str, float]:
    compute_api.discovery.cache_clear()
    compute_api.method_for.cache_clear()
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
    args = parser.parse_args()

    cli_once(args.config)  # warm the OS page cache and .pyc files, as a second `make preview` is
    cli = [cli_once(args.config) for _ in range(args.runs)]
    runs = [in_process_once(args.config) for _ in range(args.runs)]

    def ms(seconds: float) -> str:
        return f"{seconds * 1000:7.1f} ms"

    print(f"bench_preview: {args.config}, {args.runs} runs, Python {sys.version.split()[0]}")
    print(
        f"  cli        median {ms(statistics.median(cli))}  min {ms(min(cli))}  "
        f"max {ms(max(cli))}   (target <= {TARGET_S * 1000:.0f} ms)"
    )
    totals = [r["total"] for r in runs]
    print(
        f"  in-process median {ms(statistics.median(totals))}  min {ms(min(totals))}  "
        f"max {ms(max(totals))}"
    )
    print("  in-process stages (median):")
    for stage in runs[0]:
        if stage != "total":
            print(f"    {stage:<36} {ms(statistics.median(r[stage] for r in runs))}")
    verdict = "meets" if statistics.median(cli) <= TARGET_S else "MISSES"
    print(f"  {verdict} the {TARGET_S:.0f} s target ({statistics.median(cli) / TARGET_S:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
