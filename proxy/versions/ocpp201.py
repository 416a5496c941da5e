"""OCPP 2.0.1 (and 2.1, which shares its RPC framework and error codes)."""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Set
from typing import Any

from ocpp.v21.enums import Action as Action21
from ocpp.v201.enums import Action

from proxy import frames
from proxy.frames import Call, ErrorKind
from proxy.versions import Dialect, call_digest, has_own_time, payload_digest

#: Top-level fields that date a 2.0.1 message.
_OWN_TIME = ("timestamp", "generatedAt")


def dedupe_key(action: str, payload: Mapping[str, Any], message_id: str) -> str:
    """A TransactionEvent is known by its transaction and seqNo (R39); a message with a
    time of its own (``timestamp``, NotifyEvent's ``generatedAt``, MeterValues' times)
    by a digest of its payload; anything else by a digest of its payload and its
    message id."""
    if action == "TransactionEvent":
        tx = payload.get("transactionInfo")
        tx_id = tx.get("transactionId") if isinstance(tx, Mapping) else None
        return f"{action}:{tx_id}:{payload.get('seqNo')}"
    if has_own_time(payload, _OWN_TIME):
        return payload_digest(action, payload)
    return call_digest(action, payload, message_id)


def rewrite_up(call: Call, ids: Mapping[int, int], deauthorized: Set[Any]) -> Call:
    """The Ended event of a transaction the controller stopped because the CSMS refused
    its id goes up with stoppedReason DeAuthorized (station ids need no mapping)."""
    if call.action != "TransactionEvent":
        return call
    payload = frames.exact_payload(call)
    if not isinstance(payload, dict):
        return call
    tx = payload.get("transactionInfo")
    if payload.get("eventType") != "Ended" or not isinstance(tx, dict):
        return call
    if tx.get("transactionId") not in deauthorized:
        return call
    rewritten = dict(payload, transactionInfo=dict(tx, stoppedReason="DeAuthorized"))
    return Call(call.id, call.action, rewritten, frames.call(call.id, call.action, rewritten))


def stop_call(tx_id: Any) -> tuple[str, dict[str, Any]]:
    return "RequestStopTransaction", {"transactionId": tx_id}


def suspend_call(tx_id: Any, evse: int | None) -> tuple[str, dict[str, Any]]:
    """A TxProfile limiting the transaction to 0 W: the station suspends energy."""
    return "SetChargingProfile", {
        "evseId": evse or 0,
        "chargingProfile": {
            "id": zlib.crc32(str(tx_id).encode()) % 1_000_000_000 + 1,
            "stackLevel": 0,
            "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Relative",
            "transactionId": tx_id,
            "chargingSchedule": [
                {
                    "id": 1,
                    "chargingRateUnit": "W",
                    "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 0}],
                }
            ],
        },
    }


def energy_wh(payload: Mapping[str, Any]) -> float | None:
    """The last Energy.Active.Import.Register reading of a TransactionEvent or
    MeterValues, in Wh."""
    reading: float | None = None
    values = payload.get("meterValue")
    if not isinstance(values, list):
        return None
    for mv in values:
        samples = mv.get("sampledValue") if isinstance(mv, dict) else None
        for sv in samples if isinstance(samples, list) else ():
            if not isinstance(sv, dict) or sv.get("phase") is not None:
                continue
            if sv.get("measurand", "Energy.Active.Import.Register") != (
                "Energy.Active.Import.Register"
            ):
                continue
            value = sv.get("value")
            if not isinstance(value, int | float):
                continue
            unit = sv.get("unitOfMeasure")
            scale = 1000.0 if isinstance(unit, dict) and unit.get("unit") == "kWh" else 1.0
            multiplier = unit.get("multiplier", 0) if isinstance(unit, dict) else 0
            reading = float(value) * scale * (10**multiplier if isinstance(multiplier, int) else 1)
    return reading


_CHARGER_ACTIONS = frozenset(
    {
        "Authorize",
        "BootNotification",
        "ClearedChargingLimit",
        "DataTransfer",
        "FirmwareStatusNotification",
        "Get15118EVCertificate",
        "GetCertificateStatus",
        "Heartbeat",
        "LogStatusNotification",
        "MeterValues",
        "NotifyChargingLimit",
        "NotifyCustomerInformation",
        "NotifyDisplayMessages",
        "NotifyEVChargingNeeds",
        "NotifyEVChargingSchedule",
        "NotifyEvent",
        "NotifyMonitoringReport",
        "NotifyReport",
        "PublishFirmwareStatusNotification",
        "ReportChargingProfiles",
        "ReservationStatusUpdate",
        "SecurityEventNotification",
        "SignCertificate",
        "StatusNotification",
        "TransactionEvent",
    }
)

_WATCHED = frozenset(
    {
        "Authorize",
        "BootNotification",
        "TransactionEvent",
        "StatusNotification",
        "SendLocalList",
        "GetLocalListVersion",
        "SetVariables",
    }
)

_STORED = frozenset(
    {
        "TransactionEvent",
        "BootNotification",
        "StatusNotification",
        "SecurityEventNotification",
        "FirmwareStatusNotification",
        "LogStatusNotification",
        "MeterValues",
        "NotifyEvent",
    }
)

_ERROR_CODES = {
    ErrorKind.MALFORMED: "RpcFrameworkError",
    ErrorKind.BAD_ENVELOPE: "RpcFrameworkError",
    ErrorKind.BAD_ID: "RpcFrameworkError",
    ErrorKind.UNKNOWN_TYPE: "MessageTypeNotSupported",
    ErrorKind.NOT_IMPLEMENTED: "NotImplemented",
    ErrorKind.NOT_SUPPORTED: "NotSupported",
    ErrorKind.DUPLICATE_ID: "ProtocolError",
    ErrorKind.BUSY: "GenericError",
    ErrorKind.INTERNAL: "InternalError",
    ErrorKind.SECURITY: "SecurityError",
    ErrorKind.OCCURRENCE: "OccurrenceConstraintViolation",
    ErrorKind.TYPE: "TypeConstraintViolation",
    ErrorKind.PROPERTY: "PropertyConstraintViolation",
}

DIALECT = Dialect(
    subprotocol="ocpp2.0.1",
    actions=frozenset(a.value for a in Action),
    charger_actions=_CHARGER_ACTIONS,
    transaction_actions=frozenset({"TransactionEvent"}),
    watched_actions=_WATCHED,
    stored_actions=_STORED,
    error_codes=_ERROR_CODES,
    dedupe_key=dedupe_key,
    rewrite_up=rewrite_up,
    stop_call=stop_call,
    suspend_call=suspend_call,
)

DIALECT_21 = Dialect(
    subprotocol="ocpp2.1",
    actions=frozenset(a.value for a in Action21),
    charger_actions=_CHARGER_ACTIONS,
    transaction_actions=frozenset({"TransactionEvent"}),
    watched_actions=_WATCHED,
    stored_actions=_STORED,
    error_codes=_ERROR_CODES,
    dedupe_key=dedupe_key,
    rewrite_up=rewrite_up,
    stop_call=stop_call,
    suspend_call=suspend_call,
)
