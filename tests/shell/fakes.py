"""Fakes of the operator's own clients (Kubernetes, Celery, result backend), so the
tracker's shell is tested in milliseconds.  Each keeps what a user would see (the
status and events of each TaskRun, what was sent and revoked) and can be told to
fail, hang or refuse.  The end-to-end tests run the same cases on the real stack."""

from __future__ import annotations

import asyncio
import copy
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from celery_taskrun.api.config import OperatorConfig
from celery_taskrun.clients.backend import BackendUnavailable, OnRecord, OnResync
from celery_taskrun.clients.celery_client import BrokerUnavailable, MarkRefused
from celery_taskrun.clients.errors import Conflict, Gone, Invalid, TooLarge
from celery_taskrun.core import records
from celery_taskrun.core.records import Reading
from celery_taskrun.core.sending import Message
from celery_taskrun.engine.tracker import Tracker

Body = dict[str, Any]


@dataclass
class FakeKube:
    objects: dict[str, Body] = field(default_factory=dict)  # by name
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (name, type, reason)
    hang: set[str] = field(default_factory=set)  # names whose status writes never return
    refuse: set[str] = field(default_factory=set)  # names whose status writes are invalid
    max_status_bytes: int | None = None  # refuse larger status patches (etcd's limit)
    writes: int = 0
    metadata_writes: int = 0
    conflicts: int = 0  # status writes refused as made on a stale view
    revisions: Iterator[int] = field(default_factory=lambda: itertools.count(1000))

    async def patch_status(
        self, namespace: str, name: str, patch: Body, version: str | None
    ) -> str | None:
        if name in self.hang:
            await asyncio.Event().wait()
        obj = self._get(name)
        if version is not None and version != obj["metadata"].get("resourceVersion"):
            self.conflicts += 1
            raise Conflict(409, "Conflict", "the object has been modified")
        if name in self.refuse:
            raise Invalid(422, "Invalid", "status: Invalid value")
        if self.max_status_bytes is not None and len(repr(patch)) > self.max_status_bytes:
            raise TooLarge(500, "InternalError", "etcdserver: request is too large")
        status = obj.setdefault("status", {})
        for key, value in patch.items():
            if value is None:
                status.pop(key, None)
            else:
                status[key] = copy.deepcopy(value)
        self.writes += 1
        return self._bump(obj)

    def _bump(self, obj: Body) -> str:
        """A write: the object's resourceVersion moves on, as etcd's revision does."""
        version = str(next(self.revisions))
        obj["metadata"]["resourceVersion"] = version
        return version

    async def add_finalizer(
        self, meta: Body, finalizer: str, annotations: dict[str, str]
    ) -> str | None:
        stored = self._get(meta["name"])["metadata"]
        found = list(stored.get("finalizers") or [])
        stored["finalizers"] = found if finalizer in found else [*found, finalizer]
        self.metadata_writes += 1
        stored.setdefault("annotations", {}).update(annotations)
        return self._bump(self._get(meta["name"]))

    async def remove_finalizer(self, meta: Body, finalizer: str) -> str | None:
        stored = self._get(meta["name"])["metadata"]
        found = list(stored.get("finalizers") or [])
        if finalizer not in found:
            return None
        stored["finalizers"] = [f for f in found if f != finalizer]
        self.metadata_writes += 1
        return "1"

    async def list_taskruns(self, namespace: str | None) -> AsyncIterator[Body]:
        for body in list(self.objects.values()):
            yield copy.deepcopy(body)

    async def get(self, namespace: str, name: str) -> Body:
        return copy.deepcopy(self._get(name))

    async def delete(self, namespace: str, name: str, uid: str) -> None:
        self._get(name)
        del self.objects[name]

    async def event(
        self, namespace: str, name: str, uid: str, kind: str, reason: str, message: str
    ) -> None:
        self.events.append((name, kind, reason))

    async def close(self) -> None:
        return

    def _get(self, name: str) -> Body:
        if name not in self.objects:
            raise Gone(404, "NotFound", name)
        return self.objects[name]

    def status(self, name: str) -> Body:
        return dict(self.objects[name].get("status") or {})


@dataclass
class FakeBackend:
    stored: dict[str, Reading] = field(default_factory=dict)
    reads: int = 0
    down: bool = False
    on_record: OnRecord | None = None

    async def read(self, task_ids: Sequence[str]) -> dict[str, Reading]:
        self.reads += 1
        if self.down:
            raise BackendUnavailable("redis: connection refused")
        return {tid: self.stored.get(tid, records.NO_RECORD) for tid in task_ids}

    async def watch(self, on_record: OnRecord, on_resync: OnResync) -> None:
        self.on_record = on_record
        await on_resync()
        await asyncio.Event().wait()

    async def publish(self, task_id: str, reading: Reading) -> None:
        """A worker stores a state: SETEX + PUBLISH."""
        self.stored[task_id] = reading
        if self.on_record is not None:
            await self.on_record(task_id, reading)

    async def close(self) -> None:
        return


@dataclass
class FakeCelery:
    sent: list[Message] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    down: bool = False
    mark_refused: bool = False  # the record to replace does not decode

    async def send(self, message: Message, *, may_publish: Callable[[], bool]) -> None:
        if self.down:
            raise BrokerUnavailable("ConnectionError: broker down")
        if not may_publish():
            raise BrokerUnavailable("not sent: this operator's Lease is not surely its own")
        self.sent.append(message)

    async def revoke(self, task_id: str, *, terminate: bool, reason: str, keep_for: float) -> None:
        self.revoked.append(task_id)
        if self.mark_refused:
            raise MarkRefused("AttributeError: 'float' object has no attribute 'get'")

    async def holding(self, task_ids: list[str], hostnames: set[str]) -> dict[str, set[str]]:
        return {}

    def close(self) -> None:
        return


_names = itertools.count()


@dataclass
class Harness:
    tracker: Tracker
    kube: FakeKube
    celery: FakeCelery
    backend: FakeBackend

    def create(self, spec: Body, name: str | None = None) -> Body:
        """A TaskRun as the API server would hand it to the watch."""
        name = name or f"run-{next(_names)}"
        body: Body = {
            "metadata": {
                "name": name,
                "namespace": "ns",
                "uid": str(uuid.uuid4()),
                "resourceVersion": "1",
                "generation": 1,
                "creationTimestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            },
            "spec": spec,
            "status": {"observedGeneration": 0},
        }
        self.kube.objects[name] = body
        return body

    async def apply(self, spec: Body, name: str | None = None) -> Body:
        body = self.create(spec, name)
        await self.tracker.observe("ADDED", copy.deepcopy(body))
        return body

    def task_id(self, body: Body) -> str:
        return f"tr-{body['metadata']['uid']}-1"


async def until(check: Callable[[], Any], within: float = 5.0, what: str = "condition") -> Any:
    """Wait for `check` to hold (never a bare sleep)."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.005)


def harness_config(**overrides: Any) -> OperatorConfig:
    settings: dict[str, Any] = {
        "poll": {"initialInterval": 0.05, "factor": 1.5, "maxInterval": 0.2},
        "workerLostAfter": 0,
        "statusHoldSeconds": 0,
        **overrides,
    }
    return OperatorConfig.model_validate(settings)
