"""bench-redeploy's accounting (tools/bench/bench_redeploy.py), on the host without a VM: which
requests count as during a redeploy, and that a slow answer does not hide the requests after it.
Nothing is emulated; the request in the loop test is a stand-in that sleeps, because what is
tested is the loop's schedule, not HTTPS."""

from __future__ import annotations

import itertools
import time

from bench import bench_redeploy
from bench.bench_redeploy import Loop, ratios, summarize


def test_requests_count_by_when_they_were_sent():
    """A request sent inside a redeploy's window counts for that redeploy even if it failed after
    the window closed; failures between redeploys are reported apart, and failed requests have no
    latency in either p99."""
    samples = [(float(t), 0.1, "") for t in range(100)]  # one request a second, 100 ms each
    samples[15] = (15.0, None, "0 at 00:00:45: sent in redeploy 1, timed out after it")
    samples[16] = (16.0, 2.0, "")  # the slow one during redeploy 1
    samples[50] = (50.0, None, "502 at 00:00:50: between redeploys")
    samples[71] = (71.0, None, "502 at 00:01:11: redeploy 2")
    summary = summarize(samples, [(10.0, 20.0), (70.0, 75.0)])
    assert summary["requests"] == 100
    assert summary["failed"] == 3
    assert summary["failed_per_redeploy"] == [1, 1]
    assert summary["failed_per_redeploy_mean"] == 1
    assert summary["failed_outside_redeploys"] == 1
    assert summary["failures_by_status"] == {"0": 1, "502": 2}
    assert summary["requests_during_redeploys"] == 11 + 6
    assert summary["p99_during_ms"] > 1000  # the 2 s request is in the top percent of 15
    assert summary["p99_outside_ms"] == 100.0
    assert summary["p99_during_over_outside"] > 10


def test_ratios_are_later_over_first_and_none_where_the_first_measured_zero():
    first = {"stack": "old", "failed_per_redeploy_mean": 4.0, "p99_during_ms": 900.0,
             "p99_outside_ms": 300.0, "seconds_to_new_version": [40.0, 60.0, 50.0]}  # fmt: skip
    later = {"stack": "new", "failed_per_redeploy_mean": 0.0, "p99_during_ms": 450.0,
             "p99_outside_ms": 300.0, "seconds_to_new_version": [100.0, 80.0, 90.0]}  # fmt: skip
    compared = ratios(later, first)
    assert compared["failed_per_redeploy_mean"] == 0.0
    assert compared["p99_during_ms"] == 0.5
    assert compared["p99_outside_ms"] == 1.0
    assert compared["median_seconds_to_new_version"] == 1.8
    assert ratios(first, later)["failed_per_redeploy_mean"] is None


def test_a_slow_answer_neither_delays_nor_hides_the_requests_after_it(monkeypatch):
    """The loop is open: while one request waits a second for its answer, the next ones still
    leave on schedule, and each latency counts from its scheduled time."""

    sent = []

    def slow_get(port, context, path, timeout):
        sent.append(time.monotonic())
        time.sleep(1.0)
        return 200, "hello"

    monkeypatch.setattr(bench_redeploy, "https_get", slow_get)
    loop = Loop(0, None, rate=10, bodies={"hello"}).start()
    time.sleep(0.55)
    loop.stop()
    assert len(loop.samples) == len(sent) >= 5  # a closed loop would have sent one
    assert all(b - a < 0.2 for a, b in itertools.pairwise(sorted(sent)))
    assert all(latency is not None and latency >= 1.0 for _, latency, _ in loop.samples)
