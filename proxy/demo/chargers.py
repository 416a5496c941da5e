"""Simulated OCPP 1.6 chargers for the demonstration.

Each charger is an ``ocpp`` ChargePoint client with one connector. It boots, reports its
connector Available, then runs charging sessions until it is told to wind down: a
Heartbeat now and then, Authorize, StartTransaction, MeterValues every
``meter_period`` seconds with a rising energy register, StopTransaction, and the
StatusNotifications in between. It records every frame, so its ledger says exactly what
it sent and what it was answered, whoever answered (the CSMS through the controller, or
the controller itself while the uplink is down).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence
from typing import Any

from ocpp.exceptions import OCPPError
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from proxy.demo import Exchange, Recorder, exchanges
from proxy.demo.csms import now_iso

__all__ = ["DemoCharger"]

#: Seconds a charger waits for the answer to one of its calls.
RESPONSE_TIMEOUT = 15


class DemoCharger:
    """One simulated charger: ``await connect()``, ``await boot()``, then
    ``await run_sessions()`` until :meth:`wind_down`; :meth:`close` at the end."""

    def __init__(
        self,
        identity: str,
        base_url: str,
        cards: Sequence[str],
        *,
        meter_period: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.identity = identity
        self.url = f"{base_url}/{identity}"
        self.cards = list(cards)
        self.meter_period = meter_period
        self.rng = random.Random(seed)
        #: Energy register (Wh).
        self.meter = 10_000 + self.rng.randrange(0, 90_000, 10)
        #: Transactions started (answered Accepted) and calls that got no CALLRESULT.
        self.transactions = 0
        self.failed_calls = 0
        self._ws: ClientConnection | None = None
        self._recorder: Recorder | None = None
        self._station: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._winding_down = asyncio.Event()

    # -- connection --------------------------------------------------------------------

    async def connect(self) -> None:
        self._ws = await connect(
            self.url,
            subprotocols=[Subprotocol("ocpp1.6")],
            compression=None,
            open_timeout=10,
            ping_interval=None,
        )
        self._recorder = Recorder(self._ws)
        self._station = ChargePoint16(
            self.identity, self._recorder, response_timeout=RESPONSE_TIMEOUT
        )
        self._reader = asyncio.create_task(self._read(), name=f"demo-reader:{self.identity}")

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._station.start()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._ws is not None:
            await self._ws.close()

    def ledger(self) -> list[Exchange]:
        """Every call this charger sent, each with the answer it got."""
        return exchanges(self._recorder.frames if self._recorder else [], "sent")

    # -- behaviour ---------------------------------------------------------------------

    async def _call(self, payload: Any) -> Any:
        """Send one call; its result, or None for a CALLERROR or no answer in time."""
        try:
            return await self._station.call(payload, suppress=False)
        except (OCPPError, TimeoutError):
            self.failed_calls += 1
            return None

    async def _status(self, status: str) -> None:
        await self._call(
            call.StatusNotification(
                connector_id=1, error_code="NoError", status=status, timestamp=now_iso()
            )
        )

    async def boot(self) -> None:
        await self._call(
            call.BootNotification(
                charge_point_model="Demo AC 22",
                charge_point_vendor="ocpp-lc demo",
                firmware_version="1.0.0",
            )
        )
        await self._status("Available")

    def wind_down(self) -> None:
        """Finish the session under way (if any) with a StopTransaction, then stop."""
        self._winding_down.set()

    @property
    def winding_down(self) -> bool:
        return self._winding_down.is_set()

    async def _pause(self, seconds: float) -> None:
        """Sleep, or return early once winding down."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._winding_down.wait()

    async def run_sessions(self) -> None:
        """Charging sessions one after the other until :meth:`wind_down`."""
        await self._pause(self.rng.uniform(0.0, 0.6))
        cycle = 0
        while not self.winding_down:
            card = self.cards[cycle % len(self.cards)]
            cycle += 1
            if cycle % 3 == 0:
                await self._call(call.Heartbeat())
            await self._session(card)
            await self._pause(self.rng.uniform(0.3, 1.0))

    async def _session(self, card: str) -> None:
        authorized = await self._call(call.Authorize(id_tag=card))
        if authorized is None or authorized.id_tag_info.get("status") != "Accepted":
            return
        await self._status("Preparing")
        started = await self._call(
            call.StartTransaction(
                connector_id=1, id_tag=card, meter_start=self.meter, timestamp=now_iso()
            )
        )
        if started is None:
            await self._status("Available")
            return
        tx_id = started.transaction_id
        accepted = started.id_tag_info.get("status") == "Accepted"
        if accepted:
            self.transactions += 1
            await self._status("Charging")
            for _ in range(self.rng.randint(3, 6)):
                await self._pause(self.meter_period)
                if self.winding_down:
                    break
                self.meter += self.rng.randrange(20, 60)
                await self._call(
                    call.MeterValues(
                        connector_id=1,
                        transaction_id=tx_id,
                        meter_value=[
                            {
                                "timestamp": now_iso(),
                                "sampled_value": [
                                    {
                                        "value": str(self.meter),
                                        "context": "Sample.Periodic",
                                        "measurand": "Energy.Active.Import.Register",
                                        "unit": "Wh",
                                    }
                                ],
                            }
                        ],
                    )
                )
        await self._call(
            call.StopTransaction(
                transaction_id=tx_id,
                meter_stop=self.meter,
                timestamp=now_iso(),
                id_tag=card,
                reason="EVDisconnected" if accepted else "DeAuthorized",
            )
        )
        await self._status("Finishing")
        await self._status("Available")
