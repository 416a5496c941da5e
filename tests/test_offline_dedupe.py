"""R39 dedupe of stored messages: a charger's retry is stored once, a new message never
left out.

A message whose payload says when what it reports happened (a MeterValues reading, a
timestamped StatusNotification, a SecurityEventNotification, a NotifyEvent, the
transaction messages) is known by its content, so a retry under a new message id is
recognised. Any other (FirmwareStatusNotification, DiagnosticsStatusNotification,
LogStatusNotification, a StatusNotification without its timestamp) is known by its
content and its message id: the same status reported again later is a new message.

Real chargers on loopback, the controller in-process, its uplink pointed at a closed
port or at a CSMS the test stops and starts again; plus the key functions themselves.
"""

from __future__ import annotations

import contextlib
import sqlite3
from typing import TYPE_CHECKING, Any

import pytest
from offline_tools import STAMP, offline_controller, wait_drained, wait_state
from peers import CALLRESULT, OCPP201, CsmsPeer, RawCharger, controller_url

from proxy.router import State
from proxy.versions import ocpp16, ocpp201

if TYPE_CHECKING:
    from conftest import ControllerFactory

    from proxy.app import Controller

pytestmark = pytest.mark.timeout(60)

IDENTITY = "CP1"

#: 1.6 payloads with no time of their own.
FIRMWARE_IDLE = {"status": "Idle"}
DIAGNOSTICS_UPLOADED = {"status": "Uploaded"}
AVAILABLE = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}


# --------------------------------------------------------------------------- helpers


async def acked(raw: RawCharger, action: str, payload: dict[str, Any], unique_id: str) -> None:
    """Send a call; fail unless it is answered with a CALLRESULT."""
    answer = await raw.call(action, payload, unique_id=unique_id)
    assert answer[0] == CALLRESULT, answer


async def stored(ctl: Controller, identity: str = IDENTITY) -> list[tuple[str, str]]:
    """(action, message id) of every message in the charger's outbox, oldest first."""
    return [(r.action, r.message_id) for r in await ctl.store.outbox(identity)]


# --------------------------------------------------------------------------- end to end


async def test_same_untimed_notification_under_a_new_id_is_stored_again(
    controller_factory: ControllerFactory,
) -> None:
    """A 1.6 FirmwareStatusNotification Idle carries no time: the charger's retry of it
    under the same message id (after a reconnect) is stored once, the same status sent
    later under a new id is a new message and stored too."""
    ctl = await offline_controller(controller_factory)
    url = controller_url(ctl.listen_port)
    async with RawCharger(url, IDENTITY) as raw:
        await acked(raw, "FirmwareStatusNotification", FIRMWARE_IDLE, "fw-1")
    async with RawCharger(url, IDENTITY) as raw:  # the charger reconnects and retries
        await acked(raw, "FirmwareStatusNotification", FIRMWARE_IDLE, "fw-1")
        assert await stored(ctl) == [("FirmwareStatusNotification", "fw-1")]
        # asked again (TriggerMessage, a later update that did not start): a new message
        await acked(raw, "FirmwareStatusNotification", FIRMWARE_IDLE, "fw-2")
        await acked(raw, "FirmwareStatusNotification", FIRMWARE_IDLE, "fw-2")  # its retry
    assert await stored(ctl) == [
        ("FirmwareStatusNotification", "fw-1"),
        ("FirmwareStatusNotification", "fw-2"),
    ]


async def test_timed_messages_retried_under_a_new_id_are_stored_once(
    controller_factory: ControllerFactory,
) -> None:
    """A 1.6 MeterValues and SecurityEventNotification carry their own time: a retry
    under a new message id, on the same connection or after a reconnect, is recognised
    by content and stored once, under the key such a message always had."""
    ctl = await offline_controller(controller_factory)
    url = controller_url(ctl.listen_port)
    meter = {
        "connectorId": 1,
        "transactionId": 7,
        "meterValue": [{"timestamp": STAMP, "sampledValue": [{"value": "1300"}]}],
    }
    event = {"type": "SettingSystemTime", "timestamp": STAMP}
    async with RawCharger(url, IDENTITY) as raw:
        await acked(raw, "MeterValues", meter, "mv-1")
        await acked(raw, "MeterValues", meter, "mv-2")
    async with RawCharger(url, IDENTITY) as raw:
        await acked(raw, "MeterValues", meter, "mv-3")
        await acked(raw, "SecurityEventNotification", event, "se-1")
        await acked(raw, "SecurityEventNotification", event, "se-2")
    rows = await ctl.store.outbox(IDENTITY)
    assert [(r.action, r.message_id) for r in rows] == [
        ("MeterValues", "mv-1"),
        ("SecurityEventNotification", "se-1"),
    ]
    with contextlib.closing(sqlite3.connect(ctl.store.path)) as db:
        keys = [k for (k,) in db.execute("SELECT dedupe_key FROM outbox ORDER BY seq")]
    assert keys == [
        "MeterValues:c13a134ea211822794a29451",
        "SecurityEventNotification:9650212c852a075c29a60485",
    ]


async def test_same_diagnostics_status_in_two_outages_reaches_the_csms_twice(
    csms: CsmsPeer, fast_controller: ControllerFactory
) -> None:
    """Two outages with the CSMS reachable in between: a DiagnosticsStatusNotification
    Uploaded ends each, and each reaches the CSMS. So does the connector's Available
    (sent without its timestamp) of the second outage, after it charged online."""
    ctl = await fast_controller()
    async with RawCharger(controller_url(ctl.listen_port), IDENTITY) as raw:
        boot = {"chargePointModel": "LC-Test", "chargePointVendor": "OpenSite"}
        await acked(raw, "BootNotification", boot, "boot-1")
        await wait_state(ctl, IDENTITY, State.ONLINE)
        for outage in (1, 2):
            await csms.stop()
            await wait_state(ctl, IDENTITY, State.OFFLINE)
            await acked(raw, "StatusNotification", AVAILABLE, f"status-{outage}")
            await acked(
                raw, "DiagnosticsStatusNotification", DIAGNOSTICS_UPLOADED, f"diag-{outage}"
            )
            await csms.start()
            await wait_drained(ctl, IDENTITY)
            if outage == 1:  # online: the connector charges, the CSMS sees it live
                charging = dict(AVAILABLE, status="Charging", timestamp=STAMP)
                await acked(raw, "StatusNotification", charging, "status-online")
                assert csms.received_calls(IDENTITY)[-1].request == charging

        diagnostics = csms.received_calls(IDENTITY, "DiagnosticsStatusNotification")
        assert [e.request for e in diagnostics] == [DIAGNOSTICS_UPLOADED] * 2
        assert all(e.outcome == "CALLRESULT" for e in diagnostics)
        statuses = [e.request for e in csms.received_calls(IDENTITY, "StatusNotification")]
        assert [s["status"] for s in statuses] == ["Available", "Charging", "Available"]
    csms.assert_clean()


async def test_ocpp201_untimed_notification_stored_again_timed_one_once(
    controller_factory: ControllerFactory,
) -> None:
    """2.0.1: FirmwareStatusNotification carries no time (stored under each new id),
    NotifyEvent carries generatedAt (a retry under a new id stored once)."""
    ctl = await offline_controller(controller_factory)
    firmware = {"status": "Installed", "requestId": 5}
    event = {
        "generatedAt": STAMP,
        "seqNo": 0,
        "eventData": [
            {
                "eventId": 1,
                "timestamp": STAMP,
                "trigger": "Alerting",
                "actualValue": "Faulted",
                "eventNotificationType": "HardWiredNotification",
                "component": {"name": "Connector"},
                "variable": {"name": "Problem"},
            }
        ],
    }
    async with RawCharger(
        controller_url(ctl.listen_port), IDENTITY, subprotocols=(OCPP201,)
    ) as raw:
        await acked(raw, "FirmwareStatusNotification", firmware, "fw-1")
        await acked(raw, "FirmwareStatusNotification", firmware, "fw-1")
        await acked(raw, "FirmwareStatusNotification", firmware, "fw-2")
        await acked(raw, "NotifyEvent", event, "ev-1")
        await acked(raw, "NotifyEvent", event, "ev-2")
    assert await stored(ctl) == [
        ("FirmwareStatusNotification", "fw-1"),
        ("FirmwareStatusNotification", "fw-2"),
        ("NotifyEvent", "ev-1"),
    ]


# --------------------------------------------------------------------------- key functions

#: (action, payload, the key it was always stored under) of 1.6 messages with their own time.
TIMED_16: list[tuple[str, dict[str, Any], str]] = [
    (
        "MeterValues",
        {
            "connectorId": 1,
            "transactionId": 7,
            "meterValue": [{"timestamp": STAMP, "sampledValue": [{"value": "1300"}]}],
        },
        "MeterValues:c13a134ea211822794a29451",
    ),
    (
        "StatusNotification",
        dict(AVAILABLE, timestamp=STAMP),
        "StatusNotification:27e327437906934f39b13c24",
    ),
    (
        "SecurityEventNotification",
        {"type": "SettingSystemTime", "timestamp": STAMP},
        "SecurityEventNotification:9650212c852a075c29a60485",
    ),
    (
        "StartTransaction",
        {"connectorId": 1, "idTag": "card-1", "meterStart": 1000, "timestamp": STAMP},
        "StartTransaction:3138328c1e43e5dcfe7cb651",
    ),
    (
        "StopTransaction",
        {"transactionId": 7, "meterStop": 1400, "timestamp": STAMP},
        "StopTransaction:897d48d2d55a56146440ea99",
    ),
]

UNTIMED_16: list[tuple[str, dict[str, Any]]] = [
    ("StatusNotification", AVAILABLE),
    ("FirmwareStatusNotification", FIRMWARE_IDLE),
    ("DiagnosticsStatusNotification", DIAGNOSTICS_UPLOADED),
    ("LogStatusNotification", {"status": "Uploaded", "requestId": 3}),
    ("SignedFirmwareStatusNotification", {"status": "Installed", "requestId": 3}),
    # a MeterValues without any time (off form, stored raw)
    ("MeterValues", {"connectorId": 1, "meterValue": [{"sampledValue": [{"value": "1"}]}]}),
]

TIMED_201: list[tuple[str, dict[str, Any], str]] = [
    (
        "SecurityEventNotification",
        {"type": "SettingSystemTime", "timestamp": STAMP},
        "SecurityEventNotification:f8fe3e1bdd7015d12faba0c4",
    ),
    (
        "NotifyEvent",
        {"generatedAt": STAMP, "seqNo": 0, "eventData": []},
        "NotifyEvent:18c89234101acf493a3b9a2e",
    ),
    (
        "MeterValues",
        {"evseId": 1, "meterValue": [{"timestamp": STAMP, "sampledValue": [{"value": 1300}]}]},
        "MeterValues:0f8f80e3344098a5c3c8defe",
    ),
    (
        "TransactionEvent",
        {
            "eventType": "Updated",
            "seqNo": 3,
            "timestamp": STAMP,
            "triggerReason": "MeterValuePeriodic",
            "transactionInfo": {"transactionId": "T-1"},
        },
        "TransactionEvent:T-1:3",
    ),
]

UNTIMED_201: list[tuple[str, dict[str, Any]]] = [
    ("FirmwareStatusNotification", {"status": "Installed", "requestId": 5}),
    ("LogStatusNotification", {"status": "Uploaded", "requestId": 5}),
]


@pytest.mark.parametrize(("action", "payload", "key"), TIMED_16, ids=[t[0] for t in TIMED_16])
def test_ocpp16_timed_message_is_known_by_content(
    action: str, payload: dict[str, Any], key: str
) -> None:
    """The key of a message with its own time is the one it always had, whatever its id."""
    assert ocpp16.dedupe_key(action, payload, "id-1") == key
    assert ocpp16.dedupe_key(action, payload, "id-2") == key


@pytest.mark.parametrize(("action", "payload"), UNTIMED_16, ids=[u[0] for u in UNTIMED_16])
def test_ocpp16_untimed_message_is_known_by_content_and_id(
    action: str, payload: dict[str, Any]
) -> None:
    first = ocpp16.dedupe_key(action, payload, "id-1")
    assert first == ocpp16.dedupe_key(action, dict(payload), "id-1")  # the retry
    assert first != ocpp16.dedupe_key(action, payload, "id-2")  # a new message
    assert first.startswith(f"{action}:")
    other = dict(payload, status="Other")
    assert first != ocpp16.dedupe_key(action, other, "id-1")


@pytest.mark.parametrize(("action", "payload", "key"), TIMED_201, ids=[t[0] for t in TIMED_201])
def test_ocpp201_timed_message_is_known_by_content(
    action: str, payload: dict[str, Any], key: str
) -> None:
    assert ocpp201.dedupe_key(action, payload, "id-1") == key
    assert ocpp201.dedupe_key(action, payload, "id-2") == key


@pytest.mark.parametrize(("action", "payload"), UNTIMED_201, ids=[u[0] for u in UNTIMED_201])
def test_ocpp201_untimed_message_is_known_by_content_and_id(
    action: str, payload: dict[str, Any]
) -> None:
    first = ocpp201.dedupe_key(action, payload, "id-1")
    assert first == ocpp201.dedupe_key(action, dict(payload), "id-1")
    assert first != ocpp201.dedupe_key(action, payload, "id-2")
    assert first.startswith(f"{action}:")


def test_dialects_use_their_version_keys() -> None:
    assert ocpp16.DIALECT.dedupe_key is ocpp16.dedupe_key
    assert ocpp201.DIALECT.dedupe_key is ocpp201.dedupe_key
    assert ocpp201.DIALECT_21.dedupe_key is ocpp201.dedupe_key
