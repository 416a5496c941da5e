"""OCPP 1.6J (edition 2 with errata, security whitepaper actions included)."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from ocpp.v16.enums import Action

from proxy.frames import ErrorKind
from proxy.versions import Dialect

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
        }
    ),
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


def dedupe_key(action: str, payload: dict[str, Any]) -> str:
    """The key that makes a charger's retry of a stored message recognisable (R39).

    StartTransaction: connector, idTag, meterStart, timestamp. StopTransaction:
    transactionId, meterStop, timestamp. Anything else: a digest of the whole payload.
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
    else:
        parts = (payload,)
    digest = hashlib.blake2b(
        orjson.dumps(parts, option=orjson.OPT_SORT_KEYS), digest_size=12
    ).hexdigest()
    return f"{action}:{digest}"
