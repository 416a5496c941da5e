"""Shared fixtures: a CSMS peer, the controller in-process, and a leaked-task check.

``controller_factory(**overrides)`` starts a controller pointed at the ``csms`` fixture
with its store in the test's tmp_path; ``overrides`` are merged section by section into
the test defaults, e.g. ``controller_factory(csms={"call_timeout": 2})``, or
``controller_factory(csms={"url": other_peer.url})`` to point it at another CSMS.
Every controller a factory started is stopped at teardown, before the CSMS.

``QUICK`` holds the scaled timings of the fault tests (reconnect in 50-300 ms, retries
0.1 s apart, a 2 s CSMS timeout); ``fast_controller(**overrides)`` starts a controller
with them. ``relay`` is a :class:`relay.FaultRelay` in front of ``csms``: point a
controller at it with ``csms={"url": relay.url}``. ``site_list(*tags)`` writes a site
local list CSV (tags Accepted) for ``local_list={"path": ...}``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from peers import CsmsPeer
from relay import FaultRelay

if TYPE_CHECKING:
    from proxy.app import Controller

ControllerFactory = Callable[..., Awaitable["Controller"]]

#: Seconds a controller gets to start or to stop.
CONTROLLER_TIMEOUT = 10.0

#: Scaled timings for the uplink fault tests (RELIABILITY.md 5.1).
QUICK: dict[str, Any] = {
    "uplink": {
        "reconnect_min": 0.05,
        "reconnect_max": 0.3,
        "reconnect_jitter": 0.05,
        "max_connects_per_second": 500,
    },
    "policy": {"transaction_message_retry_interval": 0.1},
    "csms": {"call_timeout": 2},
}


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks running after its fixtures are torn down."""
    yield
    current = asyncio.current_task()
    leftover: set[asyncio.Task[Any]] = set()
    for _ in range(50):  # closing handshakes may need a few loop turns
        leftover = {t for t in asyncio.all_tasks() if t is not current and not t.done()}
        if not leftover:
            return
        await asyncio.sleep(0.02)
    names = sorted(repr(t) for t in leftover)
    for task in leftover:
        task.cancel()
    await asyncio.gather(*leftover, return_exceptions=True)
    pytest.fail(f"test leaked {len(names)} task(s): {names}")


@pytest.fixture
async def csms() -> AsyncIterator[CsmsPeer]:
    """A started CSMS peer speaking OCPP 1.6 and 2.0.1 on ``csms.url``."""
    async with CsmsPeer() as peer:
        yield peer


def _merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.fixture
async def controller_factory(csms: CsmsPeer, tmp_path: Path) -> AsyncIterator[ControllerFactory]:
    """Start controllers in-process: ``ctl = await controller_factory(**overrides)``."""
    from config.settings import load_settings
    from proxy.app import Controller

    started: list[Controller] = []
    numbers = itertools.count(1)

    async def start(**overrides: Any) -> Controller:
        defaults: dict[str, Any] = {
            "listen": {"host": "127.0.0.1", "port": 0},
            "csms": {"url": csms.url},
            "store": {"path": tmp_path / f"lc{next(numbers)}.sqlite3"},
            "admin": {"host": "127.0.0.1", "port": 0},
            # Test chargers are not registered one by one: the CSMS peer decides.
            "admission": {"unknown_identities": "pass_through"},
            # The collector is the test process's: controllers do not freeze it here
            # (test_gc_management does, and undoes it).
            "runtime": {"gc_freeze_interval": 0},
        }
        settings = load_settings(None, **_merge(defaults, overrides))
        ctl = Controller(settings)
        async with asyncio.timeout(CONTROLLER_TIMEOUT):
            await ctl.start()
        started.append(ctl)
        return ctl

    yield start
    for ctl in reversed(started):
        async with asyncio.timeout(CONTROLLER_TIMEOUT):
            await ctl.stop()


@pytest.fixture
async def controller(controller_factory: ControllerFactory) -> Controller:
    """A started controller with the test defaults, pointed at ``csms``."""
    return await controller_factory()


@pytest.fixture
def fast_controller(controller_factory: ControllerFactory) -> ControllerFactory:
    """``ctl = await fast_controller(**overrides)``: a controller with the QUICK timings."""

    async def start(**overrides: Any) -> Controller:
        return await controller_factory(**_merge(QUICK, overrides))

    return start


@pytest.fixture
async def relay(csms: CsmsPeer) -> AsyncIterator[FaultRelay]:
    """A fault relay in front of ``csms`` (mode ``pass``)."""
    async with FaultRelay(csms.port) as r:
        yield r


@pytest.fixture
def site_list(tmp_path: Path) -> Callable[..., Path]:
    """``path = site_list("TAG1", "TAG2")``: a site local list CSV, every tag Accepted."""
    numbers = itertools.count(1)

    def write(*tags: str, status: str = "Accepted") -> Path:
        path = tmp_path / f"site-list-{next(numbers)}.csv"
        rows = "".join(f"{tag},{status},,\n" for tag in tags)
        path.write_text("id_tag,status,expiry,parent_id_tag\n" + rows, encoding="utf-8")
        return path

    return write
