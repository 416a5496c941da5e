"""A demonstration of the controller: ``ocpp-lc demo``.

A small CSMS (:mod:`proxy.demo.csms`), a handful of simulated OCPP 1.6 chargers
(:mod:`proxy.demo.chargers`), both built on the ``ocpp`` package, and the controller in
between, in one process (:mod:`proxy.demo.run`). The service never imports this package;
the command line imports it only for ``ocpp-lc demo``.

This module holds what both sides of the demonstration share: a connection wrapper that
records every frame, and the ledger of calls and answers built from the recording.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

__all__ = [
    "TRANSACTION_ACTIONS",
    "Exchange",
    "Frame",
    "Recorder",
    "exchanges",
    "message_key",
]

CALL, CALLRESULT, CALLERROR = 2, 3, 4

#: OCPP 1.6 transaction messages: the controller stores them while the uplink is down.
TRANSACTION_ACTIONS = frozenset({"StartTransaction", "MeterValues", "StopTransaction"})

Direction = Literal["sent", "received"]


@dataclass(frozen=True, slots=True)
class Frame:
    """One text frame as its recorder saw it."""

    direction: Direction
    text: str
    at: float


class _Connection(Protocol):
    async def send(self, message: str) -> None: ...

    async def recv(self) -> str | bytes: ...


class Recorder:
    """Wraps a websockets connection for an ``ocpp`` ChargePoint and records every text
    frame it sends or receives, in order (``send`` and ``recv`` are all it needs)."""

    def __init__(self, connection: _Connection) -> None:
        self.connection = connection
        self.frames: list[Frame] = []

    async def send(self, message: str) -> None:
        self.frames.append(Frame("sent", message, time.monotonic()))
        await self.connection.send(message)

    async def recv(self) -> str:
        while True:
            data = await self.connection.recv()
            if isinstance(data, str):
                self.frames.append(Frame("received", data, time.monotonic()))
                return data


@dataclass(frozen=True, slots=True)
class Exchange:
    """A call and how it was answered (``outcome`` None: not answered)."""

    message_id: str
    action: str
    payload: Any
    outcome: Literal["result", "error"] | None = None
    answer: Any = None


def _parse(text: str) -> list[Any] | None:
    try:
        msg = json.loads(text)
    except ValueError:
        return None
    if not isinstance(msg, list) or len(msg) < 3 or msg[0] not in (CALL, CALLRESULT, CALLERROR):
        return None
    return msg


def exchanges(frames: Iterable[Frame], calls: Direction) -> list[Exchange]:
    """The calls travelling in direction ``calls``, in order, each with its answer.

    A charger's ledger is ``exchanges(frames, "sent")`` (what it asked, what it was
    answered); a CSMS's is ``exchanges(frames, "received")`` (what it was asked, what it
    answered).
    """
    order: list[Exchange] = []
    open_calls: dict[str, int] = {}
    for frame in frames:
        msg = _parse(frame.text)
        if msg is None:
            continue
        if frame.direction == calls and msg[0] == CALL:
            open_calls[msg[1]] = len(order)
            order.append(Exchange(msg[1], msg[2], msg[3] if len(msg) > 3 else None))
        elif frame.direction != calls and msg[0] != CALL and msg[1] in open_calls:
            position = open_calls.pop(msg[1])
            call = order[position]
            if msg[0] == CALLRESULT:
                order[position] = Exchange(
                    call.message_id, call.action, call.payload, "result", msg[2]
                )
            else:
                order[position] = Exchange(
                    call.message_id, call.action, call.payload, "error", msg[2]
                )
    return order


def message_key(action: str, payload: Any) -> tuple[Any, ...]:
    """What makes a charger message the same message wherever it is seen.

    The message id and the transactionId are left out: replayed messages carry fresh
    message ids, and the controller maps the transaction ids it handed out offline to the
    ones the CSMS assigns. Timestamps and meter readings tell the messages apart.
    """
    p = payload if isinstance(payload, dict) else {}
    if action == "StartTransaction":
        return (
            action,
            p.get("connectorId"),
            p.get("idTag"),
            p.get("meterStart"),
            p.get("timestamp"),
        )
    if action == "StopTransaction":
        return (action, p.get("meterStop"), p.get("timestamp"))
    rest = {k: v for k, v in p.items() if k != "transactionId"}
    return (action, json.dumps(rest, sort_keys=True, separators=(",", ":")))
