"""The leader's fence on a fake clock: open while the Lease is surely ours, closed after
a pause past it until the Lease is read (and renewed) again."""

from __future__ import annotations

import asyncio
import math

from celery_taskrun.engine.fence import Fence


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_open_until_the_renew_deadline_then_closed() -> None:
    clock = Clock()
    fence = Fence(until=-math.inf, monotonic=clock)
    assert not fence.open()  # standing by
    fence.hold(clock.now + 10)  # renewed: surely ours for the renew deadline
    assert fence.open()
    clock.now += 9.9
    assert fence.open()
    clock.now += 0.2  # a pause past it (SIGSTOP, a long GC): closed on waking
    assert not fence.open()


async def test_an_effect_waits_until_the_lease_is_renewed() -> None:
    clock = Clock()
    fence = Fence(until=clock.now - 1, monotonic=clock)
    passed = asyncio.Event()

    async def effect() -> None:
        await fence.wait()
        passed.set()

    task = asyncio.create_task(effect())
    await asyncio.sleep(0)
    assert not passed.is_set()
    fence.hold(clock.now - 0.5)  # a change that still is not ours: keeps waiting
    await asyncio.sleep(0)
    assert not passed.is_set()
    fence.hold(clock.now + 10)  # renewed
    await asyncio.wait_for(task, 1)
    assert passed.is_set()


async def test_a_lost_lease_keeps_the_fence_closed_until_cancelled() -> None:
    fence = Fence(until=-math.inf)
    waiting = asyncio.create_task(fence.wait())
    await asyncio.sleep(0)
    fence.hold(-math.inf)  # stepping down: what waits is cancelled by the tracker
    await asyncio.sleep(0)
    assert not waiting.done()
    waiting.cancel()


async def test_without_an_election_the_fence_is_open() -> None:
    fence = Fence()
    assert fence.open()
    await asyncio.wait_for(fence.wait(), 1)
