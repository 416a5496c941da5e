"""Fault injection: the faults F1-F14 of RELIABILITY.md 5.4, scaled in time.

Real OCPP peers on loopback (``peers.py``), the controller in-process (a subprocess for
F11) and the TCP fault relay between controller and CSMS (``relay.py``). Each test prints
its figures as one line, ``FIGURES F<n>: ...`` (lost, duplicates, order violations,
recovery time, calls in flight per connection, live connections per identity, connect
attempts per 100 ms where it matters), then asserts them. ``pytest -s`` shows the lines.

Where each fault is tested:

* F1 uplink drop with a call in flight, (a) before the CSMS reads, (b) after it reads,
  (c) after it answers, (d) blackhole: ``test_f1_16_*`` and ``test_f1_201_*`` here (1.6
  StartTransaction, 2.0.1 TransactionEvent), strict mode ``test_f1_strict_*``; slow:
  ``test_f1_blackhole_detected_with_real_ping_timings``. Also ``test_replay.py``.
* F2 CALLERROR on replay: ``test_f2_*`` (both versions, three cases); the operator's retry
  of a dead letter: ``test_replay.py`` scenario 12.
* F3 slow CSMS: ``test_f3_*``; slow: ``test_f3_slow_csms_real_timings``.
* F4 ``kill -9`` while buffering: ``test_crash_offline.py``
  (``test_kill_while_offline_loses_no_answered_message``, 3 crash points x 3 passes).
* F5 ``kill -9`` during replay: ``test_replay_crash.py``
  (``test_kill_during_replay_loses_and_reorders_nothing``, 5 crash points).
* F6 disk full: ``test_f6_*``, on a real full file system (a 4 MiB tmpfs mounted for the
  test, which needs root; where it cannot be mounted they skip, and F7 covers the
  store's InternalError path).
* F7 SQLite file locked:
  ``test_store.py::test_locked_store_answers_internal_error_and_recovers``.
* F8 the same identity reconnects: the old socket half-open with a call in flight,
  ``test_f8_*`` here; old socket alive, unauthenticated newcomer, checked newcomer:
  ``test_security.py`` (``test_newer_connection_replaces_the_older_with_one_uplink_at_a_time``,
  ``test_unauthenticated_second_connection_does_not_evict_the_first``,
  ``test_checked_newcomer_replaces_before_its_uplink_opens``).
* F9 many chargers after a CSMS outage: ``test_f9_*`` (300 chargers; slow: 1000 with the
  default rate and back-off). Flapping uplink: ``test_flapping.py``, ``bench/soak.py``.
* F10 charger gone with its call in flight: ``test_f10_*`` (online and draining).
* F11 SIGTERM under load: ``test_f11_sigterm_under_load`` (subprocess).
* F12 clock: ``test_f12_*``.
* F13 long outage over the outbox cap: ``test_f13_*`` (slow: 50 chargers x a day).
* F14 credential rotation: ``test_security.py``
  (``test_authorization_key_change_is_used_upstream_and_offline``,
  ``test_key_change_also_replaces_a_configured_csms_password_upstream``,
  ``test_basic_auth_password_change_on_201_is_used_upstream_and_offline``).

Slow variants (real 30 s timings, 1000 chargers) carry ``@pytest.mark.slow`` and run only
when selected: ``pytest tests/test_faults.py -m slow``; otherwise they are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import resource
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fault_tools import (
    PROVISIONAL_START,
    ConnectAttempts,
    LoopLag,
    RefuseFirst,
    Service,
    Station,
    csms_transaction_energy,
    figures_201,
    figures_line,
    max_in_flight,
    max_live_per_identity,
    peak_per_window,
    percentile,
    te_key,
    wait_for,
)
from peers import (
    CALL,
    CALLERROR,
    CALLRESULT,
    ChargerPeer16,
    CsmsPeer,
    RawCharger,
    StepClock,
    controller_url,
    delivery_figures,
    ledger,
    message_key,
)
from prometheus_client import generate_latest
from relay import FaultRelay
from websockets.exceptions import ConnectionClosed

if TYPE_CHECKING:
    from conftest import ControllerFactory

    from proxy.app import Controller

pytestmark = pytest.mark.timeout(60)

IDENTITY = "CP1"
TAG = "SITE-TAG-1"
#: The charger's own message timeout in the scaled tests (seconds).
CHARGER_TIMEOUT = 5.0
#: Replayed messages and the controller's own calls carry ids with this prefix.
REPLAY_ID_PREFIX = "lc-"
#: How a ledger entry's ``outcome`` names a CALLRESULT.
CALLRESULT_NAME = "CALLRESULT"


@pytest.fixture
def slow_selected(request: pytest.FixtureRequest) -> None:
    """Slow variants run only when ``-m slow`` selects them."""
    if "slow" not in (request.config.option.markexpr or ""):
        pytest.skip("slow variant: run with -m slow")


# --------------------------------------------------------------------------- helpers


def state_of(ctl: Controller, identity: str = IDENTITY) -> str | None:
    session = ctl.chargers.sessions.get(identity)
    return session.state.value if session is not None else None


async def wait_drained(ctl: Controller, identity: str = IDENTITY, timeout: float = 10.0) -> float:
    """Wait until the charger's outbox is empty and its session online; the seconds."""

    async def done() -> bool:
        return state_of(ctl, identity) == "online" and not await ctl.store.outbox_depth(identity)

    return await wait_for(done, timeout, f"{identity} to drain and be online")


def received(csms: CsmsPeer, action: str, identity: str = IDENTITY) -> list[Any]:
    return csms.received_calls(identity, action)


def csms_answered(csms: CsmsPeer, identity: str, message_id: str) -> bool:
    """Whether the CSMS has sent its answer to the call ``message_id``."""
    for f in csms.frames[identity]:
        if f.direction != "sent":
            continue
        with contextlib.suppress(ValueError):
            msg = json.loads(f.text)
            if msg[0] != CALL and msg[1] == message_id:
                return True
    return False


def boots_on(conn: Any) -> int:
    """BootNotifications the CSMS received on one connection."""
    return sum(
        1 for f in conn.frames if f.direction == "received" and '"BootNotification"' in str(f.text)
    )


def frame(message_id: str, action: str, payload: Any) -> str:
    return json.dumps([CALL, message_id, action, payload], separators=(",", ":"))


async def answer_to(raw: RawCharger, text: str, timeout: float = CHARGER_TIMEOUT) -> list[Any]:
    """Send ``text`` and wait for the answer to its message id (other frames skipped)."""
    message_id = json.loads(text)[1]
    await raw.send(text)
    async with asyncio.timeout(timeout):
        while True:
            msg = await raw.recv_json(timeout)
            if msg[0] != CALL and msg[1] == message_id:
                return list(msg)


def start_payload(tag: str, meter_start: int, second: int = 0) -> dict[str, Any]:
    return {
        "connectorId": 1,
        "idTag": tag,
        "meterStart": meter_start,
        "timestamp": f"2025-01-01T12:00:{second:02d}.000Z",
    }


def meter_payload(tx_id: int, wh: int, stamp: str = "2025-01-01T12:00:30.000Z") -> dict[str, Any]:
    return {
        "connectorId": 1,
        "transactionId": tx_id,
        "meterValue": [
            {
                "timestamp": stamp,
                "sampledValue": [
                    {"value": str(wh), "measurand": "Energy.Active.Import.Register", "unit": "Wh"}
                ],
            }
        ],
    }


# --------------------------------------------------------------------------- F1

F1_VARIANTS = {
    "a": "drop before the CSMS reads",
    "b": "drop after the CSMS reads",
    "c": "drop after the CSMS answers",
    "d": "blackhole, no FIN",
}
PING = 0.3


async def inject_f1(
    variant: str, csms: CsmsPeer, relay: FaultRelay, ctl: Controller, action: str
) -> None:
    """Cut the uplink around the charger call ``action`` that is on its way up."""
    if variant == "a":
        await wait_for(lambda: ctl.metrics.forwarded["up", action] >= 1, 5.0, "the call to go up")
        await asyncio.sleep(0.05)  # the relay now holds it; the CSMS never reads it
        relay.set_mode("reset")
    elif variant == "b":
        await wait_for(lambda: bool(received(csms, action)), 5.0, "the CSMS to read the call")
        relay.set_mode("reset")
    elif variant == "c":
        await wait_for(lambda: bool(received(csms, action)), 5.0, "the CSMS to read the call")
        relay.set_mode("blackhole")
        message_id = received(csms, action)[-1].unique_id
        await wait_for(lambda: csms_answered(csms, IDENTITY, message_id), 5.0, "the CSMS to answer")
        await asyncio.sleep(0.05)  # the answer is in the relay, never delivered
        relay.set_mode("reset")
    # "d": the relay was blackholed before the call; only the pings notice


def f1_setup(variant: str, csms: CsmsPeer, relay: FaultRelay, action: str) -> None:
    """What the fault needs before the call is sent."""
    if variant in {"a", "d"}:
        relay.set_mode("blackhole")
    elif variant == "b":
        csms.ignore(action, times=1)
    elif variant == "c":
        csms.delay(action, 0.3, times=1)


async def f1_controller(
    variant: str, fast_controller: ControllerFactory, relay: FaultRelay, tags: Path, **extra: Any
) -> Controller:
    csms_settings: dict[str, Any] = {"url": relay.url, "open_timeout": 1}
    if variant == "d":
        csms_settings |= {"ping_interval": PING, "ping_timeout": PING}
    return await fast_controller(csms=csms_settings, local_list={"path": tags}, **extra)


@pytest.mark.parametrize("variant", list(F1_VARIANTS))
async def test_f1_16_uplink_drop_with_start_transaction_in_flight(
    variant: str,
    csms: CsmsPeer,
    relay: FaultRelay,
    fast_controller: ControllerFactory,
    site_list: Callable[..., Path],
) -> None:
    """F1 (1.6): StartTransaction in flight when the uplink drops: local answer in time."""
    ctl = await f1_controller(variant, fast_controller, relay, site_list(TAG))
    url = controller_url(ctl.listen_port)
    async with ChargerPeer16(url, IDENTITY, clock=StepClock(), call_timeout=CHARGER_TIMEOUT) as cp:
        await cp.boot()
        await cp.status("Preparing")
        assert await cp.authorize(TAG) == "Accepted"
        f1_setup(variant, csms, relay, "StartTransaction")
        began = time.monotonic()
        starting = asyncio.create_task(cp.start_transaction(TAG, meter_start=1000))
        await inject_f1(variant, csms, relay, ctl, "StartTransaction")
        tx = await starting
        answered_after = time.monotonic() - began
        assert tx >= PROVISIONAL_START, "not answered locally with a provisional id"
        assert state_of(ctl) == "offline"
        assert cp.ws.close_code is None, "the charger was closed (keep-open mode)"
        relay.set_mode("reset")
        for wh in (1100, 1200):
            await cp.meter_values(tx, wh)
        await cp.stop_transaction(tx, 1300)
        relay.set_mode("pass")
        recovery = await wait_drained(ctl)
        seen = csms.inbound(IDENTITY)
        figures = delivery_figures(cp.ledger, seen)
        starts = [e for e in seen if e.action == "StartTransaction" and e.outcome == "CALLRESULT"]
        stops = [e.request["transactionId"] for e in seen if e.action == "StopTransaction"]
        figures_line(
            f"F1({variant})",
            version="1.6",
            case=F1_VARIANTS[variant].replace(" ", "_"),
            lost=len(figures.lost),
            duplicates=figures.duplicates,
            order_violations=figures.order_violations,
            answered_locally_after_s=answered_after,
            recovery_s=recovery,
            csms_start_receipts=len(received(csms, "StartTransaction")),
            max_in_flight=max_in_flight(csms),
            max_live_per_identity=max_live_per_identity(csms),
            uplinks=len(csms.history[IDENTITY]),
            boot_on_reconnect=boots_on(csms.history[IDENTITY][-1]),
        )
        # the charger's call is answered within its own timeout
        assert answered_after < CHARGER_TIMEOUT
        if variant == "d":
            # detected within ping_interval + ping_timeout (one more period of slack)
            assert answered_after < 2 * PING + PING + 0.5, answered_after
        assert (figures.lost, figures.order_violations, figures.unexpected) == ([], 0, [])
        assert figures.duplicates <= (0 if variant == "a" else 1)
        if variant == "a":
            assert len(received(csms, "StartTransaction")) == 1, "the CSMS read the dropped call"
        # the stop carries the id the CSMS gave the start it answered last
        assert stops == [starts[-1].response["transactionId"]]
        assert max_in_flight(csms) <= 1
    cp.assert_clean()
    csms.assert_clean()


@pytest.mark.parametrize("variant", list(F1_VARIANTS))
async def test_f1_201_uplink_drop_with_transaction_event_in_flight(
    variant: str,
    csms: CsmsPeer,
    relay: FaultRelay,
    fast_controller: ControllerFactory,
    site_list: Callable[..., Path],
) -> None:
    """F1 (2.0.1): TransactionEvent in flight when the uplink drops; replays say offline."""
    ctl = await f1_controller(variant, fast_controller, relay, site_list(TAG))
    url = controller_url(ctl.listen_port)
    async with Station(url, IDENTITY, clock=StepClock(), call_timeout=CHARGER_TIMEOUT) as st:
        await st.boot()
        await st.status("Occupied")
        assert await st.authorize(TAG) == "Accepted"
        tx = f"{IDENTITY}-TX1"
        await st.event("Started", tx, 1000, token=TAG)
        f1_setup(variant, csms, relay, "TransactionEvent")
        began = time.monotonic()
        updating = asyncio.create_task(st.event("Updated", tx, 1100))
        if variant in ("b", "c"):
            # the Started event was read already: wait for the Updated one
            await wait_for(
                lambda: len(received(csms, "TransactionEvent")) >= 2, 5.0, "the CSMS to read"
            )
        await inject_f1(variant, csms, relay, ctl, "TransactionEvent")
        await updating
        answered_after = time.monotonic() - began
        assert state_of(ctl) == "offline"
        assert st.ws.close_code is None
        relay.set_mode("reset")
        await st.event("Updated", tx, 1200)
        await st.event("Ended", tx, 1300)
        relay.set_mode("pass")
        recovery = await wait_drained(ctl)
        seen = csms.inbound(IDENTITY)
        figures = figures_201(st.ledger, seen)
        events = [e for e in seen if e.action == "TransactionEvent"]
        figures_line(
            f"F1({variant})",
            version="2.0.1",
            case=F1_VARIANTS[variant].replace(" ", "_"),
            lost=len(figures.lost),
            duplicates=figures.duplicates,
            order_violations=figures.order_violations,
            answered_locally_after_s=answered_after,
            recovery_s=recovery,
            replayed_offline_true=sum(
                1
                for e in events
                if e.unique_id.startswith(REPLAY_ID_PREFIX) and e.request.get("offline") is True
            ),
            max_in_flight=max_in_flight(csms),
            max_live_per_identity=max_live_per_identity(csms),
        )
        assert answered_after < CHARGER_TIMEOUT
        if variant == "d":
            assert answered_after < 3 * PING + 0.5, answered_after
        assert (figures.lost, figures.order_violations, figures.unexpected) == ([], 0, [])
        assert figures.duplicates <= (0 if variant == "a" else 1)
        # every event answered locally went up again flagged offline (E04.FR.01)
        replayed = [e for e in events if e.unique_id.startswith(REPLAY_ID_PREFIX)]
        assert replayed, "nothing replayed"
        assert all(e.request.get("offline") is True for e in replayed), [
            (te_key(e.request), e.request.get("offline")) for e in replayed
        ]
        assert max_in_flight(csms) <= 1
    st.assert_clean()
    csms.assert_clean()


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_f1_blackhole_detected_with_real_ping_timings(
    slow_selected: None,
    csms: CsmsPeer,
    relay: FaultRelay,
    controller_factory: ControllerFactory,
    site_list: Callable[..., Path],
) -> None:
    """F1(d) (slow): blackholed uplink, the default 30 s pings: answered locally in time."""
    ctl = await controller_factory(csms={"url": relay.url}, local_list={"path": site_list(TAG)})
    ping = ctl.settings.csms.ping_interval + ctl.settings.csms.ping_timeout
    url = controller_url(ctl.listen_port)
    async with ChargerPeer16(url, IDENTITY, clock=StepClock(), call_timeout=ping + 30) as cp:
        await cp.boot()
        tx = await cp.start_transaction(TAG, meter_start=1000)
        relay.set_mode("blackhole")
        began = time.monotonic()
        await cp.meter_values(tx, 1100)
        detected = time.monotonic() - began
        relay.set_mode("reset")
        await cp.stop_transaction(tx, 1200)
        relay.set_mode("pass")
        recovery = await wait_drained(ctl, timeout=90)
        figures = delivery_figures(cp.ledger, csms.inbound(IDENTITY))
    figures_line(
        "F1(d)",
        case="real-pings",
        ping_interval_plus_timeout_s=ping,
        answered_locally_after_s=detected,
        lost=len(figures.lost),
        duplicates=figures.duplicates,
        order_violations=figures.order_violations,
        recovery_s=recovery,
    )
    assert detected <= ping + ctl.settings.csms.ping_interval + 1.0
    assert (figures.lost, figures.order_violations) == ([], 0)
    assert figures.duplicates <= 1
    csms.assert_clean()


async def test_f1_strict_mode_closes_the_charger_with_1001(
    csms: CsmsPeer, relay: FaultRelay, fast_controller: ControllerFactory
) -> None:
    """F1, strict mode: the uplink drops with a call in flight: the charger is closed 1001."""
    ctl = await fast_controller(csms={"url": relay.url}, offline={"mode": "strict"})
    async with RawCharger(controller_url(ctl.listen_port), IDENTITY) as raw:
        boot = {"chargePointVendor": "OpenSite", "chargePointModel": "LC-Test"}
        assert (await answer_to(raw, frame("b1", "BootNotification", boot)))[0] == CALLRESULT
        csms.ignore("StartTransaction", times=1)
        began = time.monotonic()
        await raw.send(frame("s1", "StartTransaction", start_payload(TAG, 1000)))
        await wait_for(lambda: bool(received(csms, "StartTransaction")), 5.0, "the CSMS to read")
        relay.set_mode("reset")
        closed = await raw.wait_closed(CHARGER_TIMEOUT)
        took = time.monotonic() - began
        answers = [
            m
            for m in (json.loads(f.text) for f in raw.frames if f.direction == "received")
            if m[0] != CALL and m[1] == "s1"
        ]
    figures_line(
        "F1(strict)",
        close_code=closed.code,
        closed_after_s=took,
        local_answers=len(answers),
        stored=len(await ctl.store.outbox(IDENTITY)),
    )
    assert closed.code == 1001
    assert answers == [], "strict mode answered the call locally"
    assert await ctl.store.outbox(IDENTITY) == []


# --------------------------------------------------------------------------- F2

F2_ATTEMPTS = 3
F2_INTERVAL = 0.1
REFUSED_WH = 1200


def reading(payload: Any) -> Any:
    """The first sampled value of a 1.6 MeterValues or 2.0.1 TransactionEvent payload."""
    try:
        return payload["meterValue"][0]["sampledValue"][0]["value"]
    except (KeyError, IndexError, TypeError):
        return None


def is_refused(payload: Any) -> bool:
    return str(reading(payload)) == str(REFUSED_WH)


@pytest.mark.parametrize("variant", ["retry-then-success", "forever", "security-error"])
@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_f2_replayed_message_refused_with_callerror(
    version: str,
    variant: str,
    csms: CsmsPeer,
    fast_controller: ControllerFactory,
    site_list: Callable[..., Path],
) -> None:
    """F2: CALLERROR on replay: retried at interval x k, dead letter, the next proceeds."""
    await csms.stop()
    ctl = await fast_controller(
        local_list={"path": site_list(TAG)},
        policy={
            "transaction_message_attempts": F2_ATTEMPTS,
            "transaction_message_retry_interval": F2_INTERVAL,
        },
    )
    action = "MeterValues" if version == "1.6" else "TransactionEvent"
    if variant == "retry-then-success":
        rule = csms.refuse(action, "InternalError", times=F2_ATTEMPTS - 1, match=is_refused)
    elif variant == "forever":
        rule = csms.refuse(action, "InternalError", match=is_refused)
    else:
        rule = csms.refuse(action, "SecurityError", times=F2_ATTEMPTS, match=is_refused)
    url = controller_url(ctl.listen_port)
    async with contextlib.AsyncExitStack() as stack:
        if version == "1.6":
            cp = await stack.enter_async_context(ChargerPeer16(url, IDENTITY, clock=StepClock()))
            await cp.boot()
            tx = await cp.start_transaction(TAG, meter_start=1000)
            for wh in (1100, REFUSED_WH, 1300):
                await cp.meter_values(tx, wh)
            await cp.stop_transaction(tx, 1400)
            charger_ledger = cp.ledger
        else:
            st = await stack.enter_async_context(Station(url, IDENTITY, clock=StepClock()))
            await st.boot()
            await st.event("Started", "T1", 1000, token=TAG)
            for wh in (1100, REFUSED_WH, 1300):
                await st.event("Updated", "T1", wh)
            await st.event("Ended", "T1", 1400)
            charger_ledger = st.ledger
        await csms.start()
        recovery = await wait_drained(ctl, timeout=15)
    seen = csms.inbound(IDENTITY)
    tries = [e for e in seen if e.action == action and is_refused(e.request)]
    times = [
        f.at for f in csms.log if f.direction == "received" and is_refused(_call_payload(f.text))
    ]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    dead = await ctl.store.outbox(IDENTITY, state="dead")
    dead_keys = [
        te_key(json.loads(r.frame)[3])
        if version == "2.0.1"
        else message_key(r.action, json.loads(r.frame)[3])
        for r in dead
    ]
    if version == "1.6":
        figures = delivery_figures(charger_ledger, seen, dead=dead_keys)
    else:
        figures = figures_201(charger_ledger, seen, dead=dead_keys)
    boots = [i for i, e in enumerate(seen) if e.action == "BootNotification"]
    last_try = max(i for i, e in enumerate(seen) if e.action == action and is_refused(e.request))
    after_refused = [
        e
        for e in seen[last_try + 1 :]
        if e.action in ("MeterValues", "StopTransaction", "TransactionEvent")
    ]
    figures_line(
        "F2",
        version=version,
        case=variant,
        lost=len(figures.lost),
        dead_letters=figures.dead,
        duplicates=figures.duplicates,
        order_violations=figures.order_violations,
        transmissions=len(tries),
        retry_gaps_s=gaps,
        boots_at_csms=len(boots),
        dead_letter_alarms=sum(
            v for (a, r), v in ctl.metrics.replayed.items() if r == "dead_letter"
        ),
        recovery_s=recovery,
    )
    assert figures.lost == []
    assert figures.order_violations == 0
    assert figures.unexpected == []
    assert max_in_flight(csms) <= 1
    if variant == "retry-then-success":
        assert [e.outcome for e in tries] == ["CALLERROR"] * (F2_ATTEMPTS - 1) + ["CALLRESULT"]
        assert dead == []
        for k, gap in enumerate(gaps, start=1):
            assert F2_INTERVAL * k * 0.8 <= gap <= F2_INTERVAL * k * 1.2 + 0.3, gaps
    elif variant == "forever":
        assert len(tries) == F2_ATTEMPTS, "not exactly the configured attempts"
        assert rule.hits == F2_ATTEMPTS
        assert [(r.action, r.attempts, r.last_error) for r in dead] == [
            (action, F2_ATTEMPTS, "InternalError")
        ]
        assert figures.dead == 1
        # the queue is not blocked: the later messages of the transaction went up
        assert after_refused and all(e.outcome == "CALLRESULT" for e in after_refused)
        assert ctl.metrics.replayed[action, "dead_letter"] == 1
        for k, gap in enumerate(gaps, start=1):
            assert F2_INTERVAL * k * 0.8 <= gap <= F2_INTERVAL * k * 1.2 + 0.3, gaps
    else:
        # SecurityError costs no attempt: more refusals than attempts, yet no dead letter,
        # and the charger is booted again before each retry
        assert rule.hits == F2_ATTEMPTS
        assert dead == []
        assert tries[-1].outcome == "CALLRESULT"
        refusals = [i for i, e in enumerate(seen) if e.outcome == "CALLERROR"]
        delivered = next(
            i
            for i, e in enumerate(seen)
            if e.action == action and is_refused(e.request) and e.outcome == "CALLRESULT"
        )
        for before, after in zip(refusals, [*refusals[1:], delivered], strict=True):
            assert any(before < b < after for b in boots), "no re-boot between the retries"
    csms.assert_clean()


def _call_payload(text: str | bytes) -> Any:
    with contextlib.suppress(ValueError, IndexError, TypeError):
        msg = json.loads(text)
        if msg[0] == CALL:
            return msg[3]
    return None


# --------------------------------------------------------------------------- F3

SLOW = 1.5  # the CSMS's answer delay (3 s scaled from 30 s, halved again here)


async def test_f3_slow_csms_retry_with_the_same_id_is_not_forwarded_twice(
    csms: CsmsPeer, fast_controller: ControllerFactory
) -> None:
    """F3: slow CSMS: the charger's retry (same id) is not forwarded; one answer, in time."""
    ctl = await fast_controller(csms={"call_timeout": 5})
    await run_f3_same_id(csms, ctl, SLOW)


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_f3_slow_csms_real_timings(
    slow_selected: None, csms: CsmsPeer, controller_factory: ControllerFactory
) -> None:
    """F3 (slow): the CSMS answers after 25 s, under the default 30 s call timeout."""
    ctl = await controller_factory()
    await run_f3_same_id(csms, ctl, 25.0)


async def run_f3_same_id(csms: CsmsPeer, ctl: Controller, delay: float) -> None:
    """The CSMS takes ``delay`` s to answer a StartTransaction the charger sends twice."""
    slow = csms.delay("StartTransaction", delay, times=1)
    async with RawCharger(controller_url(ctl.listen_port), IDENTITY) as raw:
        boot = {"chargePointVendor": "OpenSite", "chargePointModel": "LC-Test"}
        await answer_to(raw, frame("b1", "BootNotification", boot))
        start = frame("s1", "StartTransaction", start_payload(TAG, 1000))
        began = time.monotonic()
        await raw.send(start)
        await asyncio.sleep(delay / 3)
        await raw.send(start)  # the charger gives up waiting and sends it again
        answer = await answer_to(raw, frame("h1", "Heartbeat", {}), timeout=delay + 3)
        took = time.monotonic() - began
        assert answer[0] == CALLRESULT
        answers = [m for m in map(json.loads, _received(raw)) if m[0] != CALL and m[1] == "s1"]
        await raw.expect_silence(0.3)
    starts = received(csms, "StartTransaction")
    figures_line(
        "F3",
        case="retry-same-id",
        csms_delay_s=delay,
        forwarded_starts=len(starts),
        duplicates=max(0, len(starts) - 1),
        answers_to_charger=len(answers),
        heartbeat_answered_after_s=took,
        max_in_flight=max_in_flight(csms),
    )
    assert slow.hits == 1
    assert len(starts) == 1, "the retry went up again"
    assert len(answers) >= 1
    assert {a[2]["transactionId"] for a in answers} == {starts[0].response["transactionId"]}
    assert max_in_flight(csms) <= 1
    csms.assert_clean()


async def test_f3_slow_csms_retry_with_a_new_id_is_not_forwarded_twice(
    csms: CsmsPeer, fast_controller: ControllerFactory
) -> None:
    """F3: slow CSMS: a retried StartTransaction under a new id is not forwarded again."""
    ctl = await fast_controller(csms={"call_timeout": 5})
    csms.delay("StartTransaction", SLOW, times=1)
    async with RawCharger(controller_url(ctl.listen_port), IDENTITY) as raw:
        boot = {"chargePointVendor": "OpenSite", "chargePointModel": "LC-Test"}
        await answer_to(raw, frame("b1", "BootNotification", boot))
        payload = start_payload(TAG, 1000)
        await raw.send(frame("s1", "StartTransaction", payload))
        await asyncio.sleep(SLOW / 3)
        retried = await answer_to(raw, frame("s2", "StartTransaction", payload), SLOW + 3)
        await asyncio.sleep(0.3)  # a second forwarding, if any, is answered meanwhile
    starts = received(csms, "StartTransaction")
    first = [m for m in map(json.loads, _received(raw)) if m[0] != CALL and m[1] == "s1"]
    figures_line(
        "F3",
        case="retry-new-id",
        csms_delay_s=SLOW,
        forwarded_starts=len(starts),
        duplicates=max(0, len(starts) - 1),
        transaction_ids=sorted(
            {e.response["transactionId"] for e in starts if e.outcome == CALLRESULT_NAME}
        ),
        max_in_flight=max_in_flight(csms),
    )
    assert retried[0] == CALLRESULT
    assert len(starts) == 1, f"the retry under a new id went up again: {len(starts)} starts"
    assert retried[2]["transactionId"] == starts[0].response["transactionId"]
    assert all(a[2]["transactionId"] == retried[2]["transactionId"] for a in first)
    csms.assert_clean()


async def test_f3_call_past_the_controllers_timeout_is_answered_in_time(
    csms: CsmsPeer, fast_controller: ControllerFactory
) -> None:
    """F3: a call past the controller's call_timeout is answered within the charger's timeout."""
    call_timeout = 1.0
    charger_timeout = call_timeout + 1.0
    csms_delay = charger_timeout + 1.0
    ctl = await fast_controller(csms={"call_timeout": call_timeout})
    csms.delay("Heartbeat", csms_delay, times=1)
    async with RawCharger(controller_url(ctl.listen_port), IDENTITY) as raw:
        boot = {"chargePointVendor": "OpenSite", "chargePointModel": "LC-Test"}
        await answer_to(raw, frame("b1", "BootNotification", boot))
        began = time.monotonic()
        first: list[Any] | None = None
        with contextlib.suppress(TimeoutError):
            first = await answer_to(raw, frame("h1", "Heartbeat", {}), charger_timeout)
        took = time.monotonic() - began
        second = await answer_to(raw, frame("h2", "Heartbeat", {}), CHARGER_TIMEOUT)
        await asyncio.sleep(0.3)
        late = [m for m in map(json.loads, _received(raw)) if m[0] != CALL and m[1] == "h1"]
    figures_line(
        "F3",
        case="past-controller-timeout",
        controller_call_timeout_s=call_timeout,
        csms_delay_s=csms_delay,
        charger_timeout_s=charger_timeout,
        first_answer=None if first is None else first[0],
        first_answered_after_s=took,
        second_answer=second[0],
        answers_to_h1=len(late),
        max_in_flight=max_in_flight(csms),
    )
    assert second[0] in (CALLRESULT, CALLERROR) and second[1] == "h2"
    assert first is not None, (
        f"no answer within the charger's {charger_timeout} s although the controller gave up "
        f"after {call_timeout} s"
    )
    assert len(late) == 1, "the CSMS's late answer reached the charger as well"
    assert max_in_flight(csms) <= 1


async def test_f3_transaction_message_past_the_timeout_is_stored_and_replayed_in_order(
    csms: CsmsPeer, fast_controller: ControllerFactory
) -> None:
    """F3: a MeterValues the CSMS never answers is answered locally after call_timeout,
    stored, and replayed on a new uplink before the StopTransaction that follows it."""
    call_timeout = 1.0
    ctl = await fast_controller(csms={"call_timeout": call_timeout})
    silent = csms.ignore("MeterValues", times=1)
    async with RawCharger(controller_url(ctl.listen_port), IDENTITY) as raw:
        await answer_to(raw, frame("b1", "BootNotification", BOOT_16))
        started = await answer_to(raw, frame("s1", "StartTransaction", start_payload(TAG, 1000)))
        tx_id = started[2]["transactionId"]
        began = time.monotonic()
        meter = await answer_to(raw, frame("m1", "MeterValues", meter_payload(tx_id, 1500)))
        took = time.monotonic() - began
        stop = {"transactionId": tx_id, "meterStop": 2000, "timestamp": "2025-01-01T12:01:00.000Z"}
        stopped = await answer_to(raw, frame("t1", "StopTransaction", stop))
        await wait_drained(ctl)
    ups = [
        (e.action, e.request.get("transactionId"))
        for e in ledger(csms.frames[IDENTITY], calls="received")
        if e.action in ("StartTransaction", "MeterValues", "StopTransaction")
    ]
    figures_line(
        "F3",
        case="transaction-message-past-timeout",
        controller_call_timeout_s=call_timeout,
        answered_after_s=took,
        csms_connections=csms.connections[IDENTITY],
        forwarded=ups,
        max_in_flight=max_in_flight(csms),
    )
    assert silent.hits == 1
    assert meter[0] == CALLRESULT and took < call_timeout + 1.0
    assert stopped[0] == CALLRESULT
    assert csms.connections[IDENTITY] == 2, "the silent uplink was not replaced"
    # the stored MeterValues went up again before the stop, with the CSMS's id: order
    # kept, the one given up counted as the allowed duplicate
    assert ups[0] == ("StartTransaction", None)
    assert ups[-2:] == [("MeterValues", tx_id), ("StopTransaction", tx_id)]
    assert ups.count(("MeterValues", tx_id)) <= 2
    assert max_in_flight(csms) <= 1
    csms.assert_clean()


def _received(raw: RawCharger) -> list[str | bytes]:
    return [f.text for f in raw.frames if f.direction == "received"]


# --------------------------------------------------------------------------- F6


class SmallDisk:
    """A small file system of its own (tmpfs) for the controller's store: ``fill()``
    takes every free byte with a filler file, as a full disk; ``free()`` gives it back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"
        self.filled = 0

    def fill(self) -> int:
        """Write the filler until the file system is full; the bytes written."""
        chunk = b"\0" * 4096
        with self.filler.open("ab", buffering=0) as f:
            for _ in range(1 << 16):  # bounded: 256 MiB at most
                try:
                    written = f.write(chunk)
                except OSError:
                    break
                self.filled += written or 0
        return self.filled

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)
        self.filled = 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 4 MiB tmpfs mounted for the test (root only; unmounted at teardown)."""
    path = tmp_path / "disk"
    path.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(path)],
            check=True,
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(
            f"a small file system cannot be mounted here ({exc}); the store's InternalError path"
            " is covered by test_store.py::test_locked_store_answers_internal_error_and_recovers"
        )
    try:
        yield SmallDisk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True, timeout=10)


BOOT_16 = {"chargePointVendor": "OpenSite", "chargePointModel": "LC-Test"}


async def test_f6_disk_full_refuses_with_internal_error_and_recovers(
    small_disk: SmallDisk,
    csms: CsmsPeer,
    fast_controller: ControllerFactory,
    site_list: Callable[..., Path],
) -> None:
    """F6: disk full: InternalError, never acked then dropped; retries stored once when freed."""
    await csms.stop()
    ctl = await fast_controller(
        local_list={"path": site_list(TAG)}, store={"path": small_disk.path / "lc.sqlite3"}
    )
    async with RawCharger(controller_url(ctl.listen_port), IDENTITY) as raw:
        await answer_to(raw, frame("b1", "BootNotification", BOOT_16))
        start = await answer_to(raw, frame("s1", "StartTransaction", start_payload(TAG, 0)))
        tx = start[2]["transactionId"]
        filled = small_disk.fill()
        acked: list[str] = []
        refused: str | None = None
        for n in range(1, 3001):
            stamp = f"2025-01-01T13:{n // 60 % 60:02d}:{n % 60:02d}.000Z"
            text = frame(f"m{n}", "MeterValues", meter_payload(tx, n, stamp))
            answer = await answer_to(raw, text)
            if answer[0] == CALLERROR:
                assert answer[2] == "InternalError", answer
                refused = text
                break
            acked.append(text)
        assert refused is not None, f"the store never filled up ({filled} bytes of filler)"
        # the charger retries (as a 1.6 charger does, the message first): still refused
        retries_while_full = []
        for _ in range(3):
            await asyncio.sleep(0.1)
            retries_while_full.append(tuple((await answer_to(raw, refused))[:3]))
        heartbeat = await answer_to(raw, frame("h1", "Heartbeat", {}))
        stored_while_full = [r.frame for r in await ctl.store.outbox(IDENTITY, limit=10_000)]
        small_disk.free()
        retried = await answer_to(raw, refused)
        stop = frame(
            "t1",
            "StopTransaction",
            {"transactionId": tx, "meterStop": 9999, "timestamp": "2025-01-01T14:00:00.000Z"},
        )
        stopped = await answer_to(raw, stop)
        await csms.start()
        recovery = await wait_drained(ctl, timeout=20)
        figures = delivery_figures(ledger(raw.frames), csms.inbound(IDENTITY))
    figures_line(
        "F6",
        case="offline-store-full",
        filler_bytes=filled,
        acked_while_filling=len(acked),
        internal_errors=1 + sum(1 for r in retries_while_full if r[0] == CALLERROR),
        acked_after_space_back=int(retried[0] == CALLRESULT) + int(stopped[0] == CALLRESULT),
        lost=len(figures.lost),
        duplicates=figures.duplicates,
        order_violations=figures.order_violations,
        delivered=figures.delivered,
        recovery_s=recovery,
    )
    refused_id = json.loads(refused)[1]
    assert retries_while_full == [(CALLERROR, refused_id, "InternalError")] * 3
    assert heartbeat[0] == CALLRESULT
    # nothing acked and then dropped: every acked message is in the store, the refused
    # one is not
    assert all(text in stored_while_full for text in acked)
    assert refused not in stored_while_full
    assert (retried[0], stopped[0]) == (CALLRESULT, CALLRESULT)
    assert (figures.lost, figures.duplicates, figures.order_violations) == ([], 0, 0)
    assert figures.delivered == len(acked) + 3  # start, the acked values, the retry, stop
    csms.assert_clean()


async def test_f6_online_pass_through_goes_on_while_the_disk_is_full(
    small_disk: SmallDisk, csms: CsmsPeer, fast_controller: ControllerFactory
) -> None:
    """F6: while the store cannot commit, online calls still pass through and are answered."""
    ctl = await fast_controller(store={"path": small_disk.path / "lc.sqlite3"})
    async with RawCharger(controller_url(ctl.listen_port), "CP2") as raw:
        await answer_to(raw, frame("b1", "BootNotification", BOOT_16))
        small_disk.fill()
        calls = [
            ("Heartbeat", {}),
            ("Authorize", {"idTag": "ONLINE-TAG"}),
            ("Heartbeat", {}),
            (
                "StatusNotification",
                {"connectorId": 1, "errorCode": "NoError", "status": "Available"},
            ),
            ("Heartbeat", {}),
        ]
        answers = []
        for n, (action, payload) in enumerate(calls):
            try:
                answer = await answer_to(raw, frame(f"o{n}", action, payload), 1.0)
                answers.append((action, answer[0]))
            except TimeoutError:
                answers.append((action, "no answer"))
        small_disk.free()
        forwarded = len(csms.received("CP2")) - 1
    figures_line(
        "F6",
        case="online-while-full",
        answered=sum(1 for _, a in answers if a == CALLRESULT),
        of=len(calls),
        answers=answers,
        csms_frames_received=forwarded,
        uplink_state=state_of(ctl, "CP2"),
    )
    assert answers == [(action, CALLRESULT) for action, _ in calls], (
        "online pass-through stopped while the store could not commit"
    )
    csms.assert_clean()


async def test_f6_disk_full_raises_an_alarm(
    small_disk: SmallDisk,
    csms: CsmsPeer,
    fast_controller: ControllerFactory,
    site_list: Callable[..., Path],
) -> None:
    """F6: a store that cannot commit raises an alarm: a counted security event."""
    await csms.stop()
    ctl = await fast_controller(
        local_list={"path": site_list(TAG)}, store={"path": small_disk.path / "lc.sqlite3"}
    )
    async with RawCharger(controller_url(ctl.listen_port), IDENTITY) as raw:
        await answer_to(raw, frame("b1", "BootNotification", BOOT_16))
        small_disk.fill()
        answer = await answer_to(raw, frame("s1", "StartTransaction", start_payload(TAG, 0)))
        small_disk.free()
    events = dict(ctl.metrics.security_events)
    figures_line("F6", case="alarm", answer=answer[2], security_events=events)
    assert answer[:3] == [CALLERROR, "s1", "InternalError"]
    assert events, "no security event (MemoryExhaustion-like) counted for the full store"


# --------------------------------------------------------------------------- F8


async def test_f8_reconnect_while_the_old_socket_is_half_open_with_a_call_in_flight(
    csms: CsmsPeer, fast_controller: ControllerFactory
) -> None:
    """F8: old socket half-open, call in flight: replaced in time, one uplink, retry answered."""
    ctl = await fast_controller(csms={"call_timeout": 5})
    open_timeout = ctl.settings.listen.open_timeout
    async with FaultRelay(ctl.listen_port) as front:
        old = RawCharger(f"ws://127.0.0.1:{front.port}/ocpp", IDENTITY)
        await old.connect()
        try:
            await answer_to(old, frame("b1", "BootNotification", BOOT_16))
            csms.delay("StartTransaction", 1.0, times=1)
            start = frame("s1", "StartTransaction", start_payload(TAG, 1000))
            await old.send(start)
            await wait_for(lambda: bool(received(csms, "StartTransaction")), 5.0, "the CSMS")
            front.set_mode("blackhole")  # the old socket is half-open from here on
            began = time.monotonic()
            async with RawCharger(
                controller_url(ctl.listen_port), IDENTITY, open_timeout=30.0
            ) as new:
                replaced_after = time.monotonic() - began
                retried = await answer_to(new, start)
                await new.expect_silence(0.3)
        finally:
            front.set_mode("reset")
            with contextlib.suppress(Exception):
                await old.ws.close()
    starts = received(csms, "StartTransaction")
    figures_line(
        "F8",
        case="half-open-old-socket",
        replaced_after_s=replaced_after,
        open_timeout_s=open_timeout,
        uplinks=len(csms.history[IDENTITY]),
        max_live_per_identity=max_live_per_identity(csms),
        csms_start_receipts=len(starts),
        duplicates=max(0, len([e for e in starts if e.outcome == CALLRESULT_NAME]) - 1),
        retry_answer=retried[0],
        max_in_flight=max_in_flight(csms),
    )
    assert retried[0] == CALLRESULT
    assert max_live_per_identity(csms) == 1
    assert len(starts) <= 2
    assert max_in_flight(csms) <= 1
    assert replaced_after < open_timeout, "the newcomer waited past the handshake timeout"
    csms.assert_clean()


# --------------------------------------------------------------------------- F9


def stamp(n: int) -> str:
    return f"2025-01-01T{n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}.000Z"


class HerdCharger:
    """A light 1.6 charger (plain WebSocket) for the many-charger faults."""

    def __init__(self, url: str, number: int) -> None:
        self.number = number
        self.identity = f"H{number:04d}"
        self.raw = RawCharger(url, self.identity, open_timeout=30.0)
        self.tx: int | None = None
        self.meter_start = number * 1_000_000
        self.register = self.meter_start
        self.clock = itertools.count(number * 100)
        self.failures: list[str] = []

    async def call(self, action: str, payload: dict[str, Any], timeout: float = 30.0) -> Any:
        answer = await self.raw.call(action, payload, timeout=timeout)
        if answer[0] != CALLRESULT:
            self.failures.append(f"{action}: {answer}")
        return answer[2] if answer[0] == CALLRESULT else None

    async def online_part(self) -> None:
        await self.raw.connect()
        await self.call("BootNotification", {**BOOT_16, "firmwareVersion": "1"})
        started = await self.call(
            "StartTransaction",
            {
                "connectorId": 1,
                "idTag": f"TAG{self.number}",
                "meterStart": self.meter_start,
                "timestamp": stamp(next(self.clock)),
            },
        )
        self.tx = started["transactionId"] if started else None

    async def offline_part(self, meter_values: int = 3) -> None:
        """A reboot while the CSMS is down, then the rest of the session."""
        await self.call("BootNotification", {**BOOT_16, "firmwareVersion": "2"})
        await self.call(
            "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Charging"}
        )
        for _ in range(meter_values):
            self.register += 100 + self.number % 7
            await self.call(
                "MeterValues", meter_payload(self.tx or 0, self.register, stamp(next(self.clock)))
            )
        self.register += 50
        await self.call(
            "StopTransaction",
            {
                "transactionId": self.tx,
                "meterStop": self.register,
                "timestamp": stamp(next(self.clock)),
            },
        )


async def run_herd(
    csms: CsmsPeer,
    fast_controller: ControllerFactory,
    monkeypatch: pytest.MonkeyPatch,
    *,
    chargers: int,
    outage: float,
    rate: float,
    uplink: dict[str, Any],
    timeout: float,
    call_timeout: float,
) -> None:
    """F9: many chargers through a CSMS outage; a third get 503 twice when it is back."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 6 * chargers + 256
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    attempts = ConnectAttempts().install(monkeypatch)
    ctl = await fast_controller(
        uplink={"max_connects_per_second": rate, **uplink},
        csms={"call_timeout": call_timeout},
        listen={"max_connections_per_ip": 0, "compression": False},
        policy={"allow_offline_tx_for_unknown_id": True, "concurrent_tx": False},
    )
    url = controller_url(ctl.listen_port)
    herd = [HerdCharger(url, n) for n in range(chargers)]
    identities = [c.identity for c in herd]
    async with LoopLag() as lag:
        try:
            began = time.monotonic()
            await asyncio.gather(*(c.online_part() for c in herd))
            connected = time.monotonic() - began
            await wait_for(
                lambda: all(i in csms.live for i in identities), timeout, "every uplink up"
            )
            await csms.stop()
            down = time.monotonic()
            await asyncio.gather(*(c.offline_part() for c in herd))
            await asyncio.sleep(max(0.0, outage - (time.monotonic() - down)))
            refused = identities[::3]
            csms.refusals = RefuseFirst(refused, 503, times=2)
            await csms.start()
            back = time.monotonic()

            async def all_back() -> bool:
                if not all(i in csms.live for i in identities):
                    return False
                sessions = ctl.chargers.sessions
                if any(sessions[i].state.value != "online" for i in identities):
                    return False
                return await ctl.store.outbox_depth() == 0

            await wait_for(all_back, timeout, "every uplink back and every outbox empty", 0.1)
            recovered = time.monotonic() - back
        finally:
            await asyncio.gather(
                *(c.raw.close() for c in herd if c.raw._ws), return_exceptions=True
            )
    # figures
    totals = None
    order_boot: list[str] = []
    recovery: list[float] = []
    energy_mismatch = []
    for c in herd:
        seen = csms.inbound(c.identity)
        f = delivery_figures(ledger(c.raw.frames), seen)
        totals = f if totals is None else totals + f
        boot = next(
            (
                i
                for i, e in enumerate(seen)
                if e.action == "BootNotification"
                and e.request.get("firmwareVersion") == "2"
                and e.outcome == "CALLRESULT"
            ),
            None,
        )
        first_offline = next(
            (i for i, e in enumerate(seen) if e.action in ("MeterValues", "StopTransaction")),
            None,
        )
        if boot is None or first_offline is None or boot > first_offline:
            order_boot.append(c.identity)
        last = max(
            (f.at for f in csms.log if f.identity == c.identity and f.direction == "sent"),
            default=back,
        )
        recovery.append(last - back)
        charged = {c.meter_start: c.register - c.meter_start}
        if csms_transaction_energy(csms, c.identity) != charged:
            energy_mismatch.append(c.identity)
    assert totals is not None
    after = attempts.since(back)
    uplinks_back = max(conn.opened for i in identities for conn in csms.history[i][-1:]) - back
    gaps_503 = [
        b - a
        for i in refused
        for a, b in itertools.pairwise([t for t in attempts.by_identity[i] if t >= back])
    ]
    peak = peak_per_window(after, 0.1)
    figures_line(
        "F9",
        chargers=chargers,
        outage_s=outage,
        rate_per_s=rate,
        connect_s=connected,
        lost=len(totals.lost),
        duplicates=totals.duplicates,
        order_violations=totals.order_violations,
        acked=totals.acked,
        boot_not_first=len(order_boot),
        energy_mismatches=len(energy_mismatch),
        recovery_p50_s=percentile(recovery, 50),
        recovery_p95_s=percentile(recovery, 95),
        recovery_max_s=max(recovery),
        all_backlogs_empty_s=recovered,
        uplinks_back_s=uplinks_back,
        attempts_after_back=len(after),
        peak_attempts_per_100ms=peak,
        refused_503=sum(csms.refusals.refused.values()),
        min_gap_after_503_s=min(gaps_503, default=float("nan")),
        max_in_flight=max_in_flight(csms),
        max_live_per_identity=max_live_per_identity(csms),
        loop_lag_max_s=lag.worst,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        charger_failures=sum(len(c.failures) for c in herd),
    )
    assert [f for c in herd for f in c.failures] == []
    assert (totals.lost, totals.order_violations, totals.unexpected) == ([], 0, [])
    assert totals.acked == chargers * 5  # start, 3 meter values, stop
    assert energy_mismatch == []
    assert order_boot == [], f"{len(order_boot)} replays did not start with the boot"
    # at most the configured rate in any 100 ms window (R5), after the outage
    assert peak <= rate * 0.1 + 2, peak
    # per-uplink back-off after a 503: never straight away again
    assert min(gaps_503) >= uplink["reconnect_min"] * 0.9, min(gaps_503)
    # every uplink back within N / rate plus the back-off of the 503s, + 50 % (the
    # controller shares this process with 300 chargers, and with coverage in CI)
    backoff = uplink["reconnect_max"] + uplink["reconnect_jitter"]
    bound = (chargers / rate + 3 * backoff + 2.0) * 1.5
    assert uplinks_back <= bound, (uplinks_back, bound)
    assert max_in_flight(csms) <= 1
    assert max_live_per_identity(csms) == 1
    # The loop is this test process's: it also runs the 300 chargers' handshakes and the
    # CSMS peer, 0.4-0.6 s worst here when quiet; a stall of seconds would be the
    # controller's. (1.0 s was missed once under a loaded CI machine: 1.07 s.)
    assert lag.worst < 2.0
    csms.assert_clean()


async def test_f9_herd_after_a_csms_outage(
    csms: CsmsPeer, fast_controller: ControllerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """F9 (scaled): 300 chargers, CSMS down 3 s, 503 first for a third: rate kept, all back."""
    await run_herd(
        csms,
        fast_controller,
        monkeypatch,
        chargers=300,
        outage=3.0,
        rate=200,
        uplink={"reconnect_min": 0.2, "reconnect_max": 1.0, "reconnect_jitter": 0.3},
        timeout=40.0,
        call_timeout=5.0,
    )


@pytest.mark.parametrize("probe", [0.25, 0.0], ids=["probe", "no-probe"])
async def test_f9_csms_back_noticed_within_the_probe_interval(
    csms: CsmsPeer,
    fast_controller: ControllerFactory,
    monkeypatch: pytest.MonkeyPatch,
    probe: float,
) -> None:
    """While no uplink gets through, the site tries the CSMS every probe_interval with
    the uplink that has waited longest, so the CSMS is noticed back within about that
    long however far the back-off has grown; without the probe, the back-off decides.

    The back-off here (0.2 s doubling, no jitter) puts the uplinks' own attempts at
    0.2, 0.6, 1.4, 3.0 and 6.2 s after the loss; the CSMS is back at 3.3 s."""
    attempts = ConnectAttempts().install(monkeypatch)
    reconnect_min = 0.2
    ctl = await fast_controller(
        uplink={
            "reconnect_min": reconnect_min,
            "reconnect_max": 30.0,
            "reconnect_jitter": 0.0,
            "probe_interval": probe,
        }
    )
    identities = [f"PROBE-{n}" for n in range(3)]
    async with contextlib.AsyncExitStack() as stack:
        chargers = [
            await stack.enter_async_context(RawCharger(controller_url(ctl.listen_port), i))
            for i in identities
        ]
        await wait_for(lambda: all(i in csms.live for i in identities), 5.0, "uplinks up")
        await csms.stop()
        down = time.monotonic()
        await asyncio.sleep(3.3)
        await csms.start()
        back = time.monotonic()
        await wait_for(lambda: all(i in csms.live for i in identities), 10.0, "uplinks back")
        noticed = time.monotonic() - back
        answer = await chargers[0].call("Heartbeat", {})
    during = [t for t in attempts.times if down <= t < back]
    gaps = [
        b - a
        for i in identities
        for a, b in itertools.pairwise([t for t in attempts.by_identity[i] if t >= down])
    ]
    probes = ctl.chargers.limiter.probes
    exported = generate_latest(ctl.metrics.registry).decode()
    figures_line(
        "F9-probe",
        probe_interval_s=probe,
        noticed_s=noticed,
        attempts_during_outage=len(during),
        probes=probes,
        min_gap_per_uplink_s=min(gaps),
    )
    assert answer[0] == CALLRESULT
    assert f"ocpp_lc_uplink_probes_total {float(probes)}" in exported
    # no uplink ever retries sooner than reconnect_min after its previous attempt
    assert min(gaps) >= reconnect_min * 0.9, min(gaps)
    if probe:
        assert probes >= 1
        assert noticed < 1.5, f"the CSMS was noticed back after {noticed:.2f} s"
        # the probe adds about one attempt per interval, not a stampede: each uplink's
        # own back-off (at most 5 attempts in 3.3 s) plus one per probe interval
        assert len(during) <= len(identities) * 5 + 3.3 / probe + 2, len(during)
    else:
        assert probes == 0
        assert noticed > 2.0, f"noticed after {noticed:.2f} s without the probe"


async def test_f9_csms_restart_behind_a_proxy_that_accepts_then_closes(
    csms: CsmsPeer, relay: FaultRelay, tmp_path: Path
) -> None:
    """F9: CSMS down behind a TCP proxy that accepts then closes: the uplink comes back."""
    # The service as deployed (its own event loop): a peer that accepts the TCP connection
    # and closes it before the handshake request goes out is part of every CSMS restart
    # behind a load balancer or proxy (here: the relay, its target down).
    svc = Service(
        tmp_path / "lc.sqlite3",
        tmp_path / "service.log",
        csms_url=relay.url,
        extra_env={
            "OCPP_LC_LOG__LEVEL": "INFO",
            "OCPP_LC_UPLINK__RECONNECT_MIN": "0.05",
            "OCPP_LC_UPLINK__RECONNECT_MAX": "0.2",
            "OCPP_LC_UPLINK__RECONNECT_JITTER": "0.05",
            "OCPP_LC_POLICY__ALLOW_OFFLINE_TX_FOR_UNKNOWN_ID": "true",
        },
    )
    try:
        svc.spawn()
        await svc.ready()
        url = controller_url(svc.listen_port)
        async with ChargerPeer16(url, IDENTITY, clock=StepClock()) as cp:
            await cp.boot()
            tx = await cp.start_transaction(TAG, meter_start=1000)
            await csms.stop()
            await wait_for(
                lambda: "uplink_lost" in svc.log_tail(100_000), 5.0, "the uplink to be lost"
            )
            for wh in (1100, 1200):
                await cp.meter_values(tx, wh)
            await cp.stop_transaction(tx, 1300)
            await asyncio.sleep(2.0)  # reconnect attempts meet the closing proxy
            await csms.start()
            back = time.monotonic()
            recovered: float | None = None
            with contextlib.suppress(AssertionError):
                # answered, not only received: the figures count a delivery once the
                # CSMS has answered it (checked between the two, a replay looked lost)
                recovered = await wait_for(
                    lambda: any(
                        e.action == "StopTransaction" and e.outcome == CALLRESULT_NAME
                        for e in csms.inbound(IDENTITY)
                    ),
                    5.0,
                    "the replay",
                )
            figures = delivery_figures(cp.ledger, csms.inbound(IDENTITY))
    finally:
        svc.terminate()
        with contextlib.suppress(TimeoutError):
            await svc.exited(10.0)
        svc.kill()
    log = svc.log_tail(1_000_000)
    failed = log.count('"session_task_failed"')
    figures_line(
        "F9",
        case="restart-behind-closing-proxy",
        relay_connections=relay.accepted,
        reconnect_attempts=log.count('"uplink_retry"'),
        reconnect_tasks_failed=failed,
        recovered_after_s=recovered if recovered is not None else "never",
        lost=len(figures.lost),
        duplicates=figures.duplicates,
        since_csms_back_s=time.monotonic() - back,
    )
    assert failed == 0, "the reconnect task died: " + next(
        (line[:400] for line in log.splitlines() if "session_task_failed" in line), ""
    )
    assert recovered is not None, "the uplink never came back after the CSMS restart"
    assert (figures.lost, figures.order_violations) == ([], 0)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_f9_herd_after_a_csms_outage_1000_real_timings(
    slow_selected: None,
    csms: CsmsPeer,
    fast_controller: ControllerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """F9 (slow): 1000 chargers, CSMS down 10 s, the default back-off and rate (100/s)."""
    await run_herd(
        csms,
        fast_controller,
        monkeypatch,
        chargers=1000,
        outage=10.0,
        rate=100,
        uplink={"reconnect_min": 1.0, "reconnect_max": 60.0, "reconnect_jitter": 2.0},
        timeout=300.0,
        call_timeout=30.0,
    )


# --------------------------------------------------------------------------- F10


async def uplink_closed(csms: CsmsPeer, since: float, identity: str = IDENTITY) -> float:
    """Wait until the identity's latest connection at the CSMS is closed (the socket, not
    the CSMS peer's bookkeeping); the seconds since ``since``."""
    conn = csms.history[identity][-1]
    assert conn.ws is not None
    ws = conn.ws
    await wait_for(lambda: ws.close_code is not None, 5.0, "the uplink to close", 0.005)
    return time.monotonic() - since


async def test_f10_charger_gone_while_its_call_is_in_flight_online(
    csms: CsmsPeer, fast_controller: ControllerFactory
) -> None:
    """F10 (online): charger gone with its call at the CSMS: uplink closed, retry answered."""
    csms.idempotent_starts = True
    ctl = await fast_controller(csms={"call_timeout": 5})
    url = controller_url(ctl.listen_port)
    start = frame("s1", "StartTransaction", start_payload(TAG, 1000))
    async with RawCharger(url, IDENTITY) as raw:
        await answer_to(raw, frame("b1", "BootNotification", BOOT_16))
        csms.delay("StartTransaction", 0.8, times=1)
        await raw.send(start)
        await wait_for(lambda: bool(received(csms, "StartTransaction")), 5.0, "the CSMS to read")
        began = time.monotonic()
        await raw.close()
    uplink_closed_after = await uplink_closed(csms, began)
    closed = await csms.wait_disconnected(IDENTITY, 5.0)
    await wait_for(lambda: IDENTITY not in ctl.chargers.sessions, 5.0, "the session to end")
    async with RawCharger(url, IDENTITY) as again:
        retried = await answer_to(again, start)
        await again.expect_silence(0.3)
    starts = received(csms, "StartTransaction")
    figures_line(
        "F10",
        case="online",
        uplink_closed_after_s=uplink_closed_after,
        uplink_close_code=closed.code,
        csms_start_receipts=len(starts),
        duplicates=max(0, len([e for e in starts if e.outcome == CALLRESULT_NAME]) - 1),
        retry_answer=retried[0],
        same_transaction_id=len({e.response["transactionId"] for e in starts if e.response}) == 1,
        max_live_per_identity=max_live_per_identity(csms),
    )
    assert uplink_closed_after < 0.8, "the uplink outlived the charger (R29)"
    assert closed.code == 1000
    assert retried[0] == CALLRESULT
    assert retried[2]["transactionId"] == starts[0].response["transactionId"]
    assert len(starts) <= 2  # at least once: the call in flight may be taken twice
    assert max_live_per_identity(csms) == 1
    csms.assert_clean()


async def test_f10_charger_gone_while_a_replayed_message_is_in_flight(
    csms: CsmsPeer, fast_controller: ControllerFactory, site_list: Callable[..., Path]
) -> None:
    """F10 (draining): charger gone mid-replay: uplink closed, messages kept, retry stored once."""
    await csms.stop()
    ctl = await fast_controller(local_list={"path": site_list(TAG)}, csms={"call_timeout": 5})
    url = controller_url(ctl.listen_port)
    async with RawCharger(url, IDENTITY) as raw:
        await answer_to(raw, frame("b1", "BootNotification", BOOT_16))
        started = await answer_to(raw, frame("s1", "StartTransaction", start_payload(TAG, 1000)))
        tx = started[2]["transactionId"]
        m1 = frame("m1", "MeterValues", meter_payload(tx, 1100, stamp(1)))
        await answer_to(raw, m1)
        csms.delay("StartTransaction", 0.8, times=1)
        await csms.start()
        await wait_for(lambda: bool(received(csms, "StartTransaction")), 5.0, "the replay")
        assert state_of(ctl) == "draining"
        # a live message while draining: stored, then the charger goes before reading
        m2 = frame("m2", "MeterValues", meter_payload(tx, 1200, stamp(2)))
        await raw.send(m2)
        began = time.monotonic()
        await raw.close()
    uplink_closed_after = await uplink_closed(csms, began)
    closed = await csms.wait_disconnected(IDENTITY, 5.0)
    await wait_for(lambda: IDENTITY not in ctl.chargers.sessions, 5.0, "the session to end")
    kept = await ctl.store.outbox(IDENTITY)
    async with RawCharger(url, IDENTITY) as again:
        retried = await answer_to(again, m2)  # the charger never saw the answer: resends
        stop = frame(
            "t1", "StopTransaction", {"transactionId": tx, "meterStop": 1300, "timestamp": stamp(3)}
        )
        stopped = await answer_to(again, stop)
        recovery = await wait_drained(ctl)
    seen = csms.inbound(IDENTITY)
    figures = delivery_figures(ledger([*raw.frames, *again.frames]), seen)
    real = [e for e in seen if e.action == "StartTransaction" and e.outcome == CALLRESULT_NAME]
    figures_line(
        "F10",
        case="draining",
        uplink_closed_after_s=uplink_closed_after,
        uplink_close_code=closed.code,
        kept_after_close=[(r.action, r.attempts) for r in kept],
        lost=len(figures.lost),
        duplicates=figures.duplicates,
        order_violations=figures.order_violations,
        retry_answer=retried[0],
        recovery_s=recovery,
    )
    assert uplink_closed_after < 0.8, "the uplink outlived the charger (R29)"
    assert [(r.action, r.attempts) for r in kept] == [
        ("StartTransaction", 0),
        ("MeterValues", 0),
        ("MeterValues", 0),
    ], "the stored messages were not kept as they were"
    assert retried[0] == CALLRESULT and stopped[0] == CALLRESULT
    assert (figures.lost, figures.order_violations, figures.unexpected) == ([], 0, [])
    assert figures.duplicates <= 1
    assert len([e for e in seen if e.action == "MeterValues"]) == 2, "m2 went up twice"
    stops = [e.request["transactionId"] for e in seen if e.action == "StopTransaction"]
    assert stops == [real[-1].response["transactionId"]]
    csms.assert_clean()


# --------------------------------------------------------------------------- F11


async def test_f11_sigterm_under_load(csms: CsmsPeer, tmp_path: Path) -> None:
    """F11: SIGTERM under load: exit 0 within 10 s, closes 1001, nothing lost, integrity ok."""
    import sqlite3

    store_path = tmp_path / "lc.sqlite3"
    svc = Service(
        store_path,
        tmp_path / "service.log",
        csms_url=csms.url,
        extra_env={
            "OCPP_LC_UPLINK__RECONNECT_MIN": "0.1",
            "OCPP_LC_UPLINK__RECONNECT_MAX": "0.5",
            "OCPP_LC_UPLINK__RECONNECT_JITTER": "0.1",
            "OCPP_LC_POLICY__ALLOW_OFFLINE_TX_FOR_UNKNOWN_ID": "true",
            "OCPP_LC_POLICY__CONCURRENT_TX": "false",
        },
    )
    chargers: list[RawCharger] = []
    try:
        svc.spawn()
        await svc.ready()
        url = controller_url(svc.listen_port)
        chargers = [RawCharger(url, f"T{n:03d}") for n in range(50)]
        await asyncio.gather(*(c.connect() for c in chargers))

        async def session(raw: RawCharger, n: int) -> int:
            await raw.call("BootNotification", BOOT_16)
            started = await raw.call("StartTransaction", start_payload(f"TAG{n}", n * 1000))
            tx = started[2]["transactionId"]
            count = 0
            for k in itertools.count(1):
                try:
                    answer = await raw.call(
                        "MeterValues", meter_payload(tx, n * 1000 + k, stamp(k)), timeout=5.0
                    )
                except (ConnectionClosed, TimeoutError, OSError):
                    return count
                assert answer[0] == CALLRESULT, answer
                count += 1
                await asyncio.sleep(0.01)
            return count

        loads = [asyncio.create_task(session(c, n)) for n, c in enumerate(chargers)]
        # online until the CSMS has answered some MeterValues (a fixed second was not
        # always enough under a loaded CI machine), then the rest offline
        await wait_for(
            lambda: any(
                e.action == "MeterValues" and e.outcome == CALLRESULT_NAME
                for c in chargers
                for e in csms.inbound(c.identity)
            ),
            10.0,
            "online MeterValues",
        )
        await asyncio.sleep(0.5)
        await csms.stop()  # the rest of the load is answered offline and stored
        await asyncio.sleep(1.0)
        rss = svc.peak_rss_kib()
        began = time.monotonic()
        svc.terminate()
        code = await svc.exited(15.0)
        took = time.monotonic() - began
        sent = await asyncio.wait_for(asyncio.gather(*loads), 10.0)
        closes = Counter(c.ws.close_code for c in chargers)
    finally:
        svc.kill()
        await asyncio.gather(
            *(c.ws.wait_closed() for c in chargers if c._ws), return_exceptions=True
        )
    db = sqlite3.connect(store_path)
    try:
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        stored = {
            (identity, message_key(action, json.loads(text)[3]))
            for identity, action, text in db.execute(
                "SELECT identity, action, frame FROM outbox WHERE state = 'pending'"
            )
        }
    finally:
        db.close()
    wal = store_path.with_name(store_path.name + "-wal")
    wal_bytes = wal.stat().st_size if wal.exists() else 0
    lost = []
    acked = 0
    delivered_count = 0
    for raw in chargers:
        delivered = {
            message_key(e.action, e.request)
            for e in csms.inbound(raw.identity)
            if e.outcome == CALLRESULT_NAME
        }
        for e in ledger(raw.frames):
            if e.action in ("StartTransaction", "MeterValues") and e.outcome == CALLRESULT_NAME:
                acked += 1
                key = message_key(e.action, e.request)
                if key in delivered:
                    delivered_count += 1
                elif (raw.identity, key) not in stored:
                    lost.append((raw.identity, key))
    figures_line(
        "F11",
        chargers=len(chargers),
        exit_code=code,
        exit_after_s=took,
        acked=acked,
        delivered=delivered_count,
        stored=len(stored),
        lost=len(lost),
        charger_closes=dict(closes),
        integrity=integrity,
        wal_bytes_after_exit=wal_bytes,
        peak_rss_mib=(rss or 0) / 1024,
        calls_answered=sum(sent),
    )
    assert code == 0, svc.log_tail()
    assert took < 10.0
    assert lost == []
    assert integrity == "ok"
    assert closes == Counter({1001: len(chargers)}), closes
    assert len(stored) > 0 and delivered_count > 0, "the load was not half online, half offline"
    assert wal_bytes == 0, "the WAL was not checkpointed at shutdown"


# --------------------------------------------------------------------------- F12

ODD_STAMPS = [
    "1970-01-01T00:00:00Z",
    "2099-12-31T23:59:59.999Z",
    "2025-01-01T12:00:00",
    "2025-01-01T12:00:00.123456+02:00",
]


def current_time(answer: list[Any]) -> datetime:
    return datetime.fromisoformat(answer[2]["currentTime"].replace("Z", "+00:00"))


async def test_f12_charger_timestamps_are_never_rewritten(
    csms: CsmsPeer, fast_controller: ControllerFactory, site_list: Callable[..., Path]
) -> None:
    """F12: odd charger timestamps reach the CSMS as sent; offline currentTime is the clock."""
    ctl = await fast_controller(local_list={"path": site_list(TAG)})
    async with RawCharger(controller_url(ctl.listen_port), IDENTITY) as raw:
        await answer_to(raw, frame("b1", "BootNotification", BOOT_16))
        live = frame(
            "n1",
            "StatusNotification",
            {
                "connectorId": 1,
                "errorCode": "NoError",
                "status": "Preparing",
                "timestamp": ODD_STAMPS[0],
            },
        )
        assert (await answer_to(raw, live))[0] == CALLRESULT
        await csms.stop()
        await wait_for(lambda: state_of(ctl) == "offline", 5.0, "offline")
        before = datetime.now(UTC)
        heartbeat = await answer_to(raw, frame("h1", "Heartbeat", {}))
        after = datetime.now(UTC)
        payload = start_payload(TAG, 0)
        payload["timestamp"] = ODD_STAMPS[1]
        tx = (await answer_to(raw, frame("s1", "StartTransaction", payload)))[2]["transactionId"]
        for n, odd in enumerate(ODD_STAMPS):
            await answer_to(raw, frame(f"m{n}", "MeterValues", meter_payload(tx, 100 + n, odd)))
        stop = {"transactionId": tx, "meterStop": 500, "timestamp": ODD_STAMPS[2]}
        await answer_to(raw, frame("t1", "StopTransaction", stop))
        await csms.start()
        await wait_drained(ctl)
        sent = {m[1]: m for m in (json.loads(f.text) for f in raw.frames if f.direction == "sent")}
    seen = csms.inbound(IDENTITY)

    def stamps(payload: Any) -> list[str]:
        found = []
        if isinstance(payload, dict):
            for k, v in payload.items():
                if k == "timestamp":
                    found.append(v)
                else:
                    found += stamps(v)
        elif isinstance(payload, list):
            for v in payload:
                found += stamps(v)
        return found

    at_charger = [stamps(sent[k][3]) for k in ("n1", "s1", "m0", "m1", "m2", "m3", "t1")]
    at_csms = [
        stamps(e.request)
        for e in seen
        if e.action in ("StatusNotification", "StartTransaction", "MeterValues", "StopTransaction")
    ]
    skew = current_time(heartbeat)
    figures_line(
        "F12",
        case="timestamps",
        odd_stamps_sent=sum(len(x) for x in at_charger),
        rewritten=sum(1 for a, b in zip(at_charger, at_csms, strict=False) if a != b),
        offline_current_time_within_s=max(
            (before - skew).total_seconds(), (skew - after).total_seconds(), 0.0
        ),
    )
    assert at_csms == at_charger
    assert before - timedelta(seconds=1) <= skew <= after + timedelta(seconds=1)
    csms.assert_clean()


class Clock1970(datetime):
    """An edge clock that booted without a time source."""

    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return datetime(1970, 1, 1, 0, 0, 5, tzinfo=UTC)


async def test_f12_offline_current_time_is_guarded_against_an_unsynced_clock(
    csms: CsmsPeer,
    fast_controller: ControllerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """F12: with the edge clock at 1970, offline currentTime is not before the last good time."""
    import proxy.offline

    ctl = await fast_controller()
    async with RawCharger(controller_url(ctl.listen_port), IDENTITY) as raw:
        online = await answer_to(raw, frame("b1", "BootNotification", BOOT_16))
        good = current_time(online)  # the CSMS's time, seen by the controller
        await csms.stop()
        await wait_for(lambda: state_of(ctl) == "offline", 5.0, "offline")

        monkeypatch.setattr(proxy.offline, "datetime", Clock1970)
        heartbeat = await answer_to(raw, frame("h1", "Heartbeat", {}))
        boot = await answer_to(raw, frame("b2", "BootNotification", BOOT_16))
    answered = [current_time(heartbeat), current_time(boot)]
    skew_metrics = [
        k
        for k in [*ctl.metrics.notes, *ctl.metrics.security_events]
        if "skew" in str(k) or "clock" in str(k)
    ]
    figures_line(
        "F12",
        case="edge-clock-1970",
        last_good_time=good.isoformat(),
        answered=[t.isoformat() for t in answered],
        behind_by_s=max((good - t).total_seconds() for t in answered),
        skew_metrics=skew_metrics,
    )
    assert ctl.metrics.notes["edge_clock_behind_csms"] == len(answered)
    assert all(t >= good - timedelta(seconds=5) for t in answered), (
        f"offline currentTime {answered[0].isoformat()} is before the last good time "
        f"{good.isoformat()}: the edge clock is not guarded"
    )


async def test_f12_offline_expiry_is_judged_by_the_guarded_clock(
    csms: CsmsPeer,
    fast_controller: ControllerFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """F12/B25: with the edge clock at 1970, a site-list card that expired in 2001 is
    still Expired offline: local decisions use the guarded clock, not the edge's."""
    import proxy.offline
    import proxy.site

    cards = tmp_path / "cards.csv"
    cards.write_text(
        "id_tag,status,expiry,parent_id_tag\n"
        "OLD-CARD,Accepted,2001-01-01T00:00:00Z,\n"
        "NEW-CARD,Accepted,2999-01-01T00:00:00Z,\n",
        encoding="utf-8",
    )
    ctl = await fast_controller(local_list={"path": cards})
    async with RawCharger(controller_url(ctl.listen_port), IDENTITY) as raw:
        await answer_to(raw, frame("b1", "BootNotification", BOOT_16))
        await csms.stop()
        await wait_for(lambda: state_of(ctl) == "offline", 5.0, "offline")

        monkeypatch.setattr(proxy.offline, "datetime", Clock1970)
        monkeypatch.setattr(proxy.site, "datetime", Clock1970)
        old = await answer_to(raw, frame("a1", "Authorize", {"idTag": "OLD-CARD"}))
        new = await answer_to(raw, frame("a2", "Authorize", {"idTag": "NEW-CARD"}))
    assert [old[2]["idTagInfo"]["status"], new[2]["idTagInfo"]["status"]] == [
        "Expired",
        "Accepted",
    ]


# --------------------------------------------------------------------------- F13


async def run_long_outage(
    csms: CsmsPeer,
    fast_controller: ControllerFactory,
    *,
    chargers: int,
    meter_values: int,
    cap: int,
    drain_timeout: float,
) -> None:
    """F13: a long outage compressed: every charger runs one long transaction offline
    (far past the outbox cap), then tries to start another."""
    await csms.stop()
    ctl = await fast_controller(
        offline={"max_outbox_per_charger": cap},
        policy={"allow_offline_tx_for_unknown_id": True, "concurrent_tx": False},
        csms={"call_timeout": 10},
    )
    url = controller_url(ctl.listen_port)
    raws = [RawCharger(url, f"L{n:03d}") for n in range(chargers)]
    verdicts: dict[str, tuple[str, str]] = {}

    async def outage(raw: RawCharger, n: int) -> None:
        await raw.call("BootNotification", BOOT_16)
        first = await raw.call("StartTransaction", start_payload(f"TAG{n}", 0, 1))
        tx = first[2]["transactionId"]
        for k in range(1, meter_values + 1):
            answer = await raw.call("MeterValues", meter_payload(tx, k, stamp(k)))
            assert answer[0] == CALLRESULT, answer
        stop = {"transactionId": tx, "meterStop": meter_values + 1, "timestamp": stamp(90_000)}
        assert (await raw.call("StopTransaction", stop))[0] == CALLRESULT
        # a new transaction at the cap: refused (a status that ends it), stored all the same
        second = await raw.call("StartTransaction", start_payload(f"TAG{n}", 5000, 2))
        tx2 = second[2]["transactionId"]
        stop2 = {"transactionId": tx2, "meterStop": 5000, "timestamp": stamp(90_001)}
        assert (await raw.call("StopTransaction", stop2))[0] == CALLRESULT
        verdicts[raw.identity] = (
            first[2]["idTagInfo"]["status"],
            second[2]["idTagInfo"]["status"],
        )

    try:
        await asyncio.gather(*(r.connect() for r in raws))
        began = time.monotonic()
        await asyncio.gather(*(outage(r, n) for n, r in enumerate(raws)))
        offline_s = time.monotonic() - began
        store = ctl.store.path
        wal = store.with_name(store.name + "-wal")
        db_bytes = store.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
        depth = await ctl.store.outbox_depth()
        full_events = ctl.metrics.security_events["outbox_full"]
        await csms.start()
        back = time.monotonic()

        async def drained() -> bool:
            sessions = ctl.chargers.sessions
            if any(sessions[r.identity].state.value != "online" for r in raws):
                return False
            return await ctl.store.outbox_depth() == 0

        await wait_for(drained, drain_timeout, "every outbox to drain", 0.1)
        replay_s = time.monotonic() - back
    finally:
        await asyncio.gather(*(r.close() for r in raws if r._ws), return_exceptions=True)
    totals = None
    starts_stops = 0
    for r in raws:
        f = delivery_figures(ledger(r.frames), csms.inbound(r.identity))
        totals = f if totals is None else totals + f
        starts_stops += sum(
            1
            for e in csms.inbound(r.identity)
            if e.action in ("StartTransaction", "StopTransaction") and e.outcome == "CALLRESULT"
        )
    assert totals is not None
    per_charger = meter_values + 4
    figures_line(
        "F13",
        chargers=chargers,
        meter_values_each=meter_values,
        cap=cap,
        stored=depth,
        dropped=chargers * per_charger - depth,
        outbox_full_alarms=full_events,
        second_start=Counter(v[1] for v in verdicts.values()),
        db_and_wal_bytes=db_bytes,
        bytes_per_message=db_bytes // max(depth, 1),
        offline_answers_per_s=chargers * per_charger / offline_s,
        replay_s=replay_s,
        replay_per_s=depth / replay_s,
        lost=len(totals.lost),
        duplicates=totals.duplicates,
        order_violations=totals.order_violations,
        starts_stops_delivered=starts_stops,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    # Start and Stop never dropped; nothing dropped at all (decision 7)
    assert depth == chargers * per_charger
    assert starts_stops == chargers * 4
    assert {v[0] for v in verdicts.values()} == {"Accepted"}
    assert {v[1] for v in verdicts.values()} == {"Invalid"}, verdicts
    assert full_events >= chargers
    # the database grows with what is stored and with nothing else
    assert db_bytes <= 2048 * depth + 4 * 2**20, db_bytes
    assert (totals.lost, totals.duplicates, totals.order_violations) == ([], 0, 0)
    assert totals.acked == chargers * per_charger
    csms.assert_clean()


async def test_f13_long_outage_over_the_outbox_cap(
    csms: CsmsPeer, fast_controller: ControllerFactory
) -> None:
    """F13: 20 chargers x 500 MeterValues offline, cap 100: nothing dropped, starts refused."""
    await run_long_outage(
        csms, fast_controller, chargers=20, meter_values=500, cap=100, drain_timeout=60.0
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_f13_long_outage_50_chargers_a_day_of_meter_values(
    slow_selected: None, csms: CsmsPeer, fast_controller: ControllerFactory
) -> None:
    """F13 (slow): 50 chargers x 1440 MeterValues (a day, one a minute), cap 1000."""
    await run_long_outage(
        csms, fast_controller, chargers=50, meter_values=1440, cap=1000, drain_timeout=600.0
    )
