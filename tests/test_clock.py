"""Tests of proxy.offline.GuardedClock: offline currentTime never behind the CSMS's (F12)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from proxy.offline import GuardedClock

CSMS_TIME = datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC)


class Clocks:
    """A wall clock and a monotonic clock the test moves by hand."""

    def __init__(self, wall: datetime) -> None:
        self.wall_time = wall
        self.mono = 1000.0

    def wall(self) -> datetime:
        return self.wall_time

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall_time += timedelta(seconds=seconds)


def guarded(clocks: Clocks, tolerance: float = 2.0) -> GuardedClock:
    return GuardedClock(tolerance, wall=clocks.wall, monotonic=clocks.monotonic)


def test_without_a_csms_time_the_edge_clock_is_used() -> None:
    clocks = Clocks(datetime(1970, 1, 1, tzinfo=UTC))
    assert guarded(clocks).now() == clocks.wall_time


def test_an_edge_clock_in_1970_is_replaced_by_the_csms_time_carried_forward() -> None:
    clocks = Clocks(datetime(1970, 1, 1, tzinfo=UTC))
    clock = guarded(clocks)
    clock.observe("2026-12-01T10:00:00.000Z")
    clocks.advance(90.0)
    assert clock.now() == CSMS_TIME + timedelta(seconds=90)
    assert clock.behind > 50 * 365 * 86400
    assert clock.now_iso() == "2026-12-01T10:01:30.000Z"


def test_an_edge_clock_within_the_tolerance_is_kept() -> None:
    clocks = Clocks(CSMS_TIME - timedelta(seconds=1.5))
    clock = guarded(clocks)
    clock.observe(CSMS_TIME.isoformat())
    assert clock.now() == clocks.wall_time
    assert clock.behind == pytest.approx(1.5)


def test_an_edge_clock_ahead_of_the_csms_is_kept() -> None:
    """Only a clock behind is guarded: ahead may be the CSMS's own skew."""
    clocks = Clocks(CSMS_TIME + timedelta(hours=1))
    clock = guarded(clocks)
    clock.observe(CSMS_TIME.isoformat())
    assert clock.now() == clocks.wall_time
    assert clock.behind == 0.0


def test_the_latest_csms_time_wins() -> None:
    clocks = Clocks(datetime(1970, 1, 1, tzinfo=UTC))
    clock = guarded(clocks)
    clock.observe("2026-12-01T10:00:00Z")
    clocks.advance(10.0)
    clock.observe("2026-12-01T12:00:00Z")
    assert clock.now() == datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize("value", [None, "", "yesterday", 17, "2026-13-01T00:00:00Z"])
def test_an_unreadable_csms_time_is_ignored(value: object) -> None:
    clocks = Clocks(datetime(1970, 1, 1, tzinfo=UTC))
    clock = guarded(clocks)
    clock.observe(value)
    assert clock.now() == clocks.wall_time
