"""The offline responder: the answers the CSMS would have given, while it cannot.

Every charger call that reaches the responder is checked against the action's schema
(only where the controller needs the field: an extra field or an over-long idTag is
kept, never refused), then answered from an explicit table per OCPP version.
Transaction messages and notifications the CSMS must see are committed to the outbox
before the answer is sent (R38); if the store cannot commit, the charger gets
InternalError and will retry.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema_rs
import ocpp
import orjson
from ocpp.messages import get_validator

from config.settings import Settings
from policies.authorization import (
    AuthDecision,
    AuthSource,
    AuthStatus,
    is_valid_id_tag,
    token_key,
)
from proxy import frames
from proxy.frames import Call, ErrorKind
from proxy.router import State
from proxy.site import Site, parse_time
from proxy.store import NewTransaction, OutboxItem, Store, StoreError
from proxy.versions import Dialect
from proxy.versions.ocpp16 import dedupe_key
from proxy.versions.ocpp201 import energy_wh as energy_wh_201

if TYPE_CHECKING:
    from proxy.session import Session

Handler = Callable[["OfflineResponder", "Session", Call, dict[str, Any]], Awaitable[str]]

_SCHEMA_VERSION = {"ocpp1.6": "1.6", "ocpp2.0.1": "2.0.1", "ocpp2.1": "2.1"}
_STATUSES_16 = frozenset({"Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx"})
_BOOT_STATUS = {"accept": "Accepted", "pending": "Pending", "reject": "Rejected"}


def _iso(moment: datetime) -> str:
    """A time as OCPP writes it (UTC, milliseconds, ``Z``)."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class GuardedClock:
    """The time offline answers give chargers (``currentTime``): the edge clock, but
    never behind the last time the CSMS gave, carried forward on the monotonic clock.

    An edge box that booted without a time source (RTC lost, no NTP on the site LAN)
    would otherwise set every charger's clock to 1970 while the uplink is down, and
    their offline transactions with it (F12).
    """

    def __init__(
        self,
        tolerance: float = 2.0,
        *,
        wall: Callable[[], datetime] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tolerance = tolerance
        self._wall = wall
        self._monotonic = monotonic
        self._good: datetime | None = None
        self._at = 0.0
        self._seen: Any = None
        self._seen_at = 0.0
        #: How far the edge clock was behind the guard at the last answer (s, >= 0).
        self.behind = 0.0

    def observe(self, value: Any) -> None:
        """A ``currentTime`` the CSMS sent (a BootNotification answer); read only when
        an offline answer needs it."""
        if type(value) is str:
            self._seen, self._seen_at = value, self._monotonic()

    def now(self) -> datetime:
        edge = datetime.now(UTC) if self._wall is None else self._wall()
        if self._seen is not None:
            moment = parse_time(self._seen)
            if moment is not None:
                self._good, self._at = moment, self._seen_at
            self._seen = None
        good = self._good
        if good is None:
            return edge
        floor = good + timedelta(seconds=self._monotonic() - self._at)
        behind = (floor - edge).total_seconds()
        self.behind = max(behind, 0.0)
        return floor if behind > self.tolerance else edge

    def now_iso(self) -> str:
        return _iso(self.now())


@functools.lru_cache(maxsize=256)
def _fast_validator(version: str, action: str) -> Callable[[Any], bool] | None:
    """Whether a request is valid under its schema in the ``ocpp`` package, or None
    where there is no schema.

    A compiled (Rust) validator: about 1 us for a MeterValues, where the interpreted one
    takes about 140 us (the offline path answers thousands of these per second). Formats
    are not checked: the request is stored as received, and odd timestamps are kept,
    never refused (B25). A request it finds invalid is looked at again by the
    interpreted validator, which names the violation.
    """
    folder = "v" + version.replace(".", "")
    name = action if version == "1.6" else f"{action}Request"
    path = Path(ocpp.__file__).parent / folder / "schemas" / f"{name}.json"
    try:
        schema = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError:
        return None
    is_valid: Callable[[Any], bool] = jsonschema_rs.validator_for(
        schema, validate_formats=False
    ).is_valid
    return is_valid


#: The fields the controller reads from an OCPP 1.6 transaction message it answers
#: offline. A violation anywhere else (a reason or a unit outside its enumeration, a
#: number written as a string, an empty sampledValue) does not stop it from answering:
#: the message is stored as received and replayed verbatim, for the CSMS to judge; a
#: transaction message is never lost over form (B10). A required field missing from the
#: message itself is still refused.
_READ_16: dict[str, frozenset[str]] = {
    "StartTransaction": frozenset({"connectorId", "idTag", "meterStart", "timestamp"}),
    "StopTransaction": frozenset({"transactionId", "idTag", "meterStop", "timestamp"}),
    "MeterValues": frozenset({"connectorId", "transactionId"}),
}


def schema_problem(
    dialect: Dialect, action: str, payload: dict[str, Any]
) -> tuple[ErrorKind, str] | None:
    """The first schema violation that stops the controller from answering, if any."""
    version = _SCHEMA_VERSION[dialect.subprotocol]
    fast = _fast_validator(version, action)
    if fast is None:
        return None
    try:
        valid = fast(payload)
    except Exception:  # a value it cannot take: the reference decides
        valid = False
    if valid:
        return None
    # look closer: some violations are kept rather than refused
    validator = get_validator(frames.CALL, action, version)
    read = _READ_16.get(action) if version == "1.6" else None
    for err in validator.iter_errors(payload):
        validator_name = err.validator
        if validator_name == "additionalProperties":
            continue  # extra fields are kept and replayed as received
        if read is not None and err.absolute_path and err.absolute_path[0] not in read:
            continue  # a field the controller does not read: stored as received (B10)
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
        self.clock = GuardedClock()
        self._tables: dict[str, dict[str, Handler]] = {
            "ocpp1.6": OCPP16,
            "ocpp2.0.1": OCPP201,
            "ocpp2.1": OCPP201,
        }

    def clock_iso(self) -> str:
        """``currentTime`` for an offline answer (see :class:`GuardedClock`)."""
        text = self.clock.now_iso()
        if self.clock.behind > self.clock.tolerance:
            self.site.metrics.notes["edge_clock_behind_csms"] += 1
        return text

    async def answer(self, session: Session, call: Call) -> str | None:
        dialect = session.router.dialect
        # The answer is built from small fields (ids, counters); the frame is stored as
        # received, so the peeked payload is enough.
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
            return self.store_failed(session, call, exc)

    def answer_soon(self, session: Session, call: Call, then: Callable[[str], None]) -> bool:
        """The quick path of :meth:`answer` for a message that is only stored and
        acknowledged (MeterValues and the notifications): checked and handed to the
        next group commit; ``then`` is called with the answer once the message is
        durable (or with the error answer if it could not be stored). False where
        :meth:`answer` must answer (anything else, a schema violation, a charger not
        accepted, a store not open)."""
        handler = self._tables.get(session.router.dialect.subprotocol, {}).get(call.action)
        if handler is not _stored16 and handler is not _stored201:
            return False
        payload = call.payload
        if type(payload) is not dict or session.boot_status not in (None, "Accepted"):
            return False
        if schema_problem(session.router.dialect, call.action, payload) is not None:
            return False
        tx_id = payload.get("transactionId") if handler is _stored16 else None
        answer = frames.result(call.id, {})

        def stored(error: StoreError | None) -> None:
            then(answer if error is None else self.store_failed(session, call, error))

        try:
            self.store.append_soon(
                self.item(session, call, payload, tx_id if type(tx_id) is int else None), stored
            )
        except StoreError:
            return False
        if call.action == "MeterValues" and self.site.on_meter_now is not None:
            follow = self.site.on_meter_now(session, payload)
            if follow is not None:
                session._spawn(follow, "policy")
        return True

    def store_failed(self, session: Session, call: Call, exc: BaseException) -> str:
        """The answer to a call whose message could not be stored."""
        session.log.error("store_failed", action=call.action, error=str(exc))
        session.metrics.security_events["store_write_failed"] += 1
        session.log.warning("security_event", security_event="store_write_failed", error=str(exc))
        return self._error(
            session.router.dialect, call, ErrorKind.INTERNAL, "the message could not be stored"
        )

    async def outbox_full(self, session: Session) -> bool:
        """Whether the charger's outbox reached its cap (then no new transaction starts
        offline; an alarm is raised)."""
        depth = await self.store.outbox_depth(session.identity)
        if depth < self.settings.offline.max_outbox_per_charger:
            return False
        session.metrics.security_events["outbox_full"] += 1
        session.log.error("outbox_full", depth=depth)
        return True

    @staticmethod
    def _error(dialect: Dialect, call: Call, kind: ErrorKind, description: str) -> str:
        code = dialect.error_code(kind) or "GenericError"
        return frames.error(call.id, code, description)

    def item(
        self, session: Session, call: Call, payload: dict[str, Any], tx_id: int | None = None
    ) -> OutboxItem:
        """The outbox entry of a charger call answered now."""
        return OutboxItem(
            session.identity,
            call.action,
            call.id,
            call.raw,
            tx_id,
            session.router.dialect.dedupe_key(call.action, payload, call.id),
            session.state is State.OFFLINE,
        )

    async def store_message(
        self, session: Session, call: Call, payload: dict[str, Any], tx_id: int | None = None
    ) -> None:
        await self.store.append(self.item(session, call, payload, tx_id))


# -- OCPP 1.6 -------------------------------------------------------------------------


async def _offline_boot_status(r: OfflineResponder, s: Session) -> str:
    """What the CSMS answered the charger's last BootNotification it saw (Accepted,
    Pending, Rejected), as the CSMS would most likely answer again; for a charger the
    CSMS never answered, Accepted if it accepted the charger before, else what
    ``[offline] unknown_charger`` says (a boot answered offline does not count)."""
    known = await r.store.charger(s.identity)
    if known is not None:
        last = known["csms_boot_status"]
        if last in _BOOT_STATUS.values():
            return str(last)
        if known["accepted"]:
            return "Accepted"
    return _BOOT_STATUS[r.settings.offline.unknown_charger]


async def _boot16(r: OfflineResponder, s: Session, call: Call, p: dict[str, Any]) -> str:
    status = await _offline_boot_status(r, s)
    await r.store.record_boot(s.identity, s.subprotocol, call.raw, replay=True, accepted=None)
    s.boot_status = status
    return frames.result(
        call.id,
        {
            "status": status,
            "currentTime": r.clock_iso(),
            "interval": r.settings.offline.heartbeat_interval,
        },
    )


async def _heartbeat16(r: OfflineResponder, s: Session, call: Call, p: dict[str, Any]) -> str:
    return frames.result(call.id, {"currentTime": r.clock_iso()})


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
    dkey = dedupe_key(call.action, p, call.id)
    stored = await r.store.transaction_by_key(s.identity, dkey)
    if stored is not None:  # the charger's retry: the same answer as the first time
        tx_id, status, answered = stored
        info = orjson.loads(answered) if answered else {"status": status}
        return frames.result(call.id, {"transactionId": tx_id, "idTagInfo": info})
    await r.site.free_connector(s, p["connectorId"], "new_start")
    decision = await r.site.decide(s.identity, key, for_start=True, valid=is_valid_id_tag(tag))
    with r.site.starting(key, decision):
        if decision.status is AuthStatus.Accepted and await r.outbox_full(s):
            decision = AuthDecision(AuthStatus.Invalid, decision.source)
        info = id_tag_info_16(decision)
        tx_id, _, _ = await r.store.start_transaction(
            NewTransaction(
                s.identity,
                dkey,
                key,
                p["connectorId"],
                p["meterStart"],
                p["timestamp"],
                info["status"],
                orjson.dumps(info).decode(),
            ),
            r.item(s, call, p),
        )
        if decision.status is AuthStatus.Accepted:
            r.site.started(s.identity, tx_id, key, p["connectorId"])
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
        r.item(s, call, p, tx_id),
        r.store.stop_transaction(s.identity, tx_id),
        r.store.online_stopped(s.identity, tx_id),
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
    await r.site.connector_status(s, p["connectorId"], p.get("status"))
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


# -- OCPP 2.0.1 -----------------------------------------------------------------------

_TOKEN_MAX = 36


def id_token_info(decision: AuthDecision) -> dict[str, Any]:
    info: dict[str, Any] = {"status": decision.status.value}
    if decision.expiry is not None:
        info["cacheExpiryDateTime"] = decision.expiry.isoformat().replace("+00:00", "Z")
    if decision.parent_id_tag is not None:
        info["groupIdToken"] = {"idToken": decision.parent_id_tag, "type": "Central"}
    return info


async def _decide_token(
    r: OfflineResponder, s: Session, token: dict[str, Any], *, for_start: bool
) -> AuthDecision:
    value = str(token.get("idToken", ""))
    kind = str(token.get("type", ""))
    if kind == "NoAuthorization":
        # A start button, no identification at all: nothing to check, as the CSMS
        # would not either (2.0.1 C01: IdTokenEnumType NoAuthorization).
        return AuthDecision(AuthStatus.Accepted, AuthSource.unknown_policy)
    return await r.site.decide(
        s.identity,
        token_key(value, kind),
        for_start=for_start,
        valid=kind == "NoAuthorization" or is_valid_id_tag(value, _TOKEN_MAX),
        site_key=token_key(value, None),
    )


async def _boot201(r: OfflineResponder, s: Session, call: Call, p: dict[str, Any]) -> str:
    status = await _offline_boot_status(r, s)
    await r.store.record_boot(s.identity, s.subprotocol, call.raw, replay=True, accepted=None)
    s.boot_status = status
    return frames.result(
        call.id,
        {
            "currentTime": r.clock_iso(),
            "interval": r.settings.offline.heartbeat_interval,
            "status": status,
        },
    )


async def _status201(r: OfflineResponder, s: Session, call: Call, p: dict[str, Any]) -> str:
    # One row per EVSE and connector: the latest status is replayed, not the history.
    connector = int(p["evseId"]) * 1000 + int(p["connectorId"])
    await r.store.record_status(
        s.identity, connector, p.get("connectorStatus"), call.raw, replay=True
    )
    return frames.result(call.id, {})


async def _authorize201(r: OfflineResponder, s: Session, call: Call, p: dict[str, Any]) -> str:
    decision = await _decide_token(r, s, p["idToken"], for_start=False)
    s.log.info("offline_authorize", status=decision.status.value, source=decision.source.value)
    return frames.result(call.id, {"idTokenInfo": id_token_info(decision)})


async def _transaction_event201(
    r: OfflineResponder, s: Session, call: Call, p: dict[str, Any]
) -> str:
    tx = p["transactionInfo"]
    tx_id = str(tx["transactionId"])
    token = p.get("idToken")
    answer: dict[str, Any] = {}
    status: str | None = None
    key: str | None = None
    decision: AuthDecision | None = None
    if isinstance(token, dict):
        previous = await r.store.station_transaction(s.identity, tx_id)
        if previous is not None and previous["status"] is not None and previous["id_key"]:
            status = previous["status"]  # the same transaction: the same verdict
            answer["idTokenInfo"] = {"status": status}
            key = previous["id_key"]
        else:
            key = token_key(str(token.get("idToken", "")), str(token.get("type", "")))
            decision = await _decide_token(r, s, token, for_start=True)
    if decision is None or key is None:
        return await _record_event201(
            r, s, call, p, tx_id=tx_id, answer=answer, status=status, key=key
        )
    with r.site.starting(key, decision):
        if decision.status is AuthStatus.Accepted and await r.outbox_full(s):
            decision = AuthDecision(AuthStatus.Invalid, decision.source)
        answer["idTokenInfo"] = id_token_info(decision)
        return await _record_event201(
            r, s, call, p, tx_id=tx_id, answer=answer, status=decision.status.value, key=key
        )


async def _record_event201(
    r: OfflineResponder,
    s: Session,
    call: Call,
    p: dict[str, Any],
    *,
    tx_id: str,
    answer: dict[str, Any],
    status: str | None,
    key: str | None,
) -> str:
    """A TransactionEvent decided: stored, the site told, answered."""
    raw_evse = p.get("evse")
    evse: dict[str, Any] = raw_evse if isinstance(raw_evse, dict) else {}
    ended = p["eventType"] == "Ended"
    await r.store.append(
        r.item(s, call, p),
        r.store.station_event(
            s.identity,
            tx_id,
            id_key=key,
            evse=evse.get("id"),
            connector=evse.get("connectorId"),
            meter_start=energy_wh_201(p),
            status=status,
            ended=ended,
        ),
        *((r.store.online_stopped(s.identity, tx_id),) if ended else ()),
    )
    if ended:
        r.site.stopped(s.identity, tx_id)
    elif key is not None and status == "Accepted":
        r.site.started(s.identity, tx_id, key)
    if r.site.on_meter is not None:
        await r.site.on_meter(s, p)
    return frames.result(call.id, answer)


async def _stored201(r: OfflineResponder, s: Session, call: Call, p: dict[str, Any]) -> str:
    await r.store_message(s, call, p)
    return frames.result(call.id, {})


async def _answered201(r: OfflineResponder, s: Session, call: Call, p: dict[str, Any]) -> str:
    """Notifications the CSMS only acknowledges and needs no copy of later."""
    return frames.result(call.id, {})


async def _data_transfer201(r: OfflineResponder, s: Session, call: Call, p: dict[str, Any]) -> str:
    return frames.result(call.id, {"status": "UnknownVendorId"})


async def _rejected201(r: OfflineResponder, s: Session, call: Call, p: dict[str, Any]) -> str:
    return frames.result(call.id, {"status": "Rejected"})


OCPP201: dict[str, Handler] = {
    "BootNotification": _boot201,
    "Heartbeat": _heartbeat16,
    "StatusNotification": _status201,
    "Authorize": _authorize201,
    "TransactionEvent": _transaction_event201,
    "MeterValues": _stored201,
    "NotifyEvent": _stored201,
    "NotifyReport": _answered201,
    "SecurityEventNotification": _stored201,
    "FirmwareStatusNotification": _stored201,
    "LogStatusNotification": _stored201,
    "DataTransfer": _data_transfer201,
    "SignCertificate": _rejected201,
}
