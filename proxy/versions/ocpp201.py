"""OCPP 2.0.1 (and 2.1, which shares its RPC framework and error codes)."""

from __future__ import annotations

from ocpp.v21.enums import Action as Action21
from ocpp.v201.enums import Action

from proxy.frames import ErrorKind
from proxy.versions import Dialect

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
)

DIALECT_21 = Dialect(
    subprotocol="ocpp2.1",
    actions=frozenset(a.value for a in Action21),
    charger_actions=_CHARGER_ACTIONS,
    transaction_actions=frozenset({"TransactionEvent"}),
    watched_actions=_WATCHED,
    stored_actions=_STORED,
    error_codes=_ERROR_CODES,
)
