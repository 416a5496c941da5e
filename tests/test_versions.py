"""Tests of proxy.versions: the per-version tables (RELIABILITY R9, R13, §5.6 golden table)."""

from __future__ import annotations

import pytest

from proxy import frames
from proxy.frames import ErrorKind
from proxy.versions import SUPPORTED_SUBPROTOCOLS, Dialect, dialect_for, ocpp16, ocpp201

K = ErrorKind

GOLDEN_16: dict[ErrorKind, str | None] = {
    K.MALFORMED: "FormationViolation",
    K.BAD_ENVELOPE: "ProtocolError",
    K.BAD_ID: "FormationViolation",
    K.UNKNOWN_TYPE: None,
    K.NOT_IMPLEMENTED: "NotImplemented",
    K.NOT_SUPPORTED: "NotSupported",
    K.DUPLICATE_ID: "ProtocolError",
    K.BUSY: "GenericError",
    K.INTERNAL: "InternalError",
    K.SECURITY: "SecurityError",
    K.OCCURRENCE: "ProtocolError",
    K.TYPE: "TypeConstraintViolation",
    K.PROPERTY: "PropertyConstraintViolation",
}

GOLDEN_201: dict[ErrorKind, str | None] = {
    K.MALFORMED: "RpcFrameworkError",
    K.BAD_ENVELOPE: "RpcFrameworkError",
    K.BAD_ID: "RpcFrameworkError",
    K.UNKNOWN_TYPE: "MessageTypeNotSupported",
    K.NOT_IMPLEMENTED: "NotImplemented",
    K.NOT_SUPPORTED: "NotSupported",
    K.DUPLICATE_ID: "ProtocolError",
    K.BUSY: "GenericError",
    K.INTERNAL: "InternalError",
    K.SECURITY: "SecurityError",
    K.OCCURRENCE: "OccurrenceConstraintViolation",
    K.TYPE: "TypeConstraintViolation",
    K.PROPERTY: "PropertyConstraintViolation",
}

#: R13: the codes each version defines (1.6 keeps the "Occurence" typo).
CODES_16 = {
    "NotImplemented",
    "NotSupported",
    "InternalError",
    "ProtocolError",
    "SecurityError",
    "FormationViolation",
    "PropertyConstraintViolation",
    "OccurenceConstraintViolation",
    "TypeConstraintViolation",
    "GenericError",
}
CODES_201 = {
    "FormatViolation",
    "GenericError",
    "InternalError",
    "MessageTypeNotSupported",
    "NotImplemented",
    "NotSupported",
    "OccurrenceConstraintViolation",
    "PropertyConstraintViolation",
    "ProtocolError",
    "RpcFrameworkError",
    "SecurityError",
    "TypeConstraintViolation",
}

D16 = dialect_for("ocpp1.6")
D201 = dialect_for("ocpp2.0.1")
D21 = dialect_for("ocpp2.1")


def test_16_error_codes_match_the_golden_table() -> None:
    """R13: the 1.6 table spells every kind exactly as the golden table says."""
    assert {kind: D16.error_code(kind) for kind in ErrorKind} == GOLDEN_16


@pytest.mark.parametrize("dialect", [D201, D21], ids=["2.0.1", "2.1"])
def test_201_and_21_error_codes_match_the_golden_table(dialect: Dialect) -> None:
    """R13: 2.0.1 and 2.1 spell every kind exactly as the golden table says."""
    assert {kind: dialect.error_code(kind) for kind in ErrorKind} == GOLDEN_201


def test_16_uses_only_16_spellings() -> None:
    """R13: every 1.6 code is a 1.6 code: FormationViolation, never FormatViolation."""
    codes = {code for code in GOLDEN_16.values() if code is not None}
    assert codes <= CODES_16
    assert "FormatViolation" not in codes and "RpcFrameworkError" not in codes
    assert "OccurrenceConstraintViolation" not in codes  # 1.6 spells it "Occurence"


def test_201_uses_only_201_spellings() -> None:
    """R13: every 2.0.1 code is a 2.0.1 code: no FormationViolation, no "Occurence" typo."""
    codes = set(GOLDEN_201.values())
    assert None not in codes
    assert codes <= CODES_201
    assert "FormationViolation" not in codes and "OccurenceConstraintViolation" not in codes


def test_16_ignores_unknown_message_types() -> None:
    """R9 1.6: an unknown message type maps to None (ignore, send nothing)."""
    assert D16.error_code(ErrorKind.UNKNOWN_TYPE) is None


def test_201_answers_unknown_message_types() -> None:
    """R9 2.0.1: an unknown message type is answered MessageTypeNotSupported."""
    assert D201.error_code(ErrorKind.UNKNOWN_TYPE) == "MessageTypeNotSupported"


@pytest.mark.parametrize("dialect", [D16, D201, D21], ids=["1.6", "2.0.1", "2.1"])
def test_every_error_kind_has_a_code(dialect: Dialect) -> None:
    """Every ErrorKind has a code in every dialect; only 1.6 leaves UNKNOWN_TYPE silent."""
    for kind in ErrorKind:
        code = dialect.error_code(kind)
        if dialect is D16 and kind is ErrorKind.UNKNOWN_TYPE:
            assert code is None
        else:
            assert isinstance(code, str) and code, kind


@pytest.mark.parametrize(
    ("subprotocol", "expected"),
    [("ocpp1.6", ocpp16.DIALECT), ("ocpp2.0.1", ocpp201.DIALECT), ("ocpp2.1", ocpp201.DIALECT_21)],
)
def test_dialect_for_known_subprotocols(subprotocol: str, expected: Dialect) -> None:
    """dialect_for() returns the table of each negotiated subprotocol."""
    dialect = dialect_for(subprotocol)
    assert dialect is expected
    assert dialect.subprotocol == subprotocol


@pytest.mark.parametrize("subprotocol", ["ocpp1.5", "ocpp2.0", "OCPP1.6", "ocpp1.6 ", "", "json"])
def test_dialect_for_anything_else_raises_key_error(subprotocol: str) -> None:
    """dialect_for() raises KeyError for a subprotocol the controller does not speak."""
    with pytest.raises(KeyError):
        dialect_for(subprotocol)


def test_every_supported_subprotocol_has_a_dialect() -> None:
    """Each subprotocol the controller offers has a dialect, in preference order 2.0.1 first."""
    assert SUPPORTED_SUBPROTOCOLS[0] == "ocpp2.0.1"
    for subprotocol in SUPPORTED_SUBPROTOCOLS:
        assert dialect_for(subprotocol).subprotocol == subprotocol


@pytest.mark.parametrize("dialect", [D16, D201, D21], ids=["1.6", "2.0.1", "2.1"])
def test_action_sets_nest(dialect: Dialect) -> None:
    """Transaction, stored and charger actions are actions of the version."""
    assert dialect.transaction_actions <= dialect.charger_actions <= dialect.actions
    assert dialect.stored_actions <= dialect.charger_actions
    assert dialect.transaction_actions <= dialect.stored_actions
    assert dialect.watched_actions <= dialect.actions


@pytest.mark.parametrize(
    "action",
    [
        "DataTransfer",
        "SignCertificate",
        "SecurityEventNotification",
        "LogStatusNotification",
        "SignedFirmwareStatusNotification",
        "ExtendedTriggerMessage",
        "InstallCertificate",
        "SignedUpdateFirmware",
    ],
)
def test_16_actions_include_the_security_whitepaper_and_data_transfer(action: str) -> None:
    """B7: the 1.6 known list includes the security-whitepaper actions and DataTransfer."""
    assert action in D16.actions


def test_transaction_actions_per_version() -> None:
    """1.6 transaction data travels in Start/Stop/MeterValues; 2.0.1 in TransactionEvent."""
    assert D16.transaction_actions == {"StartTransaction", "StopTransaction", "MeterValues"}
    assert D201.transaction_actions == D21.transaction_actions == {"TransactionEvent"}


def test_21_knows_every_201_action() -> None:
    """OCPP 2.1 extends 2.0.1: every 2.0.1 action is known on 2.1."""
    assert D201.actions <= D21.actions


# -- 1.6 transaction id rewrites ----------------------------------------------------


def _call(action: str, payload: object) -> frames.Call:
    parsed = frames.parse(frames.call("m1", action, payload))
    assert isinstance(parsed, frames.Call)
    return parsed


def test_16_rewrite_up_maps_a_provisional_id() -> None:
    """MeterValues and StopTransaction of a mapped provisional id go up with the CSMS id."""
    for action in ("MeterValues", "StopTransaction"):
        call = _call(action, {"transactionId": 2_000_000_001, "meterStop": 5})
        out = D16.rewrite_up(call, {2_000_000_001: 42}, set())
        assert out.payload == {"transactionId": 42, "meterStop": 5}
        assert frames.parse(out.raw).payload == out.payload
        assert out.id == call.id and out.action == action


def test_16_rewrite_up_marks_deauthorized_stops() -> None:
    """A stop the controller asked for because the id was refused goes up as DeAuthorized."""
    call = _call("StopTransaction", {"transactionId": 2_000_000_001, "reason": "Local"})
    out = D16.rewrite_up(call, {2_000_000_001: 42}, {2_000_000_001})
    assert out.payload == {"transactionId": 42, "reason": "DeAuthorized"}


@pytest.mark.parametrize(
    ("action", "payload"),
    [
        ("MeterValues", {"transactionId": 7}),  # not mapped
        ("MeterValues", {"transactionId": "2000000001"}),  # not an int
        ("StartTransaction", {"transactionId": 2_000_000_001}),
        ("MeterValues", None),
    ],
)
def test_16_rewrite_up_leaves_other_calls_alone(action: str, payload: object) -> None:
    """Calls with no mapped integer transaction id are returned as they are."""
    call = _call(action, payload)
    assert D16.rewrite_up(call, {2_000_000_001: 42}, set()) is call


def test_16_rewrite_down_maps_csms_ids() -> None:
    """RemoteStopTransaction and a TxProfile name the transaction by the charger's id."""
    ids = {42: 2_000_000_001}
    stop = D16.rewrite_down(_call("RemoteStopTransaction", {"transactionId": 42}), ids)
    assert stop.payload == {"transactionId": 2_000_000_001}
    profile = {"connectorId": 1, "csChargingProfiles": {"transactionId": 42, "stackLevel": 0}}
    out = D16.rewrite_down(_call("SetChargingProfile", profile), ids)
    assert out.payload["csChargingProfiles"] == {"transactionId": 2_000_000_001, "stackLevel": 0}
    assert frames.parse(out.raw).payload == out.payload


@pytest.mark.parametrize(
    ("action", "payload"),
    [
        ("RemoteStopTransaction", {"transactionId": 7}),
        ("RemoteStopTransaction", None),
        ("SetChargingProfile", {"csChargingProfiles": {"stackLevel": 0}}),
        ("SetChargingProfile", {"csChargingProfiles": "x"}),
        ("Reset", {"transactionId": 42}),
    ],
)
def test_16_rewrite_down_leaves_other_calls_alone(action: str, payload: object) -> None:
    """CSMS calls without a mapped transaction id reach the charger unchanged."""
    call = _call(action, payload)
    assert D16.rewrite_down(call, {42: 2_000_000_001}) is call


@pytest.mark.parametrize("dialect", [D201, D21], ids=["2.0.1", "2.1"])
def test_201_never_rewrites(dialect: Dialect) -> None:
    """2.0.1 transaction ids come from the station: no rewrite either way."""
    call = _call("TransactionEvent", {"transactionInfo": {"transactionId": "2000000001"}})
    assert dialect.rewrite_up(call, {2_000_000_001: 42}, set()) is call
    assert dialect.rewrite_down(call, {42: 2_000_000_001}) is call
