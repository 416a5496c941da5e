"""Helpers of the fault-injection suite (``test_faults.py``, ``bench/soak.py``).

Waiting with a bound, the one-line figures (``FIGURES F<n>: ...``), the oracle for
OCPP 2.0.1 TransactionEvents (a message is its transactionId and seqNo), what the CSMS
peer saw per connection (calls in flight, connections per identity), uplink connect
attempts, event-loop lag, a 2.0.1 station driven one call at a time, a CSMS refusal
table that answers the first handshakes of an identity with an HTTP status, and the
controller as a subprocess (``python -m proxy serve``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ocpp.v201 import call as call201
from peers import (
    CALL,
    ChargerPeer201,
    CsmsPeer,
    DeliveryFigures,
    LedgerEntry,
    delivery_figures,
)

REPO = Path(__file__).resolve().parent.parent
ENV_PREFIX = "OCPP_LC_"
#: First provisional OCPP 1.6 transactionId the controller hands out (the default).
PROVISIONAL_START = 2_000_000_000
TOKEN_TYPE = "ISO14443"


# --------------------------------------------------------------------------- waiting


async def wait_for(
    predicate: Callable[[], Awaitable[bool] | bool],
    timeout: float,
    what: str,
    period: float = 0.02,
) -> float:
    """Poll ``predicate`` (plain or async) until it holds; the seconds it took."""
    began = time.monotonic()
    deadline = began + timeout
    while True:
        value = predicate()
        if not isinstance(value, bool):
            value = await value
        if value:
            return time.monotonic() - began
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(period)


# --------------------------------------------------------------------------- figures


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, (list, tuple)) and all(isinstance(v, float) for v in value):
        return "[" + ",".join(f"{v:.3f}" for v in value) + "]"
    return str(value).replace(" ", "")


def figures_line(fault_id: str, **fields: Any) -> str:
    """Print (and return) the one-line figures of a fault: ``FIGURES F1: k=v ...``."""
    line = f"FIGURES {fault_id}: " + " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
    print(f"\n{line}", flush=True)
    return line


def percentile(values: Iterable[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def peak_per_window(times: Iterable[float], window: float) -> int:
    """The largest number of ``times`` within any ``window`` seconds."""
    ordered = sorted(times)
    peak, left = 0, 0
    for right, t in enumerate(ordered):
        while t - ordered[left] >= window:
            left += 1
        peak = max(peak, right - left + 1)
    return peak


def te_key(request: Any) -> tuple[Any, Any]:
    """A TransactionEvent's identity: its transactionId and seqNo (R24, R39)."""
    p = request if isinstance(request, dict) else {}
    info = p.get("transactionInfo") if isinstance(p.get("transactionInfo"), dict) else {}
    return (info.get("transactionId"), p.get("seqNo"))


def _keyed(entries: Iterable[LedgerEntry]) -> list[LedgerEntry]:
    out = []
    for e in entries:
        if e.action == "TransactionEvent":
            tx, seq = te_key(e.request)
            out.append(replace(e, request={"te": [tx, seq]}))
        else:
            out.append(e)
    return out


def figures_201(
    charger: Iterable[LedgerEntry],
    csms: Iterable[LedgerEntry],
    dead: Iterable[tuple[Any, Any]] = (),
) -> DeliveryFigures:
    """:func:`peers.delivery_figures` for 2.0.1 TransactionEvents, on transactionId and
    seqNo (the replay adds ``offline: true``, so the payload is not the key)."""
    dead_keys = [
        ("TransactionEvent", json.dumps({"te": list(k)}, separators=(",", ":"))) for k in dead
    ]
    return delivery_figures(
        _keyed(charger),
        _keyed(csms),
        dead=dead_keys,
        actions=frozenset({"TransactionEvent"}),
    )


def max_in_flight(csms: CsmsPeer) -> int:
    """The most CALLs the CSMS had received and not yet answered on one connection."""
    peak = 0
    for conns in csms.history.values():
        for conn in conns:
            open_ids: set[str] = set()
            for frame in conn.frames:
                try:
                    msg = json.loads(frame.text)
                except ValueError:
                    continue
                if not isinstance(msg, list) or len(msg) < 2:
                    continue
                if frame.direction == "received" and msg[0] == CALL:
                    open_ids.add(msg[1])
                    peak = max(peak, len(open_ids))
                elif frame.direction == "sent" and msg[0] != CALL:
                    open_ids.discard(msg[1])
    return peak


def max_live_per_identity(csms: CsmsPeer) -> int:
    """1 when the CSMS never saw two live connections of one identity, else 2 or more."""
    extra: Counter[str] = Counter()
    for v in csms.violations:
        if "second live connection" in v:
            extra[v.split("#", 1)[0]] += 1
    return 1 + max(extra.values(), default=0)


def csms_transaction_energy(csms: CsmsPeer, identity: str) -> dict[int, int]:
    """meterStart -> meterStop - meterStart of each 1.6 stop the CSMS took, matched to its
    start through the CSMS's own transaction ids."""
    starts: dict[int, int] = {}
    energy: dict[int, int] = {}
    for e in csms.inbound(identity):
        if e.outcome != "CALLRESULT":
            continue
        if e.action == "StartTransaction":
            starts[e.response["transactionId"]] = e.request["meterStart"]
        elif e.action == "StopTransaction":
            meter_start = starts.get(e.request["transactionId"])
            if meter_start is not None:
                energy.setdefault(meter_start, e.request["meterStop"] - meter_start)
    return energy


# --------------------------------------------------------------------------- probes


class ConnectAttempts:
    """Records every uplink the controller tries to open (in-process controller).

    ``install(monkeypatch)`` wraps ``open_uplink`` where the session and the charger
    server call it; ``times`` and ``by_identity`` hold the moments of the attempts.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self.by_identity: defaultdict[str, list[float]] = defaultdict(list)

    def install(self, monkeypatch: Any) -> ConnectAttempts:
        import proxy.charger
        import proxy.session

        real = proxy.session.open_uplink

        async def counted(settings: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            now = time.monotonic()
            self.times.append(now)
            self.by_identity[request.identity].append(now)
            return await real(settings, request, *args, **kwargs)

        monkeypatch.setattr(proxy.session, "open_uplink", counted)
        monkeypatch.setattr(proxy.charger, "open_uplink", counted)
        return self

    def since(self, moment: float) -> list[float]:
        return [t for t in self.times if t >= moment]


class LoopLag:
    """Measures how late the event loop wakes a sleeper (``async with LoopLag() as lag``)."""

    def __init__(self, period: float = 0.05) -> None:
        self.period = period
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.period)
            self.worst = max(self.worst, loop.time() - before - self.period)

    async def __aenter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._run(), name="loop-lag")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class RefuseFirst(dict[str, int]):
    """A ``CsmsPeer.refusals`` table that answers the first ``times`` handshakes of each
    identity in ``identities`` with HTTP ``status``, then lets them in."""

    def __init__(self, identities: Iterable[str], status: int = 503, times: int = 2) -> None:
        super().__init__()
        self.wanted = set(identities)
        self.status = status
        self.times = times
        self.refused: Counter[str] = Counter()

    def get(self, identity: str, default: Any = None) -> Any:  # type: ignore[override]
        if identity in self.wanted and self.refused[identity] < self.times:
            self.refused[identity] += 1
            return self.status
        return default


# --------------------------------------------------------------------------- 2.0.1


def meter_value_201(timestamp: str, wh: int) -> dict[str, Any]:
    return {
        "timestamp": timestamp,
        "sampled_value": [
            {
                "value": wh,
                "measurand": "Energy.Active.Import.Register",
                "unit_of_measure": {"unit": "Wh"},
            }
        ],
    }


_TRIGGERS = {"Started": "Authorized", "Updated": "MeterValuePeriodic", "Ended": "StopAuthorized"}


class Station(ChargerPeer201):
    """A 2.0.1 station driven one call at a time; seqNo counts per transaction from 0."""

    def __init__(self, url: str, identity: str, **kwargs: Any) -> None:
        super().__init__(url, identity, **kwargs)
        self._seq_nos: dict[str, itertools.count[int]] = {}

    async def boot(self) -> Any:
        return await self.call(
            call201.BootNotification(
                charging_station={
                    "model": "LC-Test",
                    "vendor_name": "OpenSite",
                    "serial_number": self.identity,
                },
                reason="PowerUp",
            )
        )

    async def status(self, status: str = "Available") -> Any:
        return await self.call(
            call201.StatusNotification(
                timestamp=self.now(), connector_status=status, evse_id=1, connector_id=1
            )
        )

    async def authorize(self, token: str) -> str:
        answer = await self.call(
            call201.Authorize(id_token={"id_token": token, "type": TOKEN_TYPE})
        )
        return str(answer.id_token_info["status"])

    def event_call(
        self, event_type: str, transaction_id: str, wh: int, *, token: str | None = None
    ) -> Any:
        """The next TransactionEvent of the transaction (its seqNo taken now)."""
        seq_no = self._seq_nos.setdefault(transaction_id, itertools.count(0))
        info: dict[str, Any] = {"transaction_id": transaction_id}
        if event_type == "Started":
            info["charging_state"] = "Charging"
        if event_type == "Ended":
            info["stopped_reason"] = "Local"
        return call201.TransactionEvent(
            event_type=event_type,
            timestamp=self.now(),
            trigger_reason=_TRIGGERS[event_type],
            seq_no=next(seq_no),
            transaction_info=info,
            id_token={"id_token": token, "type": TOKEN_TYPE} if token is not None else None,
            evse={"id": 1, "connector_id": 1} if event_type == "Started" else None,
            meter_value=[meter_value_201(self.now(), wh)],
        )

    async def event(
        self, event_type: str, transaction_id: str, wh: int, *, token: str | None = None
    ) -> Any:
        return await self.call(self.event_call(event_type, transaction_id, wh, token=token))


# --------------------------------------------------------------------------- subprocess


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Service:
    """One run of ``python -m proxy serve`` on loopback ports of its own."""

    store_path: Path
    log_path: Path
    csms_url: str = "ws://127.0.0.1:1"
    extra_env: Mapping[str, str] = field(default_factory=dict)
    #: ``<point>:<n>``: the n-th pass through the crash point kills the service.
    crashpoint: str | None = None
    listen_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    _log_start: int = 0

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
        env.update(
            {
                f"{ENV_PREFIX}LISTEN__HOST": "127.0.0.1",
                f"{ENV_PREFIX}LISTEN__PORT": str(self.listen_port),
                f"{ENV_PREFIX}LISTEN__COMPRESSION": "false",
                f"{ENV_PREFIX}CSMS__URL": self.csms_url,
                f"{ENV_PREFIX}STORE__PATH": str(self.store_path),
                f"{ENV_PREFIX}ADMIN__HOST": "127.0.0.1",
                f"{ENV_PREFIX}ADMIN__PORT": str(self.admin_port),
                f"{ENV_PREFIX}LOG__LEVEL": "WARNING",
                f"{ENV_PREFIX}ADMISSION__UNKNOWN_IDENTITIES": "pass_through",
            }
        )
        env.update(self.extra_env)
        if self.crashpoint is not None:
            env[f"{ENV_PREFIX}CRASHPOINT"] = self.crashpoint
        return env

    def spawn(self) -> None:
        with self.log_path.open("ab") as log:
            self._log_start = log.tell()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "proxy", "serve"],
                cwd=REPO,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _run_log(self) -> str:
        """What the current run wrote to the log."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_start)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    async def ready(self, timeout: float = 20.0) -> None:
        """Wait until ``GET /readyz`` answers 200.

        A port picked free can be taken by another socket before the service binds it:
        the run is then started again on fresh ports (read ``listen_port`` after this).
        """
        for attempt in range(4):
            assert self.proc is not None
            async with asyncio.timeout(timeout):
                while True:
                    if self.proc.poll() is not None:
                        if attempt < 3 and "address already in use" in self._run_log().lower():
                            break
                        raise AssertionError(
                            f"service exited with {self.proc.returncode}:\n{self.log_tail()}"
                        )
                    if await self._readyz() == 200:
                        return
                    await asyncio.sleep(0.05)
            self.listen_port, self.admin_port = free_port(), free_port()
            self.spawn()

    async def _readyz(self) -> int | None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.admin_port)
        except OSError:
            return None
        try:
            writer.write(b"GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            await writer.drain()
            status_line = await reader.readline()
        except OSError:
            return None
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        parts = status_line.split()
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None

    async def exited(self, timeout: float) -> int:
        """Wait for the process to end; its return code."""
        assert self.proc is not None
        async with asyncio.timeout(timeout):
            while self.proc.poll() is None:
                await asyncio.sleep(0.02)
        return self.proc.returncode

    async def stop(self) -> int:
        """SIGTERM, then SIGKILL if it does not end in time; the return code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return await self.exited(10.0)
            except TimeoutError:
                self.proc.kill()
        return await self.exited(10.0)

    def terminate(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL if still running, and reap."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=10)

    def peak_rss_kib(self) -> int | None:
        """VmHWM of the running process (kB), from /proc."""
        if self.proc is None:
            return None
        try:
            text = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return None
