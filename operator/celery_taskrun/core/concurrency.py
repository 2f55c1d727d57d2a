"""Concurrency limits (pure): which slots a run takes, and which waiting runs may go now.

A group of the operator's `concurrency` config counts the runs it matches in one pool
(`per: cluster`), in one pool per namespace, or in one per `spec.concurrencyKey`: each
pool is a `Slot`.  A run takes one place in each slot of each group it matches, from
its send to its end, all or none.  `admit` decides which waiting runs may be sent now,
given the places in use and the queue of each slot: a run goes when it is first in
line in every one of its slots and each has room, so within a slot runs go in order
(priority as the broker reads it, then creation), none is passed over for ever, and
two groups never deadlock (nothing is held while waiting).  `throttled` says why a run
waits, for its status.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase
from typing import NamedTuple

from celery_taskrun.api.config import ConcurrencyGroup, Per
from celery_taskrun.core.sending import REDIS_SCHEMES


class Slot(NamedTuple):
    """One pool of places: a group's, or a group's for one namespace or key."""

    group: str
    per: Per
    scope: str  # "" for the cluster; else the namespace or the key

    def describe(self, in_use: int, limit: int) -> str:
        scope = self.scope or '""'
        where = "" if self.per is Per.CLUSTER else f" ({self.per.value} {scope})"
        return f"concurrency group {self.group}: {in_use} of {limit} in use{where}"


# Where a run stands in line: (urgency, creation, arrival), smallest first.
Order = tuple[int, float, int]


@dataclass(frozen=True, order=True)
class Waiter:
    """A run waiting to be sent, and the slots it needs."""

    order: Order
    uid: str
    slots: tuple[Slot, ...] = field(compare=False)


@dataclass(frozen=True)
class Throttled:
    """Why a run waits: the first of its slots that is full, or has runs ahead of it."""

    slot: Slot
    in_use: int
    limit: int
    ahead: bool  # room, but runs before it in line go first

    @property
    def message(self) -> str:
        text = self.slot.describe(self.in_use, self.limit)
        return f"{text}; runs before it in line go first" if self.ahead else text


def _matches(patterns: Sequence[str], value: str) -> bool:
    return any(fnmatchcase(value, pattern) for pattern in patterns)


def slots_for(
    groups: Sequence[ConcurrencyGroup], *, namespace: str, task: str, queue: str, key: str | None
) -> tuple[Slot, ...]:
    """The slots a run takes: one for each group matching its namespace, task and
    queue (`queue`: the one it is sent to)."""
    found = []
    for group in groups:
        if not (
            _matches(group.namespaces, namespace)
            and _matches(group.tasks, task)
            and _matches(group.queues, queue)
        ):
            continue
        scope = {Per.CLUSTER: "", Per.NAMESPACE: namespace, Per.KEY: key or ""}[group.per]
        found.append(Slot(group.name, group.per, scope))
    return tuple(found)


def urgency(priority: int | None, broker_url: str, max_priority: int | None = None) -> int:
    """How soon a run of this `priority` goes, smallest first, as its broker would take
    it: on Redis 0 first and 9 last (no priority is 0 to kombu); elsewhere (RabbitMQ)
    the highest first (no priority is 0, the lowest), and above the queues'
    x-max-priority (`max_priority`, when configured) all alike, as RabbitMQ reads them."""
    scheme = broker_url.split("://", 1)[0].split("+")[0].lower()
    value = priority or 0
    if scheme in REDIS_SCHEMES:
        return value
    return -min(value, max_priority) if max_priority is not None else -value


def order_of(urgency: int, created: datetime | None, arrival: int) -> Order:
    """A run's place in line: urgency, then creation (to the second, as the API server
    keeps it), then the order the operator first saw runs in."""
    return (urgency, created.timestamp() if created else float("inf"), arrival)


class Queues:
    """The waiting runs of each slot, in line (what the engine keeps for `admit`)."""

    def __init__(self) -> None:
        self.lines: dict[Slot, list[Waiter]] = {}
        self.waiting: dict[str, Waiter] = {}

    def __len__(self) -> int:
        return len(self.waiting)

    def __contains__(self, uid: object) -> bool:
        return uid in self.waiting

    def add(self, waiter: Waiter) -> None:
        self.waiting[waiter.uid] = waiter
        for slot in waiter.slots:
            bisect.insort(self.lines.setdefault(slot, []), waiter)

    def remove(self, uid: str) -> Waiter | None:
        waiter = self.waiting.pop(uid, None)
        if waiter is None:
            return None
        for slot in waiter.slots:
            line = self.lines[slot]
            del line[bisect.bisect_left(line, waiter)]
            if not line:
                del self.lines[slot]
        return waiter

    def clear(self) -> None:
        self.lines.clear()
        self.waiting.clear()


def admit(
    limits: Mapping[str, int], in_use: Mapping[Slot, int], lines: Mapping[Slot, Sequence[Waiter]]
) -> list[Waiter]:
    """The waiting runs that may be sent now, in the order they go.

    `limits`: each group's limit by name; `in_use`: the places taken in each slot (none
    listed: none); `lines`: each slot's waiting runs, in line.  A run goes when it is
    first in line in each of its slots (those before it went) and each has room."""
    used = dict(in_use)
    heads = dict.fromkeys(lines, 0)  # how many of each line went

    def first(waiter: Waiter) -> bool:
        return all(
            lines[s][heads[s]] is waiter and used.get(s, 0) < limits[s.group] for s in waiter.slots
        )

    candidates = {line[0] for line in lines.values() if line}
    admitted: list[Waiter] = []
    while (ready := min(filter(first, candidates), default=None)) is not None:
        candidates.discard(ready)
        admitted.append(ready)
        for slot in ready.slots:
            used[slot] = used.get(slot, 0) + 1
            heads[slot] += 1
            if heads[slot] < len(lines[slot]):
                candidates.add(lines[slot][heads[slot]])
    return admitted


def throttled(
    waiter: Waiter,
    limits: Mapping[str, int],
    in_use: Mapping[Slot, int],
    lines: Mapping[Slot, Sequence[Waiter]],
) -> Throttled:
    """Why `waiter` (not admitted) waits: its first full slot, else its first slot
    with runs before it in line."""
    ahead = None
    for slot in waiter.slots:
        used, limit = in_use.get(slot, 0), limits[slot.group]
        if used >= limit:
            return Throttled(slot, used, limit, ahead=False)
        line = lines.get(slot, ())
        if ahead is None and line and line[0] is not waiter:
            ahead = Throttled(slot, used, limit, ahead=True)
    assert ahead is not None, "a run with room in every slot and first in each is admitted"
    return ahead


def holding(slots: Iterable[Slot], in_use: dict[Slot, int], step: int) -> None:
    """Count a run's places in (`step` 1) or out (-1) of `in_use`."""
    for slot in slots:
        left = in_use.get(slot, 0) + step
        if left > 0:
            in_use[slot] = left
        else:
            in_use.pop(slot, None)
