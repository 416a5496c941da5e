"""Shared fixtures: a CSMS peer, the controller in-process, and a leaked-task check.

``controller_factory(**overrides)`` starts a controller pointed at the ``csms`` fixture
with its store in the test's tmp_path; ``overrides`` are merged section by section into
the test defaults, e.g. ``controller_factory(csms={"call_timeout": 2})``, or
``controller_factory(csms={"url": other_peer.url})`` to point it at another CSMS.
Every controller a factory started is stopped at teardown, before the CSMS.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from peers import CsmsPeer

if TYPE_CHECKING:
    from proxy.app import Controller

ControllerFactory = Callable[..., Awaitable["Controller"]]

#: Seconds a controller gets to start or to stop.
CONTROLLER_TIMEOUT = 10.0


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
