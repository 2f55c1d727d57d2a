"""One TaskRun as the operator follows it: what the API server holds, what status it
should have, and where its handling stands."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from celery_taskrun.api.model import FINALIZER, INTENT_ANNOTATION, Phase, TaskRunSpec, TaskRunStatus
from celery_taskrun.core.backoff import Backoff
from celery_taskrun.core.sending import trusted
from celery_taskrun.core.step import View
from celery_taskrun.core.timing import parse_time
from celery_taskrun.core.transitions import Observed

# What was learnt of a run's task: (task id, what its record said).
News = tuple[str, Observed]
# What the API server holds of a status: a fingerprint of each top-level field, enough
# to tell which changed (a few bytes a field, not a copy of the whole status).
Fingerprints = dict[str, int]
# The metadata fields the operator reads; the rest (managedFields above all) is dropped.
META_KEYS = (
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "finalizers",
    "labels",
)


def dump(status: TaskRunStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", exclude_none=True)


def fingerprints(fields: dict[str, Any]) -> Fingerprints:
    return {
        key: hash(json.dumps(value, sort_keys=True, separators=(",", ":")))
        for key, value in fields.items()
    }


def status_of(body: Mapping[str, Any], uid: str) -> TaskRunStatus:
    """A status read back from the API server, as far as the operator may act on it."""
    try:
        return trusted(TaskRunStatus.model_validate(body.get("status") or {}), uid)
    except ValidationError:
        return TaskRunStatus()  # not ours to trust: start from what we can see


def newer(known: dict[str, Any], seen: dict[str, Any]) -> dict[str, Any]:
    """The metadata of a watch event, unless it is older than what we know: the watch
    echoes our own writes, and an echo of an earlier one can arrive after a later write
    answered (its view would make that write's successor refused).  resourceVersions
    are etcd's revisions: compared as numbers where both are."""
    ours, theirs = known.get("resourceVersion"), seen.get("resourceVersion")
    if isinstance(ours, str) and isinstance(theirs, str) and ours.isdigit() and theirs.isdigit():
        return known if int(theirs) < int(ours) else seen
    return seen


def with_finalizer(finalizers: list[str]) -> list[str]:
    return finalizers if FINALIZER in finalizers else [*finalizers, FINALIZER]


def slim(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata the operator keeps of a TaskRun."""
    kept = {key: meta[key] for key in META_KEYS if key in meta}
    annotations = meta.get("annotations")
    if isinstance(annotations, dict) and INTENT_ANNOTATION in annotations:
        kept["annotations"] = {INTENT_ANNOTATION: annotations[INTENT_ANNOTATION]}
    return kept


def validation_message(problem: ValidationError) -> str:
    """A pydantic error as one line a user can act on."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in problem.errors()
    )


@dataclass(eq=False)
class Box:
    """Where a run's handling stands (see the mailbox): at most one step runs, and at
    most one waits, with the latest news."""

    busy: bool = False
    wanted: bool = False
    news: News | None = None
    errors: int = 0  # steps in a row that failed unexpectedly
    waiter: asyncio.Future[None] | None = None  # set while a write is held
    unwritten_since: float | None = None  # when the status first changed unwritten


@dataclass(eq=False)
class Run:
    uid: str
    namespace: str
    name: str
    meta: dict[str, Any]
    spec: TaskRunSpec
    status: TaskRunStatus  # what the status should be
    written: Fingerprints  # what the API server holds, as far as we know
    backoff: Backoff
    problem: str | None = None  # why the spec is invalid, if it is
    gitops: str | None = None  # who applies it again from a repository (never auto-deleted)
    polls: int = 0  # looks in a row that saw nothing new: the backoff's step
    synced: bool = True  # `written` is `status`: no write is owed
    # (task id, when it was first heard running): news that later news superseded.
    seen_running: tuple[str, datetime] | None = None
    written_phase: tuple[Phase | None, str | None] = (None, None)
    # The intent the run carried when this operator adopted it: an earlier leader may
    # have been sending that task id (see Effects.send).
    inherited: str | None = None
    box: Box = field(default_factory=Box)

    def refresh(self, body: Mapping[str, Any]) -> None:
        """Take the object as the API server has it now (after a write it refused as
        made on a stale view): its metadata, and its status as written."""
        self.meta = slim(body["metadata"])
        self.status = status_of(body, self.uid)
        self.written = fingerprints(dump(self.status))
        self.written_phase = (self.status.phase, self.status.reason)
        self.synced = True

    def view(self) -> View:
        seen = self.seen_running
        return View(
            uid=self.uid,
            namespace=self.namespace,
            generation=self.generation,
            created=self.created,
            spec=self.spec,
            status=self.status,
            problem=self.problem,
            seen_running=seen[1] if seen and seen[0] == self.status.taskId else None,
        )

    @property
    def generation(self) -> int | None:
        value = self.meta.get("generation")
        return int(value) if isinstance(value, int) else None

    @property
    def created(self) -> datetime | None:
        return parse_time(self.meta.get("creationTimestamp"))

    @property
    def finalizers(self) -> list[str]:
        found = self.meta.get("finalizers")
        return [f for f in found if isinstance(f, str)] if isinstance(found, list) else []

    @property
    def intent(self) -> str | None:
        annotations = self.meta.get("annotations")
        value = annotations.get(INTENT_ANNOTATION) if isinstance(annotations, dict) else None
        return value if isinstance(value, str) else None

    @property
    def sent(self) -> bool:
        return self.status.taskId is not None and self.status.phase not in (None, Phase.PENDING)

    @property
    def finished(self) -> bool:
        return self.status.phase is not None and self.status.phase.terminal

    @property
    def guarded(self) -> bool:
        return FINALIZER in self.finalizers
