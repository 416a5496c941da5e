"""End to end: replay of what the controller answered offline (SCENARIOS.md 3-6, 12, 13).

A real charger and a real CSMS (the ``ocpp`` package) on loopback with the controller in
between; the uplink is cut by stopping the CSMS or through the fault relay. Timings are
scaled (conftest ``QUICK``). After each replay the figures of RELIABILITY.md 5.3 are
computed from the charger's ledger and what the CSMS took: nothing lost, nothing
reordered, no duplicate without an injected fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest
from ocpp.v16 import call as call16
from peers import (
    ChargerPeer16,
    CsmsPeer,
    LedgerEntry,
    StepClock,
    controller_url,
    delivery_figures,
    message_key,
)

from proxy.cli import main as cli_main

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import ControllerFactory
    from relay import FaultRelay

    from proxy.app import Controller

pytestmark = pytest.mark.timeout(60)

IDENTITY = "CP1"
TAG = "SITE-TAG-1"
PROVISIONAL_START = 2_000_000_000


# --------------------------------------------------------------------------- helpers


async def wait_for(
    predicate: Callable[[], Awaitable[bool] | bool], timeout: float, what: str
) -> None:
    """Poll ``predicate`` (plain or async) every 20 ms until it holds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def state_of(ctl: Controller, identity: str = IDENTITY) -> str | None:
    session = ctl.chargers.sessions.get(identity)
    return session.state.value if session is not None else None


async def wait_drained(ctl: Controller, identity: str = IDENTITY, timeout: float = 10.0) -> None:
    """Wait until the charger's outbox is empty and its session is online again."""

    async def done() -> bool:
        return state_of(ctl, identity) == "online" and not await ctl.store.outbox_depth(identity)

    await wait_for(done, timeout, f"{identity} to drain and be online")


async def wait_state(ctl: Controller, state: str, identity: str = IDENTITY) -> None:
    await wait_for(lambda: state_of(ctl, identity) == state, 5.0, f"{identity} {state}")


def actions(entries: list[LedgerEntry]) -> list[str]:
    return [e.action for e in entries]


def tx_ids(entries: list[LedgerEntry], action: str) -> list[Any]:
    return [e.request.get("transactionId") for e in entries if e.action == action]


def start_answer(entries: list[LedgerEntry]) -> dict[str, Any]:
    """The CSMS's answer to the (last) StartTransaction it accepted."""
    answered = [e for e in entries if e.action == "StartTransaction" and e.outcome == "CALLRESULT"]
    assert answered, "the CSMS answered no StartTransaction"
    response: dict[str, Any] = answered[-1].response
    return response


def figures_clean(cp: ChargerPeer16, csms: CsmsPeer, identity: str = IDENTITY) -> None:
    figures = delivery_figures(cp.ledger, csms.inbound(identity))
    print(f"\n{identity}: {figures}")
    assert figures.lost == []
    assert figures.duplicates == 0
    assert figures.order_violations == 0
    assert figures.unexpected == []


async def cli(*argv: str) -> tuple[int, str]:
    """Run ``ocpp-lc`` (``proxy.cli.main``) in a thread; its exit code and output."""
    import io
    import sys

    out = io.StringIO()

    def run() -> int:
        return cli_main(list(argv))

    real = sys.stdout
    sys.stdout = out
    try:
        code = await asyncio.to_thread(run)
    finally:
        sys.stdout = real
    return code, out.getvalue()


# --------------------------------------------------------------------------- scenario 3


async def test_cold_start_offline_then_the_csms_sees_everything_in_order(
    csms: CsmsPeer, fast_controller: ControllerFactory, site_list: Callable[..., Path]
) -> None:
    """Scenario 3: a whole session answered offline reaches the CSMS in order, its id mapped."""
    await csms.stop()
    ctl = await fast_controller(local_list={"path": site_list(TAG)})
    url = controller_url(ctl.listen_port)
    async with ChargerPeer16(url, IDENTITY, clock=StepClock()) as cp:
        await wait_state(ctl, "offline")
        assert (await cp.boot()).status == "Accepted"
        await cp.status("Available")
        assert await cp.authorize(TAG) == "Accepted"
        tx = await cp.start_transaction(TAG, meter_start=1000)
        assert tx >= PROVISIONAL_START
        await cp.status("Charging")
        for wh in (1100, 1200, 1300):
            await cp.meter_values(tx, wh)
        await cp.stop_transaction(tx, 1400, id_tag=TAG)
        assert all(e.outcome == "CALLRESULT" for e in cp.ledger)
        assert await ctl.store.outbox_depth(IDENTITY) == 5
        assert csms.frames[IDENTITY] == []

        await csms.start()
        await wait_drained(ctl)

        seen = csms.inbound(IDENTITY)
        # Boot first, the latest status of the connector only (not the history), then
        # the outbox oldest first; Authorize answered offline is not replayed.
        assert actions(seen) == [
            "BootNotification",
            "StatusNotification",
            "StartTransaction",
            "MeterValues",
            "MeterValues",
            "MeterValues",
            "StopTransaction",
        ]
        assert seen[1].request["status"] == "Charging"
        assert all(e.outcome == "CALLRESULT" for e in seen)
        assert all(e.unique_id.startswith("lc-") for e in seen)
        assert len({e.unique_id for e in seen}) == len(seen)
        mine = {e.action: e.request for e in cp.ledger}
        assert seen[0].request == mine["BootNotification"]
        assert seen[2].request == mine["StartTransaction"]
        real = start_answer(seen)["transactionId"]
        assert real < PROVISIONAL_START
        assert tx_ids(seen, "MeterValues") == [real] * 3
        assert tx_ids(seen, "StopTransaction") == [real]
        figures_clean(cp, csms)
        assert await ctl.store.outbox(IDENTITY) == []
        assert await ctl.store.outbox(IDENTITY, state="dead") == []
        assert state_of(ctl) == "online"

        # Online again: a live call passes through with the charger's own message id.
        await cp.call(call16.Heartbeat())
        assert csms.inbound(IDENTITY)[-1].unique_id == cp.ledger[-1].unique_id
    cp.assert_clean()
    csms.assert_clean()


# --------------------------------------------------------------------------- scenario 4


@pytest.mark.parametrize("cut", ["relay_reset", "csms_1001", "csms_1006"])
async def test_outage_mid_transaction_loses_and_reorders_nothing(
    csms: CsmsPeer, relay: FaultRelay, fast_controller: ControllerFactory, cut: str
) -> None:
    """Scenario 4: started online, metered and stopped offline: all delivered, in order."""
    ctl = await fast_controller(csms={"url": relay.url})
    async with ChargerPeer16(controller_url(ctl.listen_port), IDENTITY, clock=StepClock()) as cp:
        await cp.boot()
        await cp.status("Available")
        assert await cp.authorize(TAG) == "Accepted"
        tx = await cp.start_transaction(TAG, meter_start=5000)
        assert tx < PROVISIONAL_START  # the CSMS's own id
        await cp.meter_values(tx, 5100)

        if cut == "relay_reset":
            relay.set_mode("reset")
        else:
            await csms.stop(code=1001 if cut == "csms_1001" else 1006)
        await wait_state(ctl, "offline")
        for wh in (5200, 5300, 5400):
            await cp.meter_values(tx, wh)
        await cp.stop_transaction(tx, 5500, id_tag=TAG)
        assert await ctl.store.outbox_depth(IDENTITY) == 4

        if cut == "relay_reset":
            relay.set_mode("pass")
        else:
            await csms.start()
        await wait_drained(ctl)

        seen = csms.inbound(IDENTITY)
        assert [e.action for e in seen][-5:] == ["MeterValues"] * 4 + ["StopTransaction"]
        assert tx_ids(seen, "MeterValues") == [tx] * 4
        assert tx_ids(seen, "StopTransaction") == [tx]
        assert [e.outcome for e in seen] == ["CALLRESULT"] * len(seen)
        figures_clean(cp, csms)
        assert csms.connections[IDENTITY] == 2
    cp.assert_clean()
    csms.assert_clean()


# --------------------------------------------------------------------------- scenarios 5, 6


async def offline_start_then_csms_refuses(
    csms: CsmsPeer,
    ctl: Controller,
    cp: ChargerPeer16,
    offline_readings: tuple[int, ...],
) -> tuple[int, int]:
    """Boot, start (from the site list) and meter offline; the CSMS, back, blocks the
    card. Returns (provisional id, CSMS id) once the replay is done."""
    await cp.boot()
    await cp.status("Available")
    tx = await cp.start_transaction(TAG, meter_start=0)
    assert tx >= PROVISIONAL_START
    await cp.status("Charging")
    for wh in offline_readings:
        await cp.meter_values(tx, wh)
    csms.id_tag_status[TAG] = "Blocked"
    await csms.start()
    await wait_drained(ctl)
    answer = start_answer(csms.inbound(IDENTITY))
    assert answer["idTagInfo"]["status"] == "Blocked"
    return tx, answer["transactionId"]


async def test_replayed_answers_teach_the_cache(
    csms: CsmsPeer, fast_controller: ControllerFactory
) -> None:
    """The CSMS's answers to replayed Start/StopTransactions feed the authorization cache
    like answers passing through: a card accepted offline by the unknown-id policy and
    Blocked by the CSMS on replay is Blocked in the next outage, not accepted again."""
    await csms.stop()
    ctl = await fast_controller(
        policy={"allow_offline_tx_for_unknown_id": True, "stop_transaction_on_invalid_id": False}
    )
    async with ChargerPeer16(controller_url(ctl.listen_port), IDENTITY, clock=StepClock()) as cp:
        await cp.boot()
        assert await cp.authorize("NEW-CARD") == "Accepted"  # the unknown-id policy
        tx = await cp.start_transaction("NEW-CARD", meter_start=0)
        await cp.stop_transaction(tx, 100, id_tag="NEW-CARD")
        csms.id_tag_status["NEW-CARD"] = "Blocked"
        await csms.start()
        await wait_drained(ctl)
        assert start_answer(csms.inbound(IDENTITY))["idTagInfo"]["status"] == "Blocked"
        await csms.stop()
        await wait_state(ctl, "offline")
        assert await cp.authorize("new-card") == "Blocked"


async def test_invalid_id_stop_policy_stops_and_reports_deauthorized(
    csms: CsmsPeer, fast_controller: ControllerFactory, site_list: Callable[..., Path]
) -> None:
    """Scenario 5: start Blocked on replay: charger told to stop; CSMS gets DeAuthorized stop."""
    await csms.stop()
    ctl = await fast_controller(
        local_list={"path": site_list(TAG)}, policy={"stop_transaction_on_invalid_id": True}
    )
    async with ChargerPeer16(controller_url(ctl.listen_port), IDENTITY, clock=StepClock()) as cp:
        tx, real = await offline_start_then_csms_refuses(csms, ctl, cp, (100, 200))
        stops = await cp.wait_handled("RemoteStopTransaction")
        assert [h.payload for h in stops] == [{"transaction_id": tx}]
        # The controller's own call never reaches the CSMS.
        assert "RemoteStopTransaction" not in actions(csms.inbound(IDENTITY))
        await cp.stop_transaction(tx, 250, reason="Remote", id_tag=TAG)
        await cp.status("Finishing")
        stop = csms.received_calls(IDENTITY, "StopTransaction")
        assert len(stop) == 1
        assert stop[0].request["transactionId"] == real
        assert stop[0].request["reason"] == "DeAuthorized"
        assert stop[0].request["meterStop"] == 250
        assert len(cp.handled_of("RemoteStopTransaction")) == 1
        assert cp.handled_of("SetChargingProfile") == []
        figures_clean(cp, csms)
    cp.assert_clean()
    csms.assert_clean()


def zero_limit_profiles(cp: ChargerPeer16) -> list[dict[str, Any]]:
    profiles = []
    for h in cp.handled_of("SetChargingProfile"):
        profile = h.payload["cs_charging_profiles"]
        periods = profile["charging_schedule"]["charging_schedule_period"]
        assert [p["limit"] for p in periods] == [0], profile
        profiles.append(profile)
    return profiles


@pytest.mark.parametrize(
    "readings",
    [((100, 200), (300, 400, 500, 600)), ((100, 200, 300, 400, 500, 600), ())],
    ids=["cap-reached-online", "cap-reached-offline"],
)
@pytest.mark.parametrize("where", ["site", "charger-override"])
async def test_invalid_id_energy_cap_suspends_without_stopping(
    csms: CsmsPeer,
    fast_controller: ControllerFactory,
    site_list: Callable[..., Path],
    readings: tuple[tuple[int, ...], tuple[int, ...]],
    where: str,
) -> None:
    """Scenario 6: 500 Wh cap, stop off: one 0 limit at 500 Wh, no stop, SuspendedEVSE seen."""
    offline, online = readings
    await csms.stop()
    cap = {"stop_transaction_on_invalid_id": False, "max_energy_on_invalid_id": 500}
    if where == "site":
        ctl = await fast_controller(local_list={"path": site_list(TAG)}, policy=cap)
    else:  # the site says stop; CP1's own policy says cap
        ctl = await fast_controller(
            local_list={"path": site_list(TAG)},
            policy={"stop_transaction_on_invalid_id": True},
            chargers={IDENTITY: {"policy": cap}},
        )
    async with ChargerPeer16(controller_url(ctl.listen_port), IDENTITY, clock=StepClock()) as cp:
        tx, real = await offline_start_then_csms_refuses(csms, ctl, cp, offline)
        for wh in online:
            if wh == 500:
                await asyncio.sleep(0.2)
                assert cp.handled_of("SetChargingProfile") == [], "limit set before the cap"
            await cp.meter_values(tx, wh)
        await cp.wait_handled("SetChargingProfile")
        await asyncio.sleep(0.3)  # no second profile, no stop
        profiles = zero_limit_profiles(cp)
        assert len(profiles) == 1
        assert profiles[0]["transaction_id"] == tx
        assert profiles[0]["charging_profile_purpose"] == "TxProfile"
        assert cp.handled_of("RemoteStopTransaction") == []
        await cp.status("SuspendedEVSE")
        statuses = csms.received_calls(IDENTITY, "StatusNotification")
        assert statuses[-1].request["status"] == "SuspendedEVSE"
        assert csms.received_calls(IDENTITY, "StopTransaction") == []
        assert "SetChargingProfile" not in actions(csms.inbound(IDENTITY))
        assert tx_ids(csms.inbound(IDENTITY), "MeterValues") == [real] * 6
        figures_clean(cp, csms)
    cp.assert_clean()
    csms.assert_clean()


# --------------------------------------------------------------------------- scenario 12


def refuse_reading(wh: int) -> Callable[[Any], bool]:
    """A rule filter: the MeterValues reporting ``wh`` Wh."""

    def match(payload: Any) -> bool:
        try:
            return payload["meterValue"][0]["sampledValue"][0]["value"] == str(wh)
        except (KeyError, IndexError, TypeError):
            return False

    return match


async def test_refused_replay_is_retried_then_dead_lettered_then_retried_by_the_operator(
    csms: CsmsPeer,
    fast_controller: ControllerFactory,
    site_list: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Scenario 12: attempts x CALLERROR at interval x k, dead letter, CLI retry delivers it."""
    attempts, interval = 3, 0.1
    await csms.stop()
    store_path = tmp_path / "dead.sqlite3"
    ctl = await fast_controller(
        local_list={"path": site_list(TAG)},
        store={"path": store_path},
        policy={
            "transaction_message_attempts": attempts,
            "transaction_message_retry_interval": interval,
        },
    )
    rule = csms.refuse("MeterValues", "InternalError", match=refuse_reading(1100))
    async with ChargerPeer16(controller_url(ctl.listen_port), IDENTITY, clock=StepClock()) as cp:
        await cp.boot()
        tx = await cp.start_transaction(TAG, meter_start=1000)
        for wh in (1100, 1200):
            await cp.meter_values(tx, wh)
        await cp.stop_transaction(tx, 1300)
        await csms.start()
        await wait_drained(ctl)

        assert rule.hits == attempts
        refused_key = message_key(
            "MeterValues", next(e.request for e in cp.ledger if refuse_reading(1100)(e.request))
        )
        tries = [
            f
            for f in csms.log
            if f.direction == "received" and refuse_reading(1100)(_payload(f.text))
        ]
        assert len(tries) == attempts
        gaps = [b.at - a.at for a, b in itertools.pairwise(tries)]
        print(f"\nretry gaps: {[round(g, 3) for g in gaps]}")
        for k, gap in enumerate(gaps, start=1):
            assert interval * k * 0.8 <= gap <= interval * k + 0.5, gaps

        dead = await ctl.store.outbox(IDENTITY, state="dead")
        assert [(r.action, r.attempts, r.last_error) for r in dead] == [
            ("MeterValues", attempts, "InternalError")
        ]
        # The messages after it were not blocked.
        real = start_answer(csms.inbound(IDENTITY))["transactionId"]
        stop = csms.received_calls(IDENTITY, "StopTransaction")
        assert [(e.outcome, e.request["transactionId"]) for e in stop] == [("CALLRESULT", real)]
        figures = delivery_figures(cp.ledger, csms.inbound(IDENTITY), dead=[refused_key])
        print(f"{IDENTITY}: {figures}")
        assert (figures.lost, figures.dead, figures.order_violations) == ([], 1, 0)

        monkeypatch.setenv("OCPP_LC_STORE__PATH", str(store_path))
        code, out = await cli("outbox", "dead-letters")
        assert code == 0
        lines = [
            line
            for line in out.splitlines()
            if line.startswith("seq\t") or line.split("\t")[0].isdigit()
        ]
        assert len(lines) == 2, out
        assert lines[1].split("\t")[:3] == [str(dead[0].seq), IDENTITY, "MeterValues"]

        csms.clear_rules()
        began = time.monotonic()
        code, out = await cli("outbox", "retry", str(dead[0].seq))
        assert code == 0, out

        def redelivered() -> bool:
            meter = csms.received_calls(IDENTITY, "MeterValues")
            return len(meter) == attempts + 2 and meter[-1].outcome is not None

        await wait_for(redelivered, 12.0, "the retried dead letter to be delivered")
        print(f"retried dead letter delivered after {time.monotonic() - began:.2f} s")
        last = csms.received_calls(IDENTITY, "MeterValues")[-1]
        assert last.outcome == "CALLRESULT"
        assert message_key("MeterValues", last.request) == refused_key
        assert last.request["transactionId"] == real
        await wait_drained(ctl)
        assert await ctl.store.outbox(IDENTITY, state="dead") == []
    cp.assert_clean()
    csms.assert_clean()


def _payload(text: str | bytes) -> Any:
    import json

    with contextlib.suppress(ValueError, IndexError):
        msg = json.loads(text)
        if msg[0] == 2:
            return msg[3]
    return None


async def test_refused_then_accepted_replay_is_not_a_dead_letter(
    csms: CsmsPeer, fast_controller: ControllerFactory, site_list: Callable[..., Path]
) -> None:
    """F2: InternalError x (attempts - 1) then a CALLRESULT: delivered, nothing dead."""
    await csms.stop()
    ctl = await fast_controller(
        local_list={"path": site_list(TAG)}, policy={"transaction_message_attempts": 3}
    )
    rule = csms.refuse("MeterValues", "InternalError", times=2)
    async with ChargerPeer16(controller_url(ctl.listen_port), IDENTITY, clock=StepClock()) as cp:
        await cp.boot()
        tx = await cp.start_transaction(TAG, meter_start=0)
        await cp.meter_values(tx, 100)
        await cp.stop_transaction(tx, 200)
        await csms.start()
        await wait_drained(ctl)
        assert rule.hits == 2
        assert [e.outcome for e in csms.received_calls(IDENTITY, "MeterValues")] == [
            "CALLERROR",
            "CALLERROR",
            "CALLRESULT",
        ]
        assert await ctl.store.outbox(IDENTITY, state="dead") == []
        figures = delivery_figures(cp.ledger, csms.inbound(IDENTITY))
        assert (figures.lost, figures.order_violations, figures.dead) == ([], 0, 0)
    csms.assert_clean()


async def test_dead_start_sends_later_messages_with_minus_one(
    csms: CsmsPeer, fast_controller: ControllerFactory, site_list: Callable[..., Path]
) -> None:
    """R41/F2: a dead-lettered StartTransaction: its MeterValues and stop go up with -1."""
    await csms.stop()
    ctl = await fast_controller(
        local_list={"path": site_list(TAG)}, policy={"transaction_message_attempts": 2}
    )
    rule = csms.refuse("StartTransaction", "InternalError")
    async with ChargerPeer16(controller_url(ctl.listen_port), IDENTITY, clock=StepClock()) as cp:
        await cp.boot()
        tx = await cp.start_transaction(TAG, meter_start=0)
        await cp.meter_values(tx, 100)
        await cp.stop_transaction(tx, 200)
        await csms.start()
        await wait_drained(ctl)
        assert rule.hits == 2
        dead = await ctl.store.outbox(IDENTITY, state="dead")
        assert [r.action for r in dead] == ["StartTransaction"]
        seen = csms.inbound(IDENTITY)
        assert tx_ids(seen, "MeterValues") == [-1]
        assert tx_ids(seen, "StopTransaction") == [-1]
        assert all(e.outcome == "CALLRESULT" for e in seen if e.action != "StartTransaction")
        # A live message of the same transaction, after the drain, goes up with -1 too.
        await cp.meter_values(tx, 150)
        assert tx_ids(csms.inbound(IDENTITY), "MeterValues") == [-1, -1]
    csms.assert_clean()


# --------------------------------------------------------------------------- scenario 13


async def test_csms_calls_with_its_id_reach_the_charger_with_the_provisional_id(
    csms: CsmsPeer, fast_controller: ControllerFactory, site_list: Callable[..., Path]
) -> None:
    """Scenario 13: CSMS calls with its id reach the charger with the provisional id; back too."""
    await csms.stop()
    ctl = await fast_controller(local_list={"path": site_list(TAG)})
    async with ChargerPeer16(controller_url(ctl.listen_port), IDENTITY, clock=StepClock()) as cp:
        await cp.boot()
        tx = await cp.start_transaction(TAG, meter_start=0)
        await cp.meter_values(tx, 100)
        await csms.start()
        await wait_drained(ctl)
        real = start_answer(csms.inbound(IDENTITY))["transactionId"]
        assert real != tx

        profile = {
            "charging_profile_id": 42,
            "transaction_id": real,
            "stack_level": 0,
            "charging_profile_purpose": "TxProfile",
            "charging_profile_kind": "Relative",
            "charging_schedule": {
                "charging_rate_unit": "A",
                "charging_schedule_period": [{"start_period": 0, "limit": 10.0}],
            },
        }
        answer = await csms.call(
            IDENTITY, call16.SetChargingProfile(connector_id=1, cs_charging_profiles=profile)
        )
        assert answer.status == "Accepted"
        handled = cp.handled_of("SetChargingProfile")
        assert [h.payload["cs_charging_profiles"]["transaction_id"] for h in handled] == [tx]

        answer = await csms.call(IDENTITY, call16.RemoteStopTransaction(transaction_id=real))
        assert answer.status == "Accepted"
        assert [h.payload for h in cp.handled_of("RemoteStopTransaction")] == [
            {"transaction_id": tx}
        ]
        await cp.stop_transaction(tx, 300, reason="Remote")
        stop = csms.received_calls(IDENTITY, "StopTransaction")
        assert [(e.request["transactionId"], e.request["reason"]) for e in stop] == [
            (real, "Remote")
        ]
        figures_clean(cp, csms)
    cp.assert_clean()
    csms.assert_clean()


# --------------------------------------------------------------------------- draining


async def test_live_messages_while_draining(
    csms: CsmsPeer, fast_controller: ControllerFactory, site_list: Callable[..., Path]
) -> None:
    """R40: while draining, live tx messages are stored behind the backlog, others pass."""
    await csms.stop()
    ctl = await fast_controller(local_list={"path": site_list(TAG)})
    async with ChargerPeer16(
        controller_url(ctl.listen_port), IDENTITY, clock=StepClock(), call_timeout=8
    ) as cp:
        await cp.boot()
        tx = await cp.start_transaction(TAG, meter_start=0)
        for wh in range(100, 700, 100):
            await cp.meter_values(tx, wh)
        slow = csms.delay("MeterValues", 0.3)
        await csms.start()
        await wait_for(
            lambda: bool(csms.received_calls(IDENTITY, "MeterValues")), 5.0, "the replay"
        )
        assert state_of(ctl) == "draining"

        began = time.monotonic()
        await cp.meter_values(tx, 700)
        local = time.monotonic() - began
        assert local < 0.25, f"a live MeterValues waited {local:.2f} s for the backlog"
        assert state_of(ctl) == "draining"

        assert await cp.authorize(TAG) == "Accepted"
        await cp.call(call16.Heartbeat())
        heartbeat_id, authorize_id = cp.ledger[-1].unique_id, cp.ledger[-2].unique_id
        ids_seen = {e.unique_id for e in csms.inbound(IDENTITY)}
        assert {heartbeat_id, authorize_id} <= ids_seen, "not passed through"
        assert state_of(ctl) == "draining"

        await cp.stop_transaction(tx, 800)
        await wait_drained(ctl, timeout=15)
        assert slow.hits == 7
        seen = csms.inbound(IDENTITY)
        tx_seen = [
            e for e in seen if e.action in ("StartTransaction", "MeterValues", "StopTransaction")
        ]
        readings = [
            e.request["meterValue"][0]["sampledValue"][0]["value"]
            for e in tx_seen
            if e.action == "MeterValues"
        ]
        assert readings == [str(wh) for wh in range(100, 800, 100)]
        assert actions(tx_seen)[-1] == "StopTransaction"
        figures_clean(cp, csms)
    cp.assert_clean()
    csms.assert_clean()


# --------------------------------------------------------------------------- R42, F1, F2


@pytest.mark.parametrize("verdict", ["Pending", "Rejected"])
async def test_backlog_waits_while_the_replayed_boot_is_not_accepted(
    csms: CsmsPeer,
    fast_controller: ControllerFactory,
    site_list: Callable[..., Path],
    verdict: str,
) -> None:
    """R42: the replayed boot goes first; the backlog waits until it is Accepted."""
    await csms.stop()
    ctl = await fast_controller(local_list={"path": site_list(TAG)})
    async with ChargerPeer16(controller_url(ctl.listen_port), IDENTITY, clock=StepClock()) as cp:
        await cp.boot()
        tx = await cp.start_transaction(TAG, meter_start=0)
        await cp.meter_values(tx, 100)
        csms.boot_status, csms.heartbeat_interval = verdict, 1
        await csms.start()
        await wait_for(
            lambda: bool(csms.received_calls(IDENTITY, "BootNotification")), 5.0, "the boot"
        )
        await asyncio.sleep(0.6)
        assert actions(csms.inbound(IDENTITY)) == ["BootNotification"]
        assert state_of(ctl) == "draining"
        csms.boot_status = "Accepted"
        await wait_drained(ctl)
        seen = csms.inbound(IDENTITY)
        boots = [e.response["status"] for e in seen if e.action == "BootNotification"]
        assert boots[0] == verdict
        assert boots[-1] == "Accepted"
        assert actions(seen)[len(boots) :] == ["StartTransaction", "MeterValues"]
        figures_clean(cp, csms)
    csms.assert_clean()


async def test_security_error_on_replay_reboots_and_costs_no_attempt(
    csms: CsmsPeer, fast_controller: ControllerFactory, site_list: Callable[..., Path]
) -> None:
    """F2/R42: SecurityError on replay: boot again, retry; no attempt used up, no dead letter."""
    await csms.stop()
    ctl = await fast_controller(
        local_list={"path": site_list(TAG)}, policy={"transaction_message_attempts": 2}
    )
    rule = csms.refuse("MeterValues", "SecurityError", times=2)
    async with ChargerPeer16(controller_url(ctl.listen_port), IDENTITY, clock=StepClock()) as cp:
        await cp.boot()
        tx = await cp.start_transaction(TAG, meter_start=0)
        await cp.meter_values(tx, 100)
        await cp.stop_transaction(tx, 200)
        await csms.start()
        await wait_drained(ctl)
        assert rule.hits == 2
        assert await ctl.store.outbox(IDENTITY, state="dead") == []
        seen = csms.inbound(IDENTITY)
        delivered = [
            i for i, e in enumerate(seen) if e.action == "MeterValues" and e.outcome == "CALLRESULT"
        ]
        assert delivered, f"never delivered: {actions(seen)}"
        first_refusal = next(i for i, e in enumerate(seen) if e.outcome == "CALLERROR")
        assert "BootNotification" in actions(seen[first_refusal : delivered[0]]), actions(seen)
        figures = delivery_figures(cp.ledger, seen)
        assert (figures.lost, figures.order_violations) == ([], 0)
    csms.assert_clean()


async def test_blackholed_uplink_with_a_call_in_flight(
    csms: CsmsPeer, relay: FaultRelay, fast_controller: ControllerFactory
) -> None:
    """F1(d): blackholed uplink with a call in flight: pings detect it in time, replay whole."""
    ping_interval = ping_timeout = 0.3
    ctl = await fast_controller(
        csms={
            "url": relay.url,
            "ping_interval": ping_interval,
            "ping_timeout": ping_timeout,
            "open_timeout": 1,
        }
    )
    async with ChargerPeer16(
        controller_url(ctl.listen_port), IDENTITY, clock=StepClock(), call_timeout=15
    ) as cp:
        await cp.boot()
        tx = await cp.start_transaction(TAG, meter_start=0)
        relay.set_mode("blackhole")
        began = time.monotonic()
        await cp.meter_values(tx, 100)  # answered locally once the pings time out
        detected = time.monotonic() - began
        print(f"\nblackhole detected, call answered after {detected:.2f} s")
        assert state_of(ctl) == "offline"
        # F1: detected within ping_interval + ping_timeout (one more period of slack).
        assert detected < 2 * ping_interval + ping_timeout + 0.5, f"took {detected:.2f} s"
        await cp.meter_values(tx, 200)
        await cp.stop_transaction(tx, 300)
        relay.drop_all(rst=True)  # the dead path's connections are gone for good
        relay.set_mode("pass")
        await wait_drained(ctl)
        figures = delivery_figures(cp.ledger, csms.inbound(IDENTITY))
        print(f"{IDENTITY}: {figures}")
        assert (figures.lost, figures.order_violations, figures.unexpected) == ([], 0, [])
        assert figures.duplicates <= 1
        assert tx_ids(csms.inbound(IDENTITY), "StopTransaction") == [tx]
    csms.assert_clean()


async def test_csms_reads_the_call_then_the_uplink_drops(
    csms: CsmsPeer, relay: FaultRelay, fast_controller: ControllerFactory
) -> None:
    """F1(b): CSMS reads a call, link drops before the answer: local answer, replayed once."""
    ctl = await fast_controller(csms={"url": relay.url})
    async with ChargerPeer16(controller_url(ctl.listen_port), IDENTITY, clock=StepClock()) as cp:
        await cp.boot()
        tx = await cp.start_transaction(TAG, meter_start=0)
        csms.ignore("MeterValues", times=1)
        waiting = asyncio.create_task(cp.meter_values(tx, 100))
        await wait_for(
            lambda: bool(csms.received_calls(IDENTITY, "MeterValues")), 5.0, "the CSMS to read"
        )
        relay.set_mode("reset")
        await asyncio.wait_for(waiting, 3.0)
        await cp.stop_transaction(tx, 200)
        relay.set_mode("pass")
        await wait_drained(ctl)
        meter = csms.received_calls(IDENTITY, "MeterValues")
        assert [e.outcome for e in meter] == [None, "CALLRESULT"]
        figures = delivery_figures(cp.ledger, csms.inbound(IDENTITY))
        print(f"\n{IDENTITY}: {figures}")
        assert (figures.lost, figures.order_violations, figures.duplicates) == ([], 0, 0)
    csms.assert_clean()


async def test_uplink_lost_while_the_boot_is_pending_leaves_one_drain(
    csms: CsmsPeer, fast_controller: ControllerFactory, site_list: Callable[..., Path]
) -> None:
    """R40: link lost while the replayed boot is Pending: one drain, nothing sent twice."""
    await csms.stop()
    ctl = await fast_controller(local_list={"path": site_list(TAG)})
    async with ChargerPeer16(controller_url(ctl.listen_port), IDENTITY, clock=StepClock()) as cp:
        await cp.boot()
        tx = await cp.start_transaction(TAG, meter_start=0)
        for wh in range(100, 700, 100):
            await cp.meter_values(tx, wh)
        csms.boot_status, csms.heartbeat_interval = "Pending", 1
        await csms.start()
        await wait_for(
            lambda: bool(csms.received_calls(IDENTITY, "BootNotification")), 5.0, "the boot"
        )
        # The CSMS restarts while the controller waits to boot again; now it accepts.
        await csms.stop()
        await wait_state(ctl, "offline")
        csms.boot_status = "Accepted"
        csms.delay("MeterValues", 0.25)
        await csms.start()
        await wait_drained(ctl, timeout=15)
        await asyncio.sleep(1.0)  # a second drain, if any, would wake up meanwhile
        seen = csms.inbound(IDENTITY)
        figures = delivery_figures(cp.ledger, seen)
        print(f"\n{IDENTITY}: {figures} actions={actions(seen)}")
        assert figures.duplicates == 0
        assert (figures.lost, figures.order_violations) == ([], 0)
        assert len(csms.received_calls(IDENTITY, "StartTransaction")) == 1
    csms.assert_clean()
