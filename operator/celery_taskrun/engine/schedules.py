"""Schedules: the shell that makes CronTaskRuns' runs (the decisions are
`core/cron_step.py`'s).

Every replica follows the CronTaskRuns and the runs they own through its watches; only
the Lease's holder acts, and each write waits at the fence first.  A CronTaskRun is
looked at when its next slot falls due, when it changes, and when one of its runs
ends or goes; one look at a time for each, and a bounded number at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from celery_taskrun.api import cron as cron_api
from celery_taskrun.api.config import OperatorConfig
from celery_taskrun.api.cron import CRON_LABEL, CronTaskRunStatus
from celery_taskrun.clients.errors import Conflict, Gone, Invalid, KubeError
from celery_taskrun.clients.kube import Kube
from celery_taskrun.core.cron_step import CronPlan, CronView, cron_view, decide, owner_of, run_view
from celery_taskrun.engine import faults, metrics
from celery_taskrun.engine.fence import Fence
from celery_taskrun.engine.runs import newer
from celery_taskrun.engine.tasks import Tasks, supervised

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
AT_ONCE = 16  # CronTaskRuns looked at concurrently
RETRY_SECONDS = 5.0  # after a failed look
IDLE_SECONDS = 60.0  # the longest the loop sleeps: the wall clock may jump


class Schedules:
    def __init__(
        self,
        config: OperatorConfig,
        kube: Kube,
        *,
        fence: Fence,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.kube = kube
        self.fence = fence
        self.clock = clock
        self.crons: dict[Key, dict[str, Any]] = {}  # the objects, as last seen or written
        self.runs: dict[Key, dict[str, dict[str, Any]]] = {}  # by cron, by run name
        self.due: dict[Key, float] = {}  # when each schedule wants a look
        self.heap: list[tuple[float, Key]] = []  # the same, soonest first (and stale ones)
        self.wake_at = -math.inf  # when the loop wakes next: sooner news wakes it
        self.changed = asyncio.Event()
        self.tasks = Tasks()
        self.acting_since = math.inf  # when this operator began to act (inf: it does not)

    # -- what the watches say ---------------------------------------------------------

    def observe(self, kind: str | None, obj: Mapping[str, Any]) -> None:
        """A CronTaskRun's watch event."""
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        if kind == "DELETED":
            self.crons.pop(key, None)
            self.due.pop(key, None)
        else:
            known = (self.crons.get(key) or {}).get("metadata") or {}
            if known.get("uid") == meta.get("uid") and newer(known, dict(meta)) is known:
                return  # an echo older than what we wrote
            self.crons[key] = dict(obj)
            self._look(key)
        metrics.CRON_SCHEDULES.set(len(self.crons))

    def observe_run(self, kind: str | None, obj: Mapping[str, Any]) -> None:
        """A TaskRun's watch event: the runs a CronTaskRun owns say which are active."""
        meta = obj.get("metadata") or {}
        cron_name = (meta.get("labels") or {}).get(CRON_LABEL)
        if not isinstance(cron_name, str):
            return
        key = (str(meta.get("namespace")), cron_name)
        runs = self.runs.setdefault(key, {})
        name = str(meta.get("name"))
        before = runs.get(name)
        if kind == "DELETED":
            runs.pop(name, None)
            if not runs:
                del self.runs[key]
        else:
            runs[name] = dict(obj)
        # A run that ended, or went, changes what is active; one just made was recorded
        # by the look that made it.
        was = before is not None and run_view(before).active
        if was and (kind == "DELETED" or not run_view(obj).active):
            self._look(key)

    def _look(self, key: Key, when: float = -math.inf) -> None:
        """Look at `key` at `when` (at once by default), unless it will be sooner."""
        if key in self.crons and when < self.due.get(key, math.inf):
            self.due[key] = when
            heapq.heappush(self.heap, (when, key))
            if when < self.wake_at:
                self.changed.set()

    # -- leading ----------------------------------------------------------------------

    async def lead(self) -> None:
        self.acting_since = self.clock()
        for key in self.crons:
            self._look(key)
        self.tasks.spawn(supervised("schedules", self.loop))

    async def step_down(self) -> None:
        self.acting_since = math.inf
        await self.tasks.cancel_all()
        self.due.clear()  # the next lead looks at every schedule afresh
        self.heap.clear()
        self.wake_at = -math.inf

    async def loop(self) -> None:
        """Look at each schedule when it is due: the soonest first, at most AT_ONCE at a
        time, one look at a time for each.  `due` holds when each wants a look; the heap
        orders them (an entry that no longer matches `due` was superseded: skipped)."""
        limit = asyncio.Semaphore(AT_ONCE)
        looking: set[Key] = set()

        async def look(key: Key) -> None:
            try:
                async with limit:
                    await self.look(key)
            except Exception:  # a bug: this schedule is looked at again, the others go on
                log.exception("schedule %s/%s: look failed; again in %.0fs", *key, RETRY_SECONDS)
                self._look(key, self.clock() + RETRY_SECONDS)
            finally:
                looking.discard(key)
                if key in self.due:  # asked for while this look ran
                    heapq.heappush(self.heap, (self.due[key], key))
                    self.changed.set()

        while True:
            self.changed.clear()
            now = self.clock()
            while self.heap and self.heap[0][0] <= now:
                when, key = heapq.heappop(self.heap)
                if self.due.get(key) != when or key in looking:
                    continue  # superseded, or pushed again when its look ends
                del self.due[key]
                looking.add(key)
                self.tasks.spawn(look(key))
            self.wake_at = self.heap[0][0] if self.heap else math.inf
            wait = min(max(self.wake_at - self.clock(), 0.0), IDLE_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), wait)

    # -- one look -----------------------------------------------------------------------

    async def look(self, key: Key) -> None:
        obj = self.crons.get(key)
        if obj is None:
            return
        view = cron_view(obj)
        owned = [
            run_view(run) for run in self.runs.get(key, {}).values() if owner_of(run) == view.uid
        ]
        now = self.clock()
        plan = decide(view, owned, now, self.config, acting_since=self.acting_since)
        try:
            await self.apply(view, obj, plan, now)
        except Conflict:
            await self._reread(key, view)
        except Gone:
            self.crons.pop(key, None)
        except KubeError as error:
            log.warning("schedule %s/%s: %s; trying again", *key, error)
            self._look(key, self.clock() + RETRY_SECONDS)
            return
        if plan.wake is not None:
            self._look(key, plan.wake)

    async def apply(self, view: CronView, obj: dict[str, Any], plan: CronPlan, now: float) -> None:
        for run in plan.cancel:
            await self.fence.wait()
            with contextlib.suppress(Gone, Invalid):  # gone, or the name holds another run
                await self.kube.cancel(view.namespace, run.name, run.uid)
        created: dict[str, str] = {}
        for body, made in zip(plan.create, plan.made, strict=True):
            created[made.name] = await self._create(view, body)
            metrics.CRON_SLOTS.labels("fired").inc()
            metrics.CRON_LATENESS.observe(max(self.clock() - made.slot, 0.0))
        status = plan.recorded({n: u for n, u in created.items() if u})
        await self._write(view, obj, status)
        for missed in plan.missed:
            metrics.CRON_SLOTS.labels(missed.reason.value).inc(missed.count)
        for event in plan.events:
            await self.fence.wait()
            try:
                await self.kube.event(
                    view.namespace, view.name, view.uid, event.type, event.reason,
                    event.message, of=cron_api.KIND,
                )  # fmt: skip
            except KubeError as error:
                log.warning("event on %s/%s: %s", view.namespace, view.name, error)
        for run in plan.delete:
            await self.fence.wait()
            with contextlib.suppress(Gone):
                await self.kube.delete(view.namespace, run.name, run.uid)

    async def _create(self, view: CronView, body: dict[str, Any]) -> str:
        """The uid of the slot's run: made now, or found made (its name is taken by a
        create of an earlier look); empty when the name holds something else."""
        await self.fence.wait()
        name = body["metadata"]["name"]
        try:
            made = await self.kube.create(body)
            faults.crash_point("after-create")
            return str(made["metadata"]["uid"])
        except Invalid as error:  # the template's labels or annotations, say
            message = f"cannot make {name}: the API server refused it: {error}"
            await self.kube.event(
                view.namespace,
                view.name,
                view.uid,
                "Warning",
                "RunRefused",
                message,
                of=cron_api.KIND,
            )
            return ""
        except Conflict:
            pass
        found: dict[str, Any] = dict(await self.kube.get(view.namespace, name))
        if owner_of(found) == view.uid:
            return str(found["metadata"].get("uid"))
        message = f"cannot make {name}: the name holds a TaskRun this schedule does not own"
        await self.kube.event(
            view.namespace, view.name, view.uid, "Warning", "NameTaken", message, of=cron_api.KIND
        )
        return ""

    async def _write(self, view: CronView, obj: dict[str, Any], status: CronTaskRunStatus) -> None:
        desired = status.model_dump(mode="json", exclude_none=True)
        written = obj.get("status") or {}
        changed = {k: v for k, v in desired.items() if written.get(k) != v}
        changed |= {k: None for k in written if k not in desired}
        if not changed:
            return
        await self.fence.wait()
        version = await self.kube.patch_status(
            view.namespace,
            view.name,
            changed,
            obj["metadata"].get("resourceVersion"),
            whole=not written,
            plural=cron_api.PLURAL,
        )
        metrics.API_WRITES.labels("cron_status").inc()
        meta = {
            **obj["metadata"],
            "resourceVersion": version or obj["metadata"].get("resourceVersion"),
        }
        self.crons[(view.namespace, view.name)] = {**obj, "metadata": meta, "status": desired}

    async def _reread(self, key: Key, view: CronView) -> None:
        """A write refused on a stale view: take the object as it is, and look again."""
        try:
            fresh: dict[str, Any] = dict(await self.kube.get(*key, plural=cron_api.PLURAL))
        except Gone:
            self.crons.pop(key, None)
            return
        if (fresh.get("metadata") or {}).get("uid") == view.uid:
            self.crons[key] = fresh
        self._look(key)
