"""The demonstration CSMS: OCPP 1.6 on ``ws://127.0.0.1:<port>/ocpp/<identity>``.

Built on the ``ocpp`` package, independently of the controller. It answers every call a
charger sends in a normal session (every idTag Accepted), hands out transactionIds from
1 up, and records every frame per identity, so that the demonstration can compare what
reached the CSMS with what the chargers were answered. :meth:`DemoCsms.stop` takes it
down (every uplink drops, as in an internet outage) and :meth:`DemoCsms.start` brings it
back on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call_result
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from proxy.demo import Exchange, Frame, Recorder, exchanges

__all__ = ["DemoCsms"]

_Handler = TypeVar("_Handler", bound=Callable[..., Any])

#: Heartbeat interval the demo CSMS hands out in BootNotification answers (s).
HEARTBEAT_INTERVAL = 60


def handles(action: str) -> Callable[[_Handler], _Handler]:
    """``ocpp.routing.on`` with its type: marks a ChargePoint method as the handler of
    ``action``."""
    decorator: Callable[[_Handler], _Handler] = on(action)
    return decorator


def now_iso() -> str:
    """The current time as OCPP writes it (UTC, milliseconds, ``Z``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Handlers(ChargePoint16):  # type: ignore[misc]  # ocpp ships no type information
    """The CSMS side of one charger's connection."""

    def __init__(self, csms: DemoCsms, identity: str, connection: Recorder) -> None:
        super().__init__(identity, connection, response_timeout=10)
        self.csms = csms

    @handles("BootNotification")
    def on_boot(self, **_: Any) -> Any:
        return call_result.BootNotification(
            current_time=now_iso(), interval=HEARTBEAT_INTERVAL, status="Accepted"
        )

    @handles("Heartbeat")
    def on_heartbeat(self, **_: Any) -> Any:
        return call_result.Heartbeat(current_time=now_iso())

    @handles("StatusNotification")
    def on_status(self, **_: Any) -> Any:
        return call_result.StatusNotification()

    @handles("Authorize")
    def on_authorize(self, **_: Any) -> Any:
        return call_result.Authorize(id_tag_info={"status": "Accepted"})

    @handles("StartTransaction")
    def on_start(self, **_: Any) -> Any:
        return call_result.StartTransaction(
            transaction_id=self.csms.assign_transaction_id(self.id),
            id_tag_info={"status": "Accepted"},
        )

    @handles("MeterValues")
    def on_meter_values(self, **_: Any) -> Any:
        return call_result.MeterValues()

    @handles("StopTransaction")
    def on_stop(self, **_: Any) -> Any:
        return call_result.StopTransaction(id_tag_info={"status": "Accepted"})

    @handles("DataTransfer")
    def on_data_transfer(self, **_: Any) -> Any:
        return call_result.DataTransfer(status="Accepted")


class DemoCsms:
    """A CSMS on ``ws://127.0.0.1:<port>/ocpp``; chargers (here: the controller's uplinks)
    connect to ``<url>/<identity>``. Use as ``async with DemoCsms() as csms``."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        #: identity -> every frame of all its connections, in order.
        self.frames: defaultdict[str, list[Frame]] = defaultdict(list)
        #: identity -> the transactionIds handed out to it.
        self.assigned: defaultdict[str, set[int]] = defaultdict(set)
        #: Connections accepted so far (a restart makes every uplink connect again).
        self.connections = 0
        self._ids = itertools.count(1)
        self._server: Server | None = None
        self._port: int | None = None
        self._live: set[ServerConnection] = set()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the demo CSMS has not been started")
        return self._port

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/ocpp"

    @property
    def running(self) -> bool:
        return self._server is not None

    def assign_transaction_id(self, identity: str) -> int:
        """The next transactionId (increasing over the whole CSMS)."""
        tx_id = next(self._ids)
        self.assigned[identity].add(tx_id)
        return tx_id

    def ledger(self, identity: str) -> list[Exchange]:
        """The calls this CSMS received from ``identity``, each with the answer it sent."""
        return exchanges(self.frames[identity], "received")

    async def start(self) -> None:
        """Listen: on a free port the first time, on the same port after :meth:`stop`."""
        self._server = await serve(
            self._handle,
            self.host,
            self._port or 0,
            subprotocols=[Subprotocol("ocpp1.6")],
            compression=None,
            ping_interval=None,
            server_header=None,
        )
        self._port = next(iter(self._server.sockets)).getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close every connection (1001, going away)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        async with asyncio.timeout(10):
            await server.wait_closed()

    async def __aenter__(self) -> DemoCsms:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        identity = unquote(urlsplit(ws.request.path).path.rstrip("/").rsplit("/", 1)[-1])
        self.connections += 1
        recorder = Recorder(ws)
        recorder.frames = self.frames[identity]  # one ledger across reconnects
        station = _Handlers(self, identity, recorder)
        self._live.add(ws)
        try:
            with contextlib.suppress(ConnectionClosed):
                await station.start()
        finally:
            self._live.discard(ws)
