"""``kill -9`` during replay (SCENARIOS.md 11, RELIABILITY.md 5.4 F5).

The controller runs as a subprocess (``python -m proxy serve``) with a crash point armed
(``OCPP_LC_CRASHPOINT=<point>:<n>``: SIGKILL at the n-th pass). A charger's session is
stored while the CSMS is down; the CSMS comes back, the drain starts and the process dies
at the point; it is restarted without the crash point and the charger reconnects. Then:
the CSMS has every stored message, in the charger's order, with at most one duplicate (the
call in flight), and the transaction id mapping is consistent: every later message, and a
StopTransaction sent after the restart, carries the id the CSMS gave the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest
from peers import (
    ChargerPeer16,
    CsmsPeer,
    LedgerEntry,
    StepClock,
    controller_url,
    delivery_figures,
)

pytestmark = pytest.mark.timeout(60)

IDENTITY = "CP1"
TAG = "SITE-TAG-1"
REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def http_status(port: int, path: str) -> int | None:
    """The status code of ``GET path`` on 127.0.0.1:port, or None if it cannot connect."""
    try:
        async with asyncio.timeout(2.0):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return None
    parts = line.split()
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None


class Service:
    """The controller as a subprocess; always killed and reaped on exit."""

    def __init__(self, workdir: Path, csms_url: str, crashpoint: str | None = None) -> None:
        self.workdir = workdir
        self.listen_port = free_port()
        self.admin_port = free_port()
        self.store_path = workdir / "lc.sqlite3"
        self.site_list = workdir / "site-list.csv"
        self.site_list.write_text(f"id_tag,status,expiry,parent_id_tag\n{TAG},Accepted,,\n")
        self.csms_url = csms_url
        self.crashpoint = crashpoint
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OCPP_LC_")}
        env.update(
            {
                "OCPP_LC_LISTEN__HOST": "127.0.0.1",
                "OCPP_LC_LISTEN__PORT": str(self.listen_port),
                "OCPP_LC_CSMS__URL": self.csms_url,
                "OCPP_LC_CSMS__CALL_TIMEOUT": "2",
                "OCPP_LC_STORE__PATH": str(self.store_path),
                "OCPP_LC_ADMIN__HOST": "127.0.0.1",
                "OCPP_LC_ADMIN__PORT": str(self.admin_port),
                "OCPP_LC_LOG__LEVEL": "WARNING",
                "OCPP_LC_LOG__FORMAT": "json",
                "OCPP_LC_UPLINK__RECONNECT_MIN": "0.05",
                "OCPP_LC_UPLINK__RECONNECT_MAX": "0.3",
                "OCPP_LC_UPLINK__RECONNECT_JITTER": "0.05",
                "OCPP_LC_UPLINK__MAX_CONNECTS_PER_SECOND": "500",
                "OCPP_LC_POLICY__TRANSACTION_MESSAGE_RETRY_INTERVAL": "0.1",
                "OCPP_LC_LOCAL_LIST__PATH": str(self.site_list),
                # The test charger is not registered: the CSMS decides.
                "OCPP_LC_ADMISSION__UNKNOWN_IDENTITIES": "pass_through",
            }
        )
        if self.crashpoint is not None:
            env["OCPP_LC_CRASHPOINT"] = self.crashpoint
        return env

    async def start(self, *, armed: bool) -> None:
        """Start a run (with the crash point if ``armed``) and wait until it is ready.

        A port picked free can be taken by another socket before the service binds it:
        then the run is retried on fresh ports (the chargers read ``listen_port``)."""
        for _ in range(3):
            try:
                await self._start(armed=armed)
                return
            except AssertionError:
                if "address already in use" not in self.log_text().lower():
                    raise
                await self.wait_exit(5.0)
                self.proc = None
                self.listen_port, self.admin_port = free_port(), free_port()
        await self._start(armed=armed)

    async def _start(self, *, armed: bool) -> None:
        assert self.proc is None
        self.runs += 1
        env = self.env()
        if not armed:
            env.pop("OCPP_LC_CRASHPOINT", None)
        log = (self.workdir / f"service-{self.runs}.log").open("wb")
        with log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "proxy", "serve"],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while await http_status(self.admin_port, "/readyz") != 200:
            if self.proc.poll() is not None:
                raise AssertionError(f"the service exited at start: {self.log_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the service was not ready in time: {self.log_text()}")
            await asyncio.sleep(0.05)

    async def wait_exit(self, timeout: float) -> int:
        """Wait until the process has ended; its return code."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while (code := self.proc.poll()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"the service did not end in {timeout} s")
            await asyncio.sleep(0.02)
        self.proc = None
        return code

    async def terminate(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await self.wait_exit(timeout)

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def log_text(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-3000:] for p in sorted(self.workdir.glob("service-*"))
        )

    def outbox_counts(self) -> dict[str, int]:
        with contextlib.closing(sqlite3.connect(self.store_path)) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            rows = db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall()
        return {str(state): int(count) for state, count in rows}

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()


def mapping_violations(seen: list[LedgerEntry]) -> list[str]:
    """MeterValues / StopTransaction the CSMS took whose transactionId is not the one the
    CSMS gave in its latest answer to a StartTransaction before it."""
    current: int | None = None
    problems = []
    for e in seen:
        if e.action == "StartTransaction" and e.outcome == "CALLRESULT":
            current = e.response["transactionId"]
        elif (
            e.action in ("MeterValues", "StopTransaction")
            and e.outcome == "CALLRESULT"
            and e.request.get("transactionId") != current
        ):
            problems.append(f"{e.action} with {e.request.get('transactionId')} != {current}")
    return problems


# after_upstream_send passes: 1 boot, 2 status, 3 start, 4.. meter values.
# after_callresult_before_mark passes: 1 start, 2.. meter values.
CRASHES = [
    "after_upstream_send:3",
    "after_upstream_send:5",
    "after_callresult_before_mark:1",
    "after_callresult_before_mark:3",
    "mid_mapping_update:1",
]


@pytest.mark.parametrize("crashpoint", CRASHES)
async def test_kill_during_replay_loses_and_reorders_nothing(
    csms: CsmsPeer, tmp_path: Path, crashpoint: str
) -> None:
    """Scenario 11 / F5: SIGKILL mid-drain, restart: all in order, <= 1 duplicate, ids mapped."""
    await csms.stop()
    clock = StepClock()
    ledger: list[LedgerEntry] = []
    with Service(tmp_path, csms.url, crashpoint) as svc:
        await svc.start(armed=True)
        url = controller_url(svc.listen_port)
        cp = ChargerPeer16(url, IDENTITY, clock=clock)
        async with cp:
            await cp.boot()
            await cp.status("Charging")
            tx = await cp.start_transaction(TAG, meter_start=1000)
            for wh in (1100, 1200, 1300, 1400):
                await cp.meter_values(tx, wh)
            await csms.start()
            code = await svc.wait_exit(10.0)
            assert code == -signal.SIGKILL, f"did not die at {crashpoint}: {svc.log_text()}"
            await cp.wait_closed()
        ledger += cp.ledger
        received_before = len(csms.inbound(IDENTITY))

        began = time.monotonic()
        await svc.start(armed=False)
        cp2 = ChargerPeer16(url, IDENTITY, clock=clock)
        async with cp2:

            def all_there() -> bool:
                return not delivery_figures(ledger, csms.inbound(IDENTITY)).lost

            await csms.wait_until(all_there, 10.0, "every stored message at the CSMS")
            recovered = time.monotonic() - began
            await cp2.stop_transaction(tx, 1500)
            await csms.wait_until(
                lambda: any(
                    e.outcome == "CALLRESULT"
                    for e in csms.received_calls(IDENTITY, "StopTransaction")
                ),
                10.0,
                "the StopTransaction",
            )
        ledger += cp2.ledger
        assert await svc.terminate() == 0
        counts = svc.outbox_counts()

    seen = csms.inbound(IDENTITY)
    figures = delivery_figures(ledger, seen)
    tx_seen = [e for e in seen if e.action in ("StartTransaction", "MeterValues")]
    print(
        f"\n{crashpoint}: {figures} received_before_crash={received_before} "
        f"recovery={recovered:.2f}s transaction_calls_at_csms={len(tx_seen)}"
    )
    assert figures.lost == []
    assert figures.order_violations == 0
    assert figures.duplicates <= 1
    assert figures.unexpected == []
    assert mapping_violations(seen) == []
    stop = [e for e in seen if e.action == "StopTransaction"]
    assert [e.request["transactionId"] for e in stop] == [
        [e for e in seen if e.action == "StartTransaction"][-1].response["transactionId"]
    ]
    assert counts.get("pending", 0) == 0
    assert counts.get("dead", 0) == 0
    csms.assert_clean()
