"""WebSocket connections that hand complete text messages straight to a callback.

websockets queues every received message in an assembler and wakes the task that
reads it; a session then routes the frame and writes it out on the other connection.
For the frames a session can forward at once (the pass-through case) that queue and
that wake-up are most of the cost. These connections offer each complete, unfragmented
text message to ``on_text`` first, from the protocol callback that parsed it; the
callback returns False to leave it to the usual path (the assembler, in order). Control
frames, fragmented and binary messages, and everything during and after the closing
handshake take the usual path. UTF-8 and size limits are checked by the protocol
before a frame gets here, as for any message.
"""

from __future__ import annotations

from collections.abc import Callable

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import Event

TextHandler = Callable[[str], bool]


def _offer(handler: TextHandler | None, frames_queued: int, event: Event) -> bool:
    if handler is None or frames_queued or type(event) is not Frame:
        return False
    if event.opcode is not Opcode.TEXT or not event.fin:
        return False
    try:
        text = bytes(event.data).decode()
    except UnicodeDecodeError:  # checked by the protocol already; the usual path decides
        return False
    return handler(text)


class DirectServerConnection(ServerConnection):
    """A charger's connection (see the module docstring)."""

    on_text: TextHandler | None = None

    def process_event(self, event: Event) -> None:
        if self.request is not None and _offer(self.on_text, len(self.recv_messages.frames), event):
            return
        super().process_event(event)


class DirectClientConnection(ClientConnection):
    """An uplink (see the module docstring)."""

    on_text: TextHandler | None = None

    def process_event(self, event: Event) -> None:
        if self.response is not None and _offer(
            self.on_text, len(self.recv_messages.frames), event
        ):
            return
        super().process_event(event)
