"""The site-wide connect limiter's probe (``uplink.probe_interval``), where the end-to-end
tests cannot set up the timing: a wait that has just ended but not yet left."""

from __future__ import annotations

import asyncio
import itertools

from proxy.session import ConnectLimiter


async def test_the_probe_passes_over_a_wait_that_already_ended() -> None:
    """A session's back-off wait that timed out or was cancelled stays registered until
    that session runs again; a probe in between wakes the next live wait instead (it
    once failed on the ended one and stopped probing)."""
    limiter = ConnectLimiter(100.0, probe_interval=0.01)
    ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    ended.cancel()
    limiter._sleepers[ended] = 0.0  # ended, and first in line
    live = asyncio.create_task(limiter.sleep_until_reachable(5.0))
    try:
        await asyncio.wait_for(live, 1.0)
        assert limiter.probes == 1
    finally:
        limiter._sleepers.clear()
        await limiter.close()


async def test_the_probe_wakes_the_longest_waiting_first_and_not_before_its_minimum() -> None:
    """One wake per probe interval, oldest wait first, none before its ``min_wait``."""
    limiter = ConnectLimiter(100.0, probe_interval=0.05)
    loop = asyncio.get_running_loop()
    woken: list[tuple[str, float]] = []
    began = loop.time()

    async def wait(name: str, min_wait: float) -> None:
        await limiter.sleep_until_reachable(5.0, min_wait)
        woken.append((name, loop.time() - began))

    first = asyncio.create_task(wait("first", 0.0))
    await asyncio.sleep(0)
    patient = asyncio.create_task(wait("patient", 0.3))
    await asyncio.sleep(0)
    last = asyncio.create_task(wait("last", 0.0))
    try:
        await asyncio.wait_for(asyncio.gather(first, patient, last), 2.0)
    finally:
        await limiter.close()
    names = [name for name, _ in woken]
    assert names == ["first", "last", "patient"], woken
    assert dict(woken)["patient"] >= 0.3
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(woken)]
    assert min(gaps) >= 0.04, woken
    assert limiter.probes == 3
