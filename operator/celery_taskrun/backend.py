"""Reading the result backend: batched reads, and wake-ups where the backend has them.

Redis is read natively with `redis.asyncio`: one `MGET` for every run due at once,
and one `PSUBSCRIBE` connection that hears each `SETEX`+`PUBLISH` Celery makes on a
state change.  Delivery of a publish is at-most-once, so the key stays the source
of truth and the poll schedule covers whatever was missed.  Any other backend
Celery supports (SQLAlchemy databases) is read through Celery's own backend in a
thread, so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from . import records
from .records import TaskRecord

log = logging.getLogger(__name__)

KEY_PREFIX = "celery-task-meta-"
MGET_CHUNK = 1000

OnRecord = Callable[[str, TaskRecord], Awaitable[None]]
OnResync = Callable[[], Awaitable[None]]


class BackendUnavailable(Exception):
    """The backend could not be read; the operator keeps trying."""


class ResultBackend(Protocol):
    async def read(self, task_ids: Sequence[str]) -> dict[str, TaskRecord]: ...

    async def watch(self, on_record: OnRecord, on_resync: OnResync) -> None:
        """Deliver records as they are stored, until cancelled; return at once if unable."""

    async def close(self) -> None: ...


class RedisResultBackend:
    def __init__(self, url: str) -> None:
        self.url = url
        self.client: aioredis.Redis = aioredis.from_url(
            url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=15
        )

    async def read(self, task_ids: Sequence[str]) -> dict[str, TaskRecord]:
        out: dict[str, TaskRecord] = {}
        try:
            for start in range(0, len(task_ids), MGET_CHUNK):
                chunk = task_ids[start : start + MGET_CHUNK]
                values = await self.client.mget([KEY_PREFIX + tid for tid in chunk])
                for tid, raw in zip(chunk, values, strict=True):
                    out[tid] = records.parse(raw)
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"redis: {exc}") from exc
        return out

    async def watch(self, on_record: OnRecord, on_resync: OnResync) -> None:
        delay = 0.5
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(KEY_PREFIX + "*")
                # Anything stored while we were not subscribed was missed: read it all.
                await on_resync()
                delay = 0.5
                async for message in pubsub.listen():
                    await self._deliver(message, on_record)
            except (RedisError, OSError) as exc:
                log.warning("result backend subscription lost (%s); retrying in %.1fs", exc, delay)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    @staticmethod
    async def _deliver(message: dict[str, Any], on_record: OnRecord) -> None:
        if message.get("type") != "pmessage":
            return
        channel = message["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else str(channel)
        try:
            record = records.parse(message["data"])
        except ValueError:
            return  # not Celery's: someone else publishing under the prefix
        await on_record(channel.removeprefix(KEY_PREFIX), record)

    async def close(self) -> None:
        await self.client.aclose()


class CeleryResultBackend:
    """Any backend Celery can read (e.g. `db+sqlite:///...`), read in a worker thread."""

    def __init__(self, app: Any) -> None:
        self.backend = app.backend

    def _read_all(self, task_ids: Sequence[str]) -> dict[str, TaskRecord]:
        return {tid: records.from_meta(self.backend.get_task_meta(tid)) for tid in task_ids}

    async def read(self, task_ids: Sequence[str]) -> dict[str, TaskRecord]:
        try:
            return await asyncio.to_thread(self._read_all, list(task_ids))
        except Exception as exc:  # whatever the driver raises: the backend is unreadable
            raise BackendUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def watch(self, on_record: OnRecord, on_resync: OnResync) -> None:
        return  # no change notifications: polling alone

    async def close(self) -> None:
        return


def open_backend(url: str, app: Any) -> ResultBackend:
    scheme = url.split("://", 1)[0]
    if scheme in ("redis", "rediss", "unix"):
        return RedisResultBackend(url)
    return CeleryResultBackend(app)
