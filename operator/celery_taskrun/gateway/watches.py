"""One API-server watch per namespace, shared by every wait and stream on it.

The first follower of a namespace starts its watch (from the namespace's current
version, with bookmarks; again from the last version seen when a watch ends or fails,
after a backoff; from a fresh version after 410 Gone); each event goes to the
followers of that run (and to the namespace's live streams), and the watch stops some
seconds (`linger`) after its last follower leaves. So 10,000 waits on a namespace cost
one watch, and a replica's state is only this, in memory: replicas share nothing.

What is kept per run followed is only where it is (`Seen`: uid, version, finished),
so that a wait on a run others already follow needs no read of its own; an event's
object (spec and status whole, as answers show them) is handed to the followers of
its run and dropped once they have read it. Each follower has a bounded queue; one
that falls behind loses what it has not read and reads its run again instead (a
stream of the namespace, its snapshot), so a slow client never slows the others. Who may follow
what is still decided per request (auth.py) before a follower joins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge

from celery_taskrun.api.bodies import TaskRunBody
from celery_taskrun.clients.errors import ApiUnavailable, Gone, KubeError
from celery_taskrun.clients.taskruns import REQUEST_TIMEOUT, TaskRunClient, resource_version
from celery_taskrun.core.backoff import Backoff
from celery_taskrun.core.outcomes import Step, finished, status_of
from celery_taskrun.core.watching import Delivery, delivery, identity, newer

log = logging.getLogger(__name__)

Shown = TypeVar("Shown")
# A run has a handful of versions; a live stream's client reads as they come.
QUEUE = 64
# A namespace followed again soon (the next wait) keeps its watch.
LINGER_SECONDS = 30.0
RETRY = Backoff(initial=0.5, factor=2.0, maximum=10.0)
# A watch from a version the API server no longer keeps is answered 410 Gone.
EXPIRED = 410

WATCHES = Gauge(
    "taskrun_gateway_watches", "API-server watches the gateway holds open (one per namespace)"
)
FOLLOWERS = Gauge("taskrun_gateway_followers", "Waits and streams following runs")
BEHIND = Counter(
    "taskrun_gateway_followers_behind_total",
    "Times a follower fell behind its namespace's watch and read its run again",
)

# An event for a follower: a watch event's step and object, or None: read again.
Event = tuple[Step, TaskRunBody] | None


@dataclass(frozen=True)
class Seen:
    """The latest version known of a run someone follows."""

    uid: str | None
    version: str | None
    finished: bool


def seen(obj: TaskRunBody) -> Seen:
    uid, version = identity(obj)
    return Seen(uid, version, finished(status_of(obj)))


class Follower:
    """One wait or stream: the events of its run (`name`), or of all (None).

    Its queue is a list and a future while it waits: an asyncio.Queue costs ~3 KiB,
    and 10,000 waits hold one each."""

    def __init__(self, name: str | None) -> None:
        self.name = name
        self.events: list[Event] = []
        self.waiter: asyncio.Future[None] | None = None

    def offer(self, event: Event) -> None:
        if len(self.events) >= QUEUE:
            # Drop what it has not read: it reads its run again instead.
            self.events = [None]
            BEHIND.inc()
        else:
            self.events.append(event)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def next(self) -> Event:
        while not self.events:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.events.pop(0)


class NamespaceWatch:
    """A namespace's watch and its followers."""

    def __init__(self, runs: TaskRunClient, namespace: str) -> None:
        self.runs = runs
        self.namespace = namespace
        self.by_name: dict[str, set[Follower]] = {}
        self.everyone: set[Follower] = set()
        # The runs followed by name, as the watch (or a read) last saw them.
        self.seen: dict[str, Seen] = {}
        self.ready = asyncio.Event()
        self.idle: asyncio.TimerHandle | None = None
        self.task = asyncio.create_task(self._run(), name=f"watch {namespace}")

    @property
    def empty(self) -> bool:
        return not self.by_name and not self.everyone

    def join(self, name: str | None) -> Follower:
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        follower = Follower(name)
        group = self.everyone if name is None else self.by_name.setdefault(name, set())
        group.add(follower)
        FOLLOWERS.inc()
        return follower

    def leave(
        self, follower: Follower, linger: float, on_idle: Callable[[NamespaceWatch], None]
    ) -> None:
        if follower.name is None:
            self.everyone.discard(follower)
        else:
            group = self.by_name.get(follower.name, set())
            group.discard(follower)
            if not group:
                self.by_name.pop(follower.name, None)
                self.seen.pop(follower.name, None)
        FOLLOWERS.dec()
        if self.empty:
            loop = asyncio.get_running_loop()
            self.idle = loop.call_later(linger, on_idle, self)

    async def started(self) -> None:
        """Returns once the watch has a version to start from (every change after it
        reaches the followers); ApiUnavailable when the API server does not say."""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await self.ready.wait()
        except TimeoutError as exc:
            raise ApiUnavailable(0, "WatchUnavailable", "the namespace cannot be watched") from exc

    def remember(self, obj: TaskRunBody) -> None:
        """Keep `obj` as its run's latest version, unless a newer one is known."""
        name = _name(obj)
        if name in self.by_name:
            known = self.seen.get(name)
            if known is None or newer(identity(obj)[1], known.version):
                self.seen[name] = seen(obj)

    def _fan_out(self, step: Step, obj: TaskRunBody) -> None:
        name = _name(obj)
        if name is None:
            return
        if step is Step.GONE:
            self.seen.pop(name, None)
        else:
            self.remember(obj)
        for follower in (*self.by_name.get(name, ()), *self.everyone):
            follower.offer((step, obj))

    def _read_again(self) -> None:
        self.seen.clear()
        for group in (*self.by_name.values(), self.everyone):
            for follower in group:
                follower.offer(None)

    async def _start(self) -> str:
        """The namespace's version now (one item listed): where a watch starts."""
        page = await self.runs.page(self.namespace, limit=1)
        return resource_version(page) or "0"

    async def _run(self) -> None:
        version: str | None = None
        failures = 0
        while True:
            try:
                if version is None:
                    version = await self._start()
                    if self.ready.is_set():
                        # After 410 Gone: what changed meanwhile is unknown.
                        self._read_again()
                    self.ready.set()
                WATCHES.inc()
                try:
                    async with aclosing(self.runs.watch(self.namespace, version, None)) as events:
                        async for verdict in events:
                            failures = 0
                            if verdict.step is Step.RESYNC:
                                version = None
                                break
                            version = verdict.resource_version or version
                            if verdict.obj is not None:
                                self._fan_out(verdict.step, verdict.obj)
                finally:
                    WATCHES.dec()
            except KubeError as exc:
                log.warning("watch of taskruns in %s: %s", self.namespace, exc)
                if exc.status == EXPIRED:
                    version = None  # refused as too old: start afresh
                await asyncio.sleep(RETRY.interval(failures))
                failures += 1


def _name(obj: TaskRunBody) -> str | None:
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    return name if isinstance(name, str) else None


class Watches:
    """The namespaces' watches of one gateway replica."""

    def __init__(self, runs: TaskRunClient, linger: float = LINGER_SECONDS) -> None:
        self.runs = runs
        self.linger = linger
        self.namespaces: dict[str, NamespaceWatch] = {}

    def _stop_if_idle(self, watch: NamespaceWatch) -> None:
        if watch.empty and self.namespaces.get(watch.namespace) is watch:
            del self.namespaces[watch.namespace]
            watch.task.cancel()

    async def close(self) -> None:
        watches = list(self.namespaces.values())
        self.namespaces.clear()
        for watch in watches:
            watch.task.cancel()
        await asyncio.gather(*(watch.task for watch in watches), return_exceptions=True)

    @contextlib.asynccontextmanager
    async def _joined(
        self, namespace: str, name: str | None
    ) -> AsyncIterator[tuple[NamespaceWatch, Follower]]:
        watch = self.namespaces.get(namespace)
        if watch is None:
            watch = self.namespaces[namespace] = NamespaceWatch(self.runs, namespace)
        follower = watch.join(name)
        try:
            await watch.started()
            yield watch, follower
        finally:
            watch.leave(follower, self.linger, self._stop_if_idle)

    async def follow(self, namespace: str, name: str) -> AsyncGenerator[TaskRunBody, None]:
        """The TaskRun now, then each newer version of it: TaskRunClient.follow's
        answers from the shared watch. Raises Gone (404) when it does not exist or is
        deleted. Never ends by itself."""
        async with self._joined(namespace, name) as (watch, follower):
            # Read after joining: a change from now on is in the follower's queue.
            obj = await self.runs.get(namespace, name)
            watch.remember(obj)
            yield obj
            async for newer in self._newer(follower, namespace, name, *identity(obj)):
                yield newer

    async def _newer(
        self, follower: Follower, namespace: str, name: str, uid: str | None, last: str | None
    ) -> AsyncGenerator[TaskRunBody, None]:
        """Each newer version of the run than `last` (of `uid`), from the follower's
        events; the run read again when the follower fell behind. Gone (404) when it
        is deleted."""
        while True:
            event = await follower.next()
            if event is None:
                obj = await self.runs.get(namespace, name)
                uid, last = identity(obj)
                yield obj
                continue
            step, obj = event
            what = delivery(step, obj, uid, last)
            if what is Delivery.GONE:
                raise Gone(404, "NotFound", f"taskrun {name} was deleted")
            if what is Delivery.SHOW:
                last = identity(obj)[1]
                yield obj

    async def wait(self, namespace: str, name: str, seconds: float) -> TaskRunBody:
        """The seed's `get(timeout=...)`: the run once it finished, or as it is when
        `seconds` run out (0: just look). A run others follow already is not read
        again until it finishes: its end comes with the watch's event."""
        deadline = asyncio.get_running_loop().time() + seconds
        async with self._joined(namespace, name) as (watch, follower):
            known = watch.seen.get(name)
            if known is None or known.finished or seconds <= 0:
                obj = await self.runs.get(namespace, name)
                watch.remember(obj)
                if finished(status_of(obj)) or seconds <= 0:
                    return obj
                known = seen(obj)
            newer = self._newer(follower, namespace, name, known.uid, known.version)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline), contextlib.aclosing(newer):
                    async for obj in newer:
                        if finished(status_of(obj)):
                            return obj
        # Ran out: the run as it is now.
        return await self.runs.get(namespace, name)

    async def follow_namespace(
        self, namespace: str, *, limit: int, view: Callable[[TaskRunBody], Shown]
    ) -> AsyncGenerator[tuple[str, Any], None]:
        """`("SNAPSHOT", views)` of at most `limit` runs (again after falling behind),
        then `(event type, view)` for each change in the namespace. Each page of the
        snapshot is viewed as it comes, and dropped."""
        async with self._joined(namespace, None) as (_, follower):
            while True:
                shown: list[Shown] = []
                version: str | None = None
                async for page in self.runs.pages(namespace, limit=limit):
                    shown += [view(obj) for obj in page.get("items") or []]
                    version = version or resource_version(page)
                yield "SNAPSHOT", shown
                while (event := await follower.next()) is not None:
                    step, obj = event
                    # Changes the snapshot already holds are not sent again.
                    if newer(identity(obj)[1], version):
                        yield ("DELETED" if step is Step.GONE else "MODIFIED"), view(obj)
