"""One charger's session: its socket, its uplink, and the router between them.

The session is the I/O driver of :class:`~proxy.router.Router`: it reads frames from
both sockets, hands them to the router with the loop's clock, and carries out the
effects in order. When the charger closes, the uplink is closed with a matching code.
When the uplink is lost, calls awaiting the CSMS become :class:`~proxy.router.Answer`
effects for the offline responder, the uplink is reopened with back-off, and the
outbox is drained (DRAINING) before the session is ONLINE again. Without a responder
(strict mode) the charger is closed instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from time import perf_counter
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import OPEN

from config.settings import CsmsSettings, UplinkSettings
from proxy.crashpoints import ARMED, crashpoint
from proxy.direct import DirectClientConnection, DirectServerConnection, text_frame
from proxy.frames import Call, CallError, CallResult, FrameError
from proxy.frames import parse as parse_frame
from proxy.metrics import Metrics
from proxy.router import (
    Answer,
    Effect,
    Exchange,
    Note,
    OwnResult,
    ReplayResult,
    Router,
    State,
    ToCharger,
    ToCsms,
    Unresponsive,
)
from proxy.store import StoreError
from proxy.uplink import (
    UplinkRefused,
    UplinkRequest,
    UplinkUnavailable,
    backoff,
    open_uplink,
)

# Close codes an endpoint may send (RFC 6455 §7.4); others are mapped on relay.
_SENDABLE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


#: Closes by which a CSMS says it is going away or in trouble, not that it refuses the
#: charger: the session goes offline and keeps the charger.
_OUTAGE_CODES = frozenset({1001, 1005, 1006, 1011, 1012, 1013, 1014})


def csms_dropped_charger(code: int | None) -> bool:
    """Whether a CSMS close means "this charger, go away" (relayed to the charger) rather
    than an outage (the charger is kept and served offline)."""
    return code is not None and code not in _OUTAGE_CODES


def relay_close_code(code: int | None) -> int:
    """The code to close one side with after the other side closed with ``code``."""
    if code is None or code in (1005, 1006):
        return 1001 if code == 1006 else 1000
    if code in _SENDABLE or 3000 <= code <= 4999:
        return code
    return 1000


def writable_now(conn: ServerConnection | ClientConnection) -> bool:
    """Whether a frame can be written at once: open, not paused by flow control, no
    fragmented send under way."""
    return (
        conn.protocol.state is OPEN
        and conn.send_in_progress is None
        and not conn.paused
        and not conn.transport.is_closing()
    )


def _queue_text(conn: ServerConnection | ClientConnection, text: str) -> None:
    """Put a text frame in the connection's outgoing buffer (``writable_now`` must
    hold), built here where no extension is in use, else by the protocol object."""
    protocol = conn.protocol
    frame = text_frame(protocol, text)
    if frame is None:
        protocol.send_text(text.encode())
    else:
        protocol.writes.append(frame)


def write_now(conn: ServerConnection | ClientConnection, text: str) -> None:
    """Write a text frame at once (``writable_now`` must hold), after anything the
    connection's protocol has buffered, as ``send`` does on that path."""
    protocol = conn.protocol
    if not protocol.writes:
        frame = text_frame(protocol, text)
        if frame is not None:
            conn.transport.write(frame)
            return
    _queue_text(conn, text)
    conn.send_data()


class _Flusher:
    """Frames passed through, written together once per turn of the event loop: the
    first frame of a turn goes at once (a lone frame waits for nothing), the others
    routed while handling the same poll's sockets leave together at the end of the
    turn, so a busy peer reads them in one wake-up rather than one at a time. A
    connection's frames keep their order (they wait in its protocol's buffer, which
    every other send empties first)."""

    __slots__ = ("loop", "pending", "scheduled")

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pending: list[ServerConnection | ClientConnection] = []
        self.scheduled = False

    def write(self, conn: ServerConnection | ClientConnection, text: str) -> None:
        """Write a text frame this turn (``writable_now`` must hold)."""
        _queue_text(conn, text)
        loop = asyncio.get_running_loop()
        if loop is not self.loop:  # a new event loop (tests run many): start afresh
            self.loop, self.pending, self.scheduled = loop, [], False
        if not self.scheduled:  # the first frame of a turn goes at once
            self.scheduled = True
            loop.call_soon(self.flush)
            conn.send_data()
            return
        self.pending.append(conn)

    def flush(self) -> None:
        self.scheduled = False
        pending, self.pending = self.pending, []
        for conn in pending:
            with contextlib.suppress(Exception):  # a lost transport: its close follows
                conn.send_data()


_flusher = _Flusher()
write_soon = _flusher.write


async def send_text(conn: ServerConnection | ClientConnection, text: str) -> None:
    """``conn.send(text)`` without its per-message context manager when nothing is in
    the way; anything else takes ``send``."""
    if writable_now(conn):
        write_now(conn, text)
        return
    await conn.send(text)


class UplinkGone(Exception):
    """The uplink closed while the controller waited for the CSMS."""


class Responder(Protocol):
    """Answers a charger's call while the uplink is not there (the offline responder)."""

    async def answer(self, session: Session, call: Call) -> str | None: ...

    def answer_soon(self, session: Session, call: Call, then: Callable[[str], None]) -> bool: ...


class Observer(Protocol):
    """Learns from exchanges that pass through (cache, local lists, transaction ids)."""

    async def exchange(self, session: Session, effect: Exchange) -> None: ...


class Drainer(Protocol):
    """Replays a charger's stored messages once its uplink is back."""

    async def drain(self, session: Session) -> None: ...


class ConnectLimiter:
    """Spaces uplink openings site-wide: at most ``rate`` per second.

    The limit holds in every 100 ms window (at most rate/10 openings in any of them),
    openings go one at a time at least half an interval apart, and a waiter woken late
    by a busy event loop catches up within the window instead of losing its turn.

    Sessions wait out their back-off in :meth:`sleep_until_reachable`. One uplink getting
    through wakes them all (the CSMS is back). While none gets through, the site still
    tries the CSMS at least every ``probe_interval`` seconds: when no opening has been
    tried for that long, the session that has waited longest (and at least its
    ``min_wait``) is woken to try, so the site notices the CSMS back within about that
    long, however far each uplink's own back-off has grown.
    """

    WINDOW = 0.1

    def __init__(self, rate: float, probe_interval: float = 0.0) -> None:
        self._interval = 1.0 / rate
        self._per_window = max(1, int(rate * self.WINDOW))
        self._recent: deque[float] = deque(maxlen=self._per_window)
        self._lock = asyncio.Lock()
        self._queued = 0
        self._probe_interval = probe_interval
        #: sessions waiting out their back-off, oldest first -> when a probe may wake them
        self._sleepers: dict[asyncio.Future[None], float] = {}
        self._last_try = float("-inf")
        self._prober: asyncio.Task[None] | None = None
        #: how many waits a probe cut short
        self.probes = 0

    async def acquire(self, max_wait: float | None = None) -> bool:
        """Wait for the next opening; False (nothing taken) if it is likely further
        away than ``max_wait`` seconds."""
        loop = asyncio.get_running_loop()
        if max_wait is not None and (self._queued + 1) * self._interval > max_wait:
            return False
        self._queued += 1
        try:
            async with self._lock:
                while True:
                    now = loop.time()
                    wait = 0.0
                    if self._recent:
                        wait = self._recent[-1] + self._interval / 2 - now
                    if len(self._recent) == self._per_window:
                        wait = max(wait, self._recent[0] + self.WINDOW - now)
                    if wait <= 0:
                        break
                    await asyncio.sleep(wait)
                now = loop.time()
                self._recent.append(now)
                self._last_try = now
        finally:
            self._queued -= 1
        return True

    def reached(self) -> None:
        """An uplink just opened: wake every session waiting out its back-off."""
        sleepers, self._sleepers = self._sleepers, {}
        for fut in sleepers:
            if not fut.done():
                fut.set_result(None)

    async def sleep_until_reachable(self, delay: float, min_wait: float = 0.0) -> None:
        """Sleep ``delay`` seconds, or less if another uplink opens meanwhile, or if a
        probe picks this session (not before ``min_wait`` seconds)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._sleepers[fut] = loop.time() + min_wait
        if self._probe_interval > 0 and (self._prober is None or self._prober.done()):
            self._prober = asyncio.create_task(self._probe())
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await fut
        finally:
            self._sleepers.pop(fut, None)

    async def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        while self._sleepers:
            now = loop.time()
            due = self._last_try + self._probe_interval
            if now < due:
                await asyncio.sleep(due - now)
                continue
            # a sleeper whose wait ended (timed out, cancelled) leaves on its next turn
            waiting = {f: at for f, at in self._sleepers.items() if not f.done()}
            ready = next((f for f, at in waiting.items() if at <= now), None)
            if ready is None:
                await asyncio.sleep(min(waiting.values(), default=now + 0.01) - now)
                continue
            del self._sleepers[ready]
            ready.set_result(None)
            self.probes += 1
            # its attempt may wait for the rate: count the try from now
            self._last_try = now

    async def close(self) -> None:
        """Stop probing (the sessions are gone or going)."""
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober


@dataclass(frozen=True, slots=True)
class Reconnect:
    """What a session needs to reopen its uplink by itself."""

    csms: CsmsSettings
    uplink: UplinkSettings
    request: UplinkRequest
    limiter: ConnectLimiter
    drainer: Drainer | None = None
    tls: ssl.SSLContext | None = None


class Session:
    """The live connection of one charger, with or without its uplink."""

    def __init__(
        self,
        identity: str,
        charger: ServerConnection,
        uplink: ClientConnection | None,
        router: Router,
        log: Any,
        *,
        responder: Responder | None = None,
        observer: Observer | None = None,
        reconnect: Reconnect | None = None,
        metrics: Metrics | None = None,
        serial_cn: str | None = None,
    ) -> None:
        self.identity = identity
        self.charger = charger
        self.uplink = uplink
        self.router = router
        self.log = log
        self.responder = responder
        self.observer = observer
        self._reconnect = reconnect
        #: What the uplink is reopened with (its credentials change with the charger's).
        self.uplink_request = reconnect.request if reconnect is not None else None
        self.metrics = metrics if metrics is not None else Metrics()
        self._forwarded = self.metrics.forwarded
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._clock = loop.time
        self.connected_at = self._clock()
        #: The status of a BootNotification answered offline; None if none was.
        self.boot_status: str | None = None
        #: Offline stores under way, and completed: the drain ends only when both are quiet.
        self.pending_stores = 0
        self.stored_count = 0
        #: Replay progress, for logs and the admin API.
        self.replayed = 0
        self.replay_left = 0
        self._waiters: dict[str, asyncio.Future[CallResult | CallError]] = {}
        self._own_waiters: dict[str, asyncio.Future[CallResult | CallError]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        #: Set once the charger and the uplink are both closed.
        self.closed: asyncio.Future[None] = loop.create_future()
        # made when a drain first waits for it (an Event costs 600 bytes per charger)
        self._stored: asyncio.Event | None = None
        self._drain: asyncio.Task[None] | None = None
        #: Profile 3 by serial number: the certificate CN the serial must be found in.
        self._serial_cn = serial_cn
        #: Frames that are not OCPP-J at all, counted per minute (B13).
        self.max_bad_frames_per_minute = 60
        self._bad_since = 0.0
        self._bad_count = 0
        # Frames handed over by the connections themselves (proxy.direct): each
        # direction keeps its order, so a frame is taken directly only while its
        # loop is idle and nothing of that direction is still being applied.
        self._down_busy = False
        self._up_busy = False
        self._down_pending: asyncio.Future[None] | None = None
        self._up_pending: asyncio.Future[None] | None = None

    @property
    def subprotocol(self) -> str:
        return self.router.dialect.subprotocol

    @property
    def state(self) -> State:
        return self.router.state

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"{name}:{self.identity}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.log.error(
                "session_task_failed", task=task.get_name(), error=repr(exc), exc_info=exc
            )

    async def run(self) -> None:
        """Serve until the charger goes away (or is closed because its uplink went)."""
        # Frames are taken directly from here on, when the session is set up (state,
        # mappings, drain decided) and its loops run.
        if isinstance(self.charger, DirectServerConnection) and self._serial_cn is None:
            self.charger.on_text = self._direct_from_charger
        if self.uplink is not None:
            self._hook_uplink(self.uplink)
            self._spawn(self._uplink_loop(self.uplink), "uplink")
        elif self.responder is not None and self._reconnect is not None:
            self._spawn(self._reconnect_loop(first=True), "reconnect")
        try:
            await self._charger_loop()
        finally:
            self._closing = True
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._fail_waiters(own=True)
            uplink = self.uplink
            if uplink is not None:
                code = relay_close_code(self.charger.close_code)
                await uplink.close(code, self.charger.close_reason or "")
            self._note_protocol_close()
            self.log.info(
                "charger_disconnected",
                code=self.charger.close_code,
                reason=self.charger.close_reason,
            )
            if not self.closed.done():
                self.closed.set_result(None)

    def _note_protocol_close(self) -> None:
        """Count a charger closed for an oversized frame (1009) or bad UTF-8 (1007)."""
        sent = getattr(self.charger.protocol, "close_sent", None)
        code = getattr(sent, "code", None)
        event = {1009: "oversized_frame", 1007: "invalid_utf8"}.get(code or 0)
        if event is not None:
            self.metrics.security_events[event] += 1
            self.log.warning("security_event", security_event=event)

    async def _charger_loop(self) -> None:
        router = self.router
        clock = self._clock
        with contextlib.suppress(ConnectionClosed):
            async for message in self.charger:
                pending = self._down_pending
                if pending is not None:
                    self._down_pending = None
                    await pending
                if self._serial_cn is not None and not await self._serial_ok(message):
                    return
                self._down_busy = True
                try:
                    await self._apply(router.charger_frame(message, clock()))
                finally:
                    self._down_busy = False

    # -- frames handed over directly (proxy.direct) --------------------------------

    def _hook_uplink(self, uplink: ClientConnection) -> None:
        if isinstance(uplink, DirectClientConnection):
            uplink.on_text = lambda text: self._direct_from_csms(uplink, text)

    def _direct_from_charger(self, text: str) -> bool:
        pending = self._down_pending
        if self._down_busy or self._closing or (pending is not None and not pending.done()):
            return False
        self._dispatch(self.router.charger_frame(text, self._clock()), up=False)
        return True

    def _direct_from_csms(self, uplink: ClientConnection, text: str) -> bool:
        if uplink is not self.uplink:
            return False  # dropped as unresponsive: the uplink loop ignores the rest
        pending = self._up_pending
        if self._up_busy or self._closing or (pending is not None and not pending.done()):
            return False
        self._dispatch(self.router.csms_frame(text, self._clock()), up=True)
        return True

    def _dispatch(self, effects: list[Effect], *, up: bool) -> None:
        """Apply the effects of a frame taken directly: at once when each is a write
        that can go out now, else in a task that the direction's loop waits for."""
        previous = self._up_pending if up else self._down_pending
        if previous is None or previous.done():
            try:
                if self._write_all_now(effects):
                    return
                first = effects[0] if len(effects) == 1 and not up else None
                if type(first) is Answer and self._answer_soon(first.call):
                    return
            except Exception as exc:  # the frame was routed already: never route it twice
                self.log.error("session_dispatch_failed", error=repr(exc))
                return
        task = self._loop.create_task(self._apply_after(previous, effects))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        if up:
            self._up_pending = task
        else:
            self._down_pending = task

    async def _apply_after(
        self, previous: asyncio.Future[None] | None, effects: list[Effect]
    ) -> None:
        """Apply ``effects`` once what the direction had under way is done (its order)."""
        if previous is not None and not previous.done():
            with contextlib.suppress(Exception):
                await previous
        await self._apply(effects)

    def _write_all_now(self, effects: list[Effect]) -> bool:
        uplink, charger = self.uplink, self.charger
        for effect in effects:
            kind = type(effect)
            if kind is ToCsms:
                if uplink is not None and not writable_now(uplink):
                    return False
            elif kind is ToCharger:
                if not writable_now(charger):
                    return False
            elif kind is Note:
                if effect.event == "charger_bad_frame":  # type: ignore[union-attr]
                    return False
            elif kind is not ReplayResult and kind is not OwnResult:
                return False
        for effect in effects:
            kind = type(effect)
            if kind is ToCsms:
                self._count(effect, "up")  # type: ignore[arg-type]
                if uplink is not None:
                    write_soon(uplink, effect.text)  # type: ignore[union-attr]
            elif kind is ToCharger:
                self._count(effect, "down")  # type: ignore[arg-type]
                write_soon(charger, effect.text)  # type: ignore[union-attr]
            elif kind is Note:
                self._note(effect)  # type: ignore[arg-type]
            else:  # the answer to a call of the controller's own: its waiter resumes
                self._resolve(
                    self._waiters if kind is ReplayResult else self._own_waiters,
                    effect,  # type: ignore[arg-type]
                )
        return True

    def _count(self, effect: ToCsms | ToCharger, direction: str) -> None:
        """A frame passed through, for ``ocpp_lc_frames_forwarded_total``."""
        if effect.action is not None:
            self._forwarded[direction, effect.action] += 1

    def _note(self, effect: Note) -> None:
        self.metrics.notes[effect.event] += 1
        self.log.info(effect.event, **effect.fields)

    async def _serial_ok(self, message: str | bytes) -> bool:
        """Profile 3 by serial number: a BootNotification whose serial number is not in
        the certificate's CN closes the connection (2.0.1 B01.FR.12)."""
        if not isinstance(message, str) or '"BootNotification"' not in message:
            return True
        try:
            frame = parse_frame(message)
        except FrameError:
            return True
        if not isinstance(frame, Call) or frame.action != "BootNotification":
            return True
        payload = frame.payload if isinstance(frame.payload, dict) else {}
        station = payload.get("chargingStation")
        serial = (
            station.get("serialNumber")
            if isinstance(station, dict)
            else payload.get("chargePointSerialNumber")
        )
        if isinstance(serial, str) and serial and serial in (self._serial_cn or ""):
            return True
        self.metrics.security_events["certificate_serial_mismatch"] += 1
        self.log.warning("security_event", security_event="certificate_serial_mismatch")
        await self.charger.close(1008, "serial number does not match the certificate")
        return False

    async def _uplink_loop(self, uplink: ClientConnection) -> None:
        router = self.router
        clock = self._clock
        with contextlib.suppress(ConnectionClosed):
            async for message in uplink:
                if self.uplink is not uplink:
                    break  # dropped as unresponsive: its late frames are not read
                pending = self._up_pending
                if pending is not None:
                    self._up_pending = None
                    await pending
                self._up_busy = True
                try:
                    await self._apply(router.csms_frame(message, clock()))
                finally:
                    self._up_busy = False
        code, reason = uplink.close_code, uplink.close_reason
        if self._closing or self.uplink is not uplink:
            return
        self.log.info("uplink_lost", code=code, reason=reason)
        self.uplink = None
        self._fail_waiters()
        if self._drain is not None and not self._drain.done():
            self._drain.cancel()
        if self.responder is None or csms_dropped_charger(code):
            await self.charger.close(relay_close_code(code), reason or "")
            return
        await self._apply(router.uplink_lost(clock()))
        if self._reconnect is not None:
            self._spawn(self._reconnect_loop(first=False), "reconnect")

    async def _reconnect_loop(self, *, first: bool) -> None:
        rc = self._reconnect
        assert rc is not None
        csms = rc.csms
        up = rc.uplink
        waits = backoff(up.reconnect_min, up.reconnect_max, 2.0, up.reconnect_jitter)
        attempt = 0
        while True:
            wait = next(waits)
            if first and attempt == 0:
                wait = min(wait, up.reconnect_min)
            # Another uplink getting through means the CSMS is back: stop backing off
            # (the connect rate still spaces the reconnects out). A site probe may
            # cut the wait short, never below reconnect_min.
            await rc.limiter.sleep_until_reachable(wait, min(wait, up.reconnect_min))
            attempt += 1
            await rc.limiter.acquire()
            try:
                assert self.uplink_request is not None
                uplink = await open_uplink(csms, self.uplink_request, rc.tls)
            except (UplinkRefused, UplinkUnavailable) as exc:
                self.log.info("uplink_retry", attempt=attempt, error=str(exc))
                continue
            except Exception as exc:
                self.log.warning("uplink_retry", attempt=attempt, error=repr(exc))
                continue
            if uplink.subprotocol != self.subprotocol:
                self.log.warning("uplink_subprotocol_mismatch", got=uplink.subprotocol)
                await uplink.close(1002, "subprotocol changed")
                continue
            break
        self.uplink = uplink
        self._hook_uplink(uplink)
        rc.limiter.reached()
        self.router.uplink_back(draining=rc.drainer is not None)
        self.log.info("uplink_restored", attempts=attempt)
        self._spawn(self._uplink_loop(uplink), "uplink")
        if rc.drainer is not None:
            self.start_drain(rc.drainer)

    def _fail_waiters(self, *, own: bool = False) -> None:
        for waiters in (self._waiters, self._own_waiters) if own else (self._waiters,):
            for fut in waiters.values():
                if not fut.done():
                    fut.set_exception(UplinkGone())
                    # its caller may have been cancelled with the drain: not an error
                    fut.exception()
            waiters.clear()

    async def _apply(self, effects: list[Effect]) -> None:
        """Apply effects in order."""
        for effect in effects:
            kind = type(effect)
            if kind is ToCsms:
                self._count(effect, "up")  # type: ignore[arg-type]
                await self._send_up(effect.text)  # type: ignore[union-attr]
            elif kind is ToCharger:
                self._count(effect, "down")  # type: ignore[arg-type]
                try:  # noqa: SIM105 - per frame: try is free, suppress() allocates
                    await send_text(self.charger, effect.text)  # type: ignore[union-attr]
                except ConnectionClosed:
                    pass  # the charger loop sees the close
            elif kind is Answer:
                await self._answer(effect.call)  # type: ignore[union-attr]
            elif kind is Note:
                self._note(effect)  # type: ignore[arg-type]
                if effect.fields.get("kind") == "malformed" and effect.event == (  # type: ignore[union-attr]
                    "charger_bad_frame"
                ):
                    await self._bad_frame()
            elif kind is Exchange:
                if self.observer is not None:
                    try:
                        await self.observer.exchange(self, effect)  # type: ignore[arg-type]
                    except StoreError as exc:
                        # Learning is best effort: the frames went through already.
                        self.metrics.notes["learning_not_stored"] += 1
                        self.log.error("learning_not_stored", error=str(exc))
            elif kind is ReplayResult:
                self._resolve(self._waiters, effect)  # type: ignore[arg-type]
            elif kind is OwnResult:
                self._resolve(self._own_waiters, effect)  # type: ignore[arg-type]
            elif kind is Unresponsive:
                self._drop_unresponsive_uplink(effect.action)  # type: ignore[union-attr,arg-type]

    def check_timeouts(self) -> None:
        """Give up calls past ``call_timeout`` (run by the controller's timer)."""
        if self._closing:
            return
        effects = self.router.expire(self._clock())
        if effects:
            # in the charger direction's order: the local answers (stored messages
            # among them) go before those of any call the charger sends next
            self._dispatch(effects, up=False)

    def _drop_unresponsive_uplink(self, action: str) -> None:
        """The CSMS left a charger call unanswered past ``call_timeout``: the router went
        OFFLINE (the call answered locally; a transaction message stored, to be replayed
        in order); this uplink is closed and a new one opened."""
        uplink = self.uplink
        if uplink is None:
            return
        self.uplink = None
        self.metrics.notes["uplink_unresponsive"] += 1
        self.log.warning("uplink_unresponsive", action=action)
        self._fail_waiters()
        if self._drain is not None and not self._drain.done():
            self._drain.cancel()
        self._spawn(self._reopen(uplink), "reopen")

    async def _reopen(self, uplink: ClientConnection) -> None:
        await uplink.close(1001, "no answer within call_timeout")
        if self.responder is None:
            await self.charger.close(1001, "CSMS unresponsive")
        elif self._reconnect is not None:
            self._spawn(self._reconnect_loop(first=False), "reconnect")

    async def _bad_frame(self) -> None:
        """Close a charger that keeps sending what is not OCPP-J at all (B13)."""
        now = self._clock()
        if now - self._bad_since > 60.0:
            self._bad_since, self._bad_count = now, 0
        self._bad_count += 1
        if self._bad_count > self.max_bad_frames_per_minute:
            self.metrics.security_events["bad_frame_rate"] += 1
            self.log.warning("security_event", security_event="bad_frame_rate")
            await self.charger.close(1003, "too many frames that are not OCPP-J")

    @staticmethod
    def _resolve(
        waiters: dict[str, asyncio.Future[CallResult | CallError]],
        effect: ReplayResult | OwnResult,
    ) -> None:
        fut = waiters.pop(effect.call.id, None)
        if fut is not None and not fut.done():
            fut.set_result(effect.answer)

    async def _send_up(self, text: str) -> None:
        uplink = self.uplink
        if uplink is None:
            return
        # A send on a closing uplink is dropped here; the uplink loop then sees the
        # close and turns the call in flight into a local answer.
        try:  # noqa: SIM105 - per frame: try is free, suppress() allocates
            await send_text(uplink, text)
        except ConnectionClosed:
            pass

    async def _answer(self, call: Call) -> None:
        """Answer a charger call locally (stored first when it is a transaction
        message)."""
        if self.responder is None:
            return
        started = perf_counter()
        self._store_started(call)
        try:
            text = await self.responder.answer(self, call)
        finally:
            self._store_done()
        if text is not None:
            if ARMED:
                crashpoint("after_commit_before_ack")
            with contextlib.suppress(ConnectionClosed):
                await send_text(self.charger, text)
                self.metrics.offline_answer.observe(perf_counter() - started)
            if ARMED:
                crashpoint("after_ack")

    def _answer_soon(self, call: Call) -> bool:
        """:meth:`_answer` without a task, where the responder has a quick path for the
        call: its answer is written from the group commit's completion. Until then the
        charger direction waits on ``_down_pending`` (its order), and the store counts
        as pending (a replay does not overtake it)."""
        responder = self.responder
        if responder is None or self._closing:
            return False
        answered: asyncio.Future[None] = self._loop.create_future()
        then = partial(self._stored_soon, answered, perf_counter())
        if not responder.answer_soon(self, call, then):
            return False
        self._store_started(call)
        self._down_pending = answered
        return True

    def _store_started(self, call: Call) -> None:
        """A local answer is under way: the drain waits for it (see stores_settled)."""
        self.pending_stores += 1
        self.metrics.offline_answers[call.action] += 1

    def _store_done(self) -> None:
        self.pending_stores -= 1
        self.stored_count += 1
        if self._stored is not None:
            self._stored.set()

    def _stored_soon(self, answered: asyncio.Future[None], started: float, text: str) -> None:
        """The message of :meth:`_answer_soon` is durable (or failed): answer it
        (``started``: when the call was taken, ``perf_counter``)."""
        self._store_done()
        later = False
        try:
            if ARMED:
                crashpoint("after_commit_before_ack")
            charger = self.charger
            if self._closing or charger.protocol.state is not OPEN:
                return  # gone: the charger retries what it got no answer for
            if not writable_now(charger):  # flow control: the usual send, in order
                later = True
                self._spawn(self._send_answer(text, answered, started), "answer")
                return
            write_now(charger, text)
            self.metrics.offline_answer.observe(perf_counter() - started)
            if ARMED:
                crashpoint("after_ack")
        finally:
            if not later and not answered.done():
                answered.set_result(None)

    async def _send_answer(self, text: str, answered: asyncio.Future[None], started: float) -> None:
        try:
            with contextlib.suppress(ConnectionClosed):
                await send_text(self.charger, text)
                self.metrics.offline_answer.observe(perf_counter() - started)
            if ARMED:
                crashpoint("after_ack")
        finally:
            if not answered.done():
                answered.set_result(None)

    def stores_settled(self) -> bool:
        """Everything the charger sent so far has had its local answer stored: none
        being committed, and no charger frame routed but still waiting for its turn in
        the charger direction (a local answer routed there is stored only then; a
        replay that went ONLINE before it would let later messages overtake it)."""
        pending = self._down_pending
        return self.pending_stores == 0 and (pending is None or pending.done())

    async def wait_stored(self, wait_for: float) -> None:
        """Wait until the stores seen by :meth:`stores_settled` are done (or
        ``wait_for`` seconds)."""
        if self._stored is None:
            self._stored = asyncio.Event()
        stored = self._stored
        stored.clear()
        pending = self._down_pending
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_for):
                if pending is not None and not pending.done():
                    await asyncio.wait([pending])
                elif self.pending_stores:
                    await stored.wait()

    def start_drain(self, drainer: Drainer) -> bool:
        """Replay the outbox on the current uplink; a replay still winding down from
        an earlier uplink is finished first, never run beside."""
        if self.uplink is None:
            return False
        old = self._drain
        if old is not None and not old.done() and old.get_name() == self._drain_for():
            return False  # already replaying on this uplink
        self.router.uplink_back(draining=True)

        async def run() -> None:
            if old is not None and not old.done():
                old.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await old
            await drainer.drain(self)

        task = asyncio.ensure_future(run())
        task.set_name(self._drain_for())
        self._drain = task
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return True

    def _drain_for(self) -> str:
        return f"drain:{self.identity}:{id(self.uplink)}"

    async def call_csms(self, call: Call, wait_for: float) -> CallResult | CallError:
        """Send a call of the controller's own upstream and wait for the CSMS's answer.

        Raises UplinkGone if the uplink closes first, TimeoutError after ``wait_for`` s.
        """
        if self.uplink is None:
            raise UplinkGone()
        fut: asyncio.Future[CallResult | CallError] = self._loop.create_future()
        self._waiters[call.id] = fut
        await self._apply(self.router.replay_call(call, self._clock()))
        if ARMED:
            crashpoint("after_upstream_send")
        try:
            async with asyncio.timeout(wait_for):
                return await fut
        except TimeoutError:
            self._waiters.pop(call.id, None)
            await self._apply(self.router.abandon_upstream(call.id, self._clock()))
            raise

    async def call_charger(
        self, action: str, payload: Any, wait_for: float
    ) -> CallResult | CallError:
        """Send a call of the controller's own to the charger and wait for its answer."""
        effects = self.router.own_call(action, payload, self._clock())
        message_id = self.router.last_own_call_id
        fut: asyncio.Future[CallResult | CallError] = self._loop.create_future()
        self._own_waiters[message_id] = fut
        await self._apply(effects)
        try:
            async with asyncio.timeout(wait_for):
                return await fut
        finally:
            self._own_waiters.pop(message_id, None)
