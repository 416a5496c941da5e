"""The frame cutter of proxy/direct.py, against a peer that writes raw bytes.

A real websockets server runs with :class:`DirectServerConnection` on loopback; the
peer opens a socket, does the opening handshake by hand and then writes frames, cut
wherever a test says, so that every boundary case of the cutter is reached: frames
split across reads and several in one read, control frames between text frames,
fragmented and binary messages, bad UTF-8, wrong masking, oversized frames, a
declined message, a close. Each test also checks which path took the frames.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import ClassVar

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side, State

from proxy.direct import DirectClientConnection, DirectServerConnection, text_frame

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

MAX_SIZE = 4096


def masked_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head = bytes((first, bit | n))
    elif n < 65536:
        head = bytes((first, bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, bit | 127)) + n.to_bytes(8, "big")
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + apply_mask(payload, key)


def text(s: str, **kw: bool) -> bytes:
    return masked_frame(0x1, s.encode(), **kw)


@dataclass
class Site:
    """What the server saw: messages offered directly, messages read the usual way."""

    direct: list[str] = field(default_factory=list)
    usual: list[str | bytes] = field(default_factory=list)
    decline: set[str] = field(default_factory=set)
    conns: list[DirectServerConnection] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def site() -> AsyncIterator[tuple[Site, int]]:
    seen = Site()

    async def handler(ws: ServerConnection) -> None:
        assert isinstance(ws, DirectServerConnection)
        seen.conns.append(ws)

        def on_text(message: str) -> bool:
            if message in seen.decline:
                return False
            seen.direct.append(message)
            return True

        ws.on_text = on_text
        try:
            async for message in ws:
                seen.usual.append(message)
                if isinstance(message, str):
                    seen.direct.append(f"usual:{message}")
        except ConnectionClosed:
            pass
        finally:
            seen.closed.set()

    server: Server = await serve(
        handler,
        "127.0.0.1",
        0,
        create_connection=DirectServerConnection,
        max_size=MAX_SIZE,
        compression=None,
        ping_interval=None,
    )
    port = server.sockets[0].getsockname()[1]
    try:
        yield seen, port
    finally:
        for peer in RawPeer.opened:
            peer.close()
        RawPeer.opened.clear()
        server.close()
        await server.wait_closed()


class RawPeer:
    """A charger that writes bytes as it is told."""

    opened: ClassVar[list[RawPeer]] = []  # closed after each test, whatever its outcome

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        RawPeer.opened.append(self)

    @classmethod
    async def open(cls, port: int, *, early: bytes = b"") -> RawPeer:
        """Connect and do the opening handshake; ``early``: bytes sent right behind the
        request, before the answer."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                "GET /ocpp/CP1 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
            + early
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        return cls(reader, writer)

    async def send(self, data: bytes, *, cut: int = 0) -> None:
        """Write ``data``, in pieces of ``cut`` bytes with a pause between them (0: all)."""
        if not cut:
            self.writer.write(data)
            await self.writer.drain()
            return
        for i in range(0, len(data), cut):
            self.writer.write(data[i : i + cut])
            await self.writer.drain()
            await asyncio.sleep(0.001)

    async def read_frame(self) -> tuple[int, bytes]:
        first, second = await self.reader.readexactly(2)
        n = second & 0x7F
        if n == 126:
            n = int.from_bytes(await self.reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await self.reader.readexactly(8), "big")
        return first & 0x0F, await self.reader.readexactly(n)

    async def close_code(self) -> int:
        """The code of the close frame the server sends (after any other frames)."""
        while True:
            opcode, payload = await asyncio.wait_for(self.read_frame(), 5)
            if opcode == 0x8:
                return int.from_bytes(payload[:2], "big")

    def close(self) -> None:
        self.writer.close()


async def until(cond: object, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():  # type: ignore[operator]
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


def cutting(seen: Site) -> bool | None:
    return seen.conns[0]._cutting


async def test_frames_cut_anywhere_arrive_in_order(site: tuple[Site, int]) -> None:
    seen, port = site
    peer = await RawPeer.open(port)
    messages = [f'[2,"{i}","Heartbeat",{{"n":"{"x" * (i * 37 % 300)}"}}]' for i in range(40)]
    stream = b"".join(text(m) for m in messages)
    await peer.send(stream[:500], cut=1)  # byte by byte
    await peer.send(stream[500:1500], cut=7)
    await peer.send(stream[1500:])  # the rest, many frames in one read
    await until(lambda: len(seen.direct) == 40)
    assert seen.direct == messages
    assert seen.usual == []
    assert cutting(seen) is True
    peer.close()


async def test_sizes_at_each_length_encoding(site: tuple[Site, int]) -> None:
    seen, port = site
    peer = await RawPeer.open(port)
    sizes = [0, 1, 125, 126, 127, 65535 % MAX_SIZE, MAX_SIZE]
    messages = ["é" * (n // 2) + "a" * (n % 2) for n in sizes]
    for m in messages:
        await peer.send(text(m), cut=3 if len(m) < 200 else 0)
    await until(lambda: len(seen.direct) == len(messages))
    assert seen.direct == messages
    assert cutting(seen) is True
    peer.close()


async def test_large_frames_in_small_pieces(site: tuple[Site, int]) -> None:
    """Frames at the size limit arriving a few bytes at a time, the next frame's first
    bytes with the last piece of the one before."""
    seen, port = site
    peer = await RawPeer.open(port)
    messages = ["a" * MAX_SIZE, "b" * (MAX_SIZE - 1), "c"]
    await peer.send(b"".join(text(m) for m in messages), cut=61)
    await until(lambda: len(seen.direct) == 3)
    assert seen.direct == messages
    assert cutting(seen) is True
    peer.close()


async def test_ping_between_texts_is_answered_and_order_kept(site: tuple[Site, int]) -> None:
    seen, port = site
    peer = await RawPeer.open(port)
    data = text("a") + masked_frame(0x9, b"hello") + text("b")
    await peer.send(data, cut=2)
    opcode, payload = await asyncio.wait_for(peer.read_frame(), 5)
    assert (opcode, payload) == (0xA, b"hello")
    await until(lambda: len(seen.direct) == 2)
    assert seen.direct == ["a", "b"]
    assert cutting(seen) is True  # a control frame does not end the cutting
    peer.close()


async def test_fragmented_and_binary_take_the_usual_path_in_order(
    site: tuple[Site, int],
) -> None:
    seen, port = site
    peer = await RawPeer.open(port)
    data = (
        text("one")
        + masked_frame(0x1, b"tw", fin=False)
        + masked_frame(0x0, b"o", fin=True)
        + text("three")
        + masked_frame(0x2, b"\x00\x01")
        + text("four")
    )
    await peer.send(data)
    await until(lambda: len(seen.direct) >= 4 and len(seen.usual) >= 2)
    await asyncio.sleep(0.05)
    # "three" and "four" came after a message the assembler held, so they went after
    # it; every text message is handled once, in the order sent.
    texts = [m.removeprefix("usual:") for m in seen.direct]
    assert texts == ["one", "two", "three", "four"]
    assert b"\x00\x01" in seen.usual
    peer.close()


async def test_declined_message_goes_to_the_assembler(site: tuple[Site, int]) -> None:
    seen, port = site
    seen.decline.add("later")
    peer = await RawPeer.open(port)
    await peer.send(text("first") + text("later"))
    await until(lambda: seen.usual == ["later"])
    assert seen.direct == ["first", "usual:later"]
    peer.close()


async def test_invalid_utf8_fails_the_connection(site: tuple[Site, int]) -> None:
    seen, port = site
    peer = await RawPeer.open(port)
    await peer.send(text("ok") + masked_frame(0x1, b"\xff\xfe"))
    assert await peer.close_code() == 1007
    assert seen.direct == ["ok"]
    peer.close()


async def test_unmasked_frame_is_a_protocol_error(site: tuple[Site, int]) -> None:
    seen, port = site
    peer = await RawPeer.open(port)
    await peer.send(text("ok") + text("bare", mask=False) + text("after"))
    assert await peer.close_code() == 1002
    peer.close()
    await asyncio.wait_for(seen.closed.wait(), 5)
    assert seen.direct == ["ok"]
    assert cutting(seen) is False


async def test_oversized_frame_is_refused_before_it_is_complete(site: tuple[Site, int]) -> None:
    seen, port = site
    peer = await RawPeer.open(port)
    big = text("x" * (MAX_SIZE + 1))
    await peer.send(text("ok") + big[: len(big) // 2])  # only half of it is ever sent
    assert await peer.close_code() == 1009
    assert seen.direct == ["ok"]
    peer.close()


async def test_close_frame_closes_cleanly(site: tuple[Site, int]) -> None:
    seen, port = site
    peer = await RawPeer.open(port)
    await peer.send(text("last") + masked_frame(0x8, (1000).to_bytes(2, "big")) + text("no"))
    assert await peer.close_code() == 1000
    peer.close()  # the server waits for the TCP close after the closing handshake
    await asyncio.wait_for(seen.closed.wait(), 5)
    assert seen.direct == ["last"]
    assert seen.conns[0].close_code == 1000


async def test_frames_sent_with_the_handshake_are_not_lost(site: tuple[Site, int]) -> None:
    """Bytes of frames that arrive before the connection is open are the protocol's;
    the cutter starts only once the protocol's parser is between frames."""
    seen, port = site
    first = text("early")
    # a frame cut inside its header, the rest after the answer
    peer = await RawPeer.open(port, early=first[:3])
    await peer.send(first[3:] + text("then"), cut=1)
    await until(lambda: len(seen.direct) == 2)
    assert [m.removeprefix("usual:") for m in seen.direct] == ["early", "then"]
    peer.close()


async def test_client_side_reads_unmasked_frames_and_builds_masked_ones() -> None:
    """The uplink's connection: the server's unmasked frames are cut and offered; what
    text_frame builds for it is masked and reads back as the text."""
    received: list[str] = []
    server_got: list[str] = []

    async def handler(ws: ServerConnection) -> None:
        assert await ws.recv() == "go"
        for i in range(30):
            await ws.send(f"down {i} " + "y" * (i * 11))
        async for message in ws:
            assert isinstance(message, str)
            server_got.append(message)

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(
            f"ws://127.0.0.1:{port}",
            create_connection=DirectClientConnection,
            compression=None,
        ) as ws:
            assert isinstance(ws, DirectClientConnection)

            def on_text(message: str) -> bool:
                received.append(message)
                return True

            ws.on_text = on_text
            await ws.send("go")
            await until(lambda: len(received) == 30)
            assert received == [f"down {i} " + "y" * (i * 11) for i in range(30)]
            assert ws._cutting is True
            for n in (5, 200, 70000):
                frame = text_frame(ws.protocol, "z" * n)
                assert frame is not None
                assert frame[1] & 0x80  # masked, as a client must
                ws.protocol.writes.append(frame)
                ws.send_data()
            await until(lambda: len(server_got) == 3)
            assert server_got == ["z" * 5, "z" * 200, "z" * 70000]


@pytest.mark.parametrize("n", [0, 125, 126, 65535, 65536])
def test_text_frame_matches_the_protocol_on_the_server_side(n: int) -> None:
    message = "é" * (n // 2) + "a" * (n % 2)
    ours = Protocol(Side.SERVER, state=State.OPEN)
    theirs = Protocol(Side.SERVER, state=State.OPEN)
    theirs.send_text(message.encode())
    assert text_frame(ours, message) == b"".join(theirs.data_to_send())


def test_text_frame_client_side_parses_back() -> None:
    message = "charge " * 50
    frame = text_frame(Protocol(Side.CLIENT, state=State.OPEN), message)
    assert frame is not None
    reader = Protocol(Side.SERVER, state=State.OPEN)
    reader.receive_data(frame)
    (event,) = reader.events_received()
    assert isinstance(event, Frame)
    assert event.opcode is Opcode.TEXT and event.data.decode() == message


def test_text_frame_declines_while_a_fragmented_send_is_under_way() -> None:
    protocol = Protocol(Side.SERVER, state=State.OPEN)
    protocol.send_text(b"part", fin=False)
    assert text_frame(protocol, "x") is None
