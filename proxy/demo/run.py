"""``ocpp-lc demo``: the controller between a demonstration CSMS and simulated chargers.

The script, in one process on loopback:

1. start the demo CSMS, the controller (embedded SQLite store in a temporary directory
   unless ``--store``; the demo cards in a site local list) and N chargers;
2. online: the chargers boot and run charging sessions through the controller;
3. cut the uplink: stop the demo CSMS for ``--outage`` seconds; the chargers stay
   connected, the controller answers them and stores every transaction message;
4. restore the uplink: the demo CSMS comes back on the same port, the controller
   reconnects and replays what it stored while the chargers go on charging;
5. the chargers wind down; once every outbox is empty, compare what each charger was
   answered with what the CSMS received and print one summary line::

       demo: 5 chargers, 41 messages stored offline, 41 replayed, lost = 0

Exit status 0 when nothing was lost, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.exceptions import WebSocketException

from config.logging import setup_logging
from config.settings import LogSettings, load_settings
from proxy.app import Controller
from proxy.demo import TRANSACTION_ACTIONS, Exchange, message_key
from proxy.demo.chargers import DemoCharger
from proxy.demo.csms import DemoCsms
from proxy.router import State

__all__ = ["Figures", "Options", "demonstrate", "figures", "run_demo"]

EXIT_OK = 0
#: Something was lost, or the demonstration could not run.
EXIT_LOST = 1
EXIT_INTERRUPTED = 130

#: Default ports of the controller; the demo takes free ones when these are in use.
DEFAULT_LISTEN_PORT = 9000
DEFAULT_ADMIN_PORT = 9200
#: Seconds the sessions go on after the uplink is back, before the chargers wind down.
TAIL_SECONDS = 2.0
#: Seconds the demo waits for every outbox to drain.
DRAIN_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Options:
    """What ``ocpp-lc demo`` was asked for."""

    chargers: int = 5
    outage: float = 10.0
    online: float = 5.0
    keep_open: bool = False
    store: Path | None = None
    verbose: bool = False


# --------------------------------------------------------------------------- figures


@dataclass(frozen=True, slots=True)
class Figures:
    """What the chargers were answered, compared with what the CSMS received.

    Counted over the transaction messages (StartTransaction, MeterValues,
    StopTransaction) that a charger got a CALLRESULT for.
    """

    chargers: int
    #: Transaction messages the chargers got a CALLRESULT for.
    acked: int
    #: Of those, the ones the controller answered itself: the CSMS never answered their
    #: message id (uplink down, or the outbox still draining).
    stored: int
    #: Of the stored ones, those the CSMS received and answered later (replayed).
    replayed: int
    #: Acked, and never answered by the CSMS under any message id.
    lost: int
    #: Receptions at the CSMS of a message it had answered before (at-least-once).
    duplicates: int
    #: Messages the CSMS received before one that the same charger had sent earlier.
    out_of_order: int
    #: MeterValues and StopTransactions that reached the CSMS with a transactionId it had
    #: not assigned to that charger (a provisional id left unmapped).
    foreign_ids: int
    #: StartTransactions answered offline: their transactionId was the controller's.
    offline_starts: int

    def summary(self) -> str:
        return (
            f"demo: {self.chargers} chargers, {self.stored} messages stored offline, "
            f"{self.replayed} replayed, lost = {self.lost}"
        )


def figures(
    charger_ledgers: Mapping[str, Sequence[Exchange]],
    csms_ledgers: Mapping[str, Sequence[Exchange]],
    assigned: Mapping[str, set[int]],
) -> Figures:
    """Compare each charger's ledger (what it sent, what it was answered) with the CSMS's
    ledger for the same identity (what it received, what it answered).

    Messages are matched by :func:`proxy.demo.message_key` (content, without message id
    and transactionId), because replayed messages carry fresh message ids and mapped
    transaction ids.
    """
    acked = stored = replayed = lost = duplicates = out_of_order = 0
    foreign = offline_starts = 0
    for identity, ledger in charger_ledgers.items():
        at_csms = [
            e
            for e in csms_ledgers.get(identity, ())
            if e.action in TRANSACTION_ACTIONS and e.outcome == "result"
        ]
        answered_ids = {e.message_id for e in at_csms}
        first: dict[tuple[Any, ...], int] = {}
        for position, entry in enumerate(at_csms):
            key = message_key(entry.action, entry.payload)
            if key in first:
                duplicates += 1
            else:
                first[key] = position
            tx_id = entry.payload.get("transactionId") if isinstance(entry.payload, dict) else None
            if (
                entry.action != "StartTransaction"
                and isinstance(tx_id, int)
                and tx_id not in assigned.get(identity, set())
            ):
                foreign += 1
        latest = -1
        for entry in ledger:
            if entry.action not in TRANSACTION_ACTIONS or entry.outcome != "result":
                continue
            acked += 1
            key = message_key(entry.action, entry.payload)
            delivered = first.get(key)
            if entry.message_id not in answered_ids:
                stored += 1
                replayed += delivered is not None
                offline_starts += entry.action == "StartTransaction"
            if delivered is None:
                lost += 1
                continue
            if delivered < latest:
                out_of_order += 1
            latest = max(latest, delivered)
    return Figures(
        chargers=len(charger_ledgers),
        acked=acked,
        stored=stored,
        replayed=replayed,
        lost=lost,
        duplicates=duplicates,
        out_of_order=out_of_order,
        foreign_ids=foreign,
        offline_starts=offline_starts,
    )


# --------------------------------------------------------------------------- the script


def port_or_free(host: str, port: int) -> int:
    """``port`` when nothing listens on it, else 0 (a free port chosen at bind time)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return 0
    return port


def site_list_csv(cards: Sequence[str]) -> str:
    """The demo cards as a site local list (every card Accepted, no expiry)."""
    return "id_tag,status,expiry,parent_id_tag\n" + "".join(f"{c},Accepted,,\n" for c in cards)


def _breakdown(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{action} {n}" for action, n in sorted(counts.items()) if n)


class _Demo:
    """One run of the demonstration; ``say`` prints a progress line."""

    def __init__(self, options: Options, out: Callable[[str], None]) -> None:
        self.options = options
        self.out = out
        self.started = time.monotonic()
        self.csms = DemoCsms()
        self.chargers: list[DemoCharger] = []
        self.ctl: Controller | None = None

    def say(self, text: str) -> None:
        self.out(f"demo: [{time.monotonic() - self.started:5.1f} s] {text}")

    @property
    def controller(self) -> Controller:
        assert self.ctl is not None
        return self.ctl

    # -- what the controller reports ---------------------------------------------------

    def offline_answers(self) -> Counter[str]:
        return Counter(self.controller.metrics.offline_answers)

    def delivered(self) -> int:
        replayed = self.controller.metrics.replayed
        return sum(n for (_, result), n in replayed.items() if result == "delivered")

    async def stored(self) -> int:
        """Messages of the demo chargers waiting in the outbox."""
        store = self.controller.store
        return sum([await store.outbox_count(c.identity) for c in self.chargers])

    def drained(self) -> bool:
        sessions = self.controller.chargers.sessions
        return all(
            (s := sessions.get(c.identity)) is not None and s.state is State.ONLINE
            for c in self.chargers
        )

    # -- phases ------------------------------------------------------------------------

    async def run(self, stack: contextlib.AsyncExitStack, workdir: Path) -> int:
        o = self.options
        await self.csms.start()
        stack.push_async_callback(self.csms.stop)
        cards = [f"DEMO-{i:02d}-{s}" for i in range(1, o.chargers + 1) for s in "AB"]
        site_list = workdir / "site-list.csv"
        site_list.write_text(site_list_csv(cards), encoding="utf-8")
        store = o.store if o.store is not None else workdir / "ocpp-lc.sqlite3"
        settings = load_settings(
            None,
            listen={"host": "127.0.0.1", "port": port_or_free("127.0.0.1", DEFAULT_LISTEN_PORT)},
            admin={
                "host": "127.0.0.1",
                "port": port_or_free("127.0.0.1", DEFAULT_ADMIN_PORT),
                "token": None,
            },
            csms={"url": self.csms.url, "call_timeout": 5.0},
            store={"path": store},
            local_list={"path": site_list},
            admission={"unknown_identities": "pass_through"},
            offline={"mode": "serve"},
            uplink={"reconnect_min": 0.2, "reconnect_max": 1.0, "reconnect_jitter": 0.2},
            policy={"transaction_message_retry_interval": 1.0},
        )
        self.ctl = Controller(settings)
        await self.ctl.start()
        stack.push_async_callback(self.ctl.stop)
        ctl = self.ctl
        base = f"ws://127.0.0.1:{ctl.listen_port}/ocpp"
        self.out(
            f"demo: the controller listens for chargers on {base}/<identity> and forwards "
            f"to a demonstration CSMS on {self.csms.url}"
        )
        self.out(f"demo: status page: http://127.0.0.1:{ctl.admin_port}/")
        self.out(f"demo: store: {store}")

        self.chargers = [
            DemoCharger(f"DEMO-CP-{i:02d}", base, cards[2 * i - 2 : 2 * i], seed=i)
            for i in range(1, o.chargers + 1)
        ]
        for charger in self.chargers:
            stack.push_async_callback(charger.close)
        try:
            await asyncio.gather(*(c.connect() for c in self.chargers))
            await asyncio.gather(*(c.boot() for c in self.chargers))
        except (OSError, TimeoutError, WebSocketException) as exc:
            self.out(f"demo: the chargers could not connect and boot: {type(exc).__name__}: {exc}")
            return EXIT_LOST
        sessions = [asyncio.create_task(self._drive(c)) for c in self.chargers]
        stack.push_async_callback(_cancel, sessions)
        self.say(
            f"online: {o.chargers} OCPP 1.6 chargers booted through the controller; "
            "their sessions pass through to the CSMS unchanged"
        )
        await asyncio.sleep(o.online)
        forwarded = ctl.metrics.forwarded
        passed = sum(n for (way, action), n in forwarded.items() if way == "up" and action)
        self.say(f"online: {passed} charger calls passed through to the CSMS so far")

        await self.csms.stop()
        self.say(
            f"uplink cut: the CSMS is down for {o.outage:g} s; the chargers stay connected "
            "and the controller answers them, storing every transaction message"
        )
        await self._outage(o.outage)

        await self.csms.start()
        self.say(
            f"uplink restored: the CSMS is back on port {self.csms.port}; the controller "
            "reconnects and replays what it stored, in order, while charging goes on"
        )
        await self._replay_progress(TAIL_SECONDS)
        self.say("winding down: the chargers finish their sessions")
        for charger in self.chargers:
            charger.wind_down()
        async with asyncio.timeout(30):
            await asyncio.gather(*sessions)
        drained = await self._wait_drained(DRAIN_TIMEOUT)
        if drained:
            self.say(
                f"done: every outbox is empty; {self.delivered()} stored messages replayed "
                "to the CSMS"
            )
        else:
            self.say(f"not drained after {DRAIN_TIMEOUT:g} s: {await self.stored()} still stored")
        result = figures(
            {c.identity: c.ledger() for c in self.chargers},
            {c.identity: self.csms.ledger(c.identity) for c in self.chargers},
            self.csms.assigned,
        )
        self._report(result)
        if o.keep_open:
            await self._keep_open()
        return EXIT_OK if result.lost == 0 else EXIT_LOST

    async def _drive(self, charger: DemoCharger) -> None:
        try:
            await charger.run_sessions()
        except Exception as exc:  # a charger that fails ends its own sessions only
            self.say(f"{charger.identity} stopped: {type(exc).__name__}: {exc}")

    async def _outage(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(2.0, left))
            answers = self.offline_answers()
            self.say(
                f"offline: {sum(answers.values())} calls answered by the controller "
                f"({_breakdown(answers)}); {await self.stored()} messages stored"
            )

    async def _replay_progress(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        last: tuple[int, int] | None = None
        while time.monotonic() < end:
            await asyncio.sleep(0.5)
            now = (self.delivered(), await self.stored())
            if now != last:
                self.say(f"replaying: {now[0]} delivered to the CSMS, {now[1]} still stored")
                last = now

    async def _wait_drained(self, seconds: float) -> bool:
        end = time.monotonic() + seconds
        last_report = 0.0
        while time.monotonic() < end:
            if self.drained() and await self.stored() == 0:
                return True
            await asyncio.sleep(0.1)
            if time.monotonic() - last_report >= 1.0:
                last_report = time.monotonic()
                left = await self.stored()
                if left:
                    self.say(f"replaying: {self.delivered()} delivered, {left} still stored")
        return False

    def _report(self, result: Figures) -> None:
        failed = sum(c.failed_calls for c in self.chargers)
        self.say(
            f"checked: {result.acked} transaction messages answered to the chargers, "
            f"{result.offline_starts} transactions started offline, "
            f"{result.duplicates} duplicates, {result.out_of_order} out of order, "
            f"{result.foreign_ids} with a transaction id the CSMS did not assign, "
            f"{failed} calls not answered"
        )
        self.out(result.summary())

    async def _keep_open(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        self.out(
            f"demo: still serving; status page at http://127.0.0.1:{self.controller.admin_port}/"
            " - press Ctrl-C to stop"
        )
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


def _print(line: str) -> None:
    print(line, flush=True)


async def _cancel(tasks: Sequence[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def demonstrate(options: Options, out: Callable[[str], None] = _print) -> int:
    """The demonstration, in the running event loop; its exit status."""
    demo = _Demo(options, out)
    with tempfile.TemporaryDirectory(prefix="ocpp-lc-demo-") as tmp:
        async with contextlib.AsyncExitStack() as stack:
            return await demo.run(stack, Path(tmp))


def run_demo(options: Options, out: Callable[[str], None] = _print) -> int:
    """Run the demonstration; its exit status (0: nothing lost)."""
    setup_logging(LogSettings(level="INFO" if options.verbose else "WARNING", format="console"))
    try:
        return asyncio.run(demonstrate(options, out))
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
