"""A TCP fault relay between the controller and the CSMS peer (RELIABILITY.md 5.2, item 3).

Point the controller's ``csms.url`` at ``relay.url``; every connection is relayed to the
target port, byte for byte, until a test changes the mode:

    pass        forward both ways (the default)
    blackhole   stop forwarding and hold the bytes, no FIN, no RST; new connections are
                accepted and held too (a dead path: only timeouts and pings notice)
    reset       every open connection is reset (SO_LINGER 0, RST both ways) and new ones
                are reset as soon as they are accepted (the CSMS is unreachable)

``drop_all()`` closes every relayed connection once (FIN both ways, or RST with
``rst=True``) and leaves the mode as it is. Use as ``async with FaultRelay(port) as relay``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from types import TracebackType
from typing import Literal, Self

Mode = Literal["pass", "blackhole", "reset"]

_CHUNK = 65536


def _reset(writer: asyncio.StreamWriter) -> None:
    """Abort a connection with an RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """One relayed connection: the accepted side and the side towards the target."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.target: asyncio.StreamWriter | None = None
        self.done = asyncio.Event()

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client, self.target) if w is not None]


class FaultRelay:
    """Relays ``127.0.0.1:<port>`` to ``target_host:target_port``."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.mode: Mode = "pass"
        #: Connections accepted so far, and those dropped or reset by the relay.
        self.accepted = 0
        self.dropped = 0
        #: time.monotonic() of every accepted connection (connect attempts through it).
        self.accept_times: list[float] = []
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._accepted, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stop listening and abort every relayed connection; leaves no task behind."""
        if self._server is not None:
            self._server.close()
            self._server = None
        self.mode = "reset"
        self._flowing.set()
        for link in list(self._links):
            link.done.set()
            for writer in link.writers():
                writer.transport.abort()
        tasks = list(self._tasks)
        if tasks:
            # The accepting tasks end by themselves once their link is done; cancelling
            # them would make asyncio's stream callback log the cancellation.
            _, pending = await asyncio.wait(tasks, timeout=2.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- faults

    def set_mode(self, mode: Mode) -> None:
        """Switch mode; ``reset`` also resets every open connection at once."""
        self.mode = mode
        if mode == "blackhole":
            self._flowing.clear()
            return
        if mode == "reset":
            self.drop_all(rst=True)
        self._flowing.set()

    def drop_all(self, *, rst: bool = False) -> int:
        """Close every relayed connection (both sides); how many there were."""
        links = list(self._links)
        for link in links:
            for writer in link.writers():
                if rst:
                    _reset(writer)
                else:
                    writer.close()
            link.done.set()
        self.dropped += len(links)
        return len(links)

    @property
    def open_connections(self) -> int:
        return len(self._links)

    # -- relaying

    def _spawn(self, coro: object) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self.accepted += 1
        self.accept_times.append(time.monotonic())
        if self.mode == "reset":
            self.dropped += 1
            _reset(writer)
            return
        link = _Link(writer)
        self._links.add(link)
        try:
            await self._flowing.wait()
            if link.done.is_set():
                return
            try:
                target_reader, link.target = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                return
            if link.done.is_set() or self.mode == "reset":
                return
            pumps = [
                self._spawn(self._pump(reader, link.target, link)),
                self._spawn(self._pump(target_reader, writer, link)),
            ]
            await link.done.wait()
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            self._links.discard(link)
            for w in link.writers():
                w.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        try:
            while True:
                await self._flowing.wait()
                data = await reader.read(_CHUNK)
                await self._flowing.wait()
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    break
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            link.done.set()
