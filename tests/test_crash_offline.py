"""Crash while offline (SCENARIOS.md 10, offline half; RELIABILITY.md F4).

The service runs as a subprocess with its CSMS unreachable and a crash point armed
(``OCPP_LC_CRASHPOINT=<point>:<n>``): the n-th pass through the point kills it with
SIGKILL, like a power cut. A raw charger sends a numbered run of transaction messages
and keeps a ledger of the calls that got an answer. The service is started again without
the crash point; the charger reconnects, re-sends the call it got no answer for (the
same frame) and goes on. Then the store must hold every message exactly once, in the
charger's order, and pass ``PRAGMA integrity_check``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
from fault_tools import Service
from peers import CALL, CALLRESULT, RawCharger, controller_url
from websockets.exceptions import ConnectionClosed

from config.settings import ENV_PREFIX
from proxy.store import Store

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent
POINTS = ("before_commit", "after_commit_before_ack", "after_ack")
PASSES = (1, 2, 3)
IDENTITY = "CP1"
READY_TIMEOUT = 20.0
STAMP = "2025-01-01T12:00:{:02d}.000Z"


@pytest.fixture
async def services() -> AsyncIterator[Callable[..., Service]]:
    """Make services; every process is killed and reaped at teardown."""
    made: list[Service] = []

    def make(store_path: Path, log_path: Path, crashpoint: str | None = None) -> Service:
        service = Service(
            store_path,
            log_path,
            crashpoint=crashpoint,
            extra_env={f"{ENV_PREFIX}POLICY__ALLOW_OFFLINE_TX_FOR_UNKNOWN_ID": "true"},
        )
        made.append(service)
        return service

    yield make
    for service in made:
        proc = service.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait(timeout=10)


# --------------------------------------------------------------------------- the charger


@dataclass
class Run:
    """The charger's side: the frames it sends (built once) and the answers it got."""

    texts: list[str] = field(default_factory=list)
    answers: dict[int, list[Any]] = field(default_factory=dict)
    tx_ids: list[int] = field(default_factory=list)

    #: The action of each step: two transactions of Start, MeterValues, Stop.
    STEPS: ClassVar[tuple[str, ...]] = (
        "StartTransaction",
        "MeterValues",
        "StopTransaction",
        "StartTransaction",
        "MeterValues",
        "StopTransaction",
    )

    def payload(self, step: int) -> dict[str, Any]:
        action = self.STEPS[step]
        tx = step // 3  # two transactions of three messages
        base = 1000 * (tx + 1)
        if action == "StartTransaction":
            return {
                "connectorId": 1,
                "idTag": "CARD-K",
                "meterStart": base,
                "timestamp": STAMP.format(step),
            }
        tx_id = self.tx_ids[tx]
        if action == "MeterValues":
            return {
                "connectorId": 1,
                "transactionId": tx_id,
                "meterValue": [
                    {
                        "timestamp": STAMP.format(step),
                        "sampledValue": [{"value": str(base + 100 + step)}],
                    }
                ],
            }
        return {"transactionId": tx_id, "meterStop": base + 200, "timestamp": STAMP.format(step)}

    def text(self, step: int) -> str:
        """The frame of ``step``: built at its first sending, the same at every re-send."""
        if step == len(self.texts):
            frame = [CALL, f"c{step + 1}", self.STEPS[step], self.payload(step)]
            self.texts.append(json.dumps(frame, separators=(",", ":")))
        return self.texts[step]

    async def play(self, raw: RawCharger, first: int) -> int:
        """Send the steps from ``first`` on; the first one left unanswered (or the count)."""
        for step in range(first, len(self.STEPS)):
            text = self.text(step)
            try:
                await raw.send(text)
                answer = await self._answer(raw, f"c{step + 1}")
            except (ConnectionClosed, TimeoutError):
                return step
            self.answers[step] = answer
            if self.STEPS[step] == "StartTransaction" and answer[0] == CALLRESULT:
                tx = step // 3
                if len(self.tx_ids) == tx:
                    self.tx_ids.append(answer[2]["transactionId"])
        return len(self.STEPS)

    @staticmethod
    async def _answer(raw: RawCharger, message_id: str) -> list[Any]:
        async with asyncio.timeout(5.0):
            while True:
                msg = await raw.recv_json(5.0)
                if msg[0] != CALL and msg[1] == message_id:
                    return list(msg)


@dataclass
class Figures:
    point: str
    n: int
    answered_before_crash: int
    resent: int
    answered: int
    stored: int
    lost: int
    duplicates: int
    out_of_order: int

    def line(self) -> str:
        return (
            f"{self.point}:{self.n} answered_before_crash={self.answered_before_crash}"
            f" resent=c{self.resent + 1} answered={self.answered} stored={self.stored}"
            f" lost={self.lost} duplicates={self.duplicates} out_of_order={self.out_of_order}"
        )


async def crash_case(
    make: Callable[..., Service], tmp: Path, point: str, n: int
) -> tuple[Figures, Run, list[Any], list[dict[str, Any]], str]:
    """Crash at ``point``:``n`` while offline, restart, finish; the figures and the store."""
    tmp.mkdir()
    store_path = tmp / "lc.sqlite3"
    run = Run()

    crashing = make(store_path, tmp / "crash.log", f"{point}:{n}")
    crashing.spawn()
    await crashing.ready()
    raw = RawCharger(controller_url(crashing.listen_port), IDENTITY)
    await raw.connect()
    try:
        unanswered = await run.play(raw, 0)
    finally:
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            await raw.close(timeout=2.0)
    code = await crashing.exited(10.0)
    assert code == -signal.SIGKILL, f"{point}:{n} did not kill the service:\n{crashing.log_tail()}"
    assert unanswered < len(Run.STEPS), "the crash left no call unanswered"
    before_crash = len(run.answers)

    restarted = make(store_path, tmp / "restart.log")
    restarted.spawn()
    await restarted.ready()
    async with RawCharger(controller_url(restarted.listen_port), IDENTITY) as raw:
        finished = await run.play(raw, unanswered)
    assert finished == len(Run.STEPS), f"step c{finished + 1} unanswered after the restart"
    assert await restarted.stop() == 0, restarted.log_tail()

    store = Store(store_path)
    await store.open()
    try:
        rows = await store.outbox(IDENTITY)
        transactions = await store.transactions_of(IDENTITY)
        integrity = await store.integrity_check()
    finally:
        await store.close()

    frames = [r.frame for r in rows]
    answered = [run.texts[s] for s, a in run.answers.items() if a[0] == CALLRESULT]
    order = [frames.index(t) for t in run.texts if t in frames]
    figures = Figures(
        point=point,
        n=n,
        answered_before_crash=before_crash,
        resent=unanswered,
        answered=len(answered),
        stored=len(rows),
        lost=sum(1 for t in answered if t not in frames),
        duplicates=len(frames) - len(set(frames)),
        out_of_order=sum(1 for a, b in itertools.pairwise(order) if a > b),
    )
    return figures, run, rows, transactions, integrity


@pytest.mark.parametrize("point", POINTS)
async def test_kill_while_offline_loses_no_answered_message(
    point: str, tmp_path: Path, services: Callable[..., Service]
) -> None:
    """F4: SIGKILL at the crash point (passes 1-3); after restart every answered message is
    stored once, in order, the re-sent one once, and the database is intact."""
    results = await asyncio.gather(
        *(crash_case(services, tmp_path / f"pass{n}", point, n) for n in PASSES)
    )
    for figures, *_ in results:
        print(figures.line())
    for figures, run, rows, transactions, integrity in results:
        where = f"{figures.point}:{figures.n}"
        assert integrity == "ok", where
        assert all(a[0] == CALLRESULT for a in run.answers.values()), (where, run.answers)
        assert len(run.answers) == len(Run.STEPS), where
        assert (figures.lost, figures.duplicates, figures.out_of_order) == (0, 0, 0), figures
        # Exactly the charger's messages, in its order, each once, as it sent them.
        assert [r.frame for r in rows] == run.texts, where
        assert [r.action for r in rows] == list(Run.STEPS), where
        # The provisional ids answered (the re-sent Start too) are the ones stored.
        assert [t["provisional"] for t in transactions] == run.tx_ids, where
        starts = [r for r in rows if r.action == "StartTransaction"]
        assert [r.tx_id for r in starts] == run.tx_ids, where
        statuses = [run.answers[s][2]["idTagInfo"]["status"] for s in (0, 3)]
        assert statuses == ["Accepted", "Accepted"], where
        assert all(t["stopped"] == 1 for t in transactions), where
