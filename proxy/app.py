"""Composition root and lifecycle.

start: configure the garbage collector → open the store → start the charger server →
start the admin server. stop (SIGTERM): stop accepting, close chargers with 1001 and
their uplinks, close the admin server, close the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import signal
import sqlite3
import time
from types import TracebackType
from typing import Any

from config.logging import get_logger
from config.settings import Settings
from policies.admission import basic_header
from policies.local_list import ListFormatError, decode_csv, parse_csv
from proxy.admin import AdminServer, build_app
from proxy.charger import ChargerServer
from proxy.gate import Gate
from proxy.metrics import Metrics
from proxy.offline import OfflineResponder
from proxy.replay import Replayer
from proxy.router import State
from proxy.session import Session
from proxy.site import Site
from proxy.store import Store, StoreError

#: Seconds between two measures of the event loop's lag (see Controller._watch_loop).
LOOP_WATCH_PERIOD = 0.25
#: Seconds of the window over which the event loop's busy ratio is taken.
LOOP_WATCH_WINDOW = 5.0
#: A lag logged as ``event_loop_stalled`` (seconds).
LOOP_STALL = 1.0


class Controller:
    """The whole service, in-process: ``async with Controller(settings) as ctl``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log = get_logger(component="controller")
        self.metrics = Metrics()
        self.store = Store(
            settings.store.path,
            busy_timeout_ms=settings.store.busy_timeout_ms,
            tx_id_start=settings.policy.provisional_tx_id_start,
        )
        self.store.on_commit = self.metrics.store_commit.observe
        self.site = Site(self.store, settings.policy, self.metrics)
        self.responder = OfflineResponder(settings, self.store, self.site)
        self.replayer = Replayer(settings, self.store, self.metrics)
        self.site.on_meter = self.replayer.meter
        self.site.on_meter_now = self.replayer.meter_now
        self.site.on_csms_time = self.responder.clock.observe
        self.site.clock = self.responder.clock.now
        self.replayer.on_answer = self.site.learn_answer
        self.gate = Gate(settings, self.store, self.metrics, get_logger(component="security"))
        self.site.on_new_password = self._new_password
        self.chargers = ChargerServer(
            settings,
            responder=self.responder,
            observer=self.site,
            replayer=self.replayer,
            metrics=self.metrics,
            gate=self.gate,
        )
        self._gauges: dict[str, Any] = {}
        self.metrics.bind_state(self.metrics_state)
        self.admin = AdminServer(settings.admin, build_app(self))
        self._ready = False
        #: How the import of ``local_list.path`` at start-up went: ``not_set`` (no file
        #: named), ``imported``, or ``failed`` (the site list the store held is kept).
        self.site_list_import = "not_set"
        self._watchdog: asyncio.Task[None] | None = None
        self._timer: asyncio.Task[None] | None = None
        self._gc: asyncio.Task[None] | None = None
        self._loop_watch: asyncio.Task[None] | None = None

    @property
    def listen_port(self) -> int:
        return self.chargers.port

    @property
    def admin_port(self) -> int:
        return self.admin.port

    def ready(self) -> bool:
        return self._ready

    def status(self) -> dict[str, Any]:
        return {
            "chargers": len(self.chargers.sessions),
            "site_list_import": self.site_list_import,
        }

    def metrics_state(self) -> dict[str, Any]:
        """Scrape-time gauges: live session states plus the store figures the watchdog
        last read (the scrape itself does no I/O)."""
        uplinks = {"online": 0, "offline": 0, "draining": 0}
        replay_left = 0
        for session in self.chargers.sessions.values():
            uplinks[session.state.value] += 1
            replay_left += session.replay_left
        return {
            "connected": len(self.chargers.sessions),
            "uplinks": uplinks,
            "replay_left": replay_left,
            "uplink_probes": self.chargers.limiter.probes,
            **self._gauges,
        }

    async def start(self) -> None:
        await self.store.open()
        try:
            await self.site.load()
            await self._import_site_list()
            await self.chargers.start()
            await self.admin.start()
        except BaseException:
            # A port taken: close what was opened, or its threads
            # would keep the process alive after the error is reported.
            with contextlib.suppress(Exception):
                await self.chargers.close()
            with contextlib.suppress(Exception):
                await self.admin.close()
            await self.store.close()
            raise
        self._watchdog = asyncio.create_task(self._watch_outboxes(), name="outbox-watchdog")
        self._timer = asyncio.create_task(self._watch_calls(), name="call-timer")
        self._gc = asyncio.create_task(self._manage_gc(), name="gc")
        self._loop_watch = asyncio.create_task(self._watch_loop(), name="loop-watch")
        self._ready = True
        self.log.info(
            "controller_started",
            listen_port=self.listen_port,
            admin_port=self.admin_port,
            csms=self.settings.csms.url,
        )

    async def _watch_outboxes(self, period: float = 5.0) -> None:
        """Start a drain for an online charger whose outbox is not empty (an operator
        retried dead letters), and forget transaction id mappings past their grace."""
        grace = self.settings.replay.mapping_grace_days * 86400.0
        while True:
            await asyncio.sleep(period)
            try:
                depths = await self.store.depths()
                self._gauges = await self.store.outbox_summary()
                for identity, depth in depths.items():
                    session = self.chargers.sessions.get(identity)
                    if depth and session is not None and session.state is State.ONLINE:
                        session.start_drain(self.replayer)
                await self.store.purge_mappings(time.time() - grace)
            except StoreError as exc:
                self.log.error("outbox_watchdog_failed", error=str(exc))

    async def _watch_calls(self) -> None:
        """Answer a charger whose call the CSMS leaves unanswered past ``call_timeout``
        within a quarter of that timeout (at most half a second) of it passing."""
        period = min(0.5, self.settings.csms.call_timeout / 4)
        sessions = self.chargers.sessions
        while True:
            await asyncio.sleep(period)
            for session in list(sessions.values()):
                session.check_timeouts()

    async def _watch_loop(self) -> None:
        """How close the event loop is to its limit, for ``/metrics``.

        Every frame of every charger is handled on this one thread: when it is busy,
        everything waits. Every ``LOOP_WATCH_PERIOD`` a timer measures how late the loop
        ran it (``ocpp_lc_event_loop_lag_seconds``; a stall of ``LOOP_STALL`` or more is
        logged as ``event_loop_stalled``), and every ``LOOP_WATCH_WINDOW`` the thread's
        CPU time over the wall time gives ``ocpp_lc_event_loop_busy_ratio`` (near 1:
        saturated, answers queue up).
        """
        metrics = self.metrics
        period, window, stall = LOOP_WATCH_PERIOD, LOOP_WATCH_WINDOW, LOOP_STALL
        started, cpu_started = time.monotonic(), time.thread_time()
        while True:
            due = time.monotonic() + period
            await asyncio.sleep(period)
            now = time.monotonic()
            lag = max(0.0, now - due)
            metrics.loop_lag.observe(lag)
            if lag >= stall:
                self.log.warning(
                    "event_loop_stalled",
                    ms=round(lag * 1000),
                    chargers=len(self.chargers.sessions),
                )
            if now - started >= window:
                cpu = time.thread_time()
                metrics.loop_busy = min(1.0, (cpu - cpu_started) / (now - started))
                started, cpu_started = now, cpu

    async def _manage_gc(self) -> None:
        """Keep full garbage collections short with thousands of chargers connected.

        Sessions live for days and each holds a few hundred objects the collector
        tracks; a full collection walks all of them (seconds at 10,000 chargers, the
        event loop stalled meanwhile). Every ``gc_freeze_interval`` the youngest
        generation is collected and everything left is frozen: collections then walk
        only what was made since. Objects frozen are still freed by reference counting when a
        session ends; reference cycles among them are reclaimed by the full collection
        every ``gc_full_collection_hours``, logged with its duration.
        """
        runtime = self.settings.runtime
        if runtime.gc_freeze_interval <= 0:
            return
        full_every = runtime.gc_full_collection_hours * 3600.0
        last_full = last_freeze = time.monotonic()
        frozen_with = 0
        while True:
            # Checked every second: a wave of connections (a restart of the site, the
            # CSMS back) is frozen as it comes, before the young generations fill up.
            await asyncio.sleep(min(1.0, runtime.gc_freeze_interval))
            now = time.monotonic()
            connected = len(self.chargers.sessions)
            wave = connected - frozen_with >= 200
            if not wave and now - last_freeze < runtime.gc_freeze_interval:
                continue
            last_freeze, frozen_with = now, connected
            if full_every and now - last_full >= full_every:
                started = time.perf_counter()
                gc.unfreeze()
                collected = gc.collect()
                gc.freeze()
                last_full = last_freeze = time.monotonic()
                self.log.info(
                    "gc_full_collection",
                    collected=collected,
                    ms=round((time.perf_counter() - started) * 1000, 1),
                    chargers=len(self.chargers.sessions),
                )
                continue
            gc.collect(0)  # the youngest only: a few milliseconds whatever the size
            gc.freeze()

    async def _new_password(self, session: Session, password: bytes) -> None:
        """The CSMS set a new Basic password and the charger accepted it (R43): the next
        uplink uses it, and the charger is checked against it while offline."""
        header = basic_header(session.identity, password)
        charger = self.settings.chargers.get(session.identity)
        configured_upstream = charger is not None and charger.csms_password is not None
        sends_credentials = self.settings.csms.pass_authorization or configured_upstream
        if session.uplink_request is not None and sends_credentials:
            session.uplink_request = dataclasses.replace(
                session.uplink_request, authorization=header
            )
        if configured_upstream:
            # The CSMS no longer takes the configured password: this controller uses the
            # new key until it restarts, and the settings must be updated.
            self.gate.security_event("configured_csms_password_stale", charger=session.identity)
        await self.gate.learn(session.identity, header, "key_change")
        self.gate.security_event("credentials_changed", charger=session.identity)

    async def _import_site_list(self) -> None:
        """Replace the site list with the file at ``local_list.path``, all rows or none.

        A file that is missing, unreadable or malformed, or a store that cannot take it,
        does not keep the site from running: the site list the store holds is kept, the
        failure is logged (``site_list_import_failed``), counted as the security event
        of that name (offline, cards the file would block may still be accepted) and
        shown by ``/readyz``, and the controller starts.
        """
        path = self.settings.local_list.path
        if path is None:
            return
        line: int | None = None
        try:
            entries = parse_csv(decode_csv(path.read_bytes()))
            await self.store.replace_site_list(entries)
        except ListFormatError as exc:
            line, reason = exc.line, exc.message
        except OSError as exc:
            reason = f"cannot read the file: {exc.strerror or exc}"
        except StoreError as exc:
            reason = f"the store did not take it: {exc}"
        else:
            self.site_list_import = "imported"
            self.log.info("site_list_imported", path=str(path), entries=len(entries))
            return
        self.site_list_import = "failed"
        self.metrics.security_events["site_list_import_failed"] += 1
        kept: int | None = None
        with contextlib.suppress(StoreError, sqlite3.Error):
            kept = len(await self.store.load_site_list())
        self.log.error(
            "site_list_import_failed", path=str(path), line=line, reason=reason, kept=kept
        )

    async def stop(self) -> None:
        self._ready = False
        self.log.info("controller_stopping")
        for task in (self._watchdog, self._timer, self._gc, self._loop_watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        grace = self.settings.runtime.shutdown_grace
        started = time.monotonic()
        try:
            # Chargers are closed with 1001 and their uplinks with them; answers being
            # committed finish first. Past the grace the store is closed regardless:
            # a charger whose answer did not go out keeps its message and resends it.
            async with asyncio.timeout(grace):
                await self.chargers.close()
        except TimeoutError:
            self.log.warning("shutdown_grace_exceeded", grace=grace)
        await self.admin.close()
        await self.store.close()
        self.log.info("controller_stopped", seconds=round(time.monotonic() - started, 3))

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
    # Long-lived objects are many and stable: collect the young generation more rarely
    # and keep start-up objects out of full collections (LIMITS.md item 4).
    gc.set_threshold(10_000, 20, 100)
    async with Controller(settings):
        gc.collect()
        gc.freeze()
        await stop.wait()
