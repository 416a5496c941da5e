"""End to end, the site authorization cache: what it learns online, what it must not.

docs/offline.md, "Authorization while offline", source 3: the cache learns every
idTagInfo the CSMS answers for any charger of the site (Authorize, StartTransaction,
StopTransaction, live or replayed), with its expiry and parent, unless the id is in a
local list (the site's, or the charger's own). Real chargers and a real CSMS on
loopback, the controller in-process; the CSMS is then stopped and other chargers are
answered offline. What the controller learned is read back from its store.
"""

from __future__ import annotations

import itertools
import os
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
    eventually,
    offline_status,
    result_of,
    site_csv,
    start_payload,
    stop_payload,
    wait_state,
)
from peers import CsmsPeer, RawCharger, controller_url

from config.settings import ENV_PREFIX
from policies.authorization import AuthStatus
from proxy.router import State

if TYPE_CHECKING:
    from conftest import ControllerFactory

    from proxy.app import Controller

pytestmark = pytest.mark.timeout(30)

#: Unknown ids are Accepted offline: only a cache entry can make them anything else.
ALLOW_UNKNOWN = {"allow_offline_tx_for_unknown_id": True}
PAST = "2001-01-01T00:00:00Z"
FUTURE = "2999-01-01T00:00:00Z"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OCPP_LC_* variable of the caller's environment leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


# --------------------------------------------------------------------------- helpers


async def id_tag_info(raw: RawCharger, id_tag: str) -> dict[str, Any]:
    """The idTagInfo an Authorize of ``id_tag`` gets."""
    info: dict[str, Any] = result_of(await raw.call("Authorize", {"idTag": id_tag}))["idTagInfo"]
    return info


async def start_status(raw: RawCharger, id_tag: str, meter_start: int) -> str:
    """The status a StartTransaction of ``id_tag`` gets."""
    answer = result_of(await raw.call("StartTransaction", start_payload(id_tag, meter_start)))
    return str(answer["idTagInfo"]["status"])


async def wait_cached(ctl: Controller, key: str, status: AuthStatus) -> None:
    """Wait until the cache holds ``key`` with ``status``."""

    async def learned() -> bool:
        entry = (await ctl.store.load_cache()).get(key)
        return entry is not None and entry.status is status

    await eventually(learned, what=f"the cache to learn {key} as {status.value}")


class IdTagInfoCsms(ScriptedCsms):
    """A bare 1.6 CSMS on loopback that answers ``infos[idTag]`` (an idTagInfo, given
    whole: expiryDate, parentIdTag) to Authorize, StartTransaction and StopTransaction.

    :class:`peers.CsmsPeer` only ever answers an idTagInfo with a status in it; this one
    is for the answers that carry more.
    """

    def __init__(self, infos: dict[str, dict[str, Any]]) -> None:
        super().__init__({})
        self.infos = infos
        self._tx_ids = itertools.count(1)

    def answer(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        info = self.infos.get(payload.get("idTag", ""), {"status": "Accepted"})
        if action == "BootNotification":
            return {"status": "Accepted", "currentTime": STAMP, "interval": 300}
        if action == "Authorize":
            return {"idTagInfo": info}
        if action == "StartTransaction":
            return {"transactionId": next(self._tx_ids), "idTagInfo": info}
        if action == "StopTransaction" and "idTag" in payload:
            return {"idTagInfo": info}
        return {}


# --------------------------------------------------------------------------- learning


async def test_start_answered_blocked_online_on_one_charger_blocks_the_card_offline_on_another(
    csms: CsmsPeer, controller_factory: ControllerFactory
) -> None:
    """A StartTransaction the CSMS answers Blocked on A teaches the cache: offline, the
    same card (in another case) is Blocked on B, for Authorize and for a start, where
    the unknown-id policy alone would accept it."""
    csms.id_tag_status["Card-X"] = "Blocked"
    ctl = await controller_factory(uplink=FAST_RECONNECT, policy=ALLOW_UNKNOWN)
    url = controller_url(ctl.listen_port)
    async with RawCharger(url, "CP-A") as a:
        await csms.wait_connected("CP-A")
        online = result_of(await a.call("StartTransaction", start_payload("Card-X")))
        assert online["idTagInfo"] == {"status": "Blocked"}
        assert online["transactionId"] < PROVISIONAL_START  # the CSMS answered it
        assert [e.action for e in csms.received_calls("CP-A")] == ["StartTransaction"]
        await wait_cached(ctl, "CARD-X", AuthStatus.Blocked)

        await csms.stop()
        await wait_state(ctl, "CP-A", State.OFFLINE)
        async with RawCharger(url, "CP-B") as b:
            await wait_state(ctl, "CP-B", State.OFFLINE)
            assert await offline_status(b, "card-x") == "Blocked"
            assert await start_status(b, "cArD-x", 10) == "Blocked"
            # the unknown-id policy is indeed to accept
            assert await offline_status(b, "CARD-NEVER-SEEN") == "Accepted"
    csms.assert_clean()


async def test_stop_answered_blocked_online_overwrites_the_cached_card(
    csms: CsmsPeer, controller_factory: ControllerFactory
) -> None:
    """A StopTransaction answer with idTagInfo teaches the cache too: the card was
    learned Accepted from its start; the CSMS blocks it and answers the stop (which
    carries the idTag) Blocked; offline, the card is Blocked on another charger."""
    ctl = await controller_factory(uplink=FAST_RECONNECT, policy=ALLOW_UNKNOWN)
    url = controller_url(ctl.listen_port)
    async with RawCharger(url, "CP-A") as a:
        await csms.wait_connected("CP-A")
        started = result_of(await a.call("StartTransaction", start_payload("Card-Y")))
        assert started["idTagInfo"] == {"status": "Accepted"}
        await wait_cached(ctl, "CARD-Y", AuthStatus.Accepted)

        csms.id_tag_status["Card-Y"] = "Blocked"
        stop = stop_payload(started["transactionId"], 2000, idTag="Card-Y")
        stopped = result_of(await a.call("StopTransaction", stop))
        assert stopped == {"idTagInfo": {"status": "Blocked"}}  # the CSMS's own answer
        await wait_cached(ctl, "CARD-Y", AuthStatus.Blocked)

        await csms.stop()
        await wait_state(ctl, "CP-A", State.OFFLINE)
        async with RawCharger(url, "CP-B") as b:
            await wait_state(ctl, "CP-B", State.OFFLINE)
            assert await offline_status(b, "card-y") == "Blocked"
            assert await start_status(b, "CARD-y", 10) == "Blocked"
            assert await offline_status(b, "CARD-NEVER-SEEN") == "Accepted"
    assert [e.action for e in csms.received_calls("CP-A")] == [
        "StartTransaction",
        "StopTransaction",
    ]
    csms.assert_clean()


async def test_cache_keeps_the_expiry_and_parent_the_csms_answered(
    controller_factory: ControllerFactory,
) -> None:
    """Authorize answers with an expiryDate and a parentIdTag are cached whole: offline,
    a card whose expiry has passed is Expired (not the Accepted of the unknown-id
    policy), and a card with a parent gets the parent and expiry in its idTagInfo, for
    Authorize and for a start, on another charger."""
    expired = {"status": "Accepted", "expiryDate": PAST}
    member = {"status": "Accepted", "expiryDate": FUTURE, "parentIdTag": "Fleet-Parent"}
    async with IdTagInfoCsms({"Old-Card": expired, "Member-Card": member}) as scripted:
        ctl = await controller_factory(
            csms={"url": scripted.url}, uplink=FAST_RECONNECT, policy=ALLOW_UNKNOWN
        )
        url = controller_url(ctl.listen_port)
        async with RawCharger(url, "CP-A") as a:
            await wait_state(ctl, "CP-A", State.ONLINE)
            assert await id_tag_info(a, "Old-Card") == expired
            assert await id_tag_info(a, "Member-Card") == member
            assert [action for _, action, _ in scripted.calls] == ["Authorize", "Authorize"]

            async def learned() -> bool:
                return {"OLD-CARD", "MEMBER-CARD"} <= set(await ctl.store.load_cache())

            await eventually(learned, what="the cache to learn both cards")
            cache = await ctl.store.load_cache()
            assert cache["MEMBER-CARD"].parent_id_tag == "Fleet-Parent"

            await scripted.stop()
            await wait_state(ctl, "CP-A", State.OFFLINE)
            async with RawCharger(url, "CP-B") as b:
                await wait_state(ctl, "CP-B", State.OFFLINE)
                assert await id_tag_info(b, "old-card") == expired | {"status": "Expired"}
                assert await start_status(b, "OLD-card", 10) == "Expired"
                assert await id_tag_info(b, "member-card") == member
                start = result_of(await b.call("StartTransaction", start_payload("MEMBER-card")))
                assert start["idTagInfo"] == member
                assert await offline_status(b, "CARD-NEVER-SEEN") == "Accepted"


async def test_start_replayed_after_an_outage_and_answered_blocked_teaches_the_cache(
    csms: CsmsPeer, controller_factory: ControllerFactory
) -> None:
    """A transaction answered offline (the unknown-id policy accepts it) is replayed when
    the CSMS is back; the CSMS answers the replayed start Blocked: the cache learns it,
    and at the next outage the card is Blocked on another charger."""
    csms.id_tag_status["Card-R"] = "Blocked"
    ctl = await controller_factory(uplink=FAST_RECONNECT, policy=ALLOW_UNKNOWN)
    url = controller_url(ctl.listen_port)
    await csms.stop()
    async with RawCharger(url, "CP-A") as a:
        await wait_state(ctl, "CP-A", State.OFFLINE)
        started = result_of(await a.call("StartTransaction", start_payload("Card-R")))
        assert started["idTagInfo"]["status"] == "Accepted"  # the unknown-id policy
        tx_id = started["transactionId"]
        assert tx_id >= PROVISIONAL_START
        assert result_of(await a.call("StopTransaction", stop_payload(tx_id, 1500))) == {}
        assert "CARD-R" not in await ctl.store.load_cache()

        await csms.start()
        await csms.wait_until(
            lambda: len(csms.received_calls("CP-A", "StopTransaction")) == 1,
            what="the replayed stop",
        )
        (replayed,) = csms.received_calls("CP-A", "StartTransaction")
        assert replayed.response["idTagInfo"] == {"status": "Blocked"}
        await wait_cached(ctl, "CARD-R", AuthStatus.Blocked)

        await csms.stop()
        async with RawCharger(url, "CP-B") as b:
            await wait_state(ctl, "CP-B", State.OFFLINE)
            assert await offline_status(b, "card-r") == "Blocked"
            assert await offline_status(b, "CARD-NEVER-SEEN") == "Accepted"
    csms.assert_clean()


# --------------------------------------------------------------------------- not learning


async def test_card_in_the_site_list_answered_blocked_online_is_not_cached(
    csms: CsmsPeer, controller_factory: ControllerFactory, tmp_path: Path
) -> None:
    """A card in the site list (any case) is not learned from the CSMS's answers, Blocked
    as they are, for Authorize, StartTransaction and StopTransaction alike: offline the
    site list decides (Accepted), on the charger it was used on and on another."""
    csv_path = site_csv(tmp_path, "Site-Card,Accepted,,\n")
    csms.id_tag_status["SITE-card"] = "Blocked"
    ctl = await controller_factory(uplink=FAST_RECONNECT, local_list={"path": csv_path})
    url = controller_url(ctl.listen_port)
    async with RawCharger(url, "CP-A") as a:
        await csms.wait_connected("CP-A")
        assert await offline_status(a, "SITE-card") == "Blocked"  # passed through online
        start = result_of(await a.call("StartTransaction", start_payload("SITE-card")))
        assert start["idTagInfo"] == {"status": "Blocked"}
        assert start["transactionId"] < PROVISIONAL_START
        stop = stop_payload(start["transactionId"], 1200, idTag="SITE-card")
        assert result_of(await a.call("StopTransaction", stop)) == {
            "idTagInfo": {"status": "Blocked"}
        }
        # a card in no list, answered after them on the same charger: once it is
        # learned, the answers before it have been seen
        assert await offline_status(a, "Barrier-Card") == "Accepted"
        await wait_cached(ctl, "BARRIER-CARD", AuthStatus.Accepted)
        cache = await ctl.store.load_cache()
        assert "SITE-CARD" not in cache, cache

        await csms.stop()
        await wait_state(ctl, "CP-A", State.OFFLINE)
        assert await offline_status(a, "site-card") == "Accepted"
        async with RawCharger(url, "CP-B") as b:
            await wait_state(ctl, "CP-B", State.OFFLINE)
            assert await offline_status(b, "SITE-CARD") == "Accepted"
            assert await start_status(b, "Site-Card", 10) == "Accepted"
            assert await offline_status(b, "CARD-NEVER-SEEN") == "Invalid"
    assert len(csms.received_calls("CP-A")) == 4
    csms.assert_clean()


async def test_card_in_the_chargers_own_list_answered_blocked_online_is_not_cached(
    csms: CsmsPeer, controller_factory: ControllerFactory
) -> None:
    """A card in charger A's own list (SendLocalList from the CSMS) is not learned from
    the CSMS's Blocked answers to A's Authorize, StartTransaction and StopTransaction:
    offline A's list decides (Accepted) on A, and on B, where no list holds it and
    nothing was cached, the unknown-id policy does (Invalid)."""
    ctl = await controller_factory(uplink=FAST_RECONNECT)
    url = controller_url(ctl.listen_port)
    async with ListCharger16(url, "CP-A") as a:
        await csms.wait_connected("CP-A")
        sent = await csms.call(
            "CP-A",
            call16.SendLocalList(
                list_version=1,
                update_type="Full",
                local_authorization_list=[
                    {"id_tag": "Fleet-Card", "id_tag_info": {"status": "Accepted"}}
                ],
            ),
        )
        assert sent.status == "Accepted"
        assert len(a.lists) == 1  # it reached the charger

        async def listed() -> bool:
            return "FLEET-CARD" in await ctl.store.charger_list("CP-A")

        await eventually(listed, what="A's list")
        csms.id_tag_status["fleet-CARD"] = "Blocked"
        assert await a.authorize("fleet-CARD") == "Blocked"  # passed through online
        started = await a.call(
            call16.StartTransaction(
                connector_id=1, id_tag="fleet-CARD", meter_start=0, timestamp=a.now()
            )
        )
        assert started.id_tag_info == {"status": "Blocked"}
        assert started.transaction_id < PROVISIONAL_START
        stopped = await a.stop_transaction(started.transaction_id, 100, id_tag="fleet-CARD")
        assert stopped.id_tag_info == {"status": "Blocked"}
        # a card in no list, answered after them on the same charger: once it is
        # learned, the answers before it have been seen
        assert await a.authorize("Barrier-Card") == "Accepted"
        await wait_cached(ctl, "BARRIER-CARD", AuthStatus.Accepted)
        cache = await ctl.store.load_cache()
        assert "FLEET-CARD" not in cache, cache

        await csms.stop()
        await wait_state(ctl, "CP-A", State.OFFLINE)
        assert await a.authorize("FLEET-card") == "Accepted"  # A's own list
        async with RawCharger(url, "CP-B") as b:
            await wait_state(ctl, "CP-B", State.OFFLINE)
            assert await offline_status(b, "fleet-card") == "Invalid"
            assert await offline_status(b, "barrier-card") == "Accepted"  # the cache
    a.assert_clean()
    csms.assert_clean()
