"""The offline responder: the answers the CSMS would have given, while it cannot.

Every charger call that reaches the responder is checked against the action's schema
(only where the controller needs the field: an extra field or an over-long idTag is
kept, never refused), then answered from an explicit table per OCPP version.
Transaction messages and notifications the CSMS must see are committed to the outbox
before the answer is sent (R38); if the store cannot commit, the charger gets
InternalError and will retry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ocpp.messages import get_validator

from config.settings import Settings
from policies.authorization import AuthDecision, AuthStatus, is_valid_id_tag, token_key
from proxy import frames
from proxy.frames import Call, ErrorKind
from proxy.site import Site
from proxy.store import NewTransaction, OutboxItem, Store, StoreError
from proxy.versions import Dialect
from proxy.versions.ocpp16 import dedupe_key

if TYPE_CHECKING:
    from proxy.session import Session

Handler = Callable[["OfflineResponder", "Session", Call, dict[str, Any]], Awaitable[str]]

_SCHEMA_VERSION = {"ocpp1.6": "1.6", "ocpp2.0.1": "2.0.1", "ocpp2.1": "2.1"}
_STATUSES_16 = frozenset({"Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx"})
_BOOT_STATUS = {"accept": "Accepted", "pending": "Pending", "reject": "Rejected"}


def now_iso() -> str:
    """The controller's time as OCPP writes it (UTC, milliseconds, ``Z``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def schema_problem(
    dialect: Dialect, action: str, payload: dict[str, Any]
) -> tuple[ErrorKind, str] | None:
    """The first schema violation that stops the controller from answering, if any."""
    try:
        validator = get_validator(frames.CALL, action, _SCHEMA_VERSION[dialect.subprotocol])
    except (OSError, KeyError, ValueError):
        return None
    for err in validator.iter_errors(payload):
        validator_name = err.validator
        if validator_name == "additionalProperties":
            continue  # extra fields are kept and replayed as received
        path = ".".join(str(p) for p in err.absolute_path)
        if validator_name == "maxLength" and path.endswith(("idTag", "idToken")):
            continue  # an over-long id is answered Invalid, never refused (B11)
        if validator_name == "required":
            return ErrorKind.OCCURRENCE, f"{path or action}: {err.message}"
        if validator_name == "type":
            return ErrorKind.TYPE, f"{path}: {err.message}"
        return ErrorKind.PROPERTY, f"{path}: {err.message}"
    return None


def id_tag_info_16(decision: AuthDecision) -> dict[str, Any]:
    status = decision.status.value if decision.status.value in _STATUSES_16 else "Invalid"
    info: dict[str, Any] = {"status": status}
    if decision.expiry is not None:
        info["expiryDate"] = decision.expiry.isoformat().replace("+00:00", "Z")
    if decision.parent_id_tag is not None:
        info["parentIdTag"] = decision.parent_id_tag
    return info


class OfflineResponder:
    """Answers charger calls while their uplink is down."""

    def __init__(self, settings: Settings, store: Store, site: Site) -> None:
        self.settings = settings
        self.store = store
        self.site = site
        self._tables: dict[str, dict[str, Handler]] = {"ocpp1.6": OCPP16}

    async def answer(self, session: Session, call: Call) -> str | None:
        dialect = session.router.dialect
        payload = call.payload if isinstance(call.payload, dict) else {}
        table = self._tables.get(dialect.subprotocol, {})
        handler = table.get(call.action)
        if handler is None:
            return self._error(
                dialect,
                call,
                ErrorKind.NOT_SUPPORTED,
                f"{call.action} is not available while the CSMS is unreachable",
            )
        if session.boot_status not in (None, "Accepted") and call.action != "BootNotification":
            return self._error(dialect, call, ErrorKind.SECURITY, "the charger is not accepted")
        problem = schema_problem(dialect, call.action, payload)
        if problem is not None:
            return self._error(dialect, call, *problem)
        try:
            return await handler(self, session, call, payload)
        except StoreError as exc:
            session.log.error("store_failed", action=call.action, error=str(exc))
            return self._error(dialect, call, ErrorKind.INTERNAL, "the message could not be stored")

    @staticmethod
    def _error(dialect: Dialect, call: Call, kind: ErrorKind, description: str) -> str:
        code = dialect.error_code(kind) or "GenericError"
        return frames.error(call.id, code, description)

    async def store_message(
        self, session: Session, call: Call, payload: dict[str, Any], tx_id: int | None = None
    ) -> None:
        await self.store.append(
            OutboxItem(
                session.identity,
                call.action,
                call.id,
                call.raw,
                tx_id,
                dedupe_key(call.action, payload),
            )
        )


# -- OCPP 1.6 -------------------------------------------------------------------------


async def _boot16(r: OfflineResponder, s: Session, call: Call, p: dict[str, Any]) -> str:
    known = await r.store.charger(s.identity)
    status = "Accepted" if known is not None else _BOOT_STATUS[r.settings.offline.unknown_charger]
    await r.store.record_boot(s.identity, s.subprotocol, call.raw, replay=True, accepted=None)
    s.boot_status = status
    return frames.result(
        call.id,
        {
            "status": status,
            "currentTime": now_iso(),
            "interval": r.settings.offline.heartbeat_interval,
        },
    )


async def _heartbeat16(r: OfflineResponder, s: Session, call: Call, p: dict[str, Any]) -> str:
    return frames.result(call.id, {"currentTime": now_iso()})


async def _authorize16(r: OfflineResponder, s: Session, call: Call, p: dict[str, Any]) -> str:
    tag = p["idTag"]
    decision = await r.site.decide(
        s.identity, token_key(tag, None), for_start=False, valid=is_valid_id_tag(tag)
    )
    s.log.info("offline_authorize", status=decision.status.value, source=decision.source.value)
    return frames.result(call.id, {"idTagInfo": id_tag_info_16(decision)})


async def _start16(r: OfflineResponder, s: Session, call: Call, p: dict[str, Any]) -> str:
    tag = p["idTag"]
    key = token_key(tag, None)
    dkey = dedupe_key(call.action, p)
    stored = await r.store.transaction_by_key(s.identity, dkey)
    if stored is not None:  # the charger's retry: the same answer as the first time
        tx_id, status = stored
        return frames.result(call.id, {"transactionId": tx_id, "idTagInfo": {"status": status}})
    decision = await r.site.decide(s.identity, key, for_start=True, valid=is_valid_id_tag(tag))
    info = id_tag_info_16(decision)
    tx_id, _ = await r.store.start_transaction(
        NewTransaction(
            s.identity,
            dkey,
            key,
            p["connectorId"],
            p["meterStart"],
            p["timestamp"],
            info["status"],
        ),
        OutboxItem(s.identity, call.action, call.id, call.raw, None, dkey),
    )
    if decision.status is AuthStatus.Accepted:
        r.site.started(s.identity, tx_id, key)
    s.log.info(
        "offline_start",
        transaction_id=tx_id,
        status=decision.status.value,
        source=decision.source.value,
    )
    return frames.result(call.id, {"transactionId": tx_id, "idTagInfo": info})


async def _stop16(r: OfflineResponder, s: Session, call: Call, p: dict[str, Any]) -> str:
    tx_id = p["transactionId"]
    await r.store.append(
        OutboxItem(s.identity, call.action, call.id, call.raw, tx_id, dedupe_key(call.action, p)),
        (
            "UPDATE transactions SET stopped = 1 WHERE identity = ? AND provisional = ?",
            (s.identity, tx_id),
        ),
    )
    r.site.stopped(s.identity, tx_id)
    answer: dict[str, Any] = {}
    tag = p.get("idTag")
    if isinstance(tag, str):
        decision = await r.site.decide(
            s.identity, token_key(tag, None), for_start=False, valid=is_valid_id_tag(tag)
        )
        answer["idTagInfo"] = id_tag_info_16(decision)
    return frames.result(call.id, answer)


async def _stored16(r: OfflineResponder, s: Session, call: Call, p: dict[str, Any]) -> str:
    tx_id = p.get("transactionId")
    await r.store_message(s, call, p, tx_id if isinstance(tx_id, int) else None)
    if call.action == "MeterValues" and r.site.on_meter is not None:
        await r.site.on_meter(s, p)
    return frames.result(call.id, {})


async def _status16(r: OfflineResponder, s: Session, call: Call, p: dict[str, Any]) -> str:
    await r.store.record_status(
        s.identity, p["connectorId"], p.get("status"), call.raw, replay=True
    )
    return frames.result(call.id, {})


async def _data_transfer16(r: OfflineResponder, s: Session, call: Call, p: dict[str, Any]) -> str:
    return frames.result(call.id, {"status": "UnknownVendorId"})


async def _sign_certificate16(
    r: OfflineResponder, s: Session, call: Call, p: dict[str, Any]
) -> str:
    return frames.result(call.id, {"status": "Rejected"})


OCPP16: dict[str, Handler] = {
    "BootNotification": _boot16,
    "Heartbeat": _heartbeat16,
    "Authorize": _authorize16,
    "StartTransaction": _start16,
    "StopTransaction": _stop16,
    "MeterValues": _stored16,
    "StatusNotification": _status16,
    "FirmwareStatusNotification": _stored16,
    "DiagnosticsStatusNotification": _stored16,
    "SecurityEventNotification": _stored16,
    "LogStatusNotification": _stored16,
    "SignedFirmwareStatusNotification": _stored16,
    "DataTransfer": _data_transfer16,
    "SignCertificate": _sign_certificate16,
}
