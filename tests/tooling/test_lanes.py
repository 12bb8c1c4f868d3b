"""How `make test` shares the machine: one pytest worker per usable CPU, the VM tests in two lanes
(tests/conftest.py), and the vCPUs each lane's VM gets."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

import tests.conftest as conftest
from localvm.image import Image
from localvm.vm import LocalVM
from tests.conftest import REPO, usable_cpus

LIST_LANES = """
import pytest

class Lanes:
    def pytest_collection_finish(self, session):
        for item in session.items:
            groups = ",".join(mark.args[0] for mark in item.iter_markers("xdist_group"))
            e2e = "e2e" if item.get_closest_marker("e2e") else "-"
            print("LANE", item.nodeid, groups, e2e, sep="\\t")

pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "--dist", "loadgroup"],
            plugins=[Lanes()])
"""


def test_vm_tests_keep_to_two_lanes_that_start_first_and_modules_stay_whole():
    """A VM test outside the lanes would boot a third VM beside the two; a module split across
    workers would set up its module-scoped fixtures twice and lose its file order; lanes that
    are not first in the queue would start late and lengthen the run, and so would a module that
    mostly waits if it came last (tests/conftest.py)."""
    listing = subprocess.run(
        [sys.executable, "-c", LIST_LANES], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    rows = [line.split("\t")[1:] for line in listing.splitlines() if line.startswith("LANE\t")]
    assert len(rows) >= 400, listing
    lanes: dict[str, set[str]] = {}
    for nodeid, group, e2e in rows:
        module = nodeid.split("::")[0]
        if e2e == "e2e":
            assert group in ("vm-lane-1", "vm-lane-2"), (nodeid, group)
            lanes.setdefault(module, set()).add(group)
        else:
            assert group == module, (nodeid, group)
    assert all(len(module_lanes) == 1 for module_lanes in lanes.values()), lanes
    assert set().union(*lanes.values()) == {"vm-lane-1", "vm-lane-2"}, lanes
    groups_in_order = list(dict.fromkeys(group for _, group, _ in rows))
    assert set(groups_in_order[:2]) == {"vm-lane-1", "vm-lane-2"}, groups_in_order[:4]
    # Right behind them, the modules that mostly wait, so their waits overlap the lanes' work.
    waiting = len(conftest.WAITING_MODULES)
    assert groups_in_order[2 : 2 + waiting] == list(conftest.WAITING_MODULES), groups_in_order[:4]
    rest = groups_in_order[2 + waiting :]
    assert rest == sorted(rest), "after them, file order"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "max 100000\n"}, "affinity"),
        ({"cpu.max": "200000 100000\n"}, 2),
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: two workers, each busy part-time
        ({"cpu.max": "50000 100000\n"}, 1),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, "affinity"),
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
        ({}, "affinity"),
    ],
)
def test_workers_follow_the_cgroup_cpu_quota_not_the_hosts_cpus(
    tmp_path, monkeypatch, files, expected
):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(36)))
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert usable_cpus(tmp_path) == (36 if expected == "affinity" else expected)


def test_make_runs_one_worker_per_usable_cpu_and_one_more_beside_the_lanes(
    pytestconfig, monkeypatch
):
    result = subprocess.run(
        ["make", "-n", "pytest"], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert "-n auto --dist loadgroup" in result.stdout
    if not pytestconfig.pluginmanager.has_plugin("xdist"):
        pytest.skip("pytest-xdist is disabled (-p no:xdist): no workers to count")
    # `-n auto` asks this hook; ours answers before xdist's own, which counts the host's CPUs.
    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS", raising=False)
    monkeypatch.setattr(conftest, "usable_cpus", lambda: 3)
    monkeypatch.setattr(pytestconfig.option, "markexpr", "not e2e")
    assert pytestconfig.hook.pytest_xdist_auto_num_workers(config=pytestconfig) == 3
    # With the VM lanes, one more: a lane's worker mostly waits on its VM.
    monkeypatch.setattr(pytestconfig.option, "markexpr", "")
    assert pytestconfig.hook.pytest_xdist_auto_num_workers(config=pytestconfig) == 4


def test_a_worker_runs_each_module_whole():
    """In a worker, xdist sets `dist` to "no" and `loadgroup` on: the grouping must happen there,
    where the test ids get their group suffix, not only in a run without workers."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_XDIST_AUTO_NUM_WORKERS"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v", "-p",
         "no:cacheprovider", "tests/tooling/test_lanes.py", "-k", "quota"],
        cwd=REPO, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout
    passed = [line for line in run.stdout.splitlines() if " PASSED " in line]
    assert len(passed) == 7, run.stdout
    assert all(line.rstrip().endswith("@tests/tooling/test_lanes.py") for line in passed), passed


@pytest.mark.parametrize(("cpus", "vcpus"), [(1, 1), (2, 1), (3, 1), (4, 2), (36, 2)])
def test_each_lanes_vm_gets_its_share_of_the_cpus_at_most_e2_smalls_two(cpus, vcpus):
    assert conftest.vcpus_per_vm(cpus) == vcpus


def test_localvm_boots_the_vcpus_the_tests_ask_for_and_e2_smalls_two_otherwise(
    tmp_path, monkeypatch
):
    def smp() -> str:
        command = LocalVM(Image(tmp_path), tmp_path, metadata_port=1).command()
        return command[command.index("-smp") + 1]

    assert os.environ["LOCALVM_VCPUS"] == str(conftest.vcpus_per_vm(conftest.usable_cpus()))
    monkeypatch.setenv("LOCALVM_VCPUS", "1")
    assert smp() == "1"
    monkeypatch.delenv("LOCALVM_VCPUS")
    assert smp() == "2"


class FakeWorker:
    """What xdist's scheduler calls on a worker: the tests it is sent, in order."""

    def __init__(self, name: str) -> None:
        self.gateway = SimpleNamespace(id=name)
        self.shutting_down, self.sent = False, []

    def send_runtest_some(self, indices) -> None:
        self.sent.extend(indices)

    def shutdown(self) -> None:
        self.shutting_down = True


def test_a_lane_worker_is_given_the_smallest_group_next():
    """With xdist's own loadgroup, the worker of a lane down to its last two tests is given the
    next module in the queue, which then waits for the lane's slowest tests and runs last; ours
    gives it the module with the fewest tests (tests/conftest.py)."""
    collection = [
        "tests/e2e/test_vm.py::test_boot@vm-lane-1",
        "tests/e2e/test_vm.py::test_reset@vm-lane-1",
        "tests/e2e/test_vm.py::test_release@vm-lane-1",
        *(f"tests/stack/test_a.py::test_{n}@tests/stack/test_a.py" for n in range(3)),
        *(f"tests/stack/test_b.py::test_{n}@tests/stack/test_b.py" for n in range(2)),
        "tests/stack/test_c.py::test_0@tests/stack/test_c.py",
    ]
    config = SimpleNamespace(
        getvalue=lambda name: ["2*popen"] if name == "tx" else None,
        option=SimpleNamespace(loadscopereorder=False),
    )
    scheduler = conftest.LaneScheduling(config)
    lane, host = FakeWorker("lane"), FakeWorker("host")
    for worker in (lane, host):
        scheduler.add_node(worker)
        scheduler.add_node_collection(worker, collection)
    scheduler.schedule()
    assert (lane.sent, host.sent) == ([0, 1, 2], [3, 4, 5])
    scheduler.mark_test_complete(lane, 0)  # two lane tests left: it needs a next group
    assert lane.sent == [0, 1, 2, 8]  # test_c, not test_b, the next in the queue
    scheduler.mark_test_complete(host, 3)
    assert host.sent == [3, 4, 5, 6, 7]
