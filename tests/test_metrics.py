"""The hot-path latency histogram of proxy/metrics.py against Prometheus' own."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.registry import Collector

from proxy.metrics import ANSWER_BUCKETS, LatencyHistogram


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
