"""WebSocket connections that hand complete text messages straight to a callback.

websockets queues every received message in an assembler and wakes the task that
reads it; a session then routes the frame and writes it out on the other connection.
For the frames a session can forward at once (the pass-through case) that queue and
that wake-up are most of the cost. These connections offer each complete, unfragmented
text message to ``on_text`` first; the callback returns False to leave it to the usual
path (the assembler, in order).

Once the opening handshake is over and no extension was negotiated, received bytes are
cut into frames here (:class:`_FrameCutter`): an unfragmented text frame, masked as the
side requires and within the size limit, is unmasked, decoded and offered without
websockets' generator parser and Frame objects. Every other frame (control frames,
binary and fragmented messages, a text frame that is not valid UTF-8 or that
``on_text`` declines) is handed whole to the protocol, as if it had arrived alone, and
takes the usual path; so does everything from a frame over the size limit on, and
everything once the connection is no longer open. Frames are handled in the order they
arrived.

:func:`text_frame` is the sending half: the bytes of a text frame, as the protocol's
own ``send_text`` would write them when no extension is in use.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import GeneratorType
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN, Event, Protocol, Side, State
from websockets.streams import StreamReader

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C part
    from websockets.utils import apply_mask

TextHandler = Callable[[str], bool]

_AT_FRAME_START = StreamReader.at_eof.__code__
#: First byte of an unfragmented text frame without extension bits.
_TEXT_FIN = 0x81


def _offer_text(handler: TextHandler, payload: bytes | bytearray) -> bool:
    """Offer a text message's payload to ``handler``; one that is not valid UTF-8 is
    left to the usual path (whose checks fail the connection)."""
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        return False
    return handler(text)


def _offer(handler: TextHandler | None, frames_queued: int, event: Event) -> bool:
    if handler is None or frames_queued or type(event) is not Frame:
        return False
    if event.opcode is not Opcode.TEXT or not event.fin:
        return False
    return _offer_text(handler, bytes(event.data))


def _parser_between_frames(protocol: Protocol) -> bool:
    """Whether the protocol's parser waits for the first byte of a frame with nothing
    buffered (so whole frames can be handed to it from here on)."""
    gen: Any = protocol.parser
    while isinstance(gen, GeneratorType):
        inner = gen.gi_yieldfrom
        if inner is None:
            return gen.gi_code is _AT_FRAME_START
        gen = inner
    return False


def _length(data: bytes | bytearray, pos: int, second: int) -> tuple[int, int]:
    """Where the frame at ``pos`` has its mask or payload, and its payload length
    (the first past the data where its header is not complete)."""
    length = second & 0x7F
    if length < 126:
        return pos + 2, length
    head = pos + 4 if length == 126 else pos + 10
    return head, int.from_bytes(data[pos + 2 : head], "big")


def text_frame(protocol: Protocol, text: str) -> bytes | None:
    """The bytes of an unfragmented text frame carrying ``text`` (masked on the client
    side), or None where the protocol must build it (an extension in use, a fragmented
    send under way)."""
    if protocol.extensions or protocol.expect_continuation_frame:
        return None
    data = text.encode()
    n = len(data)
    client = protocol.side is Side.CLIENT
    if n < 126:
        head = bytes((_TEXT_FIN, n | 0x80 if client else n))
    elif n < 65536:
        head = bytes((_TEXT_FIN, 0xFE if client else 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((_TEXT_FIN, 0xFF if client else 127)) + n.to_bytes(8, "big")
    if not client:
        return head + data
    mask = os.urandom(4)
    return head + mask + apply_mask(data, mask)


class _FrameCutter:
    """Receiving for the connections below (see the module docstring)."""

    on_text: TextHandler | None = None
    #: Cutting frames here: set once the handshake is over and the protocol's parser
    #: is between frames; unset for good when anything is left to the protocol.
    _cutting: bool | None = None
    #: The start of a frame not yet complete (grown in place as bytes arrive, so that a
    #: large frame arriving in small pieces costs no more than arriving at once).
    _partial: bytearray | None = None

    # Provided by the websockets connection this is mixed into.
    protocol: Any
    recv_messages: Any

    def _usual(self, data: bytes | bytearray) -> None:
        raise NotImplementedError

    def _may_cut(self) -> bool:
        """Whether frames can be cut here from now on (decided once it can be)."""
        protocol = self.protocol
        if protocol.state is not OPEN:
            if protocol.state is not State.CONNECTING:
                self._cutting = False
            return False
        if protocol.extensions:
            self._cutting = False
            return False
        if self.on_text is None or not _parser_between_frames(protocol):
            return False  # not yet: asked again with the next bytes
        self._cutting = True
        return True

    def _receive(self, data: bytes | bytearray) -> None:
        if self._cutting is False or (self._cutting is None and not self._may_cut()):
            self._usual(data)
            return
        protocol = self.protocol
        partial = self._partial
        if partial is not None:
            partial += data
            data = partial
            self._partial = None
        if protocol.state is not OPEN:
            self._stop_cutting(data)
            return
        limit = protocol.max_message_size
        handler, queued = self.on_text, self.recv_messages
        masked = 0x80 if protocol.side is Side.SERVER else 0  # a server reads masked frames
        pos, end_of_data = 0, len(data)
        while pos < end_of_data:
            if end_of_data - pos < 2:
                break
            first, second = data[pos], data[pos + 1]
            head, length = _length(data, pos, second)
            if head > end_of_data:
                break
            if limit is not None and length > limit:
                # The protocol refuses it (and closes); it gets everything from here.
                self._stop_cutting(data[pos:])
                return
            body = head + 4 if second & 0x80 else head
            end = body + length
            if end > end_of_data:
                break
            taken = False
            if (
                first == _TEXT_FIN
                and second & 0x80 == masked
                and handler is not None
                and not len(queued.frames)  # messages before it in the assembler go first
            ):
                payload = data[body:end]
                if masked:
                    payload = apply_mask(payload, data[head:body])
                taken = _offer_text(handler, payload)
            if not taken:
                self._usual(data[pos:end])  # the frame alone, whole: the usual path
            if protocol.state is not OPEN:
                self._stop_cutting(data[end:])
                return
            pos = end
        if pos < end_of_data:
            if pos == 0 and type(data) is bytearray:
                self._partial = data  # still the same frame: kept, not copied
            else:
                self._partial = bytearray(data[pos:])

    def _stop_cutting(self, rest: bytes | bytearray) -> None:
        self._cutting = False
        self._partial = None
        if rest:
            self._usual(rest)


class DirectServerConnection(_FrameCutter, ServerConnection):
    """A charger's connection (see the module docstring)."""

    def data_received(self, data: bytes) -> None:
        self._receive(data)

    def _usual(self, data: bytes | bytearray) -> None:
        ServerConnection.data_received(self, bytes(data))

    def process_event(self, event: Event) -> None:
        if self.request is not None and _offer(self.on_text, len(self.recv_messages.frames), event):
            return
        super().process_event(event)


class DirectClientConnection(_FrameCutter, ClientConnection):
    """An uplink (see the module docstring)."""

    def data_received(self, data: bytes) -> None:
        self._receive(data)

    def _usual(self, data: bytes | bytearray) -> None:
        ClientConnection.data_received(self, bytes(data))

    def process_event(self, event: Event) -> None:
        if self.response is not None and _offer(
            self.on_text, len(self.recv_messages.frames), event
        ):
            return
        super().process_event(event)
