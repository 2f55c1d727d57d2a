"""Concurrency limits in the shell: the places each run holds, the runs in line, and
`core.concurrency.admit` asked whenever either changes.

The places in use are derived from the runs followed: a run holds its slots from its
send (or from being admitted, just before) to its end, and a run adopted that was sent,
or may have been (its intent annotation), holds them at once, whatever the limit.  So
after a restart or a leader change the count is what the TaskRuns say, never less.
No waiting run is admitted before the new leader has listed and adopted every TaskRun
(`settle`): until then it could not know what is in use.  A slot freed (a run ended,
deleted, forgotten) admits the next runs in line at once, in the same turn.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

from celery_taskrun.api.config import OperatorConfig
from celery_taskrun.core import concurrency
from celery_taskrun.core.concurrency import Queues, Slot, Waiter
from celery_taskrun.core.sending import derived
from celery_taskrun.core.timing import human_duration
from celery_taskrun.engine import metrics
from celery_taskrun.engine.runs import Run


@dataclass(frozen=True)
class Wait:
    """A run that may not be sent now."""

    why: str | None  # its status message; None: not every TaskRun is counted yet


class Limiter:
    def __init__(
        self,
        config: OperatorConfig,
        *,
        wake: Callable[[Run], None],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.groups = config.concurrency
        self.limits = {group.name: group.limit for group in self.groups}
        self.broker = config.brokerUrl
        self.max_priority = config.queueMaxPriority
        self.default_queue = config.defaultQueue
        self.wake = wake  # a step for a run admitted (or to be told it waits)
        self.monotonic = monotonic
        self.in_use: dict[Slot, int] = {}
        self.held: dict[str, tuple[Slot, ...]] = {}  # uid -> the slots it holds
        self.queues = Queues()
        self.runs: dict[str, Run] = {}  # the runs in line, by uid
        self.since: dict[str, float] = {}  # uid -> when it joined the line
        self.told: set[str] = set()  # runs in line whose step was told they wait
        self.waited: dict[str, str] = {}  # uid -> what it waited for and how long, if it did
        self.arrivals = itertools.count()
        self.settled = False
        for group in self.groups:
            metrics.CONCURRENCY_LIMIT.labels(group.name).set(group.limit)

    def slots(self, run: Run) -> tuple[Slot, ...]:
        return concurrency.slots_for(
            self.groups,
            namespace=run.namespace,
            task=run.spec.task,
            queue=run.spec.queue or self.default_queue,
            key=run.spec.concurrencyKey,
        )

    # -- what the tracker and the stepper tell it --------------------------------------

    def adopt(self, run: Run) -> None:
        """A run followed (adopted, or its metadata seen anew): one that was sent, or may
        have been, holds its slots from now on."""
        if self.groups and run.uid not in self.held and (run.sent or derived(run.intent, run.uid)):
            self._hold(run.uid, self.slots(run))
            self._leave_line(run.uid)

    def ask(self, run: Run) -> Wait | None:
        """Whether `run`'s first send may go now (None), else why not.  A run asking
        joins the line; it is woken when admitted."""
        if run.uid in self.held:
            return None
        if run.uid not in self.queues:
            slots = self.slots(run)
            if not slots:
                return None
            self._join_line(run, slots)
        if not self.settled:
            return Wait(None)
        self._admit(asking=run.uid)
        if run.uid in self.held:
            return None
        self.told.add(run.uid)
        waiter = self.queues.waiting[run.uid]
        why = concurrency.throttled(waiter, self.limits, self.in_use, self.queues.lines)
        return Wait(why.message)

    def release(self, uid: str) -> None:
        """The run ended or is no longer followed: its places (if it held any) free, its
        place in line (if it had one) goes; the next runs in line are admitted."""
        slots = self.held.pop(uid, None)
        if slots is not None:
            concurrency.holding(slots, self.in_use, -1)
            for slot in slots:
                metrics.CONCURRENCY_IN_USE.labels(slot.group).dec()
        left = self._leave_line(uid)
        if (slots or left) and self.settled:
            self._admit()

    def settle(self) -> None:
        """Every TaskRun is listed and adopted: what is in use is known, the line moves.
        Runs in line not yet told they wait are woken to be told (or sent)."""
        self.settled = True
        self._admit()
        for uid in list(self.queues.waiting):
            if uid not in self.told:
                self.wake(self.runs[uid])

    def admitted(self, uid: str) -> str | None:
        """What the run waited for and how long, if it was told it waits and has been
        admitted since (asked once, after its send: its Event)."""
        return self.waited.pop(uid, None)

    def clear(self) -> None:
        """Standing by: nothing is remembered, the next lead counts afresh."""
        self.settled = False
        self.in_use.clear()
        self.held.clear()
        self.queues.clear()
        self.runs.clear()
        self.since.clear()
        self.told.clear()
        self.waited.clear()
        metrics.CONCURRENCY_IN_USE.clear()
        metrics.CONCURRENCY_WAITING.clear()

    # -- the bookkeeping ---------------------------------------------------------------

    def _hold(self, uid: str, slots: tuple[Slot, ...]) -> None:
        if not slots:
            return
        self.held[uid] = slots
        concurrency.holding(slots, self.in_use, 1)
        for slot in slots:
            metrics.CONCURRENCY_IN_USE.labels(slot.group).inc()

    def _join_line(self, run: Run, slots: tuple[Slot, ...]) -> None:
        urgency = concurrency.urgency(run.spec.priority, self.broker, self.max_priority)
        order = concurrency.order_of(urgency, run.created, next(self.arrivals))
        self.queues.add(Waiter(order, run.uid, slots))
        self.runs[run.uid] = run
        self.since[run.uid] = self.monotonic()
        for group in {slot.group for slot in slots}:
            metrics.CONCURRENCY_WAITING.labels(group).inc()

    def _leave_line(self, uid: str) -> bool:
        waiter = self.queues.remove(uid)
        if waiter is None:
            return False
        del self.runs[uid], self.since[uid]
        self.told.discard(uid)
        for group in {slot.group for slot in waiter.slots}:
            metrics.CONCURRENCY_WAITING.labels(group).dec()
        return True

    def _admit(self, asking: str | None = None) -> None:
        for waiter in concurrency.admit(self.limits, self.in_use, self.queues.lines):
            uid = waiter.uid
            run, told = self.runs[uid], uid in self.told
            waited = self.monotonic() - self.since[uid]
            self._leave_line(uid)
            self._hold(uid, waiter.slots)
            for group in {slot.group for slot in waiter.slots}:
                metrics.CONCURRENCY_WAIT.labels(group).observe(waited)
            if told:
                groups = ", ".join(slot.group for slot in waiter.slots)
                self.waited[uid] = (
                    f"admitted after waiting {human_duration(waited)} for concurrency "
                    f"group {groups}"
                )
            if uid != asking:
                self.wake(run)
