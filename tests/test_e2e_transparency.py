"""End to end: online, the controller passes frames through unchanged (SCENARIOS.md 1, 2).

Real chargers and a real CSMS (the ``ocpp`` package) on loopback, the controller in
between. "Unchanged" means the same text, so the same message ids, in the same order.
"""

from __future__ import annotations

import asyncio
import base64
from typing import TYPE_CHECKING, Any

import pytest
from ocpp.v16 import call as call16
from ocpp.v201 import call as call201
from peers import (
    CALLRESULT,
    OCPP16,
    OCPP201,
    ChargerPeer,
    ChargerPeer16,
    ChargerPeer201,
    CsmsPeer,
    RawCharger,
    StepClock,
    answers,
    calls,
    controller_url,
    counter_ids,
    ledger,
    outline,
    received,
    sent,
)
from websockets.exceptions import InvalidStatus

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from conftest import ControllerFactory

    from proxy.app import Controller

pytestmark = pytest.mark.timeout(30)

IDENTITY = "CP1"


@pytest.fixture(params=[ChargerPeer16, ChargerPeer201], ids=["ocpp1.6", "ocpp2.0.1"])
def charger_class(request: pytest.FixtureRequest) -> type[ChargerPeer]:
    """Each test taking this fixture runs once per OCPP version."""
    cls: type[ChargerPeer] = request.param
    return cls


# --------------------------------------------------------------------------- scenario 1


async def test_session_through_controller_equals_direct_session(
    csms: CsmsPeer, controller: Controller, charger_class: type[ChargerPeer]
) -> None:
    """Scenario 1: a session through the controller is the direct session, frame for frame."""
    async with CsmsPeer(clock=StepClock()) as direct_csms:
        async with charger_class(
            direct_csms.url, IDENTITY, clock=StepClock(), ids=counter_ids()
        ) as charger:
            direct_ledger = await charger.run_session()
        charger.assert_clean()
        direct_frames = list(direct_csms.frames[IDENTITY])
        direct_csms.assert_clean()

    csms.clock = StepClock()
    async with charger_class(
        controller_url(controller.listen_port), IDENTITY, clock=StepClock(), ids=counter_ids()
    ) as charger:
        proxied_ledger = await charger.run_session()
        charger_frames = list(charger.frames)
    charger.assert_clean()

    assert [e.outcome for e in proxied_ledger] == ["CALLRESULT"] * len(direct_ledger)
    # Through the controller: the CSMS got exactly what the charger sent, and the
    # charger got exactly what the CSMS sent (text, ids, order).
    assert csms.received(IDENTITY) == sent(charger_frames)
    assert received(charger_frames) == csms.sent(IDENTITY)
    # And the conversation is the one the charger has with the CSMS directly.
    assert outline(csms.frames[IDENTITY]) == outline(direct_frames)
    assert csms.frames[IDENTITY] == direct_frames
    assert proxied_ledger == direct_ledger
    assert csms.connections[IDENTITY] == 1
    csms.assert_clean()


# --------------------------------------------------------------------------- scenario 2

_PROFILE_16 = {
    "chargingProfileId": 7,
    "stackLevel": 0,
    "chargingProfilePurpose": "TxDefaultProfile",
    "chargingProfileKind": "Relative",
    "chargingSchedule": {
        "chargingRateUnit": "A",
        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.0}],
    },
}

_PROFILE_201 = {
    "id": 7,
    "stackLevel": 0,
    "chargingProfilePurpose": "TxDefaultProfile",
    "chargingProfileKind": "Relative",
    "chargingSchedule": [
        {
            "id": 1,
            "chargingRateUnit": "A",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.0}],
        }
    ],
}

_COMPONENT = {"name": "OCPPCommCtrlr"}
_VARIABLE = {"name": "HeartbeatInterval"}


def _csms_calls(version: type[ChargerPeer]) -> list[Any]:
    """The CSMS-initiated calls of scenario 2, for a charger whose transaction is 1 / CP1-T1."""
    if version is ChargerPeer16:
        return [
            call16.RemoteStartTransaction(id_tag="TAG-0002", connector_id=1),
            call16.RemoteStopTransaction(transaction_id=1),
            call16.GetConfiguration(key=["HeartbeatInterval"]),
            call16.ChangeConfiguration(key="HeartbeatInterval", value="60"),
            call16.SendLocalList(
                list_version=3,
                update_type="Full",
                local_authorization_list=[
                    {"idTag": "TAG-0003", "idTagInfo": {"status": "Accepted"}}
                ],
            ),
            call16.TriggerMessage(requested_message="StatusNotification", connector_id=1),
            call16.Reset(type="Soft"),
            call16.SetChargingProfile(connector_id=1, cs_charging_profiles=_PROFILE_16),
        ]
    return [
        call201.RequestStartTransaction(
            id_token={"idToken": "TAG-0002", "type": "ISO14443"}, remote_start_id=11, evse_id=1
        ),
        call201.RequestStopTransaction(transaction_id=f"{IDENTITY}-T1"),
        call201.GetVariables(get_variable_data=[{"component": _COMPONENT, "variable": _VARIABLE}]),
        call201.SetVariables(
            set_variable_data=[
                {"attributeValue": "60", "component": _COMPONENT, "variable": _VARIABLE}
            ]
        ),
        call201.SendLocalList(
            version_number=3,
            update_type="Full",
            local_authorization_list=[
                {
                    "idToken": {"idToken": "TAG-0003", "type": "ISO14443"},
                    "idTokenInfo": {"status": "Accepted"},
                }
            ],
        ),
        call201.TriggerMessage(requested_message="StatusNotification"),
        call201.Reset(type="OnIdle"),
        call201.SetChargingProfile(evse_id=1, charging_profile=_PROFILE_201),
    ]


async def test_csms_calls_reach_charger_and_answers_return_unchanged(
    csms: CsmsPeer, controller: Controller, charger_class: type[ChargerPeer]
) -> None:
    """Scenario 2: every CSMS call reaches the charger; every answer reaches the CSMS as sent."""
    payloads = _csms_calls(charger_class)
    actions = [type(p).__name__ for p in payloads]
    async with charger_class(controller_url(controller.listen_port), IDENTITY) as charger:
        await charger.run_session()
        for payload in payloads:
            await csms.call(IDENTITY, payload)
        charger_frames = list(charger.frames)
        handled = list(charger.handled)
    charger.assert_clean()

    assert [h.action for h in handled] == actions
    csms_calls = ledger(csms.frames[IDENTITY])
    assert [e.action for e in csms_calls] == actions
    assert all(e.outcome == "CALLRESULT" for e in csms_calls), csms_calls
    # Each call arrived with the text and id the CSMS sent, and each answer came back
    # with the text the charger sent.
    assert calls(charger_frames, "received") == [e.request_text for e in csms_calls]
    answers_from_charger = answers(charger_frames, "sent")
    assert [e.response_text for e in csms_calls] == [
        answers_from_charger[e.unique_id] for e in csms_calls
    ]
    assert [h.unique_id for h in handled] == [e.unique_id for e in csms_calls]
    # Nothing else went either way.
    assert csms.received(IDENTITY) == sent(charger_frames)
    assert received(charger_frames) == csms.sent(IDENTITY)
    csms.assert_clean()


# --------------------------------------------------------------------------- handshake


async def test_authorization_header_reaches_csms_unchanged(
    csms: CsmsPeer, controller: Controller
) -> None:
    """The charger's Authorization header arrives at the CSMS byte for byte."""
    authorization = "Basic " + base64.b64encode(b"CP1:Zr8-q!2x pW").decode()
    async with ChargerPeer16(
        controller_url(controller.listen_port),
        IDENTITY,
        headers={"Authorization": authorization},
    ) as charger:
        await csms.wait_connected(IDENTITY)
        await charger.call(call16.Heartbeat())

    assert csms.request_headers[IDENTITY]
    for headers in csms.request_headers[IDENTITY]:
        assert headers.get_all("Authorization") == [authorization]
    csms.assert_clean()


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_csms_refusal_reaches_charger_with_same_status(
    csms: CsmsPeer, controller: Controller, status: int
) -> None:
    """A CSMS refusing the charger's handshake makes the charger's handshake fail alike."""
    csms.refusals[IDENTITY] = status
    with pytest.raises(InvalidStatus) as refused:
        async with ChargerPeer16(controller_url(controller.listen_port), IDENTITY):
            pass
    assert refused.value.response.status_code == status
    assert csms.request_headers[IDENTITY], "the controller never asked the CSMS"
    assert csms.connections[IDENTITY] == 0
    csms.assert_clean()


@pytest.mark.parametrize("status", [502, 503, 429])
async def test_csms_in_trouble_at_handshake_means_offline_not_refused(
    csms: CsmsPeer, fast_controller: ControllerFactory, status: int
) -> None:
    """A CSMS (or its load balancer) answering the handshake with 5xx or 429 is an outage:
    the charger is let in and served offline, and its uplink opens once the CSMS is back."""
    ctl = await fast_controller()
    csms.refusals[IDENTITY] = status
    async with RawCharger(controller_url(ctl.listen_port), IDENTITY) as charger:
        answer = await charger.call("Heartbeat", {})
        assert answer[0] == CALLRESULT and "currentTime" in answer[2]
        assert csms.connections[IDENTITY] == 0
        assert csms.request_headers[IDENTITY], "the controller never asked the CSMS"
        del csms.refusals[IDENTITY]
        await csms.wait_connected(IDENTITY, timeout=10.0)
        answer = await charger.call("Heartbeat", {})
        assert answer[0] == CALLRESULT
    assert csms.connections[IDENTITY] == 1


async def test_csms_that_never_answers_the_handshake_means_offline_in_time(
    fast_controller: ControllerFactory,
) -> None:
    """A CSMS that accepts the TCP connection and never answers the upgrade (shutting
    down, a proxy holding it) does not hold the charger's handshake past half its
    timeout: the charger is served offline instead of timing out."""
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        ctl = await fast_controller(
            csms={"url": f"ws://127.0.0.1:{port}", "open_timeout": 30},
            listen={"open_timeout": 2},
        )
        began = asyncio.get_running_loop().time()
        async with RawCharger(controller_url(ctl.listen_port), IDENTITY) as charger:
            took = asyncio.get_running_loop().time() - began
            answer = await charger.call("Heartbeat", {})
        assert answer[0] == CALLRESULT and "currentTime" in answer[2]
        assert took < 2.0, f"the charger's handshake took {took:.2f} s"
        assert held, "the controller never tried the CSMS"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.fixture
async def csms_16_only() -> AsyncIterator[CsmsPeer]:
    """A CSMS that speaks OCPP 1.6 only."""
    async with CsmsPeer(subprotocols=[OCPP16]) as peer:
        yield peer


async def test_charger_gets_the_subprotocol_the_csms_picked(
    csms_16_only: CsmsPeer, controller_factory: ControllerFactory
) -> None:
    """Offered 2.0.1 and 1.6, a 1.6-only CSMS picks 1.6, and so does the charger's handshake."""
    ctl = await controller_factory(csms={"url": csms_16_only.url})
    async with RawCharger(
        controller_url(ctl.listen_port), IDENTITY, subprotocols=[OCPP201, OCPP16]
    ) as charger:
        assert charger.subprotocol == OCPP16
        await csms_16_only.wait_connected(IDENTITY)
        assert csms_16_only.subprotocol(IDENTITY) == OCPP16
        answer = await charger.call("Heartbeat", {})
        assert answer[0] == CALLRESULT
    csms_16_only.assert_clean()


# --------------------------------------------------------------------------- close


async def test_csms_close_code_reaches_charger(csms: CsmsPeer, controller: Controller) -> None:
    """The CSMS closing with 4000 "bye" closes the charger's connection with 4000."""
    async with ChargerPeer16(controller_url(controller.listen_port), IDENTITY) as charger:
        await csms.wait_connected(IDENTITY)
        await csms.close(IDENTITY, 4000, "bye")
        closed = await charger.wait_closed()
    assert closed.code == 4000
    csms.assert_clean()


async def test_charger_close_code_reaches_csms(csms: CsmsPeer, controller: Controller) -> None:
    """The charger closing with 1000 closes the CSMS's connection with 1000."""
    async with ChargerPeer16(controller_url(controller.listen_port), IDENTITY) as charger:
        await csms.wait_connected(IDENTITY)
        await charger.close(1000)
    closed = await csms.wait_disconnected(IDENTITY)
    assert closed.code == 1000
    csms.assert_clean()
