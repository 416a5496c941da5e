"""OCPP 1.6J (edition 2 with errata, security whitepaper actions included)."""

from __future__ import annotations

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
