"""The per-charger state machine, sans I/O: frames and ``now`` in, effects out.

::

               uplink up, outbox empty
       ┌────────────────────────────────────────┐
       ▼                                        │
    ONLINE ──uplink lost──▶ OFFLINE ──uplink back──▶ DRAINING

The router keeps the calls in flight each way (OCPP-J allows one outstanding CALL per
direction), forwards frames as the same text, matches answers to calls, and turns bad
frames into the CALLERROR the session's :class:`~proxy.versions.Dialect` prescribes.
Calls the controller itself sends to a charger carry ids starting with
:data:`OWN_ID_PREFIX`; their results come back as :class:`OwnResult`, never forwarded.

While the uplink is not ONLINE, every charger call becomes an :class:`Answer` effect:
the session answers it locally (the offline responder) or closes the charger.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import Enum
from typing import Any

from proxy import frames
from proxy.frames import Call, CallError, CallResult, ErrorKind, FrameError
from proxy.versions import Dialect

OWN_ID_PREFIX = "lc-"

#: Charger calls whose retry under a new message id is recognised by its content (F3).
RETRIED_BY_CONTENT = frozenset({"StartTransaction", "StopTransaction", "TransactionEvent"})


class State(Enum):
    ONLINE = "online"
    OFFLINE = "offline"
    DRAINING = "draining"


class Origin(Enum):
    CHARGER = "charger"
    CSMS = "csms"
    CONTROLLER = "controller"


@dataclass(slots=True)  # not frozen: built for every frame, frozen costs twice as much
class ToCsms:
    """Send this text on the uplink (``action``: of a frame passed through, for metrics)."""

    text: str
    action: str | None = None


@dataclass(slots=True)  # not frozen: built for every frame, frozen costs twice as much
class ToCharger:
    """Send this text to the charger (``action``: of a frame passed through)."""

    text: str
    action: str | None = None


@dataclass(slots=True)  # not frozen: built for every frame, frozen costs twice as much
class Answer:
    """Answer this charger call locally (the uplink is not there to answer it)."""

    call: Call


@dataclass(slots=True)  # not frozen: built for every frame, frozen costs twice as much
class OwnResult:
    """The charger answered a call the controller sent; consume it locally."""

    call: Call
    answer: CallResult | CallError


@dataclass(slots=True)  # not frozen: built for every frame, frozen costs twice as much
class ReplayResult:
    """The CSMS answered a call the controller sent upstream (a replayed message)."""

    call: Call
    answer: CallResult | CallError


@dataclass(slots=True)  # not frozen: built for every frame, frozen costs twice as much
class Exchange:
    """A call and its answer passed through; the session may learn from it."""

    origin: Origin
    call: Call
    answer: CallResult | CallError


@dataclass(slots=True)  # not frozen: built for every frame, frozen costs twice as much
class Note:
    """Something worth a log line and a counter; nothing to send."""

    event: str
    fields: dict[str, Any]


@dataclass(slots=True)
class Unresponsive:
    """The CSMS left a charger call unanswered past ``call_timeout``: the router is
    OFFLINE already (the call answered locally; a transaction message stored, to be
    replayed in order); the session drops this uplink and opens a new one."""

    action: str


Effect = ToCsms | ToCharger | Answer | OwnResult | ReplayResult | Exchange | Note | Unresponsive


@dataclass(slots=True)
class _Pending:
    call: Call  # as sent (transaction id rewritten)
    origin: Origin
    since: float
    received: Call | None = None  # as the charger sent it, for recognising its retries


class Router:
    """Calls in flight each way for one charger, and the uplink state."""

    def __init__(
        self,
        dialect: Dialect,
        *,
        call_timeout: float = 30.0,
        max_queued_calls: int = 10,
        watched_actions: frozenset[str] = frozenset(),
        state: State = State.ONLINE,
    ) -> None:
        self.dialect = dialect
        self.state = state
        self._call_timeout = call_timeout
        self._max_queued = max_queued_calls
        #: Shared with every session of the dialect until a session watches more.
        self.watched = watched_actions
        # charger or controller -> CSMS: the call awaiting the CSMS, and those waiting
        self._up: _Pending | None = None
        # (lists, not deques: a few calls at most, and an empty deque costs 600 bytes
        # per charger)
        self._up_queue: list[tuple[Call, Origin]] = []
        #: OCPP 1.6 transaction ids: provisional -> CSMS id (-1 when the start was
        #: dead-lettered), CSMS id -> provisional, and transactions stopped DeAuthorized.
        self.tx_up: dict[int, int] = {}
        self.tx_down: dict[int, int] = {}
        self.deauthorized: set[int | str] = set()
        # CSMS or controller -> charger
        self._down: _Pending | None = None
        self._down_queue: list[tuple[Call, Origin]] = []
        # the last charger call answered, for an idempotent answer to a retry
        self._last_call: Call | None = None
        #: A charger's retries, under new ids, of a transaction call waiting upstream
        #: (keyed by the id of the call they repeat): answered with its answer.
        self._retries: dict[str, list[Call]] = {}
        self._last_answer: str | None = None
        #: The id of the last call the controller sent to the charger.
        self.last_own_call_id = ""
        #: The latest ``now`` seen, for events that come without one.
        self._now = 0.0

    # -- charger side -------------------------------------------------------------

    def charger_frame(self, text: str | bytes, now: float) -> list[Effect]:
        """A message arrived from the charger."""
        self._now = now
        try:
            frame = frames.parse(text)
        except FrameError as exc:
            return self._refuse(exc, "charger_bad_frame", to_charger=True)
        if type(frame) is Call:
            if frame.action not in self.dialect.actions:
                return self._refuse(
                    FrameError(
                        ErrorKind.NOT_IMPLEMENTED, f"unknown action {frame.action[:40]}", frame.id
                    ),
                    "charger_unknown_action",
                    to_charger=True,
                )
            return self._charger_call(frame, now)
        assert isinstance(frame, CallResult | CallError)
        return self._charger_answer(frame, now)

    def _charger_call(self, call: Call, now: float) -> list[Effect]:
        effects = self._expire_up(now)
        last = self._last_call
        if last is not None and self._last_answer is not None:
            if last.id == call.id and last.raw == call.raw:
                effects += [ToCharger(self._last_answer), Note("charger_retry_answered", {})]
                return effects
            if last.id != call.id and self._same_content(last, call):
                # A retry under a new id of a transaction message already answered: the
                # same answer, not a second forwarding (R39, F3).
                text = frames.with_message_id(self._last_answer, call.id)
                return [*effects, ToCharger(text), Note("charger_retry_answered", {})]
        up = self._up
        if up is None:
            return effects + self._send_up(call, Origin.CHARGER, now)
        waiting = [
            *((up.received or up.call,) if up.origin is Origin.CHARGER else ()),
            *(q for q, o in self._up_queue if o is Origin.CHARGER),
        ]
        same_id = [w for w in waiting if w.id == call.id]
        if same_id:
            if any(w.raw == call.raw for w in same_id):
                return [*effects, Note("charger_retry_pending", {"message_id": call.id})]
            return effects + self._refuse(
                FrameError(
                    ErrorKind.DUPLICATE_ID, "a call with this id is being handled already", call.id
                ),
                "charger_duplicate_id",
                to_charger=True,
            )
        for w in waiting:
            if self._same_content(w, call):
                self._retries.setdefault(w.id, []).append(call)
                return [*effects, Note("charger_retry_pending", {"message_id": call.id})]
        if not self._goes_up(call):
            return [*effects, Answer(call)]
        if len(self._up_queue) >= self._max_queued:
            return effects + self._refuse(
                FrameError(ErrorKind.BUSY, "too many calls unanswered", call.id),
                "charger_calls_overflow",
                to_charger=True,
            )
        self._up_queue.append((call, Origin.CHARGER))
        return [*effects, Note("charger_call_queued", {"action": call.action})]

    @staticmethod
    def _same_content(earlier: Call, call: Call) -> bool:
        """Whether ``call`` repeats ``earlier`` under another id: a transaction start or
        end (a second one upstream opens or closes a transaction twice), equal payload.
        MeterValues are left alone: a repeated reading does no harm upstream."""
        action = call.action
        if action != earlier.action or action not in RETRIED_BY_CONTENT:
            return False
        a, b = earlier.payload, call.payload
        return type(a) is dict and a == b

    def watch(self, action: str) -> None:
        """Yield an Exchange for ``action`` too (a transaction under an energy cap)."""
        self.watched = self.watched | {action}

    def expire(self, now: float) -> list[Effect]:
        """Calls past ``call_timeout`` (called by a timer, not only on the next frame)."""
        return self._expire_up(now) + self._expire_down(now)

    def _expire_up(self, now: float) -> list[Effect]:
        """Give up a call the CSMS did not answer in time.

        A charger call is answered locally, in time for the charger's own timeout, by
        going OFFLINE: a transaction message is stored and replayed in order, and the
        session opens a new uplink, so that the CSMS never has two calls of this charger
        open on one connection and a late answer can never meet the wrong call.
        """
        up = self._up
        if up is None or now - up.since <= self._call_timeout:
            return []
        note = Note("csms_answer_timed_out", {"action": up.call.action})
        if up.origin is not Origin.CHARGER:
            self._up = None
            return [note, *self._next_up(now)]
        return [note, *self.uplink_lost(now), Unresponsive(up.call.action)]

    def _goes_up(self, call: Call) -> bool:
        """Whether a charger call is forwarded now (else it is answered locally)."""
        state = self.state
        if state is State.ONLINE:
            return True
        return state is State.DRAINING and call.action not in self.dialect.stored_actions

    def _send_up(self, call: Call, origin: Origin, now: float) -> list[Effect]:
        received = call
        if origin is Origin.CHARGER:
            if not self._goes_up(call):
                return [Answer(call), *map(Answer, self._retries.pop(call.id, ()))]
            if (
                self.tx_up or self.deauthorized
            ) and call.action in self.dialect.transaction_actions:
                call = self.dialect.rewrite_up(call, self.tx_up, self.deauthorized)
        self._up = _Pending(call, origin, now, received)
        return [ToCsms(call.raw, call.action if origin is Origin.CHARGER else None)]

    def replay_call(self, call: Call, now: float) -> list[Effect]:
        """Send a call of the controller's own upstream, in the one slot (queued if busy)."""
        effects = self._expire_up(now)
        if effects and type(effects[-1]) is Unresponsive:
            return effects  # the uplink is being dropped; the drain ends with it
        if self._up is not None:
            self._up_queue.append((call, Origin.CONTROLLER))
            return effects
        return effects + self._send_up(call, Origin.CONTROLLER, now)

    def abandon_upstream(self, message_id: str, now: float) -> list[Effect]:
        """Give up waiting for the CSMS to answer a controller call; free the slot."""
        if self._up is not None and self._up.call.id == message_id:
            self._up = None
            return self._next_up(now)
        self._up_queue = [x for x in self._up_queue if x[0].id != message_id]
        return []

    def _next_up(self, now: float) -> list[Effect]:
        """Send the calls waiting for the upstream slot until one is in flight."""
        effects: list[Effect] = []
        while self._up is None and self._up_queue and self.state is not State.OFFLINE:
            call, origin = self._up_queue.pop(0)
            effects.extend(self._send_up(call, origin, now))
        return effects

    def _charger_answer(self, answer: CallResult | CallError, now: float) -> list[Effect]:
        down = self._down
        if down is None or down.call.id != answer.id:
            return [Note("charger_unexpected_answer", {"message_id": answer.id})]
        self._down = None
        effects: list[Effect]
        if down.origin is Origin.CONTROLLER:
            effects = [OwnResult(down.call, answer)]
        elif self.state is State.OFFLINE:
            effects = [Note("csms_call_answer_dropped", {"action": down.call.action})]
        else:
            effects = [ToCsms(answer.raw, down.call.action)]
            if down.call.action in self.watched:
                effects.append(Exchange(Origin.CSMS, down.call, answer))
        effects.extend(self._next_down(now))
        return effects

    # -- CSMS side ----------------------------------------------------------------

    def csms_frame(self, text: str | bytes, now: float) -> list[Effect]:
        """A message arrived on the uplink."""
        self._now = now
        try:
            frame = frames.parse(text)
        except FrameError as exc:
            return self._refuse(exc, "csms_bad_frame", to_charger=False)
        if type(frame) is Call:
            if self.tx_down:
                frame = self.dialect.rewrite_down(frame, self.tx_down)
            return self._to_charger(frame, Origin.CSMS, now)
        assert isinstance(frame, CallResult | CallError)
        up = self._up
        if up is None or up.call.id != frame.id:
            return [Note("csms_unexpected_answer", {"message_id": frame.id})]
        self._up = None
        effects: list[Effect]
        if up.origin is Origin.CONTROLLER:
            effects = [ReplayResult(up.call, frame)]
        else:
            received = up.received or up.call
            self._last_call = received
            self._last_answer = frame.raw
            effects = [ToCharger(frame.raw, up.call.action)]
            if self._retries:
                for retry in self._retries.pop(received.id, ()):
                    effects.append(ToCharger(frames.with_message_id(frame.raw, retry.id)))
            if up.call.action in self.watched:
                effects.append(Exchange(Origin.CHARGER, up.call, frame))
        if self._up_queue:
            effects.extend(self._next_up(now))
        return effects

    def own_call(self, action: str, payload: Any, now: float) -> list[Effect]:
        """Send a call of the controller's own to the charger (queued if one is open)."""
        message_id = f"{OWN_ID_PREFIX}{uuid.uuid4().hex}"
        self.last_own_call_id = message_id
        text = frames.call(message_id, action, payload)
        return self._to_charger(Call(message_id, action, payload, text), Origin.CONTROLLER, now)

    def _to_charger(self, call: Call, origin: Origin, now: float) -> list[Effect]:
        effects = self._expire_down(now)
        if self._down is None:
            self._down = _Pending(call, origin, now)
            effects.append(ToCharger(call.raw, call.action if origin is Origin.CSMS else None))
            return effects
        if len(self._down_queue) >= self._max_queued:
            if origin is Origin.CSMS:
                return effects + self._refuse(
                    FrameError(ErrorKind.BUSY, "too many calls unanswered", call.id),
                    "csms_calls_overflow",
                    to_charger=False,
                )
            return [*effects, Note("own_call_dropped", {"action": call.action})]
        self._down_queue.append((call, origin))
        return [*effects, Note("call_to_charger_queued", {"action": call.action})]

    def _expire_down(self, now: float) -> list[Effect]:
        """Give up a call the charger did not answer in time; send the next one waiting."""
        down = self._down
        if down is None or now - down.since <= self._call_timeout:
            return []
        self._down = None
        return [
            Note("charger_answer_timed_out", {"action": down.call.action}),
            *self._next_down(now),
        ]

    def _next_down(self, now: float) -> list[Effect]:
        if self._down is not None or not self._down_queue:
            return []
        call, origin = self._down_queue.pop(0)
        self._down = _Pending(call, origin, now)
        return [ToCharger(call.raw, call.action if origin is Origin.CSMS else None)]

    # -- uplink state -------------------------------------------------------------

    def uplink_lost(self, now: float | None = None) -> list[Effect]:
        """The uplink went away: calls awaiting the CSMS are answered locally."""
        if now is None:
            now = self._now
        self.state = State.OFFLINE
        effects: list[Effect] = []
        retries = self._retries
        self._retries = {}
        if self._up is not None and self._up.origin is Origin.CHARGER:
            effects.append(Answer(self._up.call))
            received = self._up.received or self._up.call
            effects.extend(map(Answer, retries.get(received.id, ())))
        self._up = None
        while self._up_queue:
            call, origin = self._up_queue.pop(0)
            if origin is Origin.CHARGER:
                effects.append(Answer(call))
                effects.extend(map(Answer, retries.get(call.id, ())))
        if self._down is not None and self._down.origin is Origin.CSMS:
            self._down = None
        self._down_queue = [x for x in self._down_queue if x[1] is not Origin.CSMS]
        effects.extend(self._next_down(now))
        return effects

    def uplink_back(self, *, draining: bool) -> None:
        """The uplink is open again; DRAINING while stored messages wait for replay."""
        self.state = State.DRAINING if draining else State.ONLINE

    def drained(self) -> None:
        self.state = State.ONLINE

    # -- errors ---------------------------------------------------------------------

    def _refuse(self, exc: FrameError, event: str, *, to_charger: bool) -> list[Effect]:
        note = Note(event, {"kind": exc.kind.value, "message_id": exc.message_id})
        code = self.dialect.error_code(exc.kind)
        if code is None:
            return [note]
        text = frames.error(exc.message_id, code, exc.description)
        return [note, ToCharger(text) if to_charger else ToCsms(text)]
