"""How many VM recreations a week Let's Encrypt's per-IP certificate limit allows: the numbers
docs/https.md states, computed here.

Nothing runs against a CA. The inputs are published facts: "New Certificates per Exact Set of
Identifiers", up to 5 every 7 days as a token bucket that refills one certificate every 34
hours (letsencrypt.org/docs/rate-limits, updated 2026-08-05), and the shortlived profile's
160-hour certificates (letsencrypt.org/docs/profiles); and hello-tls's own behaviour: a new VM
(a new disk) asks for a certificate at once, a running one renews at half its lifetime, without
ARI, so every renewal counts against the limit.
"""

from __future__ import annotations

import itertools

import pytest

from tests.conftest import REPO

CAPACITY, REFILL_HOURS = 5, 34
RENEW_AFTER_HOURS = 160 / 2
WEEK = 168


def refused_at(recreations: list[float], until: float) -> float | None:
    """The hour of the first certificate the bucket refuses, given the hours at which VMs are
    (re)created (the first one creates the VM), with the renewals a running VM makes in
    between; None when every one is issued."""
    tokens, last, issued = float(CAPACITY), 0.0, None
    pending = sorted(recreations)
    while True:
        renewal = issued + RENEW_AFTER_HOURS if issued is not None else None
        hour = min(h for h in (pending[0] if pending else None, renewal) if h is not None)
        if hour >= until:
            return None
        tokens = min(CAPACITY, tokens + (hour - last) / REFILL_HOURS)
        last = hour
        if tokens < 1 - 1e-9:
            return hour
        tokens -= 1
        issued = hour
        if pending and pending[0] == hour:
            pending.pop(0)


def weekly(hours_in_week: list[float], weeks: int = 200) -> float | None:
    """Recreations at the same hours of every week, for `weeks` weeks (about four years)."""
    return refused_at(
        [week * WEEK + hour for week, hour in itertools.product(range(weeks), hours_in_week)],
        until=weeks * WEEK,
    )


@pytest.mark.parametrize("hours", [[0, 0.1], [0, 1], [0, 84], [100, 167]])
def test_two_recreations_a_week_at_any_time_stay_inside(hours):
    assert weekly(hours) is None


def test_four_a_week_stay_inside_when_42_hours_apart_but_not_in_a_burst():
    assert weekly([0, 42, 84, 126]) is None
    assert weekly([0, 0.1, 0.2, 0.3]) is not None


def test_five_a_week_spread_out_or_three_in_a_burst_run_out():
    assert weekly([hour * WEEK / 5 for hour in range(5)]) is not None
    assert weekly([0, 0.1, 0.2]) is not None


def test_a_steady_vm_can_be_recreated_four_times_in_a_row_once_five_when_it_renewed_long_ago():
    """A VM created at hour 0 renews at 80, 160, 240 and 320; then it is recreated repeatedly,
    one hour after its last renewal, or 70 hours after it."""
    soon = [321 + minute / 60 for minute in range(6)]
    assert refused_at([0, *soon[:4]], until=2 * WEEK) is None
    assert refused_at([0, *soon[:5]], until=2 * WEEK) == soon[4]
    late = [390 + minute / 60 for minute in range(6)]
    assert refused_at([0, *late[:5]], until=3 * WEEK) is None
    assert refused_at([0, *late], until=3 * WEEK) == late[5]


def test_docs_state_these_numbers():
    text = " ".join((REPO / "docs/https.md").read_text().split())
    assert "Week after week: 2 recreations a week**, at any times" in text
    assert "4 a week when they are at least 42 hours apart" in text
    assert "5 a week, even spread out, drains the bucket" in text
    assert "4 recreations in a row** (5 if it last renewed more than 34 hours before)" in text
