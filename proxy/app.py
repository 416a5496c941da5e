"""Composition root and lifecycle.

start: configure the garbage collector → open the store → start the charger server →
start the admin server. stop (SIGTERM): stop accepting, close chargers with 1001 and
their uplinks, close the admin server, close the store.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from types import TracebackType
from typing import Any

from config.logging import get_logger
from config.settings import Settings
from policies.local_list import parse_csv
from proxy.admin import AdminServer, build_app
from proxy.charger import ChargerServer
from proxy.offline import OfflineResponder
from proxy.replay import Replayer
from proxy.site import Site
from proxy.store import Store


class Controller:
    """The whole service, in-process: ``async with Controller(settings) as ctl``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log = get_logger(component="controller")
        self.store = Store(
            settings.store.path,
            busy_timeout_ms=settings.store.busy_timeout_ms,
            tx_id_start=settings.policy.provisional_tx_id_start,
        )
        self.site = Site(self.store, settings.policy)
        self.responder = OfflineResponder(settings, self.store, self.site)
        self.replayer = Replayer(settings, self.store)
        self.site.on_meter = self.replayer.meter
        self.chargers = ChargerServer(
            settings, responder=self.responder, observer=self.site, replayer=self.replayer
        )
        self.admin = AdminServer(settings.admin, build_app(self.ready, self.status))
        self._ready = False

    @property
    def listen_port(self) -> int:
        return self.chargers.port

    @property
    def admin_port(self) -> int:
        return self.admin.port

    def ready(self) -> bool:
        return self._ready

    def status(self) -> dict[str, Any]:
        return {"chargers": len(self.chargers.sessions)}

    async def start(self) -> None:
        # Long-lived objects are many and stable: collect the young generation more
        # rarely and keep start-up objects out of full collections.
        gc.set_threshold(20_000, 50, 100)
        await self.store.open()
        await self.site.load()
        await self._import_site_list()
        await self.chargers.start()
        await self.admin.start()
        gc.collect()
        gc.freeze()
        self._ready = True
        self.log.info(
            "controller_started",
            listen_port=self.listen_port,
            admin_port=self.admin_port,
            csms=self.settings.csms.url,
        )

    async def _import_site_list(self) -> None:
        path = self.settings.local_list.path
        if path is None:
            return
        entries = parse_csv(path.read_text(encoding="utf-8"))
        await self.store.replace_site_list(entries)
        self.log.info("site_list_imported", path=str(path), entries=len(entries))

    async def stop(self) -> None:
        self._ready = False
        self.log.info("controller_stopping")
        await self.chargers.close()
        await self.admin.close()
        await self.store.close()
        self.log.info("controller_stopped")

    async def __aenter__(self) -> Controller:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Controller(settings):
        await stop.wait()
