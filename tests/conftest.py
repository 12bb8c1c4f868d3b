"""Shared fixtures: call a template's GenerateConfig the way Deployment Manager does.

`render(template, properties)` builds `context` with the renderer's own code
(dmlocal.expand.template_context): `env` with every documented key, `properties` after the
template's schema has filled in defaults (and rejected bad input), and `imports` holding every
file deployment.yaml imports (schemas included), read from the working tree as gcloud uploads
them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from xdist.scheduler import LoadGroupScheduling

from dmlocal.expand import default_env, read_files, template_context

REPO = Path(__file__).resolve().parent.parent

# What an operator's checkout of the stack holds: the config, the templates, the app.
STACK_FILES = [
    "deployment.yaml",
    "app",
    *(f"{t}{s}" for t in ("network.py", "firewall.py", "vm.py") for s in ("", ".schema")),
]

# The Makefile runs pytest with `-n auto --dist loadgroup` (pytest-xdist): each group goes to one
# worker whole, in file order. The tests that boot a VM (TCG keeps about one core busy each) form
# two lanes, so two VMs run at once and never more; every other module is a group of its own.
VM_LANE_1 = pytest.mark.xdist_group("vm-lane-1")
VM_LANE_2 = pytest.mark.xdist_group("vm-lane-2")
VM_LANES = 2
LANE_GROUPS = frozenset(lane.args[0] for lane in (VM_LANE_1, VM_LANE_2))
# Modules that spend most of their time waiting on timers (a CA's retry backoff, certificates
# that live 30 s): queued right behind the lanes, their waits overlap the busiest minutes instead
# of being the run's last ones (in file order this one ended a run alone, cores idle).
WAITING_MODULES = ("tests/stack/test_https.py",)
MACHINE_SPEED = pytest.StashKey[float]()


def vcpus_per_vm(cpus: int) -> int:
    """vCPUs for each VM the lanes boot (localvm reads LOCALVM_VCPUS): the usable CPUs shared
    by the lanes, at most e2-small's 2. More vCPUs than cores make both guests slower
    (docs/benchmarks.md, `make bench-vcpus`)."""
    return max(1, min(2, cpus // VM_LANES))


def pytest_configure(config):
    # Inherited by `make up` and localvm when a test runs them.
    os.environ.setdefault("LOCALVM_VCPUS", str(vcpus_per_vm(usable_cpus())))


# The loop docs/testing.md times with `python3 -c`, at module level as there (global names: a
# function's locals would run it about three times faster, another number).
SPEED_LOOP = "s = 0\nfor i in range(20_000_000):\n    s += i\n"


def machine_speed() -> float:
    """CPU seconds SPEED_LOOP takes. The CPU the same suite uses moves by half between hours of a
    shared machine (docs/testing.md); read at a run's start and end and printed in its summary,
    it says which hour a run's time comes from."""
    started = time.process_time()
    exec(SPEED_LOOP, {})
    return time.process_time() - started


def pytest_addoption(parser):
    # An option, not the default: the pytest runs some tests start (tests/tooling/test_lanes.py)
    # would each pay the loop too, and a quick run by hand has no use for it.
    parser.addoption(
        "--machine-speed",
        action="store_true",
        help="time a fixed loop at the run's start and end and print both in the summary "
        "(make's pytest runs pass it)",
    )


@pytest.hookimpl(tryfirst=True)  # before xdist starts the workers: the cores are quiet
def pytest_sessionstart(session):
    config = session.config
    # Workers get the controller's options; only the controller reads the speed.
    if config.getoption("machine_speed") and not hasattr(config, "workerinput"):
        config.stash[MACHINE_SPEED] = machine_speed()


def pytest_terminal_summary(terminalreporter, config):
    if MACHINE_SPEED in config.stash:
        terminalreporter.write_line(
            f"machine speed: a fixed loop took {config.stash[MACHINE_SPEED]:.2f} s of CPU at the "
            f"start and {machine_speed():.2f} s at the end (Python "
            f"{sys.version_info.major}.{sys.version_info.minor}; docs/testing.md)"
        )


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the groups
def pytest_collection_modifyitems(config, items):
    """Every other module is a group of its own. Left ungrouped, loadgroup would share a module's
    tests out one by one, and each worker would set up the module's fixtures again: a module's
    tests expect its module-scoped fixtures once, in file order (tests/stack/test_https.py's
    nginx front has a certificate only after the test that issues it)."""
    # A worker sees `dist` as "no" and `loadgroup` set; the controller (and a run without -n)
    # sees `dist`.
    if not (
        getattr(config.option, "loadgroup", False) or config.getoption("dist", "no") == "loadgroup"
    ):
        return
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))

    def queue_position(item) -> int:
        group = item.get_closest_marker("xdist_group").args[0]
        return 0 if group in LANE_GROUPS else 1 if group in WAITING_MODULES else 2

    items.sort(key=queue_position)  # stable: file order within each


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may use: its affinity, capped by the container's CPU quota. In a
    container the affinity lists every host CPU; the quota is what the job paid for (CircleCI's
    Docker executor shows 36 CPUs to a 4-CPU `large` job:
    https://jahed.dev/2022/11/20/fixing-node-js-multi-threading-on-circleci/). A container sees
    its own cgroup at the root of /sys/fs/cgroup."""
    cpus = len(os.sched_getaffinity(0))
    quota = period = None
    if (cgroup / "cpu.max").is_file():  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"
        quota, period = (cgroup / "cpu.max").read_text().split()
    elif (cgroup / "cpu" / "cpu.cfs_quota_us").is_file():  # cgroup v1: -1 for none
        quota = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text().strip()
        period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()
    if quota not in (None, "max", "-1"):
        cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    return cpus


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # optional: `-p no:xdist` still works
def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per usable CPU, plus one when the VM lanes may run (`-m` does not
    exclude e2e). A lane's worker only drives its VM, which is often idle (waiting out a release's
    watch, a timer, a test's poll): without the extra worker the host tests queue behind the
    lanes and run after them. PYTEST_XDIST_AUTO_NUM_WORKERS still overrides it."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    lanes_run = "not e2e" not in (config.getoption("markexpr") or "")
    return usable_cpus() + lanes_run


class LaneScheduling(LoadGroupScheduling):
    """`--dist loadgroup`, except for what a VM lane's worker is given next: the group with the
    fewest tests, not the next in the queue. xdist gives a worker its next group once two tests
    or fewer of its own are left, and the worker must have it to run its last test (it runs a
    test once it knows the next; LoadScopeScheduling._reschedule and xdist.remote, pytest-xdist
    3.8, pinned in tools/requirements.txt). Behind a lane, that group waits out the lane's last,
    slowest tests and runs after everything else: the smaller it is, the shorter that tail."""

    def _assign_work_unit(self, node) -> None:
        if any(scope in LANE_GROUPS for scope in self.assigned_work.get(node, {})):
            smallest = min(self.workqueue, key=lambda scope: len(self.workqueue[scope]))
            self.workqueue.move_to_end(smallest, last=False)
        super()._assign_work_unit(node)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    return LaneScheduling(config, log) if config.getoption("dist") == "loadgroup" else None


def startup_version(*pairs: str) -> str:
    """app/startup.sh's version digest of KEY=FILE pairs: what a VM reports in /healthz."""
    result = subprocess.run(
        ["bash", str(REPO / "app/startup.sh"), "version", *pairs],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def tamper_hashes(requirements: str, package: str) -> str:
    """The pins with every hash of `package` replaced by one no file on PyPI has."""
    lines, inside = [], False
    for line in requirements.splitlines(keepends=True):
        if not line.startswith(" "):
            inside = line.lower().startswith(f"{package}==")
        elif inside and "--hash=sha256:" in line:
            line = re.sub(r"[0-9a-f]{64}", hashlib.sha256(b"tampered").hexdigest(), line)
        lines.append(line)
    return "".join(lines)


def copy_stack(destination: Path, *also: str) -> Path:
    """A private copy of the stack, and of the repo paths in ALSO, for tests that edit it as an
    operator would."""
    for path in (*STACK_FILES, *also):
        source = REPO / path
        if source.is_dir():
            shutil.copytree(source, destination / path)
        else:
            shutil.copy(source, destination / path)
    return destination


def run_dmlocal(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """`dmlocal ARGS`, the command `make` installs into the venv, run as an operator runs it."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "dmlocal"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )


def deployment_imports() -> dict[str, str]:
    """Every file deployment.yaml imports, by import name, as the renderer reads them."""
    config = REPO / "deployment.yaml"
    return {name: text for name, text in read_files(config).items() if name != str(config)}


def deployment_properties(resource_name: str) -> dict:
    config = yaml.safe_load((REPO / "deployment.yaml").read_text())
    for resource in config["resources"]:
        if resource["name"] == resource_name:
            return resource.get("properties", {})
    raise KeyError(resource_name)


def load_template(filename: str):
    spec = importlib.util.spec_from_file_location(
        f"template_{Path(filename).stem}", REPO / filename
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dm_context(template: str, name: str, properties: dict, imports: dict | None = None):
    if imports is None:
        imports = deployment_imports()
    env = default_env(project="test-project", username="ci@test-project.iam.gserviceaccount.com")
    return template_context(template, name, properties, env, imports, file="test")


def render(template: str, name: str, properties: dict, imports: dict | None = None) -> dict:
    """Runs `template`'s GenerateConfig on a DM-like context and returns what it returned."""
    context = dm_context(template, name, properties, imports)
    return load_template(template).GenerateConfig(context)


def by_name(result: dict) -> dict[str, dict]:
    return {resource["name"]: resource for resource in result["resources"]}


@pytest.fixture
def repo() -> Path:
    return REPO
