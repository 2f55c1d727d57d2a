"""The finished runs kept in the cluster, as retention needs them (pure).

A finished run costs the operator one small entry here and nothing else: no timer, no
task, no API call until its TTL or its history limit says it goes.  The entry holds
what deleting it takes (namespace, name, uid), when it finished, and the history it
counts in; one heap holds every TTL, so the shell keeps a single wake-up for all.

A finished run read from the API server is taken from its raw body (`kept_of`): its
spec and status are never decoded whole (100,000 of them come with every takeover).
"""

from __future__ import annotations

import bisect
import heapq
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celery_taskrun.api.cron import CRON_LABEL
from celery_taskrun.api.model import FINALIZER, FINISHED_LABEL, Phase
from celery_taskrun.core.retention import (
    History,
    gitops_owner,
    history_key,
    history_limit,
    ttl_for,
)
from celery_taskrun.core.timing import parse_time

TERMINAL = {phase.value: phase for phase in Phase if phase.terminal}


@dataclass(frozen=True)
class KeptRun:
    """A finished run as retention sees it."""

    uid: str
    namespace: str
    name: str
    task: str
    phase: Phase
    completed: float  # Unix seconds
    ttl: int | None  # the TTL that applies (its own, or the default), None: none
    counted: bool  # whether the history limits count it (never a run GitOps applies)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def kept_of(body: Mapping[str, Any], default_ttl: int | None, now: float) -> KeptRun | None:
    """A finished run's entry from its raw body, reading only the few fields needed;
    None unless the body is plainly a finished run, ours to keep: terminal phase, not
    being deleted, no finalizer of ours left to remove, every field read well-formed
    (anything else takes the full path, which decodes and checks the whole run)."""
    meta, spec, status = (body.get(key) for key in ("metadata", "spec", "status"))
    if not (isinstance(meta, Mapping) and isinstance(spec, Mapping)):
        return None
    if not isinstance(status, Mapping) or meta.get("deletionTimestamp"):
        return None
    value = status.get("phase")
    phase = TERMINAL.get(value) if isinstance(value, str) else None
    finalizers = meta.get("finalizers") or []
    if phase is None or not isinstance(finalizers, list) or FINALIZER in finalizers:
        return None
    uid, namespace, name = (_text(meta.get(key)) for key in ("uid", "namespace", "name"))
    task, own_ttl = _text(spec.get("task")), spec.get("ttlSecondsAfterFinished")
    if uid is None or namespace is None or name is None or task is None:
        return None
    if own_ttl is not None and (not isinstance(own_ttl, int) or isinstance(own_ttl, bool)):
        return None
    labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
    if not (isinstance(labels, Mapping) and isinstance(annotations, Mapping)):
        return None
    owner = gitops_owner(labels, annotations)
    completed = parse_time(status.get("completedAt"))
    return KeptRun(
        uid=uid,
        namespace=namespace,
        name=name,
        task=task,
        phase=phase,
        completed=now if completed is None else completed.timestamp(),
        ttl=ttl_for(own_ttl, default_ttl, owner),
        counted=owner is None,
    )


def labels_of(meta: Mapping[str, Any]) -> Mapping[str, Any]:
    labels = meta.get("labels")
    return labels if isinstance(labels, Mapping) else {}


def finished_label(labels: Mapping[str, Any], phase: Phase) -> tuple[str, str] | None:
    """The label a finished run is to carry, None when it needs none: it has it, or a
    CronTaskRun owns it (its schedule follows its finished runs through the watch; its
    history limits keep a few)."""
    if CRON_LABEL in labels or labels.get(FINISHED_LABEL) == phase.value:
        return None
    return FINISHED_LABEL, phase.value


# uid -> (namespace, name, when it finished, its history or None)
_Entry = tuple[str, str, float, History | None]


class Kept:
    """Every finished run kept, its history limits and its TTL.

    `keep` returns the runs its history now holds beyond the limit (delete them);
    `due` those whose TTL has passed.  A run stays known (`where`) until `gone`: a
    deletion that fails is tried again from here.
    """

    def __init__(self, per: str, succeeded: int | None, failed: int | None) -> None:
        self.per, self.succeeded, self.failed = per, succeeded, failed
        self._entries: dict[str, _Entry] = {}
        # Oldest first: by finish time, then name (finish times are whole seconds).
        self._histories: dict[History, list[tuple[float, str, str]]] = {}
        self._ttls: list[tuple[float, str]] = []  # (when it expires, uid): a heap
        self._keys: dict[History, History] = {}  # each history's one key tuple

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, uid: str) -> bool:
        return uid in self._entries

    def where(self, uid: str) -> tuple[str, str] | None:
        entry = self._entries.get(uid)
        return None if entry is None else (entry[0], entry[1])

    def keep(self, run: KeptRun) -> list[str]:
        """Remember a finished run (again: nothing changes); the uids its history now
        holds beyond its limit, oldest first."""
        if run.uid in self._entries:
            return []
        limit = history_limit(self.succeeded, self.failed, run.phase)
        key = None
        if run.counted and limit is not None:
            # One tuple per history, shared, and namespaces interned: entries stay small.
            key = history_key(self.per, run.namespace, run.task, run.phase)
            key = self._keys.setdefault(key, key)
        self._entries[run.uid] = (sys.intern(run.namespace), run.name, run.completed, key)
        if run.ttl is not None:
            heapq.heappush(self._ttls, (run.completed + run.ttl, run.uid))
            if len(self._ttls) > 2 * len(self._entries) + 64:  # runs gone before their TTL
                self._ttls = [e for e in self._ttls if e[1] in self._entries]
                heapq.heapify(self._ttls)
        if key is None or limit is None:
            return []
        history = self._histories.setdefault(key, [])
        bisect.insort(history, (run.completed, run.name, run.uid))
        beyond = history[: max(len(history) - limit, 0)]
        del history[: len(beyond)]
        for _, _, uid in beyond:
            self._uncount(uid)
        return [uid for _, _, uid in beyond]

    def _uncount(self, uid: str) -> None:
        entry = self._entries.get(uid)
        if entry is not None and entry[3] is not None:
            self._entries[uid] = (entry[0], entry[1], entry[2], None)

    def due(self, now: float) -> list[str]:
        """The runs whose TTL has passed by `now`, each once (they stay known until gone)."""
        found: list[str] = []
        while self._ttls and self._ttls[0][0] <= now:
            _, uid = heapq.heappop(self._ttls)
            if uid in self._entries:
                found.append(uid)
        return found

    def next_due(self) -> float | None:
        """When the next TTL passes (Unix seconds), None if no run has one."""
        while self._ttls and self._ttls[0][1] not in self._entries:
            heapq.heappop(self._ttls)
        return self._ttls[0][0] if self._ttls else None

    def gone(self, uid: str) -> None:
        """The run no longer exists (its TTL heap entry is skipped when it surfaces)."""
        entry = self._entries.pop(uid, None)
        if entry is None or entry[3] is None:
            return
        history = self._histories[entry[3]]
        at = bisect.bisect_left(history, (entry[2], entry[1], uid))
        if at < len(history) and history[at][2] == uid:
            del history[at]
        if not history:
            del self._histories[entry[3]]

    def clear(self) -> None:
        self._entries.clear()
        self._histories.clear()
        self._ttls.clear()
        self._keys.clear()
