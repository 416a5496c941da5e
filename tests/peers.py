"""Real OCPP peers for end-to-end tests: a CSMS, chargers, and a raw WebSocket charger.

Every peer speaks over real sockets on loopback and records each WebSocket frame it
sends or receives, in order, exactly as it was on the wire::

    RecordingConnection   wraps a websockets connection; ocpp's ChargePoint runs on it
    CsmsPeer              websockets server; one ocpp ChargePoint (1.6 or 2.0.1) per charger
    ChargerPeer16/201     ocpp ChargePoint client; full sessions, answers CSMS calls
    RawCharger            plain websockets client for arbitrary (even broken) frames

The OCPP side is the ``ocpp`` package, an implementation independent of the controller.
Every await is bounded by a timeout; every peer is an async context manager that leaves
no task behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from types import TracebackType
from typing import Any, ClassVar, Literal, NamedTuple, Self
from urllib.parse import unquote, urlsplit

from ocpp.charge_point import ChargePoint
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers, HeadersLike
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

__all__ = [
    "CALL",
    "CALLERROR",
    "CALLRESULT",
    "OCPP16",
    "OCPP201",
    "TRANSACTION_ACTIONS_16",
    "ChargerPeer",
    "ChargerPeer16",
    "ChargerPeer201",
    "CloseInfo",
    "CsmsConnection",
    "CsmsPeer",
    "CsmsRule",
    "DeliveryFigures",
    "Direction",
    "Frame",
    "HandledCall",
    "LedgerEntry",
    "LoggedFrame",
    "RawCharger",
    "RecordingConnection",
    "StepClock",
    "answers",
    "calls",
    "controller_url",
    "counter_ids",
    "delivery_figures",
    "inbound_ledger",
    "ledger",
    "message_key",
    "outline",
    "parse",
    "received",
    "sent",
]

OCPP16 = "ocpp1.6"
OCPP201 = "ocpp2.0.1"
CALL, CALLRESULT, CALLERROR = 2, 3, 4

#: Seconds any single wait of a peer may take unless the caller says otherwise.
DEFAULT_TIMEOUT = 5.0

Direction = Literal["sent", "received"]
Data = str | bytes
Clock = Callable[[], datetime]
IdFactory = Callable[[], str]


# --------------------------------------------------------------------------- frames


class Frame(NamedTuple):
    """One WebSocket data frame as seen by its recorder."""

    direction: Direction
    text: Data


class LoggedFrame(NamedTuple):
    """A frame in the CSMS's global log."""

    identity: str
    connection: int  # 1 for the identity's first connection, 2 for its second, ...
    direction: Direction
    text: Data
    at: float  # time.monotonic() when recorded


class CloseInfo(NamedTuple):
    """The close frame received from the other end (1006 when none arrived)."""

    code: int | None
    reason: str | None


def parse(text: Data) -> list[Any]:
    """The OCPP-J message array of a frame; raises ValueError if it is not one."""
    msg = json.loads(text)
    if not isinstance(msg, list) or len(msg) < 3 or msg[0] not in (CALL, CALLRESULT, CALLERROR):
        raise ValueError(f"not an OCPP-J message: {text!r}")
    return msg


def _try_parse(text: Data) -> list[Any] | None:
    try:
        return parse(text)
    except ValueError:
        return None


def sent(frames: Iterable[Frame]) -> list[Data]:
    """The texts of the frames that were sent, in order."""
    return [f.text for f in frames if f.direction == "sent"]


def received(frames: Iterable[Frame]) -> list[Data]:
    """The texts of the frames that were received, in order."""
    return [f.text for f in frames if f.direction == "received"]


def calls(frames: Iterable[Frame], direction: Direction) -> list[Data]:
    """The texts of the CALL frames travelling in ``direction``, in order."""
    return [
        f.text
        for f in frames
        if f.direction == direction and (msg := _try_parse(f.text)) is not None and msg[0] == CALL
    ]


def answers(frames: Iterable[Frame], direction: Direction) -> dict[str, Data]:
    """Message id -> text of the CALLRESULT or CALLERROR travelling in ``direction``."""
    found: dict[str, Data] = {}
    for f in frames:
        msg = _try_parse(f.text) if f.direction == direction else None
        if msg is not None and msg[0] != CALL:
            found.setdefault(msg[1], f.text)
    return found


def outline(frames: Iterable[Frame]) -> list[tuple[Any, ...]]:
    """A message-id-free view of a conversation: what was asked and what was answered.

    CALL -> (direction, "CALL", action, payload); CALLRESULT -> (direction, "CALLRESULT",
    action of the call it answers, payload); CALLERROR -> (direction, "CALLERROR", action,
    error code). Frames that are not OCPP-J come out as (direction, "RAW", text).
    """
    actions: dict[str, str] = {}
    out: list[tuple[Any, ...]] = []
    for direction, text in frames:
        msg = _try_parse(text)
        if msg is None:
            out.append((direction, "RAW", text))
        elif msg[0] == CALL:
            actions[msg[1]] = msg[2]
            out.append((direction, "CALL", msg[2], msg[3] if len(msg) > 3 else None))
        elif msg[0] == CALLRESULT:
            out.append((direction, "CALLRESULT", actions.get(msg[1]), msg[2]))
        else:
            out.append((direction, "CALLERROR", actions.get(msg[1]), msg[2]))
    return out


@dataclass(frozen=True)
class LedgerEntry:
    """A call a peer sent and how it was answered (``outcome`` None: not answered)."""

    unique_id: str
    action: str
    request: Any
    request_text: Data
    outcome: Literal["CALLRESULT", "CALLERROR"] | None = None
    response: Any = None  # the result payload, or [code, description, details]
    response_text: Data | None = None


def ledger(frames: Iterable[Frame], calls: Direction = "sent") -> list[LedgerEntry]:
    """The calls sent in ``frames``, in sending order, each with its first answer.

    With ``calls="received"``: the calls received, each with the answer sent back (what
    a CSMS was asked and what it said; see :func:`inbound_ledger`).
    """
    answers_direction: Direction = "received" if calls == "sent" else "sent"
    order: list[LedgerEntry] = []
    open_calls: dict[str, int] = {}  # message id -> position in order
    for direction, text in frames:
        msg = _try_parse(text)
        if msg is None:
            continue
        if direction == calls and msg[0] == CALL:
            open_calls[msg[1]] = len(order)
            order.append(LedgerEntry(msg[1], msg[2], msg[3] if len(msg) > 3 else None, text))
        elif direction == answers_direction and msg[0] != CALL and msg[1] in open_calls:
            position = open_calls.pop(msg[1])
            if msg[0] == CALLRESULT:
                answer = {"outcome": "CALLRESULT", "response": msg[2]}
            else:
                answer = {"outcome": "CALLERROR", "response": msg[2:]}
            order[position] = replace(order[position], response_text=text, **answer)
    return order


def inbound_ledger(frames: Iterable[Frame]) -> list[LedgerEntry]:
    """The calls received in ``frames``, in order, each with the answer sent back."""
    return ledger(frames, calls="received")


#: OCPP 1.6 transaction messages: delivered in order, at least once (R39, R40).
TRANSACTION_ACTIONS_16 = frozenset({"StartTransaction", "MeterValues", "StopTransaction"})


def message_key(action: str, payload: Any) -> tuple[Any, ...]:
    """What makes a charger message the same logical message wherever it is seen.

    The message id and the transactionId are left out (the controller replays with fresh
    ids and maps provisional transaction ids), and so is a StopTransaction's reason (the
    invalid-id policy may report it as DeAuthorized). Payload values such as meter
    readings and timestamps tell the messages apart.
    """
    p = payload if isinstance(payload, dict) else {}
    if action == "StartTransaction":
        return (
            action,
            p.get("connectorId"),
            p.get("idTag"),
            p.get("meterStart"),
            p.get("timestamp"),
        )
    if action == "StopTransaction":
        return (action, p.get("meterStop"), p.get("timestamp"))
    rest = {k: v for k, v in p.items() if k != "transactionId"}
    return (action, json.dumps(rest, sort_keys=True, separators=(",", ":")))


@dataclass
class DeliveryFigures:
    """The figures of RELIABILITY.md 5.3 for one charger (or several, summed)."""

    #: Transaction messages the charger got a CALLRESULT for.
    acked: int = 0
    #: Those the CSMS answered with a CALLRESULT at least once.
    delivered: int = 0
    #: Acked, never delivered and not a dead letter.
    lost: list[tuple[Any, ...]] = field(default_factory=list)
    #: Acked, never delivered, kept as a dead letter.
    dead: int = 0
    #: Receipts at the CSMS of a message after its first CALLRESULT.
    duplicates: int = 0
    #: Inversions between the charger's order and the order of first delivery.
    order_violations: int = 0
    #: Messages the CSMS took that the charger never got an answer for.
    unexpected: list[tuple[Any, ...]] = field(default_factory=list)

    def __add__(self, other: DeliveryFigures) -> DeliveryFigures:
        return DeliveryFigures(
            self.acked + other.acked,
            self.delivered + other.delivered,
            self.lost + other.lost,
            self.dead + other.dead,
            self.duplicates + other.duplicates,
            self.order_violations + other.order_violations,
            self.unexpected + other.unexpected,
        )

    def __str__(self) -> str:
        return (
            f"acked={self.acked} delivered={self.delivered} lost={len(self.lost)} "
            f"dead={self.dead} duplicates={self.duplicates} "
            f"order_violations={self.order_violations} unexpected={len(self.unexpected)}"
        )


def delivery_figures(
    charger_entries: Iterable[LedgerEntry],
    csms_entries: Iterable[LedgerEntry],
    *,
    dead: Iterable[tuple[Any, ...]] = (),
    actions: frozenset[str] = TRANSACTION_ACTIONS_16,
) -> DeliveryFigures:
    """Compare what one charger was answered (its ledger) with what the CSMS took (its
    :func:`inbound_ledger` for that identity). ``dead``: message keys of dead letters."""
    dead_keys = set(dead)
    expected = [
        message_key(e.action, e.request)
        for e in charger_entries
        if e.action in actions and e.outcome == "CALLRESULT"
    ]
    first: dict[tuple[Any, ...], int] = {}
    duplicates = 0
    unexpected: list[tuple[Any, ...]] = []
    wanted = set(expected)
    for position, entry in enumerate(csms_entries):
        if entry.action not in actions:
            continue
        key = message_key(entry.action, entry.request)
        if key in first:
            duplicates += 1
        elif entry.outcome == "CALLRESULT":
            first[key] = position
            if key not in wanted:
                unexpected.append(key)
    lost = [k for k in expected if k not in first and k not in dead_keys]
    positions = [first[k] for k in expected if k in first]
    inversions = sum(1 for i, a in enumerate(positions) for b in positions[i + 1 :] if b < a)
    return DeliveryFigures(
        acked=len(expected),
        delivered=sum(1 for k in expected if k in first),
        lost=lost,
        dead=sum(1 for k in expected if k not in first and k in dead_keys),
        duplicates=duplicates,
        order_violations=inversions,
        unexpected=unexpected,
    )


# --------------------------------------------------------------------------- helpers


def controller_url(listen_port: int) -> str:
    """The base URL of a controller's charger server: chargers add ``/<identity>``."""
    return f"ws://127.0.0.1:{listen_port}/ocpp"


def counter_ids(prefix: str = "") -> IdFactory:
    """Deterministic message ids: ``prefix1``, ``prefix2``, ..."""
    numbers = itertools.count(1)
    return lambda: f"{prefix}{next(numbers)}"


def _uuid_ids() -> str:
    return str(uuid.uuid4())


class StepClock:
    """A deterministic clock: each reading is ``step`` later than the one before."""

    def __init__(
        self,
        start: datetime = datetime(2025, 1, 1, 12, 0, tzinfo=UTC),
        step: timedelta = timedelta(seconds=1),
    ) -> None:
        self._next = start
        self._step = step

    def __call__(self) -> datetime:
        now = self._next
        self._next += self._step
        return now


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Changes:
    """Lets coroutines wait until a condition over recorded state holds."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def touch(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await self._event.wait()
        except TimeoutError:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}") from None


# --------------------------------------------------------------------------- recording


class RecordingConnection:
    """A websockets connection that records every data frame, in order.

    ``send`` and ``recv`` are what ocpp's ChargePoint needs. A frame is recorded as
    "sent" just before it is handed to the socket, so that it always precedes its answer.
    Binary frames are recorded and skipped by ``recv``, which returns text only.

    By default a frame is recorded as "received" when ``recv`` returns it. Run ``pump()``
    as a task to record frames the moment they arrive instead, while the reader is
    still busy with an earlier one (this is how a pipelined second CALL shows up).
    """

    def __init__(
        self,
        ws: ClientConnection | ServerConnection,
        on_frame: Callable[[Frame], None] | None = None,
    ) -> None:
        self.ws = ws
        self.frames: list[Frame] = []
        self._on_frame = on_frame
        self._inbox: asyncio.Queue[str | ConnectionClosed] | None = None

    def _record(self, direction: Direction, data: Data) -> None:
        frame = Frame(direction, data)
        self.frames.append(frame)
        if self._on_frame is not None:
            self._on_frame(frame)

    async def send(self, data: Data) -> None:
        self._record("sent", data)
        await self.ws.send(data)

    async def pump(self) -> None:
        """Read and record frames as they arrive until the connection closes."""
        inbox = self._inbox = asyncio.Queue()
        try:
            while True:
                data = await self.ws.recv()
                self._record("received", data)
                if isinstance(data, str):
                    inbox.put_nowait(data)
        except ConnectionClosed as exc:
            inbox.put_nowait(exc)

    async def recv(self) -> str:
        if self._inbox is not None:
            item = await self._inbox.get()
            if isinstance(item, ConnectionClosed):
                self._inbox.put_nowait(item)  # every later recv fails the same way
                raise item
            return item
        while True:
            data = await self.ws.recv()
            self._record("received", data)
            if isinstance(data, str):
                return data


async def _run_station(station: ChargePoint) -> None:
    """Run an ocpp ChargePoint's receive loop until its connection closes."""
    with contextlib.suppress(ConnectionClosed):
        await station.start()


# --------------------------------------------------------------------------- CSMS


class _CallTracker:
    """Checks that each direction of one connection has at most one CALL open."""

    def __init__(self, where: str, violations: list[str]) -> None:
        self._where = where
        self._violations = violations
        self._open: dict[Direction, str | None] = {"sent": None, "received": None}

    def __call__(self, frame: Frame) -> None:
        if isinstance(frame.text, bytes):
            self._violations.append(
                f"{self._where}: binary frame {frame.direction}: {frame.text!r}"
            )
            return
        msg = _try_parse(frame.text)
        if msg is None:
            self._violations.append(
                f"{self._where}: not an OCPP-J frame {frame.direction}: {frame.text!r}"
            )
            return
        if msg[0] == CALL:
            already = self._open[frame.direction]
            if already is not None:
                self._violations.append(
                    f"{self._where}: CALL {msg[1]!r} {frame.direction} while "
                    f"{already!r} is unanswered"
                )
            self._open[frame.direction] = msg[1]
        else:
            # An answer travels the other way from the call it answers.
            call_direction: Direction = "received" if frame.direction == "sent" else "sent"
            if self._open[call_direction] == msg[1]:
                self._open[call_direction] = None


@dataclass
class CsmsConnection:
    """One accepted charger connection at the CSMS."""

    identity: str
    number: int
    subprotocol: str | None
    request_headers: Headers
    frames: list[Frame] = field(default_factory=list)
    closed: CloseInfo | None = None
    ws: ServerConnection | None = field(default=None, repr=False)
    station: ChargePoint | None = field(default=None, repr=False)
    #: time.monotonic() when the connection was accepted.
    opened: float = field(default_factory=time.monotonic)


@dataclass
class CsmsRule:
    """An answer the CSMS gives to matching calls instead of its normal one.

    A call matches when its action is ``action``, its identity is ``identity`` (any if
    None) and ``match(payload)`` holds (always if None). The CSMS waits ``delay`` s, then
    answers CALLERROR ``error`` (with ``description``), or nothing at all if ``silent``,
    or its normal answer if neither. It applies ``times`` times (always if None);
    ``hits`` counts the calls it applied to.
    """

    action: str
    error: str | None = None
    description: str = ""
    delay: float = 0.0
    silent: bool = False
    times: int | None = None
    identity: str | None = None
    match: Callable[[Any], bool] | None = None
    hits: int = 0

    def applies(self, identity: str, action: str, payload: Any) -> bool:
        return (
            action == self.action
            and (self.identity is None or identity == self.identity)
            and (self.times is None or self.hits < self.times)
            and (self.match is None or bool(self.match(payload)))
        )


class _Scripted:
    """Routes a received call through the peer's rules before the normal handlers."""

    peer: CsmsPeer
    id: str

    async def route_message(self, raw_msg: str) -> None:
        msg = _try_parse(raw_msg)
        if msg is not None and msg[0] == CALL and len(msg) > 3:
            rule = self.peer.rule_for(self.id, msg[2], msg[3])
            if rule is not None:
                if rule.delay:
                    await asyncio.sleep(rule.delay)
                if rule.silent:
                    return
                if rule.error is not None:
                    error = [CALLERROR, msg[1], rule.error, rule.description, {}]
                    await self._send(json.dumps(error, separators=(",", ":")))  # type: ignore[attr-defined]
                    return
        await super().route_message(raw_msg)  # type: ignore[misc]


class _CsmsHandlers16(_Scripted, ChargePoint16):
    """CSMS-side answers to every charger-initiated 1.6 action of a normal session."""

    def __init__(self, peer: CsmsPeer, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.peer = peer

    def _id_tag_info(self, id_tag: str) -> dict[str, str]:
        return {"status": self.peer.id_tag_verdict(id_tag)}

    @on("BootNotification")
    def on_boot_notification(self, **_: Any) -> result16.BootNotification:
        return result16.BootNotification(
            current_time=_stamp(self.peer.clock()),
            interval=self.peer.heartbeat_interval,
            status=self.peer.boot_status,
        )

    @on("Heartbeat")
    def on_heartbeat(self, **_: Any) -> result16.Heartbeat:
        return result16.Heartbeat(current_time=_stamp(self.peer.clock()))

    @on("StatusNotification")
    def on_status_notification(self, **_: Any) -> result16.StatusNotification:
        return result16.StatusNotification()

    @on("Authorize")
    def on_authorize(self, id_tag: str, **_: Any) -> result16.Authorize:
        return result16.Authorize(id_tag_info=self._id_tag_info(id_tag))

    @on("StartTransaction")
    def on_start_transaction(self, id_tag: str, **payload: Any) -> result16.StartTransaction:
        return result16.StartTransaction(
            transaction_id=self.peer.start_transaction_id(self.id, dict(payload, id_tag=id_tag)),
            id_tag_info=self._id_tag_info(id_tag),
        )

    @on("MeterValues")
    def on_meter_values(self, **_: Any) -> result16.MeterValues:
        return result16.MeterValues()

    @on("StopTransaction")
    def on_stop_transaction(self, id_tag: str | None = None, **_: Any) -> Any:
        if id_tag is None:
            return result16.StopTransaction()
        return result16.StopTransaction(id_tag_info=self._id_tag_info(id_tag))

    @on("DataTransfer")
    def on_data_transfer(self, **_: Any) -> result16.DataTransfer:
        return result16.DataTransfer(status="Accepted")

    @on("FirmwareStatusNotification")
    def on_firmware_status(self, **_: Any) -> result16.FirmwareStatusNotification:
        return result16.FirmwareStatusNotification()

    @on("DiagnosticsStatusNotification")
    def on_diagnostics_status(self, **_: Any) -> result16.DiagnosticsStatusNotification:
        return result16.DiagnosticsStatusNotification()

    @on("SecurityEventNotification")
    def on_security_event(self, **_: Any) -> result16.SecurityEventNotification:
        return result16.SecurityEventNotification()


class _CsmsHandlers201(_Scripted, ChargePoint201):
    """CSMS-side answers to every charger-initiated 2.0.1 action of a normal session."""

    def __init__(self, peer: CsmsPeer, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.peer = peer

    def _id_token_info(self, id_token: Mapping[str, Any]) -> dict[str, str]:
        return {"status": self.peer.id_tag_verdict(str(id_token.get("id_token")))}

    @on("BootNotification")
    def on_boot_notification(self, **_: Any) -> result201.BootNotification:
        return result201.BootNotification(
            current_time=_stamp(self.peer.clock()),
            interval=self.peer.heartbeat_interval,
            status=self.peer.boot_status,
        )

    @on("Heartbeat")
    def on_heartbeat(self, **_: Any) -> result201.Heartbeat:
        return result201.Heartbeat(current_time=_stamp(self.peer.clock()))

    @on("StatusNotification")
    def on_status_notification(self, **_: Any) -> result201.StatusNotification:
        return result201.StatusNotification()

    @on("Authorize")
    def on_authorize(self, id_token: Mapping[str, Any], **_: Any) -> result201.Authorize:
        return result201.Authorize(id_token_info=self._id_token_info(id_token))

    @on("TransactionEvent")
    def on_transaction_event(
        self, id_token: Mapping[str, Any] | None = None, **_: Any
    ) -> result201.TransactionEvent:
        if id_token is None:
            return result201.TransactionEvent()
        return result201.TransactionEvent(id_token_info=self._id_token_info(id_token))

    @on("MeterValues")
    def on_meter_values(self, **_: Any) -> result201.MeterValues:
        return result201.MeterValues()

    @on("NotifyEvent")
    def on_notify_event(self, **_: Any) -> result201.NotifyEvent:
        return result201.NotifyEvent()

    @on("SecurityEventNotification")
    def on_security_event(self, **_: Any) -> result201.SecurityEventNotification:
        return result201.SecurityEventNotification()

    @on("DataTransfer")
    def on_data_transfer(self, **_: Any) -> result201.DataTransfer:
        return result201.DataTransfer(status="Accepted")


class CsmsPeer:
    """A CSMS on ``ws://127.0.0.1:<port>``; chargers connect to ``<url>/<identity>``.

    For each connection it takes the identity from the last path segment, runs an ocpp
    ChargePoint for the negotiated subprotocol, and records every frame per identity
    (``frames[identity]``) and globally (``log``). It records in ``violations`` any
    second unanswered CALL in one direction of a connection, any second live
    connection of an identity, and any frame that is not OCPP-J; ``errors`` gets
    exceptions raised by its own handlers. Tests check that both stay empty.

    Scripted faults: ``refuse``/``delay``/``ignore`` add :class:`CsmsRule` s (CALLERROR,
    slow answer, no answer) by action, n times or always; ``id_tag_status`` answers
    chosen idTags with a chosen idTagInfo status; ``stop()`` then ``start()`` takes the
    CSMS down (closing its connections with 1001, or 1006 with ``code=1006``) and brings
    it back on the same port. With ``idempotent_starts`` a StartTransaction received
    again (same connector, idTag, meterStart and timestamp) gets the same transactionId.

    Use as ``async with CsmsPeer() as csms:``.
    """

    def __init__(
        self,
        *,
        subprotocols: Sequence[str] = (OCPP16, OCPP201),
        compression: str | None = None,
        refusals: Mapping[str, int] | None = None,
        blocked: Iterable[str] = (),
        heartbeat_interval: int = 300,
        boot_status: str = "Accepted",
        clock: Clock = _utc_now,
        ids: IdFactory = _uuid_ids,
        call_timeout: float = DEFAULT_TIMEOUT,
        id_tag_status: Mapping[str, str] | None = None,
        idempotent_starts: bool = False,
    ) -> None:
        self.subprotocols = [Subprotocol(s) for s in subprotocols]
        self.compression = compression
        #: identity -> HTTP status with which to refuse its handshake (e.g. 401, 403, 404).
        self.refusals: dict[str, int] = dict(refusals or {})
        #: idTags / idTokens answered Blocked.
        self.blocked: set[str] = set(blocked)
        #: idTag / idToken -> the idTagInfo status to answer (before ``blocked``).
        self.id_tag_status: dict[str, str] = dict(id_tag_status or {})
        self.idempotent_starts = idempotent_starts
        #: Scripted answers, first match wins (see :class:`CsmsRule`).
        self.rules: list[CsmsRule] = []
        #: transactionId -> (identity, StartTransaction payload in snake_case) it was
        #: given for (the last one, when the same id was given again).
        self.transactions: dict[int, tuple[str, dict[str, Any]]] = {}
        self.heartbeat_interval = heartbeat_interval
        self.boot_status = boot_status
        self.clock = clock
        self.ids = ids
        self.call_timeout = call_timeout

        #: identity -> request headers of every handshake attempt, refused ones too.
        self.request_headers: defaultdict[str, list[Headers]] = defaultdict(list)
        #: identity -> accepted connections so far.
        self.connections: Counter[str] = Counter()
        #: identity -> every accepted connection, oldest first.
        self.history: defaultdict[str, list[CsmsConnection]] = defaultdict(list)
        #: identity -> its open connection.
        self.live: dict[str, CsmsConnection] = {}
        #: identity -> frames of all its connections, in order.
        self.frames: defaultdict[str, list[Frame]] = defaultdict(list)
        #: every frame of every identity, in order.
        self.log: list[LoggedFrame] = []
        self.violations: list[str] = []
        self.errors: list[BaseException] = []

        self._transaction_ids = itertools.count(1)
        self._start_ids: dict[tuple[Any, ...], int] = {}
        self._changes = _Changes()
        self._server: Server | None = None
        self._port: int | None = None
        self._accepted: set[ServerConnection] = set()

    # -- lifecycle

    async def start(self) -> Self:
        """Start listening: on a free port the first time, on the same port after ``stop``."""
        accepted = self._accepted

        class Tracked(ServerConnection):
            """Every TCP connection the server accepts, from its first byte: ``stop``
            aborts them all, those still in their handshake included."""

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                accepted.add(self)
                super().connection_made(transport)

            def connection_lost(self, exc: Exception | None) -> None:
                accepted.discard(self)
                super().connection_lost(exc)

        self._server = await serve(
            self._handle,
            "127.0.0.1",
            self._port or 0,
            subprotocols=self.subprotocols,
            compression=self.compression,
            process_request=self._process_request,
            ping_interval=None,
            create_connection=Tracked,
        )
        self._port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self, timeout: float = DEFAULT_TIMEOUT, *, code: int = 1001) -> None:
        """Stop listening and close every connection: with a 1001 close frame, or with
        ``code=1006`` by aborting the TCP connections (no close frame)."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()  # stops accepting at once; open connections get 1001 unless ...
        if code == 1006:
            # ... every TCP connection, live or still in its handshake, is aborted: none
            # is left open (or answered 503 and left to the garbage collector)
            for ws in list(self._accepted):
                ws.transport.abort()
        async with asyncio.timeout(timeout):
            await server.wait_closed()
            await self._changes.wait_until(lambda: not self.live, timeout, "connections to end")
        for ws in list(self._accepted):  # whatever the closing handshakes left
            ws.transport.abort()

    @property
    def running(self) -> bool:
        return self._server is not None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("CsmsPeer is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    # -- state used by the handlers

    def next_transaction_id(self, identity: str) -> int:
        """Transaction ids increase from 1 over the whole CSMS."""
        return next(self._transaction_ids)

    def start_transaction_id(self, identity: str, payload: dict[str, Any]) -> int:
        """The transactionId for a StartTransaction (snake_case payload)."""
        key = (
            identity,
            payload.get("connector_id"),
            payload.get("id_tag"),
            payload.get("meter_start"),
            payload.get("timestamp"),
        )
        tx_id = self._start_ids.get(key) if self.idempotent_starts else None
        if tx_id is None:
            tx_id = self.next_transaction_id(identity)
            self._start_ids[key] = tx_id
        self.transactions[tx_id] = (identity, payload)
        return tx_id

    def id_tag_verdict(self, id_tag: str) -> str:
        """The idTagInfo / idTokenInfo status the CSMS answers for ``id_tag``."""
        if id_tag in self.id_tag_status:
            return self.id_tag_status[id_tag]
        return "Blocked" if id_tag in self.blocked else "Accepted"

    # -- scripted faults

    def rule_for(self, identity: str, action: str, payload: Any) -> CsmsRule | None:
        """The rule that applies to this call (counted as a hit), if any."""
        for rule in self.rules:
            if rule.applies(identity, action, payload):
                rule.hits += 1
                return rule
        return None

    def add_rule(self, rule: CsmsRule) -> CsmsRule:
        self.rules.append(rule)
        return rule

    def refuse(
        self,
        action: str,
        code: str = "InternalError",
        *,
        times: int | None = None,
        identity: str | None = None,
        match: Callable[[Any], bool] | None = None,
        description: str = "refused by the test",
    ) -> CsmsRule:
        """Answer matching calls with CALLERROR ``code``, ``times`` times or always."""
        return self.add_rule(
            CsmsRule(action, code, description, times=times, identity=identity, match=match)
        )

    def delay(
        self,
        action: str,
        seconds: float,
        *,
        times: int | None = None,
        identity: str | None = None,
        match: Callable[[Any], bool] | None = None,
    ) -> CsmsRule:
        """Answer matching calls normally, but only after ``seconds``."""
        return self.add_rule(
            CsmsRule(action, delay=seconds, times=times, identity=identity, match=match)
        )

    def ignore(
        self,
        action: str,
        *,
        times: int | None = None,
        identity: str | None = None,
        match: Callable[[Any], bool] | None = None,
    ) -> CsmsRule:
        """Read matching calls and never answer them."""
        return self.add_rule(
            CsmsRule(action, silent=True, times=times, identity=identity, match=match)
        )

    def clear_rules(self) -> None:
        self.rules.clear()

    # -- connection handling

    @staticmethod
    def identity_of(path: str) -> str:
        return unquote(urlsplit(path).path.rstrip("/").rsplit("/", 1)[-1])

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        identity = self.identity_of(request.path)
        self.request_headers[identity].append(request.headers)
        self._changes.touch()
        status = self.refusals.get(identity)
        if status is None:
            return None
        return ws.respond(status, f"{HTTPStatus(status).phrase}\n")

    def _record(self, conn: CsmsConnection, frame: Frame) -> None:
        conn.frames.append(frame)
        self.frames[conn.identity].append(frame)
        self.log.append(
            LoggedFrame(conn.identity, conn.number, frame.direction, frame.text, time.monotonic())
        )
        self._changes.touch()

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        identity = self.identity_of(ws.request.path)
        self.connections[identity] += 1
        conn = CsmsConnection(
            identity=identity,
            number=self.connections[identity],
            subprotocol=ws.subprotocol,
            request_headers=ws.request.headers,
            ws=ws,
        )
        where = f"{identity}#{conn.number}"
        if identity in self.live:
            self.violations.append(f"{where}: second live connection for {identity!r}")
        tracker = _CallTracker(where, self.violations)

        def on_frame(frame: Frame) -> None:
            self._record(conn, frame)
            tracker(frame)

        recording = RecordingConnection(ws, on_frame)
        handlers: type[_CsmsHandlers16 | _CsmsHandlers201]
        if ws.subprotocol == OCPP201:
            handlers = _CsmsHandlers201
        else:
            if ws.subprotocol != OCPP16:
                self.violations.append(f"{where}: subprotocol {ws.subprotocol!r}")
            handlers = _CsmsHandlers16
        station = handlers(self, identity, recording, response_timeout=self.call_timeout)
        station._unique_id_generator = self.ids
        conn.station = station
        self.history[identity].append(conn)
        self.live[identity] = conn
        self._changes.touch()
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(recording.pump())
                tasks.create_task(_run_station(station))
        except Exception as exc:  # recorded for the test to see
            self.errors.append(exc)
        finally:
            try:
                async with asyncio.timeout(DEFAULT_TIMEOUT):
                    await ws.close()
                    await ws.wait_closed()
            finally:
                conn.closed = CloseInfo(ws.close_code, ws.close_reason)
                if self.live.get(identity) is conn:
                    del self.live[identity]
                self._changes.touch()

    # -- test API

    def _live(self, identity: str) -> CsmsConnection:
        conn = self.live.get(identity)
        if conn is None:
            raise LookupError(f"{identity!r} is not connected to the CSMS")
        return conn

    def subprotocol(self, identity: str) -> str | None:
        """The subprotocol of the identity's latest connection."""
        return self.history[identity][-1].subprotocol

    async def wait_connected(self, identity: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        await self._changes.wait_until(
            lambda: identity in self.live, timeout, f"{identity!r} to connect"
        )

    async def wait_disconnected(self, identity: str, timeout: float = DEFAULT_TIMEOUT) -> CloseInfo:
        """Wait until the identity has no live connection; its last close frame."""
        await self._changes.wait_until(
            lambda: identity not in self.live and bool(self.history[identity]),
            timeout,
            f"{identity!r} to disconnect",
        )
        closed = self.history[identity][-1].closed
        assert closed is not None
        return closed

    async def wait_until(
        self, predicate: Callable[[], bool], timeout: float = DEFAULT_TIMEOUT, what: str = ""
    ) -> None:
        """Wait until ``predicate()`` holds; it is checked after every frame and connection."""
        await self._changes.wait_until(predicate, timeout, what or "a condition")

    async def call(
        self,
        identity: str,
        payload: Any,
        *,
        timeout: float | None = None,
        skip_schema_validation: bool = False,
    ) -> Any:
        """Send a CSMS-initiated call (e.g. ``ocpp.v16.call.Reset(...)``); its result.

        A CALLERROR answer raises the matching ``ocpp.exceptions.OCPPError``.
        """
        station = self._live(identity).station
        assert station is not None
        async with asyncio.timeout(timeout or self.call_timeout):
            return await station.call(
                payload, suppress=False, skip_schema_validation=skip_schema_validation
            )

    async def send_raw(self, identity: str, data: Data, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Send any frame to the identity's live connection, bypassing the ChargePoint."""
        conn = self._live(identity)
        assert conn.ws is not None
        self._record(conn, Frame("sent", data))
        async with asyncio.timeout(timeout):
            await conn.ws.send(data)

    async def close(
        self, identity: str, code: int = 1000, reason: str = "", timeout: float = DEFAULT_TIMEOUT
    ) -> CloseInfo:
        """Close the identity's live connection; the close frame the other end sent back."""
        conn = self._live(identity)
        assert conn.ws is not None
        async with asyncio.timeout(timeout):
            await conn.ws.close(code, reason)
        return await self.wait_disconnected(identity, timeout)

    def inbound(self, identity: str) -> list[LedgerEntry]:
        """The calls the identity's chargers sent (through every connection), each with
        the CSMS's answer."""
        return inbound_ledger(self.frames[identity])

    def received_calls(self, identity: str, action: str | None = None) -> list[LedgerEntry]:
        """The calls received from the identity (of ``action`` if given), in order."""
        return [e for e in self.inbound(identity) if action is None or e.action == action]

    def sent(self, identity: str) -> list[Data]:
        return sent(self.frames[identity])

    def received(self, identity: str) -> list[Data]:
        return received(self.frames[identity])

    def assert_clean(self) -> None:
        """No protocol violation seen and no handler failed."""
        assert self.violations == [], self.violations
        assert self.errors == [], self.errors


# --------------------------------------------------------------------------- chargers


@dataclass(frozen=True)
class HandledCall:
    """A CSMS-initiated call that reached a charger's handler (payload in snake_case)."""

    unique_id: str
    action: str
    payload: dict[str, Any]


class _StationHandlers16(ChargePoint16):
    """Charger-side answers to CSMS-initiated 1.6 calls: everything Accepted."""

    def __init__(self, peer: ChargerPeer, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.peer = peer

    @on("RemoteStartTransaction")
    def on_remote_start(self, call_unique_id: str, **payload: Any) -> Any:
        self.peer.handled_call(call_unique_id, "RemoteStartTransaction", payload)
        return result16.RemoteStartTransaction(status="Accepted")

    @on("RemoteStopTransaction")
    def on_remote_stop(self, call_unique_id: str, **payload: Any) -> Any:
        self.peer.handled_call(call_unique_id, "RemoteStopTransaction", payload)
        return result16.RemoteStopTransaction(status="Accepted")

    @on("GetConfiguration")
    def on_get_configuration(self, call_unique_id: str, **payload: Any) -> Any:
        self.peer.handled_call(call_unique_id, "GetConfiguration", payload)
        config = self.peer.configuration
        wanted = payload.get("key") or list(config)
        return result16.GetConfiguration(
            configuration_key=[
                {"key": k, "readonly": False, "value": config[k]} for k in wanted if k in config
            ],
            unknown_key=[k for k in wanted if k not in config] or None,
        )

    @on("ChangeConfiguration")
    def on_change_configuration(self, call_unique_id: str, **payload: Any) -> Any:
        self.peer.handled_call(call_unique_id, "ChangeConfiguration", payload)
        self.peer.configuration[payload["key"]] = payload["value"]
        return result16.ChangeConfiguration(status="Accepted")

    @on("SendLocalList")
    def on_send_local_list(self, call_unique_id: str, **payload: Any) -> Any:
        self.peer.handled_call(call_unique_id, "SendLocalList", payload)
        return result16.SendLocalList(status="Accepted")

    @on("TriggerMessage")
    def on_trigger_message(self, call_unique_id: str, **payload: Any) -> Any:
        self.peer.handled_call(call_unique_id, "TriggerMessage", payload)
        return result16.TriggerMessage(status="Accepted")

    @on("Reset")
    def on_reset(self, call_unique_id: str, **payload: Any) -> Any:
        self.peer.handled_call(call_unique_id, "Reset", payload)
        return result16.Reset(status="Accepted")

    @on("SetChargingProfile")
    def on_set_charging_profile(self, call_unique_id: str, **payload: Any) -> Any:
        self.peer.handled_call(call_unique_id, "SetChargingProfile", payload)
        return result16.SetChargingProfile(status="Accepted")


class _StationHandlers201(ChargePoint201):
    """Charger-side answers to CSMS-initiated 2.0.1 calls: everything Accepted."""

    def __init__(self, peer: ChargerPeer, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.peer = peer

    @on("RequestStartTransaction")
    def on_request_start(self, call_unique_id: str, **payload: Any) -> Any:
        self.peer.handled_call(call_unique_id, "RequestStartTransaction", payload)
        return result201.RequestStartTransaction(status="Accepted")

    @on("RequestStopTransaction")
    def on_request_stop(self, call_unique_id: str, **payload: Any) -> Any:
        self.peer.handled_call(call_unique_id, "RequestStopTransaction", payload)
        return result201.RequestStopTransaction(status="Accepted")

    @on("GetVariables")
    def on_get_variables(self, call_unique_id: str, **payload: Any) -> Any:
        self.peer.handled_call(call_unique_id, "GetVariables", payload)
        results = []
        for item in payload["get_variable_data"]:
            name = item["variable"]["name"]
            value = self.peer.configuration.get(name)
            result = {
                "attribute_status": "Accepted" if value is not None else "UnknownVariable",
                "component": item["component"],
                "variable": item["variable"],
            }
            if value is not None:
                result["attribute_value"] = value
            results.append(result)
        return result201.GetVariables(get_variable_result=results)

    @on("SetVariables")
    def on_set_variables(self, call_unique_id: str, **payload: Any) -> Any:
        self.peer.handled_call(call_unique_id, "SetVariables", payload)
        results = []
        for item in payload["set_variable_data"]:
            self.peer.configuration[item["variable"]["name"]] = item["attribute_value"]
            results.append(
                {
                    "attribute_status": "Accepted",
                    "component": item["component"],
                    "variable": item["variable"],
                }
            )
        return result201.SetVariables(set_variable_result=results)

    @on("SendLocalList")
    def on_send_local_list(self, call_unique_id: str, **payload: Any) -> Any:
        self.peer.handled_call(call_unique_id, "SendLocalList", payload)
        return result201.SendLocalList(status="Accepted")

    @on("TriggerMessage")
    def on_trigger_message(self, call_unique_id: str, **payload: Any) -> Any:
        self.peer.handled_call(call_unique_id, "TriggerMessage", payload)
        return result201.TriggerMessage(status="Accepted")

    @on("Reset")
    def on_reset(self, call_unique_id: str, **payload: Any) -> Any:
        self.peer.handled_call(call_unique_id, "Reset", payload)
        return result201.Reset(status="Accepted")

    @on("SetChargingProfile")
    def on_set_charging_profile(self, call_unique_id: str, **payload: Any) -> Any:
        self.peer.handled_call(call_unique_id, "SetChargingProfile", payload)
        return result201.SetChargingProfile(status="Accepted")


class ChargerPeer:
    """A charger on ocpp's ChargePoint that connects to ``<url>/<identity>``.

    Use ``async with ChargerPeer16(url, "CP1") as charger:``. It answers CSMS-initiated
    calls (recorded in ``handled``), sends calls with ``call``, runs whole sessions with
    ``run_session``, and records every frame in ``frames``. Timestamps come from
    ``clock`` and message ids from ``ids``, so two runs with a ``StepClock`` and
    ``counter_ids()`` send the very same texts.
    """

    handlers_class: ClassVar[type[ChargePoint]]
    default_subprotocols: ClassVar[tuple[str, ...]]

    def __init__(
        self,
        url: str,
        identity: str,
        *,
        subprotocols: Sequence[str] | None = None,
        headers: HeadersLike | None = None,
        compression: str | None = None,
        clock: Clock = _utc_now,
        ids: IdFactory = _uuid_ids,
        call_timeout: float = DEFAULT_TIMEOUT,
        open_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.url = f"{url.rstrip('/')}/{identity}"
        self.identity = identity
        self.offered = [Subprotocol(s) for s in (subprotocols or self.default_subprotocols)]
        self.headers = headers
        self.compression = compression
        self.clock = clock
        self.ids = ids
        self.call_timeout = call_timeout
        self.open_timeout = open_timeout
        #: Configuration keys / variables the charger reports and lets the CSMS change.
        self.configuration: dict[str, str] = {"HeartbeatInterval": "300"}
        #: CSMS-initiated calls the charger's handlers answered, in order.
        self.handled: list[HandledCall] = []
        #: A second unanswered CALL in one direction, or a frame that is not OCPP-J.
        self.violations: list[str] = []
        #: Exceptions that ended the receiving loop other than a closed connection.
        self.errors: list[BaseException] = []
        self._ws: ClientConnection | None = None
        self._recording: RecordingConnection | None = None
        self._station: Any = None
        self._serving: asyncio.Task[None] | None = None
        self._changes = _Changes()

    # -- lifecycle

    async def connect(self) -> Self:
        """Open the WebSocket; raises websockets' InvalidStatus if the handshake is refused."""
        self._ws = await connect(
            self.url,
            subprotocols=self.offered,
            additional_headers=self.headers,
            compression=self.compression,
            open_timeout=self.open_timeout,
            ping_interval=None,
        )
        self._recording = RecordingConnection(
            self._ws, _CallTracker(f"charger {self.identity}", self.violations)
        )
        station = self.handlers_class(
            self, self.identity, self._recording, response_timeout=self.call_timeout
        )
        station._unique_id_generator = self.ids
        self._station = station
        self._serving = asyncio.create_task(
            self._serve(self._recording, station), name=f"charger {self.identity}"
        )
        return self

    async def _serve(self, recording: RecordingConnection, station: ChargePoint) -> None:
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(recording.pump())
                tasks.create_task(_run_station(station))
        except Exception as exc:  # recorded; re-raised when the charger is left
            self.errors.append(exc)

    async def close(
        self, code: int = 1000, reason: str = "", timeout: float = DEFAULT_TIMEOUT
    ) -> CloseInfo:
        """Close with ``code``; the close frame the other end sent back."""
        async with asyncio.timeout(timeout):
            await self.ws.close(code, reason)
        return await self.wait_closed(timeout)

    async def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> CloseInfo:
        """Wait until the connection is closed; the close frame the other end sent."""
        async with asyncio.timeout(timeout):
            await self.ws.wait_closed()
            if self._serving is not None:
                await self._serving
        return CloseInfo(self.ws.close_code, self.ws.close_reason)

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ws is None:
            return
        try:
            await self.close()
        finally:
            if self._serving is not None and not self._serving.done():
                self._serving.cancel()
                await asyncio.gather(self._serving, return_exceptions=True)
        if exc is None and self.errors:
            raise self.errors[0]

    # -- state

    @property
    def ws(self) -> ClientConnection:
        if self._ws is None:
            raise RuntimeError(f"charger {self.identity} is not connected")
        return self._ws

    @property
    def subprotocol(self) -> str | None:
        return self.ws.subprotocol

    @property
    def frames(self) -> list[Frame]:
        return self._recording.frames if self._recording is not None else []

    @property
    def ledger(self) -> list[LedgerEntry]:
        """Every call the charger sent and how it was answered."""
        return ledger(self.frames)

    def assert_clean(self) -> None:
        """No protocol violation seen and the receiving loop did not fail."""
        assert self.violations == [], self.violations
        assert self.errors == [], self.errors

    def handled_call(self, unique_id: str, action: str, payload: dict[str, Any]) -> None:
        self.handled.append(HandledCall(unique_id, action, payload))
        self._changes.touch()

    def handled_of(self, action: str) -> list[HandledCall]:
        """The CSMS-initiated (or controller) calls of ``action`` handled so far."""
        return [h for h in self.handled if h.action == action]

    async def wait_handled(
        self, action: str, count: int = 1, timeout: float = DEFAULT_TIMEOUT
    ) -> list[HandledCall]:
        """Wait until ``count`` calls of ``action`` were handled; those calls."""
        await self._changes.wait_until(
            lambda: len(self.handled_of(action)) >= count, timeout, f"{count} x {action}"
        )
        return self.handled_of(action)

    def now(self) -> str:
        return _stamp(self.clock())

    # -- calls

    async def call(
        self, payload: Any, *, timeout: float | None = None, skip_schema_validation: bool = False
    ) -> Any:
        """Send a call (an ``ocpp.v16.call`` / ``ocpp.v201.call`` object); its result.

        A CALLERROR answer raises the matching ``ocpp.exceptions.OCPPError``.
        """
        if self._station is None:
            raise RuntimeError(f"charger {self.identity} is not connected")
        async with asyncio.timeout(timeout or self.call_timeout):
            return await self._station.call(
                payload, suppress=False, skip_schema_validation=skip_schema_validation
            )

    async def run_session(
        self, id_tag: str = "TAG-0001", *, connector_id: int = 1, meter_start: int = 1000
    ) -> list[LedgerEntry]:
        """Run a whole charging session (see the subclass); the ledger of its calls.

        Energy readings run from ``meter_start`` in steps of 100 Wh, so every message of
        a session differs from every other. A CALLERROR answer raises.
        """
        before = len(self.ledger)
        await self._session(id_tag, connector_id, meter_start)
        return self.ledger[before:]

    async def _session(self, id_tag: str, connector_id: int, meter_start: int) -> None:
        raise NotImplementedError


def _meter_value16(timestamp: str, wh: int) -> dict[str, Any]:
    return {
        "timestamp": timestamp,
        "sampled_value": [
            {"value": str(wh), "measurand": "Energy.Active.Import.Register", "unit": "Wh"}
        ],
    }


def _meter_value201(timestamp: str, wh: int) -> dict[str, Any]:
    return {
        "timestamp": timestamp,
        "sampled_value": [
            {
                "value": wh,
                "measurand": "Energy.Active.Import.Register",
                "unit_of_measure": {"unit": "Wh"},
            }
        ],
    }


class ChargerPeer16(ChargerPeer):
    """An OCPP 1.6J charger; a session is Boot, StatusNotification, Authorize,
    StartTransaction, 3 x MeterValues, StopTransaction.

    The step methods (``boot``, ``status``, ``authorize``, ``start_transaction``,
    ``meter_values``, ``stop_transaction``) send one call each, for scenarios that do
    something between the steps.
    """

    handlers_class = _StationHandlers16
    default_subprotocols = (OCPP16,)

    async def boot(self) -> Any:
        return await self.call(
            call16.BootNotification(
                charge_point_model="LC-Test",
                charge_point_vendor="OpenSite",
                charge_point_serial_number=self.identity,
            )
        )

    async def status(
        self, status: str = "Available", *, connector_id: int = 1, error_code: str = "NoError"
    ) -> Any:
        return await self.call(
            call16.StatusNotification(
                connector_id=connector_id,
                error_code=error_code,
                status=status,
                timestamp=self.now(),
            )
        )

    async def authorize(self, id_tag: str) -> str:
        """Authorize ``id_tag``; the idTagInfo status answered."""
        answer = await self.call(call16.Authorize(id_tag=id_tag))
        return str(answer.id_tag_info["status"])

    async def start_transaction(
        self, id_tag: str, *, connector_id: int = 1, meter_start: int = 0
    ) -> int:
        """Start a transaction; the transactionId answered."""
        answer = await self.call(
            call16.StartTransaction(
                connector_id=connector_id,
                id_tag=id_tag,
                meter_start=meter_start,
                timestamp=self.now(),
            )
        )
        return int(answer.transaction_id)

    async def meter_values(self, transaction_id: int, wh: int, *, connector_id: int = 1) -> Any:
        """Report an energy register reading of ``wh`` Wh for the transaction."""
        return await self.call(
            call16.MeterValues(
                connector_id=connector_id,
                transaction_id=transaction_id,
                meter_value=[_meter_value16(self.now(), wh)],
            )
        )

    async def stop_transaction(
        self,
        transaction_id: int,
        meter_stop: int,
        *,
        reason: str = "Local",
        id_tag: str | None = None,
    ) -> Any:
        return await self.call(
            call16.StopTransaction(
                meter_stop=meter_stop,
                timestamp=self.now(),
                transaction_id=transaction_id,
                reason=reason,
                id_tag=id_tag,
            )
        )

    async def _session(self, id_tag: str, connector_id: int, meter_start: int) -> None:
        await self.call(
            call16.BootNotification(
                charge_point_model="LC-Test",
                charge_point_vendor="OpenSite",
                charge_point_serial_number=self.identity,
            )
        )
        await self.call(
            call16.StatusNotification(
                connector_id=connector_id,
                error_code="NoError",
                status="Available",
                timestamp=self.now(),
            )
        )
        await self.call(call16.Authorize(id_tag=id_tag))
        started = await self.call(
            call16.StartTransaction(
                connector_id=connector_id,
                id_tag=id_tag,
                meter_start=meter_start,
                timestamp=self.now(),
            )
        )
        transaction_id = started.transaction_id
        for step in range(1, 4):
            await self.call(
                call16.MeterValues(
                    connector_id=connector_id,
                    transaction_id=transaction_id,
                    meter_value=[_meter_value16(self.now(), meter_start + 100 * step)],
                )
            )
        await self.call(
            call16.StopTransaction(
                meter_stop=meter_start + 400,
                timestamp=self.now(),
                transaction_id=transaction_id,
                reason="Local",
                id_tag=id_tag,
            )
        )


class ChargerPeer201(ChargerPeer):
    """An OCPP 2.0.1 charger; a session is Boot, StatusNotification, Authorize,
    TransactionEvent Started, Updated x3, Ended (seqNo 0..4)."""

    handlers_class = _StationHandlers201
    default_subprotocols = (OCPP201,)

    def __init__(self, url: str, identity: str, **kwargs: Any) -> None:
        super().__init__(url, identity, **kwargs)
        self._transactions = itertools.count(1)

    async def _session(self, id_tag: str, connector_id: int, meter_start: int) -> None:
        id_token = {"id_token": id_tag, "type": "ISO14443"}
        evse = {"id": 1, "connector_id": connector_id}
        transaction_id = f"{self.identity}-T{next(self._transactions)}"
        await self.call(
            call201.BootNotification(
                charging_station={
                    "model": "LC-Test",
                    "vendor_name": "OpenSite",
                    "serial_number": self.identity,
                },
                reason="PowerUp",
            )
        )
        await self.call(
            call201.StatusNotification(
                timestamp=self.now(),
                connector_status="Available",
                evse_id=1,
                connector_id=connector_id,
            )
        )
        await self.call(call201.Authorize(id_token=id_token))
        seq_no = itertools.count(0)
        await self.call(
            call201.TransactionEvent(
                event_type="Started",
                timestamp=self.now(),
                trigger_reason="Authorized",
                seq_no=next(seq_no),
                transaction_info={"transaction_id": transaction_id, "charging_state": "Charging"},
                id_token=id_token,
                evse=evse,
                meter_value=[_meter_value201(self.now(), meter_start)],
            )
        )
        for step in range(1, 4):
            await self.call(
                call201.TransactionEvent(
                    event_type="Updated",
                    timestamp=self.now(),
                    trigger_reason="MeterValuePeriodic",
                    seq_no=next(seq_no),
                    transaction_info={"transaction_id": transaction_id},
                    meter_value=[_meter_value201(self.now(), meter_start + 100 * step)],
                )
            )
        await self.call(
            call201.TransactionEvent(
                event_type="Ended",
                timestamp=self.now(),
                trigger_reason="StopAuthorized",
                seq_no=next(seq_no),
                transaction_info={"transaction_id": transaction_id, "stopped_reason": "Local"},
                meter_value=[_meter_value201(self.now(), meter_start + 400)],
            )
        )


# --------------------------------------------------------------------------- raw charger


class RawCharger:
    """A bare WebSocket client: sends any text or binary frame, reads with timeouts.

    Use ``async with RawCharger(url, "CP1") as raw:``; frames are recorded in ``frames``.
    """

    def __init__(
        self,
        url: str,
        identity: str,
        *,
        subprotocols: Sequence[str] = (OCPP16,),
        headers: HeadersLike | None = None,
        compression: str | None = None,
        max_size: int | None = 2**20,
        open_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.url = f"{url.rstrip('/')}/{identity}"
        self.identity = identity
        self.offered = [Subprotocol(s) for s in subprotocols]
        self.headers = headers
        self.compression = compression
        self.max_size = max_size
        self.open_timeout = open_timeout
        self.frames: list[Frame] = []
        self._ws: ClientConnection | None = None
        self._ids = counter_ids("raw-")

    async def connect(self) -> Self:
        """Open the WebSocket; raises websockets' InvalidStatus if the handshake is refused."""
        self._ws = await connect(
            self.url,
            subprotocols=self.offered,
            additional_headers=self.headers,
            compression=self.compression,
            max_size=self.max_size,
            open_timeout=self.open_timeout,
            ping_interval=None,
        )
        return self

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ws is not None:
            await self.close()

    @property
    def ws(self) -> ClientConnection:
        if self._ws is None:
            raise RuntimeError(f"raw charger {self.identity} is not connected")
        return self._ws

    @property
    def subprotocol(self) -> str | None:
        return self.ws.subprotocol

    async def send(self, data: Data, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Send ``data`` as it is: a str as a text frame, bytes as a binary frame."""
        self.frames.append(Frame("sent", data))
        async with asyncio.timeout(timeout):
            await self.ws.send(data)

    async def recv(self, timeout: float = DEFAULT_TIMEOUT) -> Data:
        """The next frame; TimeoutError if none comes, ConnectionClosed if it closed."""
        async with asyncio.timeout(timeout):
            data = await self.ws.recv()
        self.frames.append(Frame("received", data))
        return data

    async def recv_json(self, timeout: float = DEFAULT_TIMEOUT) -> Any:
        return json.loads(await self.recv(timeout))

    async def call(
        self,
        action: str,
        payload: Any,
        *,
        unique_id: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> list[Any]:
        """Send ``[2, id, action, payload]`` and return the parsed answer to that id.

        CALLs arriving meanwhile from the other end are recorded and skipped.
        """
        unique_id = unique_id or self._ids()
        await self.send(json.dumps([CALL, unique_id, action, payload], separators=(",", ":")))
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.recv_json(timeout)
                if isinstance(msg, list) and msg[:1] != [CALL] and msg[1:2] == [unique_id]:
                    return msg

    async def expect_silence(self, timeout: float = 0.5) -> None:
        """Assert that no frame arrives within ``timeout`` seconds."""
        try:
            data = await self.recv(timeout)
        except TimeoutError:
            return
        raise AssertionError(f"expected no frame, got {data!r}")

    async def close(
        self, code: int = 1000, reason: str = "", timeout: float = DEFAULT_TIMEOUT
    ) -> CloseInfo:
        async with asyncio.timeout(timeout):
            await self.ws.close(code, reason)
        return await self.wait_closed(timeout)

    async def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> CloseInfo:
        """Wait until the connection is closed; the close frame the other end sent."""
        async with asyncio.timeout(timeout):
            await self.ws.wait_closed()
        return CloseInfo(self.ws.close_code, self.ws.close_reason)
