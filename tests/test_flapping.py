"""Many chargers, flapping uplink (SCENARIOS.md 14).

200 lightweight chargers (plain WebSocket clients) run charging sessions through the
controller while the fault relay in front of the CSMS resets every connection and
refuses new ones three times. Once the outboxes have drained: nothing lost, nothing
reordered (per charger, first delivery follows the charger's order), every session's
energy the same at the charger and at the CSMS (meterStop - meterStart under the CSMS's
transaction ids), at most one live connection per identity and one outstanding call per
connection at the CSMS, and uplink openings within the site-wide rate.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from peers import (
    CALLRESULT,
    CsmsPeer,
    DeliveryFigures,
    RawCharger,
    controller_url,
    delivery_figures,
    ledger,
    message_key,
)
from websockets.exceptions import ConnectionClosed

import proxy.charger
import proxy.session

if TYPE_CHECKING:
    from conftest import ControllerFactory
    from relay import FaultRelay

    from proxy.app import Controller

CHARGERS = 200
SESSIONS = 2
METER_VALUES = 4
FLAPS = 3
UP_SECONDS = 1.2
DOWN_SECONDS = 0.6
PAUSE = (0.2, 0.6)  # seconds between a charger's calls
CONNECTS_PER_SECOND = 500
DRAIN_TIMEOUT = 15.0

pytestmark = pytest.mark.timeout(120)


@dataclass
class Sessions:
    """What one charger did: meterStart -> meterStop of each transaction."""

    identity: str
    energy: dict[int, int] = field(default_factory=dict)


def stamp(base: datetime, n: int) -> str:
    return (base + timedelta(seconds=n)).isoformat(timespec="seconds").replace("+00:00", "Z")


async def run_charger(
    url: str, number: int, rng: random.Random, out: list[Sessions], opened: list[RawCharger]
) -> RawCharger:
    """Connect, boot and run SESSIONS sessions; every call must get a CALLRESULT. The
    charger stays connected (its outbox drains through its own session)."""
    identity = f"FL{number:03d}"
    done = Sessions(identity)
    out.append(done)
    base = datetime(2025, 1, 1, tzinfo=UTC)
    clock = iter(range(10_000))
    raw = RawCharger(url, identity)
    await raw.connect()
    opened.append(raw)

    async def call(action: str, payload: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(rng.uniform(*PAUSE))
        began = time.monotonic()
        try:
            answer = await raw.call(action, payload, timeout=10.0)
        except (TimeoutError, OSError, ConnectionClosed) as exc:
            waited = time.monotonic() - began
            raise AssertionError(f"{identity} {action}: {exc!r} after {waited:.1f} s") from None
        assert answer[0] == CALLRESULT, f"{identity} {action}: {answer}"
        result: dict[str, Any] = answer[2]
        return result

    await call(
        "BootNotification",
        {"chargePointVendor": "OpenSite", "chargePointModel": "LC-Flap"},
    )
    register = number * 1_000_000
    for _ in range(SESSIONS):
        meter_start = register
        started = await call(
            "StartTransaction",
            {
                "connectorId": 1,
                "idTag": f"TAG{number:03d}",
                "meterStart": meter_start,
                "timestamp": stamp(base, next(clock)),
            },
        )
        tx = started["transactionId"]
        for _ in range(METER_VALUES):
            register += rng.randint(1, 500)
            await call(
                "MeterValues",
                {
                    "connectorId": 1,
                    "transactionId": tx,
                    "meterValue": [
                        {
                            "timestamp": stamp(base, next(clock)),
                            "sampledValue": [
                                {
                                    "value": str(register),
                                    "measurand": "Energy.Active.Import.Register",
                                    "unit": "Wh",
                                }
                            ],
                        }
                    ],
                },
            )
        register += rng.randint(1, 500)
        await call(
            "StopTransaction",
            {
                "transactionId": tx,
                "meterStop": register,
                "timestamp": stamp(base, next(clock)),
                "reason": "Local",
            },
        )
        done.energy[meter_start] = register - meter_start
    return raw


async def flap(relay: FaultRelay, restored: list[float]) -> None:
    for _ in range(FLAPS):
        await asyncio.sleep(UP_SECONDS)
        relay.set_mode("reset")
        await asyncio.sleep(DOWN_SECONDS)
        relay.set_mode("pass")
        restored.append(time.monotonic())


def csms_energy(csms: CsmsPeer, identity: str) -> dict[int, int]:
    """meterStart -> meterStop - meterStart of each stop the CSMS took, matched to its
    start through the CSMS's own transaction ids."""
    starts: dict[int, int] = {}
    energy: dict[int, int] = {}
    for e in csms.inbound(identity):
        if e.outcome != "CALLRESULT":
            continue
        if e.action == "StartTransaction":
            starts[e.response["transactionId"]] = e.request["meterStart"]
        elif e.action == "StopTransaction":
            meter_start = starts.get(e.request["transactionId"])
            if meter_start is not None:
                energy.setdefault(meter_start, e.request["meterStop"] - meter_start)
    return energy


def peak_per_window(times: list[float], window: float) -> int:
    times = sorted(times)
    peak, left = 0, 0
    for right, t in enumerate(times):
        while t - times[left] >= window:
            left += 1
        peak = max(peak, right - left + 1)
    return peak


async def all_drained(ctl: Controller, identities: list[str]) -> bool:
    sessions = ctl.chargers.sessions
    if any(sessions.get(i) is None or sessions[i].state.value != "online" for i in identities):
        return False
    return await ctl.store.outbox_depth() == 0


@dataclass
class Run:
    """The parts of one flapping run."""

    csms: CsmsPeer
    relay: FaultRelay
    ctl: Controller
    began: float
    attempts: list[float]
    done: list[Sessions] = field(default_factory=list)
    restored: list[float] = field(default_factory=list)
    opened: list[RawCharger] = field(default_factory=list)


async def test_many_chargers_flapping_uplink(
    csms: CsmsPeer,
    relay: FaultRelay,
    fast_controller: ControllerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Scenario 14: 200 chargers, 3 uplink resets: 0 lost, 0 reordered, equal energy totals."""
    began = time.monotonic()
    attempts: list[float] = []
    real_open = proxy.session.open_uplink

    async def counted_open(*args: Any, **kwargs: Any) -> Any:
        attempts.append(time.monotonic())  # the moment the controller connects
        return await real_open(*args, **kwargs)

    monkeypatch.setattr(proxy.session, "open_uplink", counted_open)
    monkeypatch.setattr(proxy.charger, "open_uplink", counted_open)
    ctl = await fast_controller(
        csms={"url": relay.url},
        uplink={"max_connects_per_second": CONNECTS_PER_SECOND},
        policy={"allow_offline_tx_for_unknown_id": True, "concurrent_tx": False},
    )
    run = Run(csms, relay, ctl, began, attempts)
    try:
        await run_and_check(run)
    finally:
        await asyncio.gather(*(c.close() for c in run.opened), return_exceptions=True)


def print_out_of_order(identity: str, sent: list[Any], csms: CsmsPeer) -> None:
    """What the charger sent and what the CSMS saw, one line each, for a reordering."""
    print(f"\nout of order for {identity}; charger's calls:")
    for e in sent:
        print(f"  {e.outcome} {e.unique_id} {message_key(e.action, e.request)}")
    print("at the CSMS (connection, direction, frame):")
    for f in csms.log:
        if f.identity == identity:
            print(f"  {f.at:.3f} #{f.connection} {f.direction} {f.text!s:.160}")


async def run_and_check(run: Run) -> None:
    csms, relay, ctl = run.csms, run.relay, run.ctl
    url = controller_url(ctl.listen_port)
    rng = random.Random(14)
    flapping = asyncio.create_task(flap(relay, run.restored))
    results = await asyncio.gather(
        *(
            run_charger(url, n, random.Random(rng.random()), run.done, run.opened)
            for n in range(CHARGERS)
        ),
        return_exceptions=True,
    )
    await flapping
    failures = [r for r in results if isinstance(r, BaseException)]
    chargers = run.opened
    identities = [c.identity for c in chargers]
    charged = time.monotonic()

    deadline = time.monotonic() + DRAIN_TIMEOUT
    drained = await all_drained(ctl, identities)
    while not drained and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        drained = await all_drained(ctl, identities)
    recovery = time.monotonic() - max(run.restored[-1], charged)
    depth = await ctl.store.outbox_depth()

    totals = DeliveryFigures()
    energy_mismatches = []
    done = {s.identity: s for s in run.done}
    for charger in chargers:
        figures = delivery_figures(ledger(charger.frames), csms.inbound(charger.identity))
        if figures.order_violations:
            print_out_of_order(charger.identity, ledger(charger.frames), csms)
        totals = totals + figures
        at_csms = csms_energy(csms, charger.identity)
        if at_csms != done[charger.identity].energy:
            energy_mismatches.append((charger.identity, done[charger.identity].energy, at_csms))
    dead = await ctl.store.outbox(state="dead", limit=10_000)
    herd = peak_per_window(run.attempts, 0.1)
    opened = [c.opened for conns in csms.history.values() for c in conns]
    accepted_peak = peak_per_window(opened, 0.1)
    per_identity = Counter(csms.connections)
    print(
        f"\nflapping: chargers={len(chargers)} failed_chargers={len(failures)} "
        f"drained={drained} outbox_left={depth} sessions={len(chargers) * SESSIONS} "
        f"flaps={FLAPS} {totals} energy_mismatches={len(energy_mismatches)} "
        f"dead_letters={len(dead)} csms_connections={sum(per_identity.values())} "
        f"max_connections_per_identity={max(per_identity.values())} "
        f"uplink_attempts={len(run.attempts)} peak_attempts_per_100ms={herd} "
        f"peak_csms_accepts_per_100ms={accepted_peak} relay_resets={relay.dropped} "
        f"drain_after_last_restore={recovery:.2f}s violations={len(csms.violations)} "
        f"wall={time.monotonic() - run.began:.1f}s"
    )
    assert failures == [], f"{len(failures)} chargers failed, first: {failures[0]!r}"
    assert drained, f"outboxes not drained {DRAIN_TIMEOUT} s after the end: depth {depth}"
    assert totals.acked == CHARGERS * SESSIONS * (METER_VALUES + 2)
    assert totals.lost == []
    assert totals.order_violations == 0
    assert totals.unexpected == []
    assert dead == []
    assert energy_mismatches == [], energy_mismatches[:3]
    assert per_identity.keys() == set(identities)
    # The flaps must really have cut uplinks (the figures above are only worth something
    # then). A charger that connected late may have been served offline until after a
    # flap (its uplink turn was behind the connect rate), so not every one was cut; under
    # a loaded CI machine 49 % once were (half of them was asked then).
    dropped = sum(1 for n in per_identity.values() if n >= 2)
    assert dropped >= 0.3 * len(per_identity), f"only {dropped} uplinks ever dropped"
    assert relay.dropped >= len(per_identity), f"the relay cut only {relay.dropped} connections"
    # At most one duplicate per session and drop (a call in flight when the link went).
    assert totals.duplicates <= CHARGERS * FLAPS
    # The site-wide cap on uplink openings holds in every 100 ms window (R5, F9).
    assert herd <= CONNECTS_PER_SECOND * 0.1 + 1
    csms.assert_clean()
