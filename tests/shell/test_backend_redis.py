"""The Redis result backend against a real redis-server on loopback: its wake-ups, a
lost subscription (resubscribed, then every run resynced), and a server that hangs
(reads fail within their timeout, and work again once it answers).  On the wall
clock: real sockets cannot be put on fake loop time."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from celery_taskrun.clients.backend import KEY_PREFIX, BackendUnavailable, RedisResultBackend
from celery_taskrun.core import records
from celery_taskrun.core.records import Reading, TaskRecord

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")

WAIT = 10.0  # seconds a test waits for what it expects before failing


@pytest_asyncio.fixture(loop_scope="function")
async def admin(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest_asyncio.fixture(loop_scope="function")
async def backend(redis_url: str) -> AsyncIterator[RedisResultBackend]:
    made = RedisResultBackend(
        redis_url, max_record_bytes=64 * 1024, budget_bytes=1 << 20, timeout=1.0
    )
    yield made
    await made.close()


async def store(admin: aioredis.Redis, task_id: str, state: str, result: Any = None) -> None:
    """What a Celery worker does on a state change: SETEX, then PUBLISH on the key."""
    value = json.dumps({"status": state, "result": result, "traceback": None, "task_id": task_id})
    await admin.setex(KEY_PREFIX + task_id, 3600, value)
    await admin.publish(KEY_PREFIX + task_id, value)


async def test_a_lost_subscription_is_resubscribed_and_resynced(
    backend: RedisResultBackend, admin: aioredis.Redis
) -> None:
    heard: asyncio.Queue[tuple[str, Reading | None] | str] = asyncio.Queue()

    async def on_record(task_id: str, reading: Reading | None) -> None:
        await heard.put((task_id, reading))

    async def on_resync() -> None:
        await heard.put("resync")

    async def next_heard() -> tuple[str, Reading | None] | str:
        return await asyncio.wait_for(heard.get(), WAIT)

    watch = asyncio.create_task(backend.watch(on_record, on_resync))
    try:
        assert await next_heard() == "resync"  # subscribed: whatever was missed is read
        await store(admin, "tr-a-1", "STARTED")  # the operator hears its own ids only
        assert await next_heard() == ("tr-a-1", TaskRecord("STARTED"))

        killed = await admin.client_kill_filter(_type="pubsub")
        assert killed == 1
        assert await next_heard() == "resync"  # subscribed again, and told to read all
        await store(admin, "tr-b-1", "SUCCESS", 42)
        assert await next_heard() == ("tr-b-1", TaskRecord("SUCCESS", 42))
        assert heard.empty()
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)


async def test_a_hung_server_fails_reads_within_their_timeout_then_they_recover(
    redis_url: str, admin: aioredis.Redis
) -> None:
    timeout = 0.2
    backend = RedisResultBackend(
        redis_url, max_record_bytes=1024, budget_bytes=1024, timeout=timeout
    )
    try:
        await store(admin, "a", "SUCCESS", 1)
        found = await backend.read(["a", "b"])
        assert found == {"a": TaskRecord("SUCCESS", 1), "b": records.NO_RECORD}
        # Every client hangs for a second: five times what a read may take (its timeout,
        # twice at most), so a read that fails here gave up by itself.
        await admin.client_pause(1000, all=True)
        with pytest.raises(BackendUnavailable, match="Timeout"):
            await backend.read(["a"])
        await admin.ping()  # answered once the pause is over
        assert await backend.read(["a"]) == {"a": TaskRecord("SUCCESS", 1)}
    finally:
        await backend.close()
