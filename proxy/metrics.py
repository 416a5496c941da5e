"""Prometheus metrics.

The hot path only bumps plain dictionaries (one dict operation per frame); a collector
turns them into Prometheus families when ``/metrics`` is scraped, together with gauges
read from the controller's state at that moment (connected chargers, uplinks by state,
outbox depth and age, dead letters).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

#: Upper bounds (seconds) of ``ocpp_lc_offline_answer_seconds``.
ANSWER_BUCKETS = (
    0.001,
    0.002,
    0.005,
    0.01,
    0.015,
    0.02,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


#: Upper bounds (seconds) of ``ocpp_lc_event_loop_lag_seconds``.
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LatencyHistogram:
    """A histogram cheap enough for every message (one bisect, two additions; the
    Prometheus client's takes a lock and costs several times more), exported on scrape."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        #: Observations per bucket, not cumulative; the last one is over every bound.
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            buckets.append((repr(float(bound)), running))
        buckets.append(("+Inf", running + self.counts[-1]))
        family = HistogramMetricFamily(name, doc)
        family.add_metric([], buckets, self.total)
        return family


class Metrics:
    """Counters of one controller; cheap to bump, exported on scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        #: (direction, action) -> frames forwarded; direction "up" (to the CSMS) or "down"
        self.forwarded: Counter[tuple[str, str]] = Counter()
        #: action -> calls answered by the offline responder
        self.offline_answers: Counter[str] = Counter()
        #: (source, status) -> offline authorization decisions
        self.auth_decisions: Counter[tuple[str, str]] = Counter()
        #: (action, result) -> replayed messages: delivered, refused, dead_letter
        self.replayed: Counter[tuple[str, str]] = Counter()
        #: action -> invalid-id policy actions taken (stop, suspend, watch)
        self.policy_actions: Counter[str] = Counter()
        #: event -> security events (refused identities, bad frames, oversized frames ...)
        self.security_events: Counter[str] = Counter()
        #: event -> protocol problems noted by the router (bad frames, unknown answers)
        self.notes: Counter[str] = Counter()
        #: From a charger call taken to its local answer handed to the socket (offline).
        self.offline_answer = LatencyHistogram(ANSWER_BUCKETS)
        #: How late the event loop ran a timer due (see Controller._watch_loop).
        self.loop_lag = LatencyHistogram(LAG_BUCKETS)
        #: The event loop thread's CPU time over wall time, last window (0..1).
        self.loop_busy = 0.0
        self.store_commit = Histogram(
            "ocpp_lc_store_commit_seconds",
            "Time of one group commit of the store (fsync included)",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=self.registry,
        )
        self._state: Callable[[], dict[str, Any]] | None = None
        self.registry.register(_Collector(self))

    def bind_state(self, state: Callable[[], dict[str, Any]]) -> None:
        """Where scrape-time gauges come from (see :meth:`Controller.metrics_state`)."""
        self._state = state

    def state(self) -> dict[str, Any]:
        return self._state() if self._state is not None else {}


def _counter(name: str, doc: str, labels: list[str], data: Counter[Any]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in sorted(data.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
    return family


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        yield _counter(
            "ocpp_lc_frames_forwarded",
            "Frames passed through unchanged, by direction and action",
            ["direction", "action"],
            m.forwarded,
        )
        yield _counter(
            "ocpp_lc_offline_answers",
            "Charger calls answered by the controller while the uplink was down",
            ["action"],
            m.offline_answers,
        )
        yield m.offline_answer.family(
            "ocpp_lc_offline_answer_seconds",
            "Time from a charger call taken to its local answer written (uplink down)",
        )
        yield m.loop_lag.family(
            "ocpp_lc_event_loop_lag_seconds",
            "How late the event loop ran a timer that was due: what any frame waits for it",
        )
        busy = GaugeMetricFamily(
            "ocpp_lc_event_loop_busy_ratio",
            "CPU time of the event loop thread over wall time, last window (1: saturated)",
        )
        busy.add_metric([], m.loop_busy)
        yield busy
        yield _counter(
            "ocpp_lc_authorization_decisions",
            "Offline authorization decisions by source and status",
            ["source", "status"],
            m.auth_decisions,
        )
        yield _counter(
            "ocpp_lc_replayed_messages",
            "Stored messages replayed to the CSMS, by action and result",
            ["action", "result"],
            m.replayed,
        )
        yield _counter(
            "ocpp_lc_policy_actions",
            "Invalid-id policy actions taken",
            ["action"],
            m.policy_actions,
        )
        yield _counter(
            "ocpp_lc_security_events",
            "Security events (refused identities, bad frames, oversized frames ...)",
            ["event"],
            m.security_events,
        )
        yield _counter(
            "ocpp_lc_protocol_events",
            "Protocol problems noted on the pass-through path",
            ["event"],
            m.notes,
        )
        state = m.state()
        probes = CounterMetricFamily(
            "ocpp_lc_uplink_probes",
            "Back-off waits cut short to try the CSMS while no uplink got through",
        )
        probes.add_metric([], state.get("uplink_probes", 0))
        yield probes
        connected = GaugeMetricFamily(
            "ocpp_lc_chargers_connected", "Chargers connected to the controller"
        )
        connected.add_metric([], state.get("connected", 0))
        yield connected
        uplinks = GaugeMetricFamily(
            "ocpp_lc_uplinks", "Charger sessions by uplink state", labels=["state"]
        )
        for name, count in sorted(state.get("uplinks", {}).items()):
            uplinks.add_metric([name], count)
        yield uplinks
        for key, doc in (
            ("outbox_depth", "Messages stored for the CSMS, all chargers"),
            ("outbox_oldest_age_seconds", "Age of the oldest stored message"),
            ("dead_letters", "Messages the CSMS refused after every attempt"),
            ("replay_left", "Messages left to replay, all draining chargers"),
        ):
            gauge = GaugeMetricFamily(f"ocpp_lc_{key}", doc)
            gauge.add_metric([], state.get(key, 0))
            yield gauge
