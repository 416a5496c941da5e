"""End to end, offline: the controller answers chargers while the CSMS is unreachable.

SCENARIOS.md 3 (offline half), 6-9 (1.6J), RELIABILITY.md R38/R39 and the bad inputs of
§5.5 (B10, B11, B23). Real chargers on loopback, the controller in-process, its uplink
pointed at a closed port or at a CSMS that the test stops. What the controller
committed is read back from its store.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from ocpp.v16 import call as call16
from offline_tools import (
    FAST_RECONNECT,
    PROVISIONAL_START,
    STAMP,
    ListCharger16,
    ScriptedCsms,
    error_code,
    eventually,
    frame,
    meter_payload,
    offline_controller,
    offline_status,
    result_of,
    send_call,
    site_csv,
    start_payload,
    stop_payload,
    wait_offline,
)
from peers import (
    CALLRESULT,
    OCPP16,
    ChargerPeer16,
    CsmsPeer,
    RawCharger,
    StepClock,
    controller_url,
    counter_ids,
)
from websockets.exceptions import InvalidStatus

from config.settings import ENV_PREFIX
from policies.local_list import parse_csv
from proxy import cli
from proxy.router import State

if TYPE_CHECKING:
    from conftest import ControllerFactory


pytestmark = pytest.mark.timeout(30)

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OCPP_LC_* variable of the caller's environment leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


# --------------------------------------------------------------------------- helpers


# --------------------------------------------------------------------------- scenario 3


async def test_cold_start_offline_session_is_answered_and_stored_in_order(
    controller_factory: ControllerFactory, tmp_path: Path
) -> None:
    """Scenario 3: with the CSMS down from the start, a whole session is answered locally."""
    csv_path = site_csv(tmp_path, "SITE-CARD,Accepted,,\n")
    ctl = await offline_controller(controller_factory, local_list={"path": csv_path})
    before = datetime.now(UTC)
    async with ChargerPeer16(
        controller_url(ctl.listen_port), "CP1", clock=StepClock(), ids=counter_ids("m")
    ) as charger:
        entries = await charger.run_session("SITE-CARD", connector_id=1, meter_start=5000)
        # A later status of the same connector replaces the first; connector 0 is its own.
        await charger.call(
            call16.StatusNotification(
                connector_id=1, error_code="NoError", status="Finishing", timestamp=charger.now()
            )
        )
        await charger.call(
            call16.StatusNotification(
                connector_id=0, error_code="NoError", status="Available", timestamp=charger.now()
            )
        )
        sent_frames = charger.ledger
    charger.assert_clean()

    assert [e.action for e in entries] == [
        "BootNotification",
        "StatusNotification",
        "Authorize",
        "StartTransaction",
        "MeterValues",
        "MeterValues",
        "MeterValues",
        "StopTransaction",
    ]
    assert all(e.outcome == "CALLRESULT" for e in entries), entries
    boot = entries[0].response
    assert boot["status"] == "Accepted"
    assert boot["interval"] == ctl.settings.offline.heartbeat_interval
    current = datetime.fromisoformat(boot["currentTime"])
    assert abs((current - before).total_seconds()) < 60
    assert entries[2].response["idTagInfo"]["status"] == "Accepted"
    start = entries[3].response
    assert start["idTagInfo"]["status"] == "Accepted"
    tx_id = start["transactionId"]
    assert tx_id >= PROVISIONAL_START

    # The outbox: the transaction messages, in the charger's order, as sent, once.
    rows = await ctl.store.outbox("CP1")
    transactional = [e for e in entries if e.action in ("StartTransaction", "MeterValues")]
    transactional.append(entries[-1])
    assert [r.action for r in rows] == [e.action for e in transactional]
    assert [r.frame for r in rows] == [e.request_text for e in transactional]
    assert [r.message_id for r in rows] == [e.unique_id for e in transactional]
    assert all(r.tx_id == tx_id for r in rows)
    assert [r.seq for r in rows] == sorted(r.seq for r in rows)

    # Status: the latest per connector, kept for replay.
    statuses = {s["connector"]: s for s in await ctl.store.connector_statuses("CP1")}
    status_texts = [e.request_text for e in sent_frames if e.action == "StatusNotification"]
    assert set(statuses) == {0, 1}
    assert statuses[1]["status"] == "Finishing"
    assert statuses[1]["frame"] == status_texts[1]
    assert statuses[0]["frame"] == status_texts[2]
    assert all(s["replay"] == 1 for s in statuses.values())

    # BootNotification: kept, marked for replay, not yet accepted by the CSMS.
    record = await ctl.store.charger("CP1")
    assert record is not None
    assert record["boot_frame"] == entries[0].request_text
    assert record["boot_replay"] == 1
    assert record["accepted"] == 0
    assert record["ocpp_version"] == OCPP16


async def test_heartbeat_offline_gets_current_time(controller_factory: ControllerFactory) -> None:
    """A Heartbeat answered offline carries the controller's current time."""
    ctl = await offline_controller(controller_factory)
    async with RawCharger(controller_url(ctl.listen_port), "CP1") as raw:
        answer = result_of(await raw.call("Heartbeat", {}))
    moment = datetime.fromisoformat(answer["currentTime"])
    assert abs((moment - datetime.now(UTC)).total_seconds()) < 60


async def test_offline_answers_are_timed_on_metrics(controller_factory: ControllerFactory) -> None:
    """Every call answered offline, through the quick path (MeterValues) or not (Boot,
    Heartbeat), is one observation of ocpp_lc_offline_answer_seconds."""
    ctl = await offline_controller(controller_factory)
    async with RawCharger(controller_url(ctl.listen_port), "CP1") as raw:
        boot = {"chargePointVendor": "V", "chargePointModel": "M"}
        answers = [await raw.call("BootNotification", boot), await raw.call("Heartbeat", {})]
        answers += [await raw.call("MeterValues", meter_payload(7, wh)) for wh in range(5)]
    assert [a[0] for a in answers] == [CALLRESULT] * 7
    reader, writer = await asyncio.open_connection("127.0.0.1", ctl.admin_port)
    writer.write(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    text = (await reader.read()).decode()
    writer.close()
    family = dict(
        re.findall(
            r'^ocpp_lc_offline_answer_seconds_(count|sum|bucket\{le="\+Inf"\}) (\S+)$', text, re.M
        )
    )
    assert float(family["count"]) == 7
    assert float(family['bucket{le="+Inf"}']) == 7
    assert 0 < float(family["sum"]) < 7 * 5.0
    buckets = [
        float(v)
        for v in re.findall(
            r'^ocpp_lc_offline_answer_seconds_bucket\{le="[^+]\S*"\} (\S+)$', text, re.M
        )
    ]
    assert buckets == sorted(buckets)
    assert buckets[-1] == 7


# --------------------------------------------------------------------------- scenario 7


@pytest.mark.parametrize(("allow", "expected"), [(False, "Invalid"), (True, "Accepted")])
async def test_unknown_id_offline_follows_the_unknown_id_policy(
    controller_factory: ControllerFactory, allow: bool, expected: str
) -> None:
    """Scenario 7: an id no list or cache knows is Invalid offline, or Accepted if allowed."""
    ctl = await offline_controller(
        controller_factory, policy={"allow_offline_tx_for_unknown_id": allow}
    )
    async with RawCharger(controller_url(ctl.listen_port), "CP1") as raw:
        assert await offline_status(raw, "NOBODY-KNOWS") == expected
        text = frame("s1", "StartTransaction", start_payload("NOBODY-KNOWS"))
        start = result_of(await send_call(raw, text))
    assert start["idTagInfo"]["status"] == expected
    assert start["transactionId"] >= PROVISIONAL_START
    rows = await ctl.store.outbox("CP1")
    assert [(r.action, r.frame, r.tx_id) for r in rows] == [
        ("StartTransaction", text, start["transactionId"])
    ]
    (tx,) = await ctl.store.transactions_of("CP1")
    assert (tx["provisional"], tx["status"]) == (start["transactionId"], expected)


# --------------------------------------------------------------------------- scenario 8


async def test_card_authorized_online_on_one_charger_is_accepted_offline_on_another(
    csms: CsmsPeer, controller_factory: ControllerFactory
) -> None:
    """Scenario 8: the cache learned from a CSMS answer on A serves B offline, any case."""
    ctl = await controller_factory(uplink=FAST_RECONNECT)
    url = controller_url(ctl.listen_port)
    async with ChargerPeer16(url, "CP-A") as a:
        answer = await a.call(call16.Authorize(id_tag="card-Online"))
        assert answer.id_tag_info["status"] == "Accepted"

        async def learned() -> bool:
            return "CARD-ONLINE" in await ctl.store.load_cache()

        await eventually(learned, what="the cache to learn the card")
        await csms.stop()
        await wait_offline(ctl, "CP-A")
        async with RawCharger(url, "CP-B") as b:
            await wait_offline(ctl, "CP-B")
            assert await offline_status(b, "CARD-ONLINE") == "Accepted"
            assert await offline_status(b, "card-online") == "Accepted"
            assert await offline_status(b, "CARD-NEVER-SEEN") == "Invalid"
        assert await offline_status_peer(a, "Card-Online") == "Accepted"


async def offline_status_peer(charger: ChargerPeer16, id_tag: str) -> str:
    answer = await charger.call(call16.Authorize(id_tag=id_tag))
    status: str = answer.id_tag_info["status"]
    return status


@pytest.mark.parametrize(
    ("concurrent_tx", "expected"), [(True, "ConcurrentTx"), (False, "Accepted")]
)
async def test_card_charging_on_one_charger_is_refused_on_another_as_concurrent_tx(
    csms: CsmsPeer, controller_factory: ControllerFactory, concurrent_tx: bool, expected: str
) -> None:
    """Scenario 8: a card charging on A (started online) is ConcurrentTx on B when that is on."""
    ctl = await controller_factory(uplink=FAST_RECONNECT, policy={"concurrent_tx": concurrent_tx})
    url = controller_url(ctl.listen_port)
    async with ChargerPeer16(url, "CP-A") as a:
        started = await a.call(
            call16.StartTransaction(
                connector_id=1, id_tag="CARD-C", meter_start=0, timestamp=a.now()
            )
        )
        assert started.transaction_id < PROVISIONAL_START  # the CSMS's own id

        async def charging() -> bool:
            return ctl.site.charging("CARD-C")

        await eventually(charging, what="the start to be seen")
        await csms.stop()
        await wait_offline(ctl, "CP-A")
        async with RawCharger(url, "CP-B") as b:
            start = result_of(await b.call("StartTransaction", start_payload("card-c", 10)))
            assert start["idTagInfo"]["status"] == expected
            assert start["transactionId"] >= PROVISIONAL_START
            # A's transaction ends (offline): the card is free on B again.
            await a.call(
                call16.StopTransaction(
                    meter_stop=500, timestamp=a.now(), transaction_id=started.transaction_id
                )
            )
            again = result_of(await b.call("StartTransaction", start_payload("CARD-C", 20)))
            assert again["idTagInfo"]["status"] == "Accepted"


@pytest.mark.parametrize("ended_by", ["stop", "available"])
async def test_card_charging_online_is_concurrent_tx_after_a_restart(
    csms: CsmsPeer, controller_factory: ControllerFactory, tmp_path: Path, ended_by: str
) -> None:
    """Scenario 8 across a restart: a card the CSMS accepted online on A is still
    ConcurrentTx on B, offline, after the controller restarted on the same store; A's
    StopTransaction frees it (or, its stop lost, its connector reporting Available: the
    connector is kept with the start), and that holds across the next restart too."""
    overrides: dict[str, Any] = {
        "uplink": FAST_RECONNECT,
        "policy": {"concurrent_tx": True},
        "store": {"path": tmp_path / "site.sqlite3"},
    }
    first = await controller_factory(**overrides)
    async with ChargerPeer16(controller_url(first.listen_port), "CP-A") as a:
        started = await a.call(
            call16.StartTransaction(
                connector_id=1, id_tag="CARD-R", meter_start=0, timestamp=a.now()
            )
        )
        assert started.transaction_id < PROVISIONAL_START  # the CSMS's own id

        async def stored() -> bool:
            running = await first.store.running_transactions()
            return ("CP-A", started.transaction_id, "CARD-R", 1) in running

        await eventually(stored, what="the start to be stored")
    await first.stop()
    await csms.stop()

    second = await controller_factory(**overrides)
    assert second.site.charging("CARD-R")
    url = controller_url(second.listen_port)
    async with RawCharger(url, "CP-B") as b:
        refused = result_of(await b.call("StartTransaction", start_payload("card-r", 10)))
        assert refused["idTagInfo"]["status"] == "ConcurrentTx"
        async with RawCharger(url, "CP-A") as a2:
            if ended_by == "stop":
                stop = stop_payload(started.transaction_id, 500)
                result_of(await a2.call("StopTransaction", stop))
            else:
                status = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}
                result_of(await a2.call("StatusNotification", status))
        again = result_of(await b.call("StartTransaction", start_payload("CARD-R", 20)))
        assert again["idTagInfo"]["status"] == "Accepted"
        result_of(await b.call("StopTransaction", stop_payload(again["transactionId"], 30)))
    await second.stop()

    third = await controller_factory(**overrides)
    assert not third.site.charging("CARD-R")


async def test_card_started_offline_is_concurrent_tx_on_another_charger(
    controller_factory: ControllerFactory, tmp_path: Path
) -> None:
    """Scenario 8: a card whose offline start was Accepted on A is ConcurrentTx on B."""
    csv_path = site_csv(tmp_path, "CARD-S,Accepted,,\n")
    ctl = await offline_controller(controller_factory, local_list={"path": csv_path})
    url = controller_url(ctl.listen_port)
    async with RawCharger(url, "CP-A") as a, RawCharger(url, "CP-B") as b:
        on_a = result_of(await a.call("StartTransaction", start_payload("CARD-S", 0)))
        assert on_a["idTagInfo"]["status"] == "Accepted"
        on_b = result_of(await b.call("StartTransaction", start_payload("card-s", 0)))
        assert on_b["idTagInfo"]["status"] == "ConcurrentTx"
        result_of(await a.call("StopTransaction", stop_payload(on_a["transactionId"], 900)))
        on_b = result_of(await b.call("StartTransaction", start_payload("card-s", 5)))
        assert on_b["idTagInfo"]["status"] == "Accepted"


@pytest.mark.parametrize("chargers", [2, 6])
async def test_card_started_at_once_on_several_chargers_is_accepted_once(
    controller_factory: ControllerFactory, tmp_path: Path, chargers: int
) -> None:
    """Scenario 8, at once: the same card started offline on several chargers in the
    same instant is Accepted on exactly one, ConcurrentTx on the others."""
    csv_path = site_csv(tmp_path, "CARD-T,Accepted,,\n")
    ctl = await offline_controller(controller_factory, local_list={"path": csv_path})
    url = controller_url(ctl.listen_port)
    async with contextlib.AsyncExitStack() as stack:
        raws = [
            await stack.enter_async_context(RawCharger(url, f"CP-{i}")) for i in range(chargers)
        ]
        answers = await asyncio.gather(
            *(
                raw.call("StartTransaction", start_payload("CARD-T", i))
                for i, raw in enumerate(raws)
            )
        )
    statuses = sorted(result_of(a)["idTagInfo"]["status"] for a in answers)
    assert statuses == ["Accepted"] + ["ConcurrentTx"] * (chargers - 1)
    assert ctl.site.charging("CARD-T")
    assert ctl.site._starting == {}  # every hold released once recorded


@pytest.mark.parametrize("freed_by", ["new-start", "available"])
async def test_transaction_without_its_stop_ends_when_its_connector_is_free(
    controller_factory: ControllerFactory, tmp_path: Path, freed_by: str
) -> None:
    """Scenario 8: a charger rebooted and never sent the StopTransaction of the card's
    transaction; once that connector starts anew or reports Available, the card is no
    longer ConcurrentTx elsewhere (it would otherwise be refused for good)."""
    csv_path = site_csv(tmp_path, "CARD-L,Accepted,,\n")
    ctl = await offline_controller(controller_factory, local_list={"path": csv_path})
    url = controller_url(ctl.listen_port)
    async with RawCharger(url, "CP-A") as a, RawCharger(url, "CP-B") as b:
        first = result_of(await a.call("StartTransaction", start_payload("CARD-L", 0)))
        assert first["idTagInfo"]["status"] == "Accepted"
        on_b = result_of(await b.call("StartTransaction", start_payload("CARD-L", 1)))
        assert on_b["idTagInfo"]["status"] == "ConcurrentTx"
        # the other connector of A says nothing about the transaction on connector 1
        status = {"connectorId": 2, "errorCode": "NoError", "status": "Available"}
        assert result_of(await a.call("StatusNotification", status)) == {}
        on_b = result_of(await b.call("StartTransaction", start_payload("CARD-L", 2)))
        assert on_b["idTagInfo"]["status"] == "ConcurrentTx"
        if freed_by == "new-start":
            again = result_of(await a.call("StartTransaction", start_payload("CARD-L", 50)))
            assert again["idTagInfo"]["status"] == "Accepted"
            expected_on_b = "ConcurrentTx"  # the new transaction holds the card now
        else:
            status = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}
            assert result_of(await a.call("StatusNotification", status)) == {}
            expected_on_b = "Accepted"
        on_b = result_of(await b.call("StartTransaction", start_payload("CARD-L", 3)))
        assert on_b["idTagInfo"]["status"] == expected_on_b
    running = await ctl.store.running_transactions()
    assert first["transactionId"] not in [tx for _, tx, _, _ in running]
    assert len(running) == 1


async def test_expired_site_list_entry_is_refused_offline(
    controller_factory: ControllerFactory, tmp_path: Path
) -> None:
    """Scenario 8: a site list entry past its expiry is Expired, never Accepted."""
    csv_path = site_csv(
        tmp_path,
        "OLD-CARD,Accepted,2001-01-01T00:00:00Z,\nNEW-CARD,Accepted,2999-01-01T00:00:00Z,\n",
    )
    ctl = await offline_controller(
        controller_factory,
        local_list={"path": csv_path},
        policy={"allow_offline_tx_for_unknown_id": True},
    )
    async with RawCharger(controller_url(ctl.listen_port), "CP1") as raw:
        assert await offline_status(raw, "old-card") == "Expired"
        assert await offline_status(raw, "NEW-CARD") == "Accepted"
        start = result_of(await raw.call("StartTransaction", start_payload("OLD-CARD")))
        assert start["idTagInfo"]["status"] == "Expired"


async def test_cache_entry_learned_with_past_expiry_is_refused_offline(
    controller_factory: ControllerFactory,
) -> None:
    """Scenario 8: a cached answer whose expiryDate has passed is Expired offline."""
    past = "2001-01-01T00:00:00Z"
    async with ScriptedCsms(
        {
            "BootNotification": {"status": "Accepted", "currentTime": STAMP, "interval": 300},
            "Authorize": {"idTagInfo": {"status": "Accepted", "expiryDate": past}},
        }
    ) as scripted:
        ctl = await controller_factory(
            csms={"url": scripted.url},
            uplink=FAST_RECONNECT,
            policy={"allow_offline_tx_for_unknown_id": True},
        )
        async with RawCharger(controller_url(ctl.listen_port), "CP1") as raw:
            online = result_of(await raw.call("Authorize", {"idTag": "Cached-Old"}))
            assert online["idTagInfo"]["expiryDate"] == past
            assert [(who, action) for who, action, _ in scripted.calls] == [("CP1", "Authorize")]

            async def learned() -> bool:
                return "CACHED-OLD" in await ctl.store.load_cache()

            await eventually(learned, what="the cache to learn the card")
            await scripted.stop()
            await wait_offline(ctl, "CP1")
            # Unknown ids are allowed: an expired cache entry must not fall through to that.
            assert await offline_status(raw, "CACHED-OLD") == "Expired"
            start = result_of(await raw.call("StartTransaction", start_payload("cached-old")))
            assert start["idTagInfo"]["status"] == "Expired"
            assert await offline_status(raw, "SOMEONE-ELSE") == "Accepted"


# --------------------------------------------------------------------------- scenario 9


async def test_send_local_list_full_and_differential_update_what_is_known(
    csms: CsmsPeer, controller_factory: ControllerFactory, tmp_path: Path
) -> None:
    """Scenario 9: SendLocalList passes through and the charger's list decides offline."""
    csv_path = site_csv(tmp_path, "LIST-BLOCKED,Accepted,,\nLIST-REMOVED,Accepted,,\n")
    ctl = await controller_factory(uplink=FAST_RECONNECT, local_list={"path": csv_path})
    url = controller_url(ctl.listen_port)
    async with ListCharger16(url, "CP-A") as a:
        await csms.wait_connected("CP-A")
        full = await csms.call(
            "CP-A",
            call16.SendLocalList(
                list_version=1,
                update_type="Full",
                local_authorization_list=[
                    {"id_tag": "list-blocked", "id_tag_info": {"status": "Blocked"}},
                    {"id_tag": "LIST-REMOVED", "id_tag_info": {"status": "Blocked"}},
                    {"id_tag": "LIST-ONLY", "id_tag_info": {"status": "Accepted"}},
                ],
            ),
        )
        assert full.status == "Accepted"
        assert len(a.lists) == 1  # it reached the charger

        async def keys(expected: set[str]) -> bool:
            return set(await ctl.store.charger_list("CP-A")) == expected

        await eventually(
            lambda: keys({"LIST-BLOCKED", "LIST-REMOVED", "LIST-ONLY"}), what="the full list"
        )
        diff = await csms.call(
            "CP-A",
            call16.SendLocalList(
                list_version=2,
                update_type="Differential",
                local_authorization_list=[
                    {"id_tag": "list-removed"},  # no idTagInfo: removed
                    {"id_tag": "LIST-NEW", "id_tag_info": {"status": "Accepted"}},
                ],
            ),
        )
        assert diff.status == "Accepted"
        assert len(a.lists) == 2
        await eventually(
            lambda: keys({"LIST-BLOCKED", "LIST-ONLY", "LIST-NEW"}), what="the differential"
        )
        assert (await ctl.store.load_charger_list_versions())["CP-A"] == 2

        await csms.stop()
        await wait_offline(ctl, "CP-A")
        # The charger's list first, even against the site list ...
        assert await offline_status_peer(a, "LIST-BLOCKED") == "Blocked"
        # ... a removed entry falls through to the site list ...
        assert await offline_status_peer(a, "list-removed") == "Accepted"
        assert await offline_status_peer(a, "LIST-ONLY") == "Accepted"
        assert await offline_status_peer(a, "LIST-NEW") == "Accepted"
        assert await offline_status_peer(a, "NOT-IN-ANY-LIST") == "Invalid"
        # ... and a charger's list is that charger's only.
        async with RawCharger(url, "CP-B") as b:
            assert await offline_status(b, "LIST-BLOCKED") == "Accepted"
            assert await offline_status(b, "LIST-ONLY") == "Invalid"
    a.assert_clean()


async def test_differential_removal_falls_through_to_the_unknown_id_policy(
    csms: CsmsPeer, controller_factory: ControllerFactory
) -> None:
    """Scenario 9: a card removed from the charger's list is decided by the later sources."""
    ctl = await controller_factory(uplink=FAST_RECONNECT)
    async with ListCharger16(controller_url(ctl.listen_port), "CP-A") as a:
        await csms.wait_connected("CP-A")
        await csms.call(
            "CP-A",
            call16.SendLocalList(
                list_version=1,
                update_type="Full",
                local_authorization_list=[
                    {"id_tag": "GONE", "id_tag_info": {"status": "Accepted"}}
                ],
            ),
        )

        async def has(key: str, present: bool) -> bool:
            return (key in await ctl.store.charger_list("CP-A")) is present

        await eventually(lambda: has("GONE", True), what="the list entry")
        await csms.call(
            "CP-A",
            call16.SendLocalList(
                list_version=2,
                update_type="Differential",
                local_authorization_list=[{"id_tag": "gone"}],
            ),
        )
        await eventually(lambda: has("GONE", False), what="the removal")
        await csms.stop()
        await wait_offline(ctl, "CP-A")
        assert await offline_status_peer(a, "GONE") == "Invalid"


async def test_card_in_another_chargers_list_is_still_learned_by_the_cache(
    csms: CsmsPeer, controller_factory: ControllerFactory
) -> None:
    """Scenarios 8/9: a card in charger A's own list, authorized online on C, serves C offline."""
    ctl = await controller_factory(uplink=FAST_RECONNECT)
    url = controller_url(ctl.listen_port)
    async with ListCharger16(url, "CP-A") as a, ChargerPeer16(url, "CP-C") as c:
        await csms.wait_connected("CP-A")
        await csms.call(
            "CP-A",
            call16.SendLocalList(
                list_version=1,
                update_type="Full",
                local_authorization_list=[
                    {"id_tag": "FLEET-1", "id_tag_info": {"status": "Accepted"}}
                ],
            ),
        )

        async def listed() -> bool:
            return "FLEET-1" in await ctl.store.charger_list("CP-A")

        await eventually(listed, what="A's list")
        # C has no list: the CSMS answers for it, and the site cache should remember.
        assert (await c.call(call16.Authorize(id_tag="FLEET-1"))).id_tag_info == {
            "status": "Accepted"
        }
        assert (await c.call(call16.Authorize(id_tag="PLAIN-1"))).id_tag_info == {
            "status": "Accepted"
        }

        async def learned() -> bool:
            return "PLAIN-1" in await ctl.store.load_cache()

        await eventually(learned, what="the cache to learn PLAIN-1")
        await csms.stop()
        await wait_offline(ctl, "CP-C")
        await wait_offline(ctl, "CP-A")
        assert await offline_status_peer(a, "FLEET-1") == "Accepted"  # A's own list
        assert await offline_status_peer(c, "PLAIN-1") == "Accepted"  # the cache
        assert await offline_status_peer(c, "FLEET-1") == "Accepted"  # the cache too


async def test_get_local_list_version_zero_clears_the_copy(
    csms: CsmsPeer, controller_factory: ControllerFactory, tmp_path: Path
) -> None:
    """Scenario 9: a charger answering GetLocalListVersion 0 has no list any more."""
    csv_path = site_csv(tmp_path, "LIST-X,Accepted,,\n")
    ctl = await controller_factory(uplink=FAST_RECONNECT, local_list={"path": csv_path})
    async with ListCharger16(controller_url(ctl.listen_port), "CP-A") as a:
        await csms.wait_connected("CP-A")
        await csms.call(
            "CP-A",
            call16.SendLocalList(
                list_version=4,
                update_type="Full",
                local_authorization_list=[
                    {"id_tag": "LIST-X", "id_tag_info": {"status": "Blocked"}}
                ],
            ),
        )

        async def listed(present: bool) -> bool:
            return ("LIST-X" in await ctl.store.charger_list("CP-A")) is present

        await eventually(lambda: listed(True), what="the list entry")
        a.list_version = 4
        answer = await csms.call("CP-A", call16.GetLocalListVersion())
        assert answer.list_version == 4
        a.list_version = 0
        answer = await csms.call("CP-A", call16.GetLocalListVersion())
        assert answer.list_version == 0
        await eventually(lambda: listed(False), what="the copy to be cleared")
        assert (await ctl.store.load_charger_list_versions())["CP-A"] == 0
        await csms.stop()
        await wait_offline(ctl, "CP-A")
        assert await offline_status_peer(a, "LIST-X") == "Accepted"  # from the site list


@pytest.mark.parametrize(("reported", "kept"), [(3, True), (7, False), (2, False), (-1, False)])
async def test_get_local_list_version_decides_whether_the_copy_is_trusted(
    csms: CsmsPeer, controller_factory: ControllerFactory, reported: int, kept: bool
) -> None:
    """Scenario 9: a GetLocalListVersion answer equal to the copy's version leaves the
    controller's copy alone; another version (the charger's list changed where the
    controller did not see it) or -1 (it keeps no list) drops it, untrusted."""
    ctl = await controller_factory(uplink=FAST_RECONNECT)
    async with ListCharger16(controller_url(ctl.listen_port), "CP-A") as a:
        await csms.wait_connected("CP-A")
        await csms.call(
            "CP-A",
            call16.SendLocalList(
                list_version=3,
                update_type="Full",
                local_authorization_list=[
                    {"id_tag": "LISTED", "id_tag_info": {"status": "Blocked"}}
                ],
            ),
        )

        async def listed(present: bool) -> bool:
            return ("LISTED" in await ctl.store.charger_list("CP-A")) is present

        await eventually(lambda: listed(True), what="the list entry")
        a.list_version = reported
        assert (await csms.call("CP-A", call16.GetLocalListVersion())).list_version == reported
        if not kept:
            await eventually(lambda: listed(False), what="the copy to be dropped")
        assert (await ctl.store.load_charger_list_versions())["CP-A"] == reported
        await csms.stop()
        await wait_offline(ctl, "CP-A")
        assert await listed(kept)
        # kept: the charger's own list decides; dropped: the unknown-id policy
        expected = "Blocked" if kept else "Invalid"
        assert await offline_status_peer(a, "LISTED") == expected


def _cli(*argv: str) -> int:
    return cli.main(list(argv))


async def test_operator_site_list_import_is_used_at_once_and_export_round_trips(
    controller_factory: ControllerFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scenario 9: `local-list import` on the running controller's store applies at once."""
    first = site_csv(tmp_path, "CARD-V1,Accepted,,\n", name="v1.csv")
    ctl = await offline_controller(controller_factory, local_list={"path": first})
    config = tmp_path / "cli.toml"
    config.write_text(f'[store]\npath = "{ctl.settings.store.path}"\n', encoding="utf-8")
    second = site_csv(
        tmp_path,
        "card-v2,Accepted,2999-12-31T23:59:59Z,\nBLOCKED-V2,Blocked,,\nCHILD,,,PARENT-1\n",
        name="v2.csv",
    )
    async with RawCharger(controller_url(ctl.listen_port), "CP1") as raw:
        assert await offline_status(raw, "CARD-V1") == "Accepted"
        assert await offline_status(raw, "CARD-V2") == "Invalid"

        code = await asyncio.to_thread(
            _cli, "local-list", "import", str(second), "--config", str(config)
        )
        assert code == 0, capsys.readouterr().err
        assert "imported 3 entries" in capsys.readouterr().out
        assert await offline_status(raw, "CARD-V2") == "Accepted"
        assert await offline_status(raw, "blocked-v2") == "Blocked"
        child = result_of(await raw.call("Authorize", {"idTag": "child"}))
        assert child["idTagInfo"] == {"status": "Accepted", "parentIdTag": "PARENT-1"}
        assert await offline_status(raw, "CARD-V1") == "Invalid"  # replaced, not merged

        # A bad row: reported with its line, exit 1, nothing of the file imported.
        bad = site_csv(tmp_path, "GOOD-ROW,Accepted,,\nBAD-ROW,Maybe,,\n", name="bad.csv")
        before = await ctl.store.load_site_list()
        code = await asyncio.to_thread(
            _cli, "local-list", "import", str(bad), "--config", str(config)
        )
        err = capsys.readouterr().err
        assert code == 1
        assert "line 3" in err
        assert "nothing imported" in err
        assert await ctl.store.load_site_list() == before
        assert await offline_status(raw, "GOOD-ROW") == "Invalid"
        assert await offline_status(raw, "CARD-V2") == "Accepted"

    # Export round-trips: the file parses back to what the store holds.
    exported = tmp_path / "export.csv"
    code = await asyncio.to_thread(
        _cli, "local-list", "export", str(exported), "--config", str(config)
    )
    assert code == 0
    assert parse_csv(exported.read_text(encoding="utf-8")) == await ctl.store.load_site_list()
    code = await asyncio.to_thread(_cli, "local-list", "export", "--config", str(config))
    assert code == 0
    printed = [
        line
        for line in capsys.readouterr().out.splitlines(keepends=True)
        if not LOG_LINE.match(line)  # the controller's own log lines share stdout here
    ]
    assert "".join(printed) == exported.read_text(encoding="utf-8")
    code = await asyncio.to_thread(
        _cli, "local-list", "import", str(exported), "--config", str(config)
    )
    assert code == 0
    assert parse_csv(exported.read_text(encoding="utf-8")) == await ctl.store.load_site_list()


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("action", "payload", "code"),
    [
        (
            "StartTransaction",
            {"idTag": "CARD", "meterStart": 0, "timestamp": STAMP},
            "ProtocolError",
        ),
        (
            "StartTransaction",
            {"connectorId": "1", "idTag": "CARD", "meterStart": 0, "timestamp": STAMP},
            "TypeConstraintViolation",
        ),
        (
            "StopTransaction",
            {"transactionId": "7", "meterStop": 10, "timestamp": STAMP},
            "TypeConstraintViolation",
        ),
        (
            "StatusNotification",
            {"connectorId": 1, "errorCode": "NoError", "status": "Sleeping"},
            "PropertyConstraintViolation",
        ),
        ("MeterValues", {"connectorId": 1}, "ProtocolError"),
    ],
    ids=[
        "start-missing-connector",
        "start-connector-string",
        "stop-transaction-string",
        "status-bad-enum",
        "meter-missing-values",
    ],
)
async def test_offline_call_the_controller_cannot_read_gets_a_callerror(
    controller_factory: ControllerFactory, action: str, payload: dict[str, Any], code: str
) -> None:
    """B10: a field the controller needs is missing, mistyped or out of range: CALLERROR."""
    ctl = await offline_controller(controller_factory)
    async with RawCharger(controller_url(ctl.listen_port), "CP1") as raw:
        answer = await raw.call(action, payload)
        assert error_code(answer) == code
        assert result_of(await raw.call("Heartbeat", {}))  # the charger is kept
    assert await ctl.store.outbox("CP1") == []
    assert await ctl.store.connector_statuses("CP1") == []


async def test_offline_extra_field_is_accepted_and_stored_raw(
    controller_factory: ControllerFactory,
) -> None:
    """B10: an extra field is no reason to refuse; the frame is stored exactly as received."""
    ctl = await offline_controller(controller_factory)
    start_text = (
        '[2, "x1", "StartTransaction", {"connectorId": 1, "idTag": "CARD", '
        '"meterStart": 10, "timestamp": "2025-01-01T12:00:00Z", "vendorExtra": {"a": [1, 2]}}]'
    )
    async with RawCharger(controller_url(ctl.listen_port), "CP1") as raw:
        start = result_of(await send_call(raw, start_text))
        tx_id = start["transactionId"]
        meter_text = (
            f'[2,"x2","MeterValues",{{"connectorId":1,"transactionId":{tx_id},'
            '"meterValue":[{"timestamp":"2025-01-01T12:01:00Z","sampledValue":'
            '[{"value":"20","unknownKey":true}]}]}]'
        )
        assert result_of(await send_call(raw, meter_text)) == {}
    rows = await ctl.store.outbox("CP1")
    assert [(r.action, r.frame) for r in rows] == [
        ("StartTransaction", start_text),
        ("MeterValues", meter_text),
    ]


async def test_offline_transaction_message_off_form_where_unread_is_stored_raw(
    controller_factory: ControllerFactory,
) -> None:
    """B10: a transaction message that breaks the schema only where the controller does
    not read (a reason or a unit outside its enumeration, a number for a string, an
    empty sampledValue) is answered and stored exactly as received, never refused."""
    ctl = await offline_controller(controller_factory)
    async with RawCharger(controller_url(ctl.listen_port), "CP1") as raw:
        start = result_of(await raw.call("StartTransaction", start_payload("CARD")))
        tx_id = start["transactionId"]
        texts = [
            f'[2,"f1","MeterValues",{{"connectorId":1,"transactionId":{tx_id},"meterValue":'
            f'[{{"timestamp":"{STAMP}","sampledValue":[]}}]}}]',
            f'[2,"f2","MeterValues",{{"connectorId":1,"transactionId":{tx_id},"meterValue":'
            f'[{{"timestamp":"{STAMP}","sampledValue":[{{"value":20,"unit":"kwh"}}]}}]}}]',
            f'[2,"f3","MeterValues",{{"connectorId":1,"transactionId":{tx_id},"meterValue":'
            f'[{{"sampledValue":[{{"value":"30"}}]}}]}}]',
            frame("f4", "StopTransaction", stop_payload(tx_id, 40, reason="Exploded")),
        ]
        for text in texts:
            assert result_of(await send_call(raw, text)) == {}
    rows = await ctl.store.outbox("CP1")
    assert [r.frame for r in rows][1:] == texts
    assert ctl.metrics.notes["charger_bad_frame"] == 0


async def test_offline_over_long_id_tag_is_invalid_never_an_error(
    controller_factory: ControllerFactory,
) -> None:
    """B11: a 21-character idTag: Authorize and Start Invalid, its Stop acked, all stored."""
    ctl = await offline_controller(
        controller_factory, policy={"allow_offline_tx_for_unknown_id": True}
    )
    long_tag = "A" * 21
    control_tag = "CARD\u0010\u000e"
    async with RawCharger(controller_url(ctl.listen_port), "CP1") as raw:
        assert await offline_status(raw, long_tag) == "Invalid"
        assert await offline_status(raw, control_tag) == "Invalid"
        start_text = frame("l1", "StartTransaction", start_payload(long_tag))
        start = result_of(await send_call(raw, start_text))
        assert start["idTagInfo"]["status"] == "Invalid"
        tx_id = start["transactionId"]
        assert tx_id >= PROVISIONAL_START
        stop_text = frame("l2", "StopTransaction", stop_payload(tx_id, 2000, idTag=long_tag))
        stop = result_of(await send_call(raw, stop_text))
        assert stop in ({}, {"idTagInfo": {"status": "Invalid"}})
    rows = await ctl.store.outbox("CP1")
    assert [(r.action, r.frame) for r in rows] == [
        ("StartTransaction", start_text),
        ("StopTransaction", stop_text),
    ]


@pytest.mark.parametrize("tx_id", [-1, 0, 123456])
async def test_offline_stop_of_a_transaction_the_controller_does_not_know_is_stored(
    controller_factory: ControllerFactory, tx_id: int
) -> None:
    """B10: a StopTransaction naming -1, 0 or an unknown id is acked and stored, never refused."""
    ctl = await offline_controller(controller_factory)
    text = frame("u1", "StopTransaction", stop_payload(tx_id, 10, reason="Local"))
    async with RawCharger(controller_url(ctl.listen_port), "CP1") as raw:
        assert result_of(await send_call(raw, text)) == {}
    rows = await ctl.store.outbox("CP1")
    assert [(r.action, r.frame, r.tx_id) for r in rows] == [("StopTransaction", text, tx_id)]


async def test_call_before_offline_boot_is_accepted_gets_security_error(
    controller_factory: ControllerFactory,
) -> None:
    """B23: an unknown charger answered Pending offline gets SecurityError for other calls."""
    ctl = await offline_controller(controller_factory, offline={"unknown_charger": "pending"})
    boot = {"chargePointVendor": "OpenSite", "chargePointModel": "LC-Test"}
    async with RawCharger(controller_url(ctl.listen_port), "NEW-CP") as raw:
        answer = result_of(await raw.call("BootNotification", boot))
        assert answer["status"] == "Pending"
        status = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}
        assert error_code(await raw.call("StatusNotification", status)) == "SecurityError"
        assert error_code(await raw.call("Heartbeat", {})) == "SecurityError"
        start = await raw.call("StartTransaction", start_payload("CARD"))
        assert error_code(start) == "SecurityError"
    assert await ctl.store.outbox("NEW-CP") == []
    assert await ctl.store.connector_statuses("NEW-CP") == []


async def test_unknown_charger_stays_pending_on_its_next_offline_boot(
    controller_factory: ControllerFactory,
) -> None:
    """B23: booting again does not turn an unknown charger, never accepted, into a known one."""
    ctl = await offline_controller(controller_factory, offline={"unknown_charger": "pending"})
    boot = {"chargePointVendor": "OpenSite", "chargePointModel": "LC-Test"}
    async with RawCharger(controller_url(ctl.listen_port), "NEW-CP") as raw:
        assert result_of(await raw.call("BootNotification", boot))["status"] == "Pending"
        assert result_of(await raw.call("BootNotification", boot))["status"] == "Pending"
        status = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}
        assert error_code(await raw.call("StatusNotification", status)) == "SecurityError"
    async with RawCharger(controller_url(ctl.listen_port), "NEW-CP") as raw:
        assert result_of(await raw.call("BootNotification", boot))["status"] == "Pending"


async def test_unknown_charger_is_refused_offline_under_reject_policy(
    controller_factory: ControllerFactory,
) -> None:
    """An identity the CSMS never accepted is refused (404) while offline under ``reject``."""
    ctl = await offline_controller(controller_factory, offline={"unknown_charger": "reject"})
    with pytest.raises(InvalidStatus) as refused:
        async with RawCharger(controller_url(ctl.listen_port), "NEW-CP"):
            pass
    assert refused.value.response.status_code == 404
    assert await ctl.store.charger("NEW-CP") is None


async def test_charger_accepted_online_before_is_accepted_offline_under_pending_policy(
    csms: CsmsPeer, controller_factory: ControllerFactory
) -> None:
    """B23: a charger the CSMS accepted once is a known charger when it boots offline."""
    ctl = await controller_factory(uplink=FAST_RECONNECT, offline={"unknown_charger": "pending"})
    boot = {"chargePointVendor": "OpenSite", "chargePointModel": "LC-Test"}
    url = controller_url(ctl.listen_port)
    async with RawCharger(url, "CP1") as raw:
        assert result_of(await raw.call("BootNotification", boot))["status"] == "Accepted"

        async def accepted() -> bool:
            record = await ctl.store.charger("CP1")
            return record is not None and record["accepted"] == 1

        await eventually(accepted, what="the online boot to be recorded")
    await csms.stop()
    async with RawCharger(url, "CP1") as raw:
        assert result_of(await raw.call("BootNotification", boot))["status"] == "Accepted"
        status = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}
        assert result_of(await raw.call("StatusNotification", status)) == {}


@pytest.mark.parametrize("answered", ["Pending", "Rejected"])
async def test_charger_the_csms_keeps_pending_or_rejected_is_not_accepted_offline(
    csms: CsmsPeer, controller_factory: ControllerFactory, answered: str
) -> None:
    """B23: offline, a charger's boot gets what the CSMS last answered it: one the CSMS
    keeps Pending or Rejected is not Accepted by the controller (``unknown_charger =
    "accept"`` is for identities the CSMS never answered); accepted later, Accepted."""
    csms.boot_status = answered
    ctl = await controller_factory(
        uplink=FAST_RECONNECT, admission={"unknown_identities": "pass_through"}
    )
    boot = {"chargePointVendor": "OpenSite", "chargePointModel": "LC-Test"}
    url = controller_url(ctl.listen_port)

    async def recorded(status: str) -> bool:
        record = await ctl.store.charger("CP1")
        return record is not None and record["csms_boot_status"] == status

    async with RawCharger(url, "CP1") as raw:
        assert result_of(await raw.call("BootNotification", boot))["status"] == answered
        await eventually(lambda: recorded(answered), what="the CSMS's answer to be recorded")
    await csms.stop()
    async with RawCharger(url, "CP1") as raw:
        assert result_of(await raw.call("BootNotification", boot))["status"] == answered
    csms.boot_status = "Accepted"
    await csms.start()
    async with RawCharger(url, "CP1") as raw:

        async def online() -> bool:
            session = ctl.chargers.sessions.get("CP1")
            return session is not None and session.state is State.ONLINE

        await eventually(online, what="CP1 online (its offline boot replayed)")
        assert result_of(await raw.call("BootNotification", boot))["status"] == "Accepted"
        await eventually(lambda: recorded("Accepted"), what="the CSMS's answer to be recorded")
    await csms.stop()
    async with RawCharger(url, "CP1") as raw:
        assert result_of(await raw.call("BootNotification", boot))["status"] == "Accepted"


async def test_offline_data_transfer_and_unanswerable_actions(
    controller_factory: ControllerFactory,
) -> None:
    """Offline: DataTransfer gets UnknownVendorId; an action the responder lacks, NotSupported."""
    ctl = await offline_controller(controller_factory)
    async with RawCharger(controller_url(ctl.listen_port), "CP1") as raw:
        answer = result_of(await raw.call("DataTransfer", {"vendorId": "com.example"}))
        assert answer["status"] == "UnknownVendorId"
        assert error_code(await raw.call("GetConfiguration", {})) == "NotSupported"
        assert error_code(await raw.call("Reset", {"type": "Soft"})) == "NotSupported"
        assert error_code(await raw.call("NoSuchAction", {})) == "NotImplemented"
        assert result_of(await raw.call("Heartbeat", {}))


async def test_strict_mode_refuses_a_charger_while_the_csms_is_down(
    controller_factory: ControllerFactory,
) -> None:
    """Strict mode: a charger connecting while the CSMS cannot be reached gets HTTP 502."""
    ctl = await offline_controller(controller_factory, offline={"mode": "strict"})
    with pytest.raises(InvalidStatus) as refused:
        async with RawCharger(controller_url(ctl.listen_port), "CP1"):
            pass
    assert refused.value.response.status_code == 502
    assert ctl.chargers.sessions == {}


async def test_strict_mode_closes_the_charger_when_its_uplink_is_lost(
    csms: CsmsPeer, controller_factory: ControllerFactory
) -> None:
    """Strict mode: when the CSMS goes away, the charger is closed, not served offline."""
    ctl = await controller_factory(uplink=FAST_RECONNECT, offline={"mode": "strict"})
    async with RawCharger(controller_url(ctl.listen_port), "CP1") as raw:
        assert result_of(await raw.call("Heartbeat", {}))
        await csms.close("CP1", 1001, "going away")
        closed = await raw.wait_closed()
    assert closed.code == 1001
    assert await ctl.store.outbox("CP1") == []


async def test_serve_mode_keeps_the_charger_when_its_uplink_is_lost(
    csms: CsmsPeer, controller_factory: ControllerFactory
) -> None:
    """Serve mode: the CSMS going away (1001) leaves the charger connected and answered."""
    ctl = await controller_factory(uplink=FAST_RECONNECT)
    async with RawCharger(controller_url(ctl.listen_port), "CP1") as raw:
        assert result_of(await raw.call("Heartbeat", {}))
        await csms.stop()
        await wait_offline(ctl, "CP1")
        start = result_of(await raw.call("StartTransaction", start_payload("CARD")))
        assert start["transactionId"] >= PROVISIONAL_START
    assert [r.action for r in await ctl.store.outbox("CP1")] == ["StartTransaction"]


# --------------------------------------------------------------------------- scenario 6 / R39


async def test_retried_transaction_messages_get_the_same_answer_and_are_stored_once(
    controller_factory: ControllerFactory,
) -> None:
    """R39: a retried Start (same or new message id) gets the same id; every retry stored once."""
    ctl = await offline_controller(
        controller_factory, policy={"allow_offline_tx_for_unknown_id": True}
    )
    payload = start_payload("CARD-R", 1234)
    async with RawCharger(controller_url(ctl.listen_port), "CP1") as raw:
        first = result_of(await raw.call("StartTransaction", payload, unique_id="r1"))
        same_id = result_of(await raw.call("StartTransaction", payload, unique_id="r1"))
        new_id = result_of(await raw.call("StartTransaction", payload, unique_id="r2"))
        assert first == same_id == new_id
        tx_id = first["transactionId"]
        other = result_of(await raw.call("StartTransaction", start_payload("CARD-Q", 99)))
        assert other["transactionId"] != tx_id

        meter = meter_payload(tx_id, 1300)
        for message_id in ("r3", "r3", "r4"):
            assert result_of(await raw.call("MeterValues", meter, unique_id=message_id)) == {}
        stop = stop_payload(tx_id, 1400)
        answers = [
            result_of(await raw.call("StopTransaction", stop, unique_id=message_id))
            for message_id in ("r5", "r5", "r6")
        ]
        assert answers[0] == answers[1] == answers[2]

    rows = await ctl.store.outbox("CP1")
    assert [(r.action, r.message_id) for r in rows] == [
        ("StartTransaction", "r1"),
        ("StartTransaction", rows[1].message_id),
        ("MeterValues", "r3"),
        ("StopTransaction", "r5"),
    ]
    assert rows[0].tx_id == tx_id
    assert rows[1].tx_id == other["transactionId"]
    transactions = await ctl.store.transactions_of("CP1")
    assert sorted(t["provisional"] for t in transactions) == sorted([tx_id, other["transactionId"]])


async def test_retried_start_gets_the_same_id_tag_info(
    controller_factory: ControllerFactory, tmp_path: Path
) -> None:
    """R39: the retry of a stored Start gets the very answer of the first time, idTagInfo whole."""
    csv_path = site_csv(tmp_path, "CHILD-CARD,Accepted,2999-01-01T00:00:00Z,FLEET-PARENT\n")
    ctl = await offline_controller(controller_factory, local_list={"path": csv_path})
    payload = start_payload("CHILD-CARD", 4321)
    async with RawCharger(controller_url(ctl.listen_port), "CP1") as raw:
        first = result_of(await raw.call("StartTransaction", payload, unique_id="p1"))
        assert first["idTagInfo"]["parentIdTag"] == "FLEET-PARENT"
        retry = result_of(await raw.call("StartTransaction", payload, unique_id="p1"))
    assert retry == first


async def test_full_outbox_refuses_new_offline_transactions_and_keeps_everything(
    controller_factory: ControllerFactory, tmp_path: Path
) -> None:
    """Decision 7: at the per-charger cap a new offline start is answered Invalid (and
    stored all the same), messages of running transactions are still stored, nothing
    is dropped, and an alarm is counted."""
    csv_path = site_csv(tmp_path, "CARD-A,Accepted,,\nCARD-B,Accepted,,\n")
    ctl = await offline_controller(
        controller_factory,
        local_list={"path": csv_path},
        offline={"max_outbox_per_charger": 2},
        policy={"concurrent_tx": False},
    )
    async with RawCharger(controller_url(ctl.listen_port), "CP1") as raw:
        first = result_of(await raw.call("StartTransaction", start_payload("CARD-A", 100)))
        assert first["idTagInfo"]["status"] == "Accepted"
        meter = {
            "connectorId": 1,
            "transactionId": first["transactionId"],
            "meterValue": [
                {"timestamp": "2026-01-01T00:01:00Z", "sampledValue": [{"value": "150"}]}
            ],
        }
        assert result_of(await raw.call("MeterValues", meter)) == {}
        second = result_of(await raw.call("StartTransaction", start_payload("CARD-B", 200)))
        assert second["idTagInfo"]["status"] == "Invalid"
        meter["meterValue"][0]["sampledValue"] = [{"value": "180"}]
        assert result_of(await raw.call("MeterValues", meter)) == {}
    actions = [row.action for row in await ctl.store.outbox("CP1")]
    assert actions.count("StartTransaction") == 2
    assert actions.count("MeterValues") == 2
    assert ctl.metrics.security_events["outbox_full"] >= 1
