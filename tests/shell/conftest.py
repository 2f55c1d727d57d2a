"""A tracker wired to fakes of its clients, started and stopped around each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest_asyncio

from celery_taskrun.engine.tracker import Tracker

from fakes import FakeBackend, FakeCelery, FakeKube, Harness, harness_config

MakeHarness = Callable[..., Any]


# The tracker's tasks live on the test's own loop.
@pytest_asyncio.fixture(loop_scope="function")
async def make_harness() -> AsyncIterator[MakeHarness]:
    started: list[Tracker] = []

    async def make(**config: Any) -> Harness:
        kube, celery, backend = FakeKube(), FakeCelery(), FakeBackend()
        tracker = Tracker(harness_config(**config), kube, celery, backend)  # type: ignore[arg-type]
        await tracker.lead()
        started.append(tracker)
        return Harness(tracker, kube, celery, backend)

    yield make
    for tracker in started:
        await tracker.stop()


@pytest_asyncio.fixture(loop_scope="function")
async def harness(make_harness: MakeHarness) -> Harness:
    made: Harness = await make_harness()
    return made
