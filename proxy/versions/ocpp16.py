"""OCPP 1.6J (edition 2 with errata, security whitepaper actions included)."""

from __future__ import annotations

from collections.abc import Mapping, Set
from typing import Any

from ocpp.v16.enums import Action

from proxy import frames
from proxy.frames import Call, ErrorKind
from proxy.versions import Dialect, call_digest, has_own_time, payload_digest


def rewrite_up(call: Call, ids: Mapping[int, int], deauthorized: Set[Any]) -> Call:
    """MeterValues and StopTransaction of a transaction started offline go up with the
    CSMS's id (or -1 when its start was dead-lettered); a stop the controller asked for
    because the id was refused goes up with reason DeAuthorized."""
    if call.action not in ("MeterValues", "StopTransaction"):
        return call
    payload = frames.exact_payload(call)
    if not isinstance(payload, dict):
        return call
    tx_id = payload.get("transactionId")
    if type(tx_id) is not int or tx_id not in ids:
        return call
    rewritten = dict(payload, transactionId=ids[tx_id])
    if call.action == "StopTransaction" and tx_id in deauthorized:
        rewritten["reason"] = "DeAuthorized"
    return Call(call.id, call.action, rewritten, frames.call(call.id, call.action, rewritten))


def rewrite_down(call: Call, ids: Mapping[int, int]) -> Call:
    """A CSMS call naming a transaction by the CSMS's id reaches the charger with the id
    the charger knows (RemoteStopTransaction, SetChargingProfile with a TxProfile,
    GetCompositeSchedule has none)."""
    if call.action not in ("RemoteStopTransaction", "SetChargingProfile"):
        return call
    payload = frames.exact_payload(call)
    if not isinstance(payload, dict):
        return call
    if call.action == "RemoteStopTransaction":
        tx_id = payload.get("transactionId")
        if type(tx_id) is int and tx_id in ids:
            rewritten = dict(payload, transactionId=ids[tx_id])
            return Call(
                call.id, call.action, rewritten, frames.call(call.id, call.action, rewritten)
            )
    elif call.action == "SetChargingProfile":
        profile = payload.get("csChargingProfiles")
        if isinstance(profile, dict):
            tx_id = profile.get("transactionId")
            if type(tx_id) is int and tx_id in ids:
                rewritten = dict(
                    payload, csChargingProfiles=dict(profile, transactionId=ids[tx_id])
                )
                return Call(
                    call.id, call.action, rewritten, frames.call(call.id, call.action, rewritten)
                )
    return call


def dedupe_key(action: str, payload: Mapping[str, Any], message_id: str) -> str:
    """The key that makes a charger's retry of a stored message recognisable (R39).

    StartTransaction: connector, idTag, meterStart, timestamp. StopTransaction:
    transactionId, meterStop, timestamp. A message with a time of its own (MeterValues,
    a StatusNotification or SecurityEventNotification with its timestamp): a digest of
    the whole payload, so that a retry under a new message id is recognised too.
    Anything else: a digest of the payload and the message id.
    """
    if action == "StartTransaction":
        parts: tuple[Any, ...] = (
            payload.get("connectorId"),
            str(payload.get("idTag", "")).upper(),
            payload.get("meterStart"),
            payload.get("timestamp"),
        )
    elif action == "StopTransaction":
        parts = (payload.get("transactionId"), payload.get("meterStop"), payload.get("timestamp"))
    elif has_own_time(payload):
        parts = (payload,)
    else:
        return call_digest(action, payload, message_id)
    return payload_digest(action, parts)


def stop_call(tx_id: Any) -> tuple[str, dict[str, Any]]:
    return "RemoteStopTransaction", {"transactionId": tx_id}


def suspend_call(tx_id: Any, connector: int | None) -> tuple[str, dict[str, Any]]:
    """A TxProfile limiting the transaction to 0 W: the charger goes SuspendedEVSE."""
    return "SetChargingProfile", {
        "connectorId": connector or 0,
        "csChargingProfiles": {
            "chargingProfileId": int(tx_id) % 1_000_000_000 + 1,
            "transactionId": tx_id,
            "stackLevel": 0,
            "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Relative",
            "chargingSchedule": {
                "chargingRateUnit": "W",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 0}],
            },
        },
    }


def energy_wh(payload: dict[str, Any]) -> float | None:
    """The last Energy.Active.Import.Register reading of a MeterValues, in Wh."""
    reading: float | None = None
    values = payload.get("meterValue")
    if not isinstance(values, list):
        return None
    for mv in values:
        samples = mv.get("sampledValue") if isinstance(mv, dict) else None
        if not isinstance(samples, list):
            continue
        for sv in samples:
            if not isinstance(sv, dict):
                continue
            if (
                sv.get("measurand", "Energy.Active.Import.Register")
                != "Energy.Active.Import.Register"
            ):
                continue
            if sv.get("phase") is not None:
                continue
            try:
                value = float(sv.get("value", ""))
            except (TypeError, ValueError):
                continue
            reading = value * 1000.0 if sv.get("unit") == "kWh" else value
    return reading


DIALECT = Dialect(
    subprotocol="ocpp1.6",
    actions=frozenset(a.value for a in Action),
    charger_actions=frozenset(
        {
            "Authorize",
            "BootNotification",
            "DataTransfer",
            "DiagnosticsStatusNotification",
            "FirmwareStatusNotification",
            "Heartbeat",
            "LogStatusNotification",
            "MeterValues",
            "SecurityEventNotification",
            "SignCertificate",
            "SignedFirmwareStatusNotification",
            "StartTransaction",
            "StatusNotification",
            "StopTransaction",
        }
    ),
    transaction_actions=frozenset({"StartTransaction", "StopTransaction", "MeterValues"}),
    watched_actions=frozenset(
        {
            "Authorize",
            "BootNotification",
            "StartTransaction",
            "StopTransaction",
            "StatusNotification",
            "SendLocalList",
            "GetLocalListVersion",
            "ChangeConfiguration",
        }
    ),
    stored_actions=frozenset(
        {
            "StartTransaction",
            "StopTransaction",
            "MeterValues",
            "BootNotification",
            "StatusNotification",
            "FirmwareStatusNotification",
            "DiagnosticsStatusNotification",
            "SecurityEventNotification",
            "LogStatusNotification",
            "SignedFirmwareStatusNotification",
        }
    ),
    rewrite_up=rewrite_up,
    rewrite_down=rewrite_down,
    dedupe_key=dedupe_key,
    stop_call=stop_call,
    suspend_call=suspend_call,
    error_codes={
        ErrorKind.MALFORMED: "FormationViolation",
        ErrorKind.BAD_ENVELOPE: "ProtocolError",
        ErrorKind.BAD_ID: "FormationViolation",
        ErrorKind.UNKNOWN_TYPE: None,  # J16 §4.1.3: ignore the payload, send nothing
        ErrorKind.NOT_IMPLEMENTED: "NotImplemented",
        ErrorKind.NOT_SUPPORTED: "NotSupported",
        ErrorKind.DUPLICATE_ID: "ProtocolError",
        ErrorKind.BUSY: "GenericError",
        ErrorKind.INTERNAL: "InternalError",
        ErrorKind.SECURITY: "SecurityError",
        ErrorKind.OCCURRENCE: "ProtocolError",
        ErrorKind.TYPE: "TypeConstraintViolation",
        ErrorKind.PROPERTY: "PropertyConstraintViolation",
    },
)
