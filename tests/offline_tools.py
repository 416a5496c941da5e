"""Helpers shared by the offline end-to-end tests: controller settings, chargers' calls
and the waits on what the controller stored."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import pytest
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call_result as result16
from peers import CALL, CALLERROR, CALLRESULT, OCPP16, ChargerPeer16, RawCharger
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from proxy.router import State

if TYPE_CHECKING:
    from conftest import ControllerFactory

    from proxy.app import Controller

#: A port nothing listens on: every uplink attempt is refused at once.
DEAD_CSMS = {"url": "ws://127.0.0.1:1"}
#: Reconnect quickly, so that a stopped CSMS is retried (and refused) often.
FAST_RECONNECT = {"reconnect_min": 0.1, "reconnect_max": 0.3, "reconnect_jitter": 0.05}
#: First provisional transactionId (the reserved range).
PROVISIONAL_START = 2_000_000_000
STAMP = "2025-01-01T12:00:00.000Z"


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 5.0, what: str = "a condition"
) -> None:
    """Wait until ``await check()`` is true; fail after ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not await check():
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout} s waiting for {what}")


def site_csv(tmp_path: Path, rows: str, name: str = "site.csv") -> Path:
    """A site list file with the standard header and ``rows``."""
    path = tmp_path / name
    path.write_text("id_tag,status,expiry,parent_id_tag\n" + rows, encoding="utf-8")
    return path


async def offline_controller(factory: ControllerFactory, **overrides: Any) -> Controller:
    """A controller whose CSMS cannot be reached."""
    overrides.setdefault("csms", DEAD_CSMS)
    overrides.setdefault("uplink", FAST_RECONNECT)
    return await factory(**overrides)


def result_of(msg: list[Any]) -> dict[str, Any]:
    """The payload of a CALLRESULT (fails on anything else)."""
    assert msg[0] == CALLRESULT, msg
    payload: dict[str, Any] = msg[2]
    return payload


def error_code(msg: list[Any]) -> str:
    """The code of a CALLERROR (fails on anything else)."""
    assert msg[0] == CALLERROR, msg
    code: str = msg[2]
    return code


def frame(message_id: str, action: str, payload: Any) -> str:
    return json.dumps([CALL, message_id, action, payload], separators=(",", ":"))


async def send_call(raw: RawCharger, text: str, timeout: float = 5.0) -> list[Any]:
    """Send a CALL as the exact ``text`` given; the answer to its id."""
    message_id = json.loads(text)[1]
    await raw.send(text)
    async with asyncio.timeout(timeout):
        while True:
            msg = await raw.recv_json(timeout)
            if isinstance(msg, list) and msg[0] != CALL and msg[1] == message_id:
                return msg


def start_payload(id_tag: str, meter_start: int = 1000, connector: int = 1) -> dict[str, Any]:
    return {
        "connectorId": connector,
        "idTag": id_tag,
        "meterStart": meter_start,
        "timestamp": STAMP,
    }


def stop_payload(tx_id: int, meter_stop: int, **extra: Any) -> dict[str, Any]:
    return {"transactionId": tx_id, "meterStop": meter_stop, "timestamp": STAMP, **extra}


def meter_payload(tx_id: int, wh: int) -> dict[str, Any]:
    return {
        "connectorId": 1,
        "transactionId": tx_id,
        "meterValue": [
            {
                "timestamp": STAMP,
                "sampledValue": [{"value": str(wh), "measurand": "Energy.Active.Import.Register"}],
            }
        ],
    }


async def offline_status(raw: RawCharger, id_tag: str) -> str:
    """The status an Authorize of ``id_tag`` gets."""
    answer = await raw.call("Authorize", {"idTag": id_tag})
    status: str = result_of(answer)["idTagInfo"]["status"]
    return status


async def wait_state(ctl: Controller, identity: str, state: State, timeout: float = 5.0) -> None:
    """Until the charger's session is in ``state``."""

    async def reached() -> bool:
        session = ctl.chargers.sessions.get(identity)
        return session is not None and session.state is state

    await eventually(reached, timeout, what=f"{identity} to be {state.name}")


async def wait_offline(ctl: Controller, identity: str) -> None:
    await wait_state(ctl, identity, State.OFFLINE)


async def wait_drained(ctl: Controller, identity: str, timeout: float = 10.0) -> None:
    """Until the charger's outbox is empty and its session online again."""

    async def done() -> bool:
        session = ctl.chargers.sessions.get(identity)
        online = session is not None and session.state is State.ONLINE
        return online and not await ctl.store.outbox_depth(identity)

    await eventually(done, timeout, what=f"{identity} to drain and be online")


class _ListHandlers16(ChargePoint16):
    """A 1.6 charger's answers to the local-list calls of the CSMS."""

    def __init__(self, peer: ListCharger16, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.peer = peer

    @on("SendLocalList")
    def on_send_local_list(self, **payload: Any) -> Any:
        self.peer.lists.append(payload)
        return result16.SendLocalList(status="Accepted")

    @on("GetLocalListVersion")
    def on_get_local_list_version(self, **_: Any) -> Any:
        return result16.GetLocalListVersion(list_version=self.peer.list_version)


class ListCharger16(ChargerPeer16):
    """A 1.6 charger that keeps a local list: accepts SendLocalList, reports a version."""

    handlers_class = _ListHandlers16

    def __init__(self, url: str, identity: str, **kwargs: Any) -> None:
        super().__init__(url, identity, **kwargs)
        self.lists: list[dict[str, Any]] = []
        self.list_version = 0


class ScriptedCsms:
    """A bare 1.6 CSMS on loopback: answers each charger call with ``answers[action]``
    (or what :meth:`answer` makes of it)."""

    def __init__(self, answers: dict[str, dict[str, Any]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str, Any]] = []  # (identity, action, payload)
        self._server: Server | None = None

    async def __aenter__(self) -> Self:
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            0,
            subprotocols=[Subprotocol(OCPP16)],
            ping_interval=None,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Close every connection with 1001 and stop listening."""
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            async with asyncio.timeout(5):
                await server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = next(iter(self._server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}"

    def answer(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        return self.answers.get(action, {})

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        identity = ws.request.path.rsplit("/", 1)[-1]
        with contextlib.suppress(ConnectionClosed):
            async for text in ws:
                msg = json.loads(text)
                if msg[0] == CALL:
                    self.calls.append((identity, msg[2], msg[3]))
                    await ws.send(json.dumps([CALLRESULT, msg[1], self.answer(msg[2], msg[3])]))
