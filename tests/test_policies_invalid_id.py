"""Unit tests of the invalid-id policy and the retry schedule (policies/invalid_id.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.invalid_id import (
    Action,
    Decision,
    is_dead_letter,
    limit_reached,
    on_refused_start,
    retry_wait,
)


@pytest.mark.parametrize("stop", [True, False])
def test_accepted_start_needs_nothing(stop: bool) -> None:
    """An Accepted answer leaves the transaction alone whatever the settings."""
    d = on_refused_start(
        "Accepted", running=True, stop_on_invalid_id=stop, max_energy_wh=0, delivered_wh=0
    )
    assert d == Decision(Action.NONE)


@pytest.mark.parametrize("status", ["Blocked", "Invalid", "Expired", "ConcurrentTx"])
def test_ended_transaction_is_only_replayed(status: str) -> None:
    """A transaction that already ended offline gets no policy action."""
    d = on_refused_start(
        status, running=False, stop_on_invalid_id=True, max_energy_wh=0, delivered_wh=10
    )
    assert d.action is Action.NONE


@pytest.mark.parametrize("status", ["Blocked", "Invalid", "Expired", "ConcurrentTx", "NoCredit"])
def test_stop_setting_stops(status: str) -> None:
    """With stop-on-invalid-id on, any status but Accepted stops a running transaction."""
    d = on_refused_start(
        status, running=True, stop_on_invalid_id=True, max_energy_wh=500, delivered_wh=0
    )
    assert d == Decision(Action.STOP)


def test_cap_below_limit_watches() -> None:
    """Below the energy limit the transaction charges on, watched."""
    d = on_refused_start(
        "Blocked", running=True, stop_on_invalid_id=False, max_energy_wh=500, delivered_wh=499
    )
    assert d == Decision(Action.WATCH, 500)


def test_cap_unknown_energy_watches() -> None:
    """Without a meter reading yet the transaction is watched, not suspended."""
    d = on_refused_start(
        "Blocked", running=True, stop_on_invalid_id=False, max_energy_wh=500, delivered_wh=None
    )
    assert d.action is Action.WATCH


def test_cap_reached_suspends() -> None:
    """At the energy limit energy is suspended at once."""
    d = on_refused_start(
        "Invalid", running=True, stop_on_invalid_id=False, max_energy_wh=500, delivered_wh=500
    )
    assert d == Decision(Action.SUSPEND, 500)


def test_zero_limit_suspends_at_once() -> None:
    """A limit of 0 Wh suspends energy at once, even with no reading."""
    d = on_refused_start(
        "Invalid", running=True, stop_on_invalid_id=False, max_energy_wh=0, delivered_wh=None
    )
    assert d.action is Action.SUSPEND


@given(st.floats(min_value=0, max_value=1e7), st.integers(min_value=1, max_value=10**6))
def test_limit_reached_is_a_threshold(delivered: float, limit: int) -> None:
    """limit_reached is exactly delivered >= limit for positive limits."""
    assert limit_reached(delivered, limit) is (delivered >= limit)


@pytest.mark.parametrize(("interval", "n", "wait"), [(60, 1, 60), (60, 2, 120), (0.5, 3, 1.5)])
def test_retry_wait_is_interval_times_transmissions(interval: float, n: int, wait: float) -> None:
    """The wait before a retransmission is the interval times the transmissions so far."""
    assert retry_wait(interval, n) == wait


@pytest.mark.parametrize(
    ("sent", "attempts", "dead"), [(1, 3, False), (2, 3, False), (3, 3, True), (1, 1, True)]
)
def test_dead_letter_after_last_attempt(sent: int, attempts: int, dead: bool) -> None:
    """A message becomes a dead letter exactly when its attempts are used up."""
    assert is_dead_letter(sent, attempts) is dead
