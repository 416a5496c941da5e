#!/usr/bin/env python3
"""Naive OCPP pass-through proxy: the floor for the controller's forwarding overhead.

Per downstream websocket: open one upstream websocket to UPSTREAM + the same path
(same subprotocol) and forward every frame both ways; no parsing, no buffering.
Default asyncio loop; websockets' default permessage-deflate is turned off on both hops.

Run on its own: ``python bench/naive_proxy.py --port 9001 --upstream ws://127.0.0.1:9000``
(prints READY when it listens).
"""

from __future__ import annotations

import argparse
import asyncio

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol


async def pump(
    src: ServerConnection | ClientConnection, dst: ServerConnection | ClientConnection
) -> None:
    try:
        async for msg in src:
            await dst.send(msg)
    except ConnectionClosed:
        pass


async def handler(down: ServerConnection, upstream: str) -> None:
    sub = [down.subprotocol] if down.subprotocol else None
    assert down.request is not None
    try:
        up = await connect(
            upstream + down.request.path, subprotocols=sub, compression=None, proxy=None
        )
    except Exception:
        await down.close(1011, "upstream unavailable")
        return
    async with up:
        tasks = {asyncio.create_task(pump(down, up)), asyncio.create_task(pump(up, down))}
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
    await down.close()


async def main(host: str, port: int, upstream: str) -> None:
    async with serve(
        lambda ws: handler(ws, upstream),
        host,
        port,
        subprotocols=[Subprotocol("ocpp1.6"), Subprotocol("ocpp2.0.1")],
        compression=None,
        backlog=4096,
    ):
        print("READY", flush=True)
        await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9001)
    ap.add_argument("--upstream", default="ws://127.0.0.1:9000")
    a = ap.parse_args()
    asyncio.run(main(a.host, a.port, a.upstream.rstrip("/")))
