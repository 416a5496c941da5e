"""One charger's session: its socket, its uplink, and the router between them.

The session is the I/O driver of :class:`~proxy.router.Router`: it reads frames from
both sockets, hands them to the router with the loop's clock, and carries out the
effects in order. When one side closes, the other is closed with a matching code. When
the uplink is lost, calls awaiting the CSMS become :class:`~proxy.router.Answer`
effects, handled by the offline responder when there is one; without one (strict mode)
the charger is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from proxy.frames import Call
from proxy.router import (
    Answer,
    Effect,
    Exchange,
    Note,
    OwnResult,
    Router,
    State,
    ToCharger,
    ToCsms,
)

# Close codes an endpoint may send (RFC 6455 §7.4); others are mapped on relay.
_SENDABLE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


def relay_close_code(code: int | None) -> int:
    """The code to close one side with after the other side closed with ``code``."""
    if code is None or code in (1005, 1006):
        return 1001 if code == 1006 else 1000
    if code in _SENDABLE or 3000 <= code <= 4999:
        return code
    return 1000


class Responder(Protocol):
    """Answers a charger's call while the uplink is not there (the offline responder)."""

    async def answer(self, session: Session, call: Call) -> str | None: ...


class Observer(Protocol):
    """Learns from exchanges that pass through (cache, local lists, transaction ids)."""

    async def exchange(self, session: Session, effect: Exchange) -> None: ...


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
        on_own_result: Callable[[OwnResult], Awaitable[None]] | None = None,
    ) -> None:
        self.identity = identity
        self.charger = charger
        self.uplink = uplink
        self.router = router
        self.log = log
        self.responder = responder
        self.observer = observer
        self._on_own_result = on_own_result
        self._clock = asyncio.get_running_loop().time
        self.connected_at = self._clock()
        #: The status of a BootNotification answered offline; None if none was.
        self.boot_status: str | None = None

    @property
    def subprotocol(self) -> str:
        return self.router.dialect.subprotocol

    async def run(self) -> None:
        """Serve until the charger goes away (or is closed because its uplink went)."""
        up_task = asyncio.create_task(self._uplink_loop()) if self.uplink else None
        try:
            await self._charger_loop()
        finally:
            if up_task is not None:
                up_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await up_task
            if self.uplink is not None:
                code = relay_close_code(self.charger.close_code)
                await self.uplink.close(code, self.charger.close_reason or "")
            self.log.info(
                "charger_disconnected",
                code=self.charger.close_code,
                reason=self.charger.close_reason,
            )

    async def _charger_loop(self) -> None:
        router = self.router
        clock = self._clock
        with contextlib.suppress(ConnectionClosed):
            async for message in self.charger:
                await self._apply(router.charger_frame(message, clock()))

    async def _uplink_loop(self) -> None:
        uplink = self.uplink
        assert uplink is not None
        router = self.router
        clock = self._clock
        with contextlib.suppress(ConnectionClosed):
            async for message in uplink:
                await self._apply(router.csms_frame(message, clock()))
        code, reason = uplink.close_code, uplink.close_reason
        self.log.info("uplink_lost", code=code, reason=reason)
        self.uplink = None
        if self.responder is None:
            await self.charger.close(relay_close_code(code), reason or "")
            return
        await self._apply(router.uplink_lost())

    async def _apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            kind = type(effect)
            if kind is ToCsms:
                await self._send_up(effect.text)  # type: ignore[union-attr]
            elif kind is ToCharger:
                with contextlib.suppress(ConnectionClosed):
                    await self.charger.send(effect.text)  # type: ignore[union-attr]
            elif kind is Answer:
                await self._answer(effect.call)  # type: ignore[union-attr]
            elif kind is Note:
                self.log.info(effect.event, **effect.fields)  # type: ignore[union-attr]
            elif kind is Exchange:
                if self.observer is not None:
                    await self.observer.exchange(self, effect)  # type: ignore[arg-type]
            elif kind is OwnResult and self._on_own_result is not None:
                await self._on_own_result(effect)  # type: ignore[arg-type]

    async def _send_up(self, text: str) -> None:
        uplink = self.uplink
        if uplink is None:
            return
        # A send on a closing uplink is dropped here; the uplink loop then sees the
        # close and turns the call in flight into a local answer.
        with contextlib.suppress(ConnectionClosed):
            await uplink.send(text)

    async def _answer(self, call: Call) -> None:
        if self.responder is None:
            return
        text = await self.responder.answer(self, call)
        if text is not None:
            with contextlib.suppress(ConnectionClosed):
                await self.charger.send(text)

    async def own_call(self, action: str, payload: Any) -> None:
        """Send a call of the controller's own to the charger."""
        await self._apply(self.router.own_call(action, payload, self._clock()))

    @property
    def state(self) -> State:
        return self.router.state
