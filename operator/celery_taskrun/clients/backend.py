"""Reading the result backend: batched, bounded reads, and wake-ups where the backend has them.

Redis is read natively with `redis.asyncio`: one script call reads every run due at
once, returning each record whole when it is within the read bound and only its
size otherwise (the record is then read in part: its head and tail).  So a worker
that stores a huge result never makes the operator load it.  One `PSUBSCRIBE`
connection hears each `SETEX`+`PUBLISH` Celery makes on a state change; delivery is
at-most-once, so the key stays the source of truth and the poll schedule covers
whatever was missed.  A SQLAlchemy database (`db+postgresql://`, `db+sqlite://`) is read
the same way: one query for every run due (in chunks), each result whole when within
the bound and only its start otherwise, in a thread so the event loop never blocks.
Any other backend Celery supports is read through Celery's own backend, a task at a
time.

A record that cannot be read is that run's problem alone: it comes back as
`records.Unreadable`, never as an error of the whole read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis
from kombu.exceptions import DecodeError
from redis.exceptions import RedisError

from celery_taskrun.core import records
from celery_taskrun.core.records import Reading, Stored, Unreadable
from celery_taskrun.core.sending import TASK_ID_PREFIX

log = logging.getLogger(__name__)

KEY_PREFIX = records.KEY_PREFIX
READ_CHUNK = 500
# A record read in part: this much of its start (state, result preview) and its end
# (date_done, worker, retries follow the result in Celery's JSON).
HEAD_BYTES = 64 * 1024
TAIL_BYTES = 4 * 1024
# A database row's traceback: its end (where it failed), at most this many characters.
TRACEBACK_CHARS = 64 * 1024

# Each key: nil (no record, or not a string), its value (within `limit`, while `budget`
# lasts), or its size (too large to return here).  One MGET inside the script: the
# whole read is two commands for Redis, whatever the number of keys, and a large value
# never leaves the server.
READ_SCRIPT = """
local limit, budget = tonumber(ARGV[1]), tonumber(ARGV[2])
local values = redis.call('MGET', unpack(KEYS))
local out = {}
for i = 1, #KEYS do
  local value = values[i]
  if not value then
    out[i] = false
  elseif #value > limit or #value > budget then
    out[i] = #value
  else
    out[i] = value
    budget = budget - #value
  end
end
return out
"""

# A reading, or None: "this task's record changed, read it".
OnRecord = Callable[[str, Reading | None], Awaitable[None]]
OnResync = Callable[[], Awaitable[None]]


class BackendUnavailable(Exception):
    """The backend could not be read; the operator keeps trying."""


class ResultBackend(Protocol):
    async def read(self, task_ids: Sequence[str]) -> dict[str, Reading]: ...

    async def watch(self, on_record: OnRecord, on_resync: OnResync) -> None:
        """Deliver records as they are stored, until cancelled; return at once if unable."""

    async def close(self) -> None: ...


class RedisResultBackend:
    def __init__(
        self, url: str, *, max_record_bytes: int, budget_bytes: int, timeout: float = 5.0
    ) -> None:
        self.url = url
        self.limit = max_record_bytes
        self.budget = max(budget_bytes, max_record_bytes)
        self.timeout = timeout
        self.client: aioredis.Redis = aioredis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=15,
        )
        self.script = self.client.register_script(READ_SCRIPT)

    async def read(self, task_ids: Sequence[str]) -> dict[str, Reading]:
        out: dict[str, Reading] = {}
        try:
            for start in range(0, len(task_ids), READ_CHUNK):
                chunk = list(task_ids[start : start + READ_CHUNK])
                out.update(await asyncio.wait_for(self._read(chunk), self.timeout * 2))
        except (RedisError, OSError, TimeoutError) as exc:
            raise BackendUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        return out

    async def _read(self, task_ids: list[str], budget: int | None = None) -> dict[str, Reading]:
        values = await self.script(
            keys=[KEY_PREFIX + tid for tid in task_ids], args=[self.limit, budget or self.budget]
        )
        out: dict[str, Reading] = {}
        for tid, value in zip(task_ids, values, strict=True):
            if value is None:
                out[tid] = records.NO_RECORD
            elif isinstance(value, bytes):
                out[tid] = records.parse(Stored(value, len(value)), self.limit)
            elif value > self.limit:
                out[tid] = records.parse(await self._read_part(tid, value), self.limit)
            else:  # within the bound, past this call's budget: on its own
                out.update(await self._read([tid], budget=self.limit))
        return out

    async def _read_part(self, task_id: str, size: int) -> Stored:
        key = KEY_PREFIX + task_id
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.getrange(key, 0, HEAD_BYTES - 1)
            pipe.getrange(key, -TAIL_BYTES, -1)
            head, tail = await pipe.execute()
        return Stored(bytes(head), size, bytes(tail))

    async def watch(self, on_record: OnRecord, on_resync: OnResync) -> None:
        delay = 0.5
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                # Only the operator's own task ids: another application's publishes (a
                # progress report of megabytes) never even reach it.
                await pubsub.psubscribe(KEY_PREFIX + TASK_ID_PREFIX + "*")
                # Anything stored while we were not subscribed was missed: read it all.
                await on_resync()
                delay = 0.5
                async for message in pubsub.listen():
                    await self._deliver(message, on_record)
            except (RedisError, OSError) as exc:
                log.warning("result backend subscription lost (%s); retrying in %.1fs", exc, delay)
            finally:
                await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _deliver(self, message: dict[str, Any], on_record: OnRecord) -> None:
        if message.get("type") != "pmessage":
            return
        channel = message["channel"]
        channel = channel.decode(errors="replace") if isinstance(channel, bytes) else str(channel)
        data = message["data"]
        task_id = channel.removeprefix(KEY_PREFIX)
        if not isinstance(data, bytes) or len(data) > self.limit:
            # Too large to take from a publish (Redis itself caps what a subscriber may
            # be sent: client-output-buffer-limit pubsub): read it within the bounds.
            await on_record(task_id, None)
            return
        await on_record(task_id, records.parse(Stored(data, len(data)), self.limit))

    async def close(self) -> None:
        await self.client.aclose()


class CeleryResultBackend:
    """Any other backend Celery can read, a task at a time in a worker thread.

    Celery decodes these records itself (JSON only: the operator's app accepts no other
    content), so their size is the backend's to bound, not the operator's.
    """

    def __init__(self, app: Any, timeout: float = 10.0) -> None:
        self.backend = app.backend
        self.timeout = timeout

    def _read_one(self, task_id: str) -> Reading:
        try:
            meta = self.backend.get_task_meta(task_id)
        except (DecodeError, ValueError, TypeError, KeyError, AttributeError) as exc:
            return Unreadable(f"{type(exc).__name__}: {str(exc)[:200]}")
        if not isinstance(meta, dict) or not isinstance(meta.get("status"), str):
            return Unreadable("a record without a Celery status")
        return records.from_meta(meta)

    def _read_all(self, task_ids: Sequence[str]) -> dict[str, Reading]:
        return {tid: self._read_one(tid) for tid in task_ids}

    async def read(self, task_ids: Sequence[str]) -> dict[str, Reading]:
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(self._read_all, list(task_ids)), self.timeout
            )
        except Exception as exc:  # whatever the driver raises: the backend is unreadable
            raise BackendUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def watch(self, on_record: OnRecord, on_resync: OnResync) -> None:
        return  # no change notifications: polling alone

    async def close(self) -> None:
        return


def open_backend(url: str, app: Any, *, max_record_bytes: int, timeout: float) -> ResultBackend:
    scheme = url.split("://", 1)[0]
    if scheme in ("redis", "rediss", "unix"):
        return RedisResultBackend(
            url,
            max_record_bytes=max_record_bytes,
            budget_bytes=16 * max_record_bytes,
            timeout=timeout,
        )
    if scheme.startswith("db+"):
        # Imported here: SQLAlchemy costs the operator some 26 MiB, for databases only.
        from celery_taskrun.clients.database import DatabaseResultBackend

        return DatabaseResultBackend(
            app,
            max_record_bytes=max_record_bytes,
            budget_bytes=16 * max_record_bytes,
            timeout=timeout,
        )
    return CeleryResultBackend(app, timeout)
