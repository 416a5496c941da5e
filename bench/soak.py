#!/usr/bin/env python3
"""Soak: many OCPP 1.6 chargers through the controller while the uplink flaps.

The controller runs as a subprocess (``python -m proxy serve``) pointed at a TCP fault
relay in front of a CSMS (``tests/peers.py`` ``CsmsPeer``, the ``ocpp`` package), all on
loopback. N chargers (plain WebSocket clients, compression off) run realistic sessions
for ``--duration`` seconds: BootNotification and StatusNotification, then again and
again Authorize, StartTransaction, MeterValues every ``--meter-interval`` s (jittered),
a Heartbeat now and then, StopTransaction, StatusNotification Available and an idle
pause. ``--outages`` times, evenly spread, the uplink goes away for
``--outage-seconds`` (the relay resets every connection and refuses new ones, or with
``--fault csms-stop`` the CSMS stops); the chargers stay connected and are answered by
the controller, which replays when the uplink is back. A charger retries a call the
controller refused (CALLERROR) or left unanswered, with the same frame, as a charger
does with its transaction messages.

At the end every charger stops its session, the uplink is back, and the script waits
(bounded) until every charger is online again with an empty outbox. Printed: messages
answered, lost (answered by the controller, never delivered to the CSMS nor kept as a
dead letter), duplicates, reordered (inversions against the charger's order), sessions
whose energy (meterStop - meterStart) differs between charger and CSMS, the recovery
time of each outage (uplink back -> every charger online with an empty outbox), uplink
connections and calls in flight at the CSMS, and the controller's peak RSS.
Exit status 1 if anything was lost or reordered, or an energy total differs.

Run: .venv/bin/python bench/soak.py [--chargers 1000] [--duration 600]
     [--outages 5] [--outage-seconds 20] [--meter-interval 5]
A quick check: --chargers 200 --duration 60 --outages 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))

from common import DIE_WITH_PARENT, free_port, machine_note, raise_nofile  # noqa: E402
from fault_tools import (  # noqa: E402
    csms_transaction_energy,
    max_in_flight,
    max_live_per_identity,
    percentile,
)
from peers import (  # noqa: E402
    CALL,
    CALLRESULT,
    CsmsPeer,
    DeliveryFigures,
    Frame,
    delivery_figures,
    ledger,
    message_key,
)
from relay import FaultRelay  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidHandshake  # noqa: E402

CALL_TIMEOUT = 30.0
BASE = datetime(2025, 1, 1, tzinfo=UTC)


# --------------------------------------------------------------------------- charger


@dataclass
class Charger:
    """One charger: its connection, its frames (for the ledger) and its sessions."""

    url: str
    number: int
    rng: random.Random
    frames: list[Any] = field(default_factory=list)
    #: meterStart -> meterStop - meterStart of each completed session
    energy: dict[int, int] = field(default_factory=dict)
    retries: int = 0
    reconnects: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    ws: ClientConnection | None = None

    @property
    def identity(self) -> str:
        return f"SOAK{self.number:05d}"

    def __post_init__(self) -> None:
        self._ids = 0
        self._clock = 0
        self.register = self.number * 10_000_000

    def stamp(self) -> str:
        self._clock += 1
        moment = BASE + timedelta(seconds=self._clock)
        return moment.isoformat(timespec="seconds").replace("+00:00", "Z")

    async def connect(self, deadline: float) -> None:
        while True:
            try:
                self.ws = await connect(
                    f"{self.url}/{self.identity}",
                    subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                    compression=None,
                    open_timeout=20.0,
                    ping_interval=None,
                    max_size=2**20,
                )
                return
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                self.errors[f"connect: {type(exc).__name__}"] += 1
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1.0 + self.rng.random())

    async def call(self, action: str, payload: dict[str, Any], deadline: float) -> Any:
        """Send a CALL until it gets a CALLRESULT (same frame on every retry); its payload."""
        self._ids += 1
        message_id = f"{self._ids}"
        text = json.dumps([CALL, message_id, action, payload], separators=(",", ":"))
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.identity} {action}: no CALLRESULT before the deadline")
            try:
                if self.ws is None:
                    await self.connect(deadline)
                    self.reconnects += 1
                assert self.ws is not None
                self.frames.append(Frame("sent", text))
                await self.ws.send(text)
                async with asyncio.timeout(CALL_TIMEOUT):
                    while True:
                        data = await self.ws.recv()
                        if isinstance(data, bytes):
                            continue
                        msg = json.loads(data)
                        if msg[0] == CALL:  # a CSMS call: accept whatever it asks
                            reply = [3, msg[1], {"status": "Accepted"}]
                            await self.ws.send(json.dumps(reply))
                            continue
                        self.frames.append(Frame("received", data))
                        if msg[1] != message_id:
                            continue
                        if msg[0] == CALLRESULT:
                            return msg[2]
                        self.errors[f"{action}: {msg[2]}"] += 1
                        break
            except TimeoutError:
                self.errors[f"{action}: timeout"] += 1
            except ConnectionClosed:
                self.errors[f"{action}: closed"] += 1
                self.ws = None
            self.retries += 1
            await asyncio.sleep(1.0)

    async def run(self, until: float, hard_deadline: float, meter_interval: float) -> None:
        rng = self.rng
        await asyncio.sleep(rng.uniform(0, 10.0))  # ramp up
        await self.connect(hard_deadline)
        boot = {"chargePointVendor": "OpenSite", "chargePointModel": "LC-Soak"}
        await self.call("BootNotification", boot, hard_deadline)
        await self.status("Available", hard_deadline)
        while time.monotonic() < until:
            tag = f"TAG{self.number:05d}"
            await self.call("Authorize", {"idTag": tag}, hard_deadline)
            await self.status("Preparing", hard_deadline)
            meter_start = self.register
            started = await self.call(
                "StartTransaction",
                {
                    "connectorId": 1,
                    "idTag": tag,
                    "meterStart": meter_start,
                    "timestamp": self.stamp(),
                },
                hard_deadline,
            )
            tx = started["transactionId"]
            await self.status("Charging", hard_deadline)
            for _ in range(rng.randint(3, 12)):
                await asyncio.sleep(meter_interval * rng.uniform(0.7, 1.3))
                self.register += rng.randint(50, 400)
                await self.call(
                    "MeterValues",
                    {
                        "connectorId": 1,
                        "transactionId": tx,
                        "meterValue": [
                            {
                                "timestamp": self.stamp(),
                                "sampledValue": [
                                    {
                                        "value": str(self.register),
                                        "measurand": "Energy.Active.Import.Register",
                                        "unit": "Wh",
                                    }
                                ],
                            }
                        ],
                    },
                    hard_deadline,
                )
                if rng.random() < 0.2:
                    await self.call("Heartbeat", {}, hard_deadline)
                if time.monotonic() >= until:
                    break
            self.register += rng.randint(1, 50)
            await self.call(
                "StopTransaction",
                {
                    "transactionId": tx,
                    "meterStop": self.register,
                    "timestamp": self.stamp(),
                    "reason": "Local",
                },
                hard_deadline,
            )
            self.energy[meter_start] = self.register - meter_start
            await self.status("Available", hard_deadline)
            if time.monotonic() < until:
                await asyncio.sleep(rng.uniform(1.0, 3.0) * meter_interval)

    async def status(self, status: str, deadline: float) -> None:
        await self.call(
            "StatusNotification",
            {"connectorId": 1, "errorCode": "NoError", "status": status, "timestamp": self.stamp()},
            deadline,
        )

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5.0):
                    await self.ws.close()


# --------------------------------------------------------------------------- controller


class Controller:
    """``python -m proxy serve`` with a store in a temporary directory."""

    def __init__(self, csms_url: str, workdir: Path) -> None:
        self.port = free_port()
        self.admin = free_port()
        self.db = workdir / "lc.sqlite3"
        self.log_path = workdir / "controller.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("OCPP_LC_")}
        env.update(
            OCPP_LC_LISTEN__HOST="127.0.0.1",
            OCPP_LC_LISTEN__PORT=str(self.port),
            OCPP_LC_LISTEN__COMPRESSION="false",
            OCPP_LC_LISTEN__MAX_CONNECTIONS_PER_IP="0",
            OCPP_LC_CSMS__URL=csms_url,
            OCPP_LC_STORE__PATH=str(self.db),
            OCPP_LC_ADMIN__HOST="127.0.0.1",
            OCPP_LC_ADMIN__PORT=str(self.admin),
            OCPP_LC_LOG__LEVEL="WARNING",
            OCPP_LC_ADMISSION__UNKNOWN_IDENTITIES="pass_through",
            OCPP_LC_POLICY__ALLOW_OFFLINE_TX_FOR_UNKNOWN_ID="true",
            OCPP_LC_POLICY__CONCURRENT_TX="false",
        )
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=DIE_WITH_PARENT,  # noqa: PLW1509 - one prctl call
        )
        self.peak_rss_kib = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp"

    async def ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"controller exited with {self.proc.returncode}")
            with contextlib.suppress(OSError):
                if await asyncio.to_thread(self._get, "/readyz") is not None:
                    return
            await asyncio.sleep(0.1)
        raise TimeoutError("controller not ready")

    def _get(self, path: str) -> str | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}{path}", timeout=5) as r:
            return r.read().decode() if r.status == 200 else None

    def sample_rss(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_rss_kib = max(self.peak_rss_kib, int(line.split()[1]))

    async def uplinks(self) -> dict[str, float]:
        """Charger sessions by uplink state, from /metrics."""
        text = await asyncio.to_thread(self._get, "/metrics") or ""
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("ocpp_lc_uplinks{"):
                state = line.split('state="', 1)[1].split('"', 1)[0]
                out[state] = float(line.rsplit(" ", 1)[1])
        return out

    def outbox(self) -> tuple[int, int]:
        """(pending, dead) messages in the store, read-only."""
        if not self.db.exists():
            return 0, 0
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            row = con.execute(
                "SELECT COUNT(*) FILTER (WHERE state = 'pending'),"
                " COUNT(*) FILTER (WHERE state = 'dead') FROM outbox"
            ).fetchone()
        finally:
            con.close()
        return int(row[0] or 0), int(row[1] or 0)

    def dead_keys(self) -> dict[str, list[tuple[Any, ...]]]:
        out: dict[str, list[tuple[Any, ...]]] = {}
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            for identity, action, frame in con.execute(
                "SELECT identity, action, frame FROM outbox WHERE state = 'dead'"
            ):
                out.setdefault(identity, []).append(message_key(action, json.loads(frame)[3]))
        finally:
            con.close()
        return out

    async def settled(self, chargers: int) -> bool:
        """Every charger online and nothing left to replay."""
        states = await self.uplinks()
        online = states.get("online", 0)
        pending, _ = await asyncio.to_thread(self.outbox)
        return (
            online >= chargers
            and not states.get("offline")
            and not states.get("draining")
            and pending == 0
        )

    async def stop(self) -> int:
        self.sample_rss()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(asyncio.to_thread(self.proc.wait), 15)
            except TimeoutError:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait)
        self._log.close()
        return self.proc.returncode


# --------------------------------------------------------------------------- run


@dataclass
class Outage:
    began: float
    restored: float = 0.0
    recovered: float | None = None


async def flap(
    args: argparse.Namespace,
    *,
    relay: FaultRelay,
    csms: CsmsPeer,
    ctl: Controller,
    start: float,
    outages: list[Outage],
) -> None:
    period = args.duration / (args.outages + 1)
    for k in range(args.outages):
        at = start + period * (k + 1) - args.outage_seconds / 2
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        outage = Outage(time.monotonic())
        outages.append(outage)
        print(f"[{outage.began - start:6.1f}s] outage {k + 1}: uplink down", flush=True)
        if args.fault == "csms-stop":
            await csms.stop()
        else:
            relay.set_mode("reset")
        await asyncio.sleep(args.outage_seconds)
        if args.fault == "csms-stop":
            await csms.start()
        else:
            relay.set_mode("pass")
        outage.restored = time.monotonic()
        print(f"[{outage.restored - start:6.1f}s] outage {k + 1}: uplink back", flush=True)
        # recovery: every charger online with an empty outbox (before the next outage)
        limit = min(start + period * (k + 2) - args.outage_seconds / 2, start + args.duration)
        while time.monotonic() < limit:
            with contextlib.suppress(OSError, ValueError):
                if await ctl.settled(args.chargers):
                    outage.recovered = time.monotonic() - outage.restored
                    print(
                        f"[{time.monotonic() - start:6.1f}s] outage {k + 1}: recovered in"
                        f" {outage.recovered:.1f}s",
                        flush=True,
                    )
                    break
            ctl.sample_rss()
            await asyncio.sleep(0.5)


async def soak(args: argparse.Namespace) -> int:
    raise_nofile(6 * args.chargers + 512)
    print(machine_note(), flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="lc-soak-"))
    csms = CsmsPeer(call_timeout=CALL_TIMEOUT)
    await csms.start()
    relay = await FaultRelay(csms.port).start()
    ctl = Controller(relay.url, workdir)
    chargers: list[Charger] = []
    code = 1
    try:
        await ctl.ready()
        rng = random.Random(args.seed)
        chargers = [Charger(ctl.url, n, random.Random(rng.random())) for n in range(args.chargers)]
        start = time.monotonic()
        until = start + args.duration
        hard = until + args.drain_timeout + 120.0
        outages: list[Outage] = []
        flapping = asyncio.create_task(
            flap(args, relay=relay, csms=csms, ctl=ctl, start=start, outages=outages)
        )
        results = await asyncio.gather(
            *(c.run(until, hard, args.meter_interval) for c in chargers), return_exceptions=True
        )
        flapping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flapping
        if not csms.running:
            await csms.start()
        relay.set_mode("pass")
        ended = time.monotonic()
        failed = [r for r in results if isinstance(r, BaseException)]
        print(f"[{ended - start:6.1f}s] sessions ended; waiting for the replay", flush=True)
        settled = False
        while time.monotonic() < ended + args.drain_timeout:
            with contextlib.suppress(OSError, ValueError):
                if await ctl.settled(args.chargers - len(failed)):
                    settled = True
                    break
            ctl.sample_rss()
            await asyncio.sleep(0.5)
        final_drain = time.monotonic() - ended
        pending, dead = ctl.outbox()
        dead_keys = ctl.dead_keys() if dead else {}
        totals = DeliveryFigures()
        mismatches = []
        sessions = 0
        for c in chargers:
            seen = csms.inbound(c.identity)
            totals = totals + delivery_figures(
                ledger(c.frames), seen, dead=dead_keys.get(c.identity, ())
            )
            sessions += len(c.energy)
            at_csms = csms_transaction_energy(csms, c.identity)
            if at_csms != c.energy:
                mismatches.append(c.identity)
        answered_calls = sum(1 for c in chargers for f in c.frames if f.direction == "received")
        errors: Counter[str] = Counter()
        for c in chargers:
            errors.update(c.errors)
        recovery = [o.recovered for o in outages if o.recovered is not None]
        peak_rss = ctl.peak_rss_kib
        exit_code = await ctl.stop()
        print()
        print(
            f"chargers={args.chargers} duration={args.duration:.0f}s outages={len(outages)}"
            f" x {args.outage_seconds:.0f}s fault={args.fault}"
            f" meter_interval={args.meter_interval}s failed_chargers={len(failed)}"
        )
        print(
            f"answered_calls={answered_calls} transaction_messages_acked={totals.acked}"
            f" delivered={totals.delivered} sessions={sessions}"
        )
        print(
            f"lost={len(totals.lost)} duplicates={totals.duplicates}"
            f" reordered={totals.order_violations} unexpected={len(totals.unexpected)}"
            f" dead_letters={dead} pending_left={pending}"
        )
        print(
            f"energy_totals_equal={sessions - len(mismatches)}/{sessions}"
            f" mismatched_chargers={len(mismatches)}"
        )
        for k, o in enumerate(outages, 1):
            rec = f"{o.recovered:.1f}s" if o.recovered is not None else "not before the next"
            print(f"outage {k}: recovery {rec}")
        if recovery:
            print(
                f"recovery p50={percentile(recovery, 50):.1f}s max={max(recovery):.1f}s;"
                f" final drain {final_drain:.1f}s settled={settled}"
            )
        print(
            f"csms: connections={sum(csms.connections.values())}"
            f" max_in_flight={max_in_flight(csms)}"
            f" max_live_per_identity={max_live_per_identity(csms)}"
            f" violations={len(csms.violations)}"
        )
        print(
            f"charger retries={sum(c.retries for c in chargers)}"
            f" reconnects={sum(c.reconnects for c in chargers)}"
            f" errors={dict(errors.most_common(6))}"
        )
        print(f"controller peak RSS={peak_rss / 1024:.0f} MiB exit={exit_code}")
        if failed:
            print(f"first charger failure: {failed[0]!r}")
        code = 1 if (totals.lost or totals.order_violations or mismatches) else 0
        print("PASS" if code == 0 else f"FAIL (controller log and store kept in {workdir})")
    finally:
        await asyncio.gather(*(c.close() for c in chargers), return_exceptions=True)
        if ctl.proc.poll() is None:
            await ctl.stop()
        await relay.close()
        await csms.stop()
        if code == 0:
            shutil.rmtree(workdir, ignore_errors=True)
    return code


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--chargers", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of sessions")
    ap.add_argument("--outages", type=int, default=5)
    ap.add_argument("--outage-seconds", type=float, default=20.0)
    ap.add_argument("--fault", choices=["relay-reset", "csms-stop"], default="relay-reset")
    ap.add_argument("--meter-interval", type=float, default=5.0)
    ap.add_argument("--drain-timeout", type=float, default=180.0)
    ap.add_argument("--seed", type=int, default=14)
    args = ap.parse_args()
    if args.chargers < 1 or args.duration <= 0 or args.outages < 0:
        ap.error("--chargers, --duration and --outages must be positive")
    period = args.duration / (args.outages + 1)
    if args.outages and args.outage_seconds > period / 2:
        # half of each period stays for the recovery
        print(
            f"--outage-seconds lowered to {period / 2:.1f} s"
            f" ({args.outages} outages in {args.duration:.0f} s)"
        )
        args.outage_seconds = period / 2
    sys.exit(asyncio.run(soak(args)))


if __name__ == "__main__":
    main()
