"""The hot-path latency histogram of proxy/metrics.py against Prometheus' own; the
event loop's lag and busy ratio as a running controller exports them."""

from __future__ import annotations

import asyncio
import random
import re
import time
from typing import TYPE_CHECKING

import pytest
import structlog
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.registry import Collector

from proxy import app
from proxy.metrics import ANSWER_BUCKETS, LatencyHistogram

if TYPE_CHECKING:
    from conftest import ControllerFactory


class _One(Collector):
    def __init__(self, hist: LatencyHistogram) -> None:
        self.hist = hist

    def collect(self):  # type: ignore[no-untyped-def]
        yield self.hist.family("lat_seconds", "doc")


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("lat_seconds") and not line.startswith("lat_seconds_created"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_exports_what_the_prometheus_client_would() -> None:
    """Same observations, same buckets (bounds included: le is "less or equal"), count
    and sum as the client's own Histogram."""
    ours = LatencyHistogram(ANSWER_BUCKETS)
    registry = CollectorRegistry()
    theirs = Histogram("lat_seconds", "doc", buckets=ANSWER_BUCKETS, registry=registry)
    values = [*ANSWER_BUCKETS, 0.0, 1e-6, 11.0, 1e9]
    rng = random.Random(7)
    values += [rng.expovariate(1 / 0.02) for _ in range(2000)]
    for v in values:
        ours.observe(v)
        theirs.observe(v)
    mine = CollectorRegistry()
    mine.register(_One(ours))
    a, b = _samples(generate_latest(mine).decode()), _samples(generate_latest(registry).decode())
    assert a.keys() == b.keys()
    assert len(a) == len(ANSWER_BUCKETS) + 3  # the buckets, +Inf, count, sum
    for key in a:
        assert abs(a[key] - b[key]) <= 1e-9 * max(1.0, abs(b[key])), key
    assert a["lat_seconds_count"] == len(values)


def test_empty_histogram_exports_zeros() -> None:
    hist = LatencyHistogram((0.1, 1.0))
    registry = CollectorRegistry()
    registry.register(_One(hist))
    got = _samples(generate_latest(registry).decode())
    assert got == {
        'lat_seconds_bucket{le="0.1"}': 0.0,
        'lat_seconds_bucket{le="1.0"}': 0.0,
        'lat_seconds_bucket{le="+Inf"}': 0.0,
        "lat_seconds_count": 0.0,
        "lat_seconds_sum": 0.0,
    }


# --------------------------------------------------------------------------- event loop


async def _scrape(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    text = (await reader.read()).decode()
    writer.close()
    return text


def _value(text: str, sample: str) -> float:
    match = re.search("^" + re.escape(sample) + r" (\S+)$", text, re.M)
    assert match is not None, f"{sample} not exported"
    return float(match.group(1))


async def test_a_stalled_event_loop_is_measured_and_logged(
    controller_factory: ControllerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loop held for 1.5 s (as a long synchronous step would hold it) shows in the
    lag histogram above 1 s and in the log as event_loop_stalled; the timer's usual
    lag stays small."""
    monkeypatch.setattr(app, "LOOP_WATCH_PERIOD", 0.05)
    ctl = await controller_factory()
    await asyncio.sleep(0.3)
    before = await _scrape(ctl.admin_port)
    assert _value(before, "ocpp_lc_event_loop_lag_seconds_count") >= 2
    assert _value(before, 'ocpp_lc_event_loop_lag_seconds_bucket{le="0.5"}') == _value(
        before, "ocpp_lc_event_loop_lag_seconds_count"
    )
    with structlog.testing.capture_logs() as logs:
        time.sleep(1.5)  # the whole loop: no frame, no timer runs meanwhile
        await asyncio.sleep(0.2)
    after = await _scrape(ctl.admin_port)
    late = _value(after, "ocpp_lc_event_loop_lag_seconds_count") - _value(
        after, 'ocpp_lc_event_loop_lag_seconds_bucket{le="1.0"}'
    )
    assert late == 1
    stalls = [e for e in logs if e["event"] == "event_loop_stalled"]
    assert len(stalls) == 1
    assert 1400 <= stalls[0]["ms"] <= 3000


async def test_busy_ratio_follows_the_event_loop_thread(
    controller_factory: ControllerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Near 1 after a window in which the loop's thread computed without pause, near 0
    after one in which it waited."""
    monkeypatch.setattr(app, "LOOP_WATCH_PERIOD", 0.05)
    monkeypatch.setattr(app, "LOOP_WATCH_WINDOW", 0.5)
    ctl = await controller_factory()
    end = time.monotonic() + 1.2
    while time.monotonic() < end:  # busy, yielding to the loop now and then
        spin = time.monotonic() + 0.02
        while time.monotonic() < spin:
            pass
        await asyncio.sleep(0)
    busy = _value(await _scrape(ctl.admin_port), "ocpp_lc_event_loop_busy_ratio")
    assert busy > 0.7
    await asyncio.sleep(1.2)
    idle = _value(await _scrape(ctl.admin_port), "ocpp_lc_event_loop_busy_ratio")
    assert idle < 0.3
