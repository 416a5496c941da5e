"""The controller keeps long-lived objects out of full collections (runtime.gc_*)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from peers import CsmsPeer, RawCharger, controller_url

if TYPE_CHECKING:
    from conftest import ControllerFactory

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """Give the test process's collector back as it was."""
    gc.unfreeze()
    yield
    gc.unfreeze()


@pytest.mark.parametrize("interval", [0.2, 0], ids=["every-0.2s", "off"])
async def test_long_lived_objects_are_frozen_every_interval_unless_off(
    unfrozen: None, csms: CsmsPeer, controller_factory: ControllerFactory, interval: float
) -> None:
    ctl = await controller_factory(runtime={"gc_freeze_interval": interval})
    async with RawCharger(controller_url(ctl.listen_port), "CP1") as charger:
        await charger.call("Heartbeat", {})
        assert gc.get_freeze_count() == 0
        for _ in range(12):
            await asyncio.sleep(0.1)
            if gc.get_freeze_count():
                break
        if not interval:
            assert gc.get_freeze_count() == 0
            return
        assert gc.get_freeze_count() > 0, "nothing frozen after the interval"
        # the session's objects are among them: a full collection does not walk them
        tracked_now = len(gc.get_objects())
        assert gc.get_freeze_count() > tracked_now / 2
