"""Fakes of the operator's own clients (Kubernetes, the Lease, Celery, the result
backend), so the engine is tested in milliseconds, on the loop's fake time (looptime).

Each fake satisfies its port (`celery_taskrun.engine.ports`): mypy checks it here.
Each keeps what a user would see, stamped with the loop time it happened at (the
status patches and events of each TaskRun, its metadata writes and deletions, what
was sent, revoked and asked of the workers), and can be told to fail or hang.  Every
change wakes `Seen.until`, so a test waits for what it expects, never on a timer.
The end-to-end tests run the same cases on the real stack.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

from celery_taskrun.api.bodies import LeaseBody, TaskRunBody
from celery_taskrun.api.config import OperatorConfig
from celery_taskrun.clients.backend import BackendUnavailable, OnRecord, OnResync
from celery_taskrun.clients.celery_client import BrokerUnavailable, MarkRefused, SendRefused
from celery_taskrun.clients.errors import (
    ApiUnavailable,
    Conflict,
    Gone,
    Invalid,
    KubeError,
    TooLarge,
)
from celery_taskrun.core import records
from celery_taskrun.core.records import Reading
from celery_taskrun.core.sending import Message
from celery_taskrun.engine.ports import BackendPort, BrokerPort, KubePort, LeasePort
from celery_taskrun.engine.tracker import Tracker

Body = dict[str, Any]
T = TypeVar("T")

# Loop time 0 on the engine's wall clock (whole seconds: creationTimestamp has them).
EPOCH = datetime(2030, 1, 1, tzinfo=UTC)


def selects(selector: str, labels: Any) -> bool:
    """The two label selectors the tracker lists with: `key` (present), `!key` (absent)."""
    present = isinstance(labels, dict) and selector.lstrip("!") in labels
    return present != selector.startswith("!")


def loop_time() -> float:
    return asyncio.get_running_loop().time()


def wall_clock() -> datetime:
    """The engine's `now`, on the loop's fake time."""
    return EPOCH + timedelta(seconds=loop_time())


def at(stamp: str) -> float:
    """A status timestamp as loop time."""
    return (datetime.fromisoformat(stamp.replace("Z", "+00:00")) - EPOCH).total_seconds()


class Seen:
    """Wakes whoever waits for what the fakes saw."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def note(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def until(self, check: Callable[[], T], within: float = 60.0, what: str = "it") -> T:
        """Wait, on loop time, until `check()` is true (returned); fail after `within`."""
        try:
            async with asyncio.timeout(within):
                while not (value := check()):
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"no {what} within {within}s (loop time)") from None
        return value


class Faults:
    """Failures to raise, by operation: each raised once, in order."""

    def __init__(self) -> None:
        self._queued: dict[str, list[Exception]] = {}

    def add(self, operation: str, *errors: Exception) -> None:
        self._queued.setdefault(operation, []).extend(errors)

    def check(self, operation: str) -> None:
        queued = self._queued.get(operation)
        if queued:
            raise queued.pop(0)


@dataclass(frozen=True)
class Write:
    at: float  # loop time
    name: str
    what: Body  # the status merge patch, or the metadata change


@dataclass(frozen=True)
class Event:
    at: float
    name: str
    kind: str  # Normal or Warning
    reason: str
    message: str


@dataclass
class FakeKube:
    """The TaskRuns as the API server keeps them, by name."""

    seen: Seen = field(default_factory=Seen)
    objects: dict[str, Body] = field(default_factory=dict)
    faults: Faults = field(default_factory=Faults)
    # Names whose status writes wait until their gate opens (never, unless set).
    hung: dict[str, asyncio.Event] = field(default_factory=dict)
    waiting: list[str] = field(default_factory=list)  # names of the writes held now
    refuse: set[str] = field(default_factory=set)  # names whose status writes are invalid
    max_status_bytes: int | None = None  # refuse larger status patches (etcd's limit)
    writes: list[Write] = field(default_factory=list)  # status patches taken
    metadata_writes: list[Write] = field(default_factory=list)  # finalizer and intent
    events: list[Event] = field(default_factory=list)
    deletes: list[tuple[float, str]] = field(default_factory=list)  # (loop time, name) taken
    delete_calls: list[tuple[float, str]] = field(default_factory=list)  # every one asked
    refused: list[tuple[float, str, str]] = field(default_factory=list)  # (when, what, name)
    revisions: Iterator[int] = field(default_factory=lambda: itertools.count(1000))
    list_pause: float = 0.0  # seconds each listed object takes to arrive (a long list)
    # Deletions by others of runs out of the operator's watch: (uid, version).
    removed_queue: asyncio.Queue[tuple[str, str]] = field(default_factory=asyncio.Queue)

    async def patch_status(
        self,
        namespace: str,
        name: str,
        patch: Body,
        version: str | None,
        *,
        whole: bool = False,
    ) -> str | None:
        if (gate := self.hung.get(name)) is not None:
            self.waiting.append(name)
            self.seen.note()
            await gate.wait()
            self.waiting.remove(name)
        obj = self._get(name)
        try:
            if version is not None and version != obj["metadata"].get("resourceVersion"):
                raise Conflict(409, "Conflict", "the object has been modified")
            self.faults.check("patch_status")
            if name in self.refuse:
                raise Invalid(422, "Invalid", "status: Invalid value")
            if self.max_status_bytes is not None and len(repr(patch)) > self.max_status_bytes:
                raise TooLarge(500, "InternalError", "etcdserver: request is too large")
        except KubeError:
            self._refused("patch_status", name)
            raise
        status = obj.setdefault("status", {})
        for key, value in patch.items():
            if value is None:
                status.pop(key, None)
            else:
                status[key] = copy.deepcopy(value)
        self.writes.append(Write(loop_time(), name, copy.deepcopy(patch)))
        self.seen.note()
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
        self._check("add_finalizer", meta["name"])
        found = list(stored.get("finalizers") or [])
        stored["finalizers"] = found if finalizer in found else [*found, finalizer]
        stored.setdefault("annotations", {}).update(annotations)
        change = {"finalizers": stored["finalizers"], "annotations": annotations}
        self.metadata_writes.append(Write(loop_time(), meta["name"], change))
        self.seen.note()
        return self._bump(self._get(meta["name"]))

    async def release(
        self, meta: Body, finalizer: str, label: tuple[str, str] | None
    ) -> str | None:
        stored = self._get(meta["name"])["metadata"]
        found = list(stored.get("finalizers") or [])
        labels = stored.get("labels") or {}
        relabel = label is not None and labels.get(label[0]) != label[1]
        if finalizer not in found and not relabel:
            return None
        self._check("release", meta["name"])
        stored["finalizers"] = [f for f in found if f != finalizer]
        change: Body = {"finalizers": stored["finalizers"]}
        if label is not None and relabel:
            stored["labels"] = {**labels, label[0]: label[1]}
            change["labels"] = {label[0]: label[1]}
        self.metadata_writes.append(Write(loop_time(), meta["name"], change))
        self.seen.note()
        return self._bump(self._get(meta["name"]))

    async def read(self, meta: Mapping[str, Any]) -> TaskRunBody:
        body = self._get(meta["name"])
        if body["metadata"]["uid"] != meta["uid"]:
            raise Gone(404, "NotFound", f"{meta['name']} was replaced by another object")
        return cast(TaskRunBody, copy.deepcopy(body))

    async def list_taskruns(
        self, namespace: str | None, selector: str | None = None
    ) -> AsyncIterator[Body]:
        for body in list(self.objects.values()):
            if selector is not None and not selects(selector, body["metadata"].get("labels")):
                continue
            await asyncio.sleep(self.list_pause)
            yield copy.deepcopy(body)

    async def version_now(self, namespace: str | None) -> str:
        return str(next(self.revisions))

    async def deletions(
        self, namespace: str | None, selector: str, since: str
    ) -> AsyncIterator[tuple[str | None, str]]:
        """What `removed` removed, as the API server's watch of `selector` says it."""
        while True:
            uid, version = await self.removed_queue.get()
            yield uid, version

    def removed(self, name: str) -> Body:
        """Someone else deletes `name` (a finished run, out of the operator's watch)."""
        body = self.objects.pop(name)
        self.removed_queue.put_nowait((body["metadata"]["uid"], str(next(self.revisions))))
        return body

    async def delete(self, namespace: str, name: str, uid: str) -> None:
        self.delete_calls.append((loop_time(), name))
        obj = self._get(name)
        if obj["metadata"]["uid"] != uid:
            raise Conflict(409, "Conflict", "Precondition failed: UID in precondition")
        self._check("delete", name)
        del self.objects[name]
        self.deletes.append((loop_time(), name))
        self.seen.note()

    async def event(
        self, namespace: str, name: str, uid: str, kind: str, reason: str, message: str
    ) -> None:
        self._check("event", name)
        self.events.append(Event(loop_time(), name, kind, reason, message))
        self.seen.note()

    async def close(self) -> None:
        return

    def _get(self, name: str) -> Body:
        if name not in self.objects:
            raise Gone(404, "NotFound", name)
        return self.objects[name]

    def _check(self, operation: str, name: str) -> None:
        try:
            self.faults.check(operation)
        except KubeError:
            self._refused(operation, name)
            raise

    def _refused(self, operation: str, name: str) -> None:
        self.refused.append((loop_time(), operation, name))
        self.seen.note()

    # -- what a user sees (`kubectl get`, `kubectl describe`) -----------------------------

    def status(self, name: str) -> Body:
        return dict(self.objects[name].get("status") or {})

    def phase(self, name: str) -> Any:
        return self.status(name).get("phase") if name in self.objects else None

    def finalizers(self, name: str) -> list[str]:
        return list(self.objects[name]["metadata"].get("finalizers") or [])

    def written(self, name: str) -> list[Write]:
        return [w for w in self.writes if w.name == name]

    def reasons(self, name: str) -> list[str]:
        return [e.reason for e in self.events if e.name == name]


@dataclass
class FakeBackend:
    seen: Seen = field(default_factory=Seen)
    stored: dict[str, Reading] = field(default_factory=dict)
    reads: list[tuple[float, tuple[str, ...]]] = field(default_factory=list)  # (when, ids)
    down: bool = False
    on_record: OnRecord | None = None

    async def read(self, task_ids: Sequence[str]) -> dict[str, Reading]:
        self.reads.append((loop_time(), tuple(task_ids)))
        self.seen.note()
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
    seen: Seen = field(default_factory=Seen)
    sent: list[Message] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)
    tries: list[float] = field(default_factory=list)  # every send asked, taken or not
    revoked: list[str] = field(default_factory=list)
    asked: list[tuple[float, tuple[str, ...], frozenset[str]]] = field(default_factory=list)
    # What each worker reports holding (active, reserved, scheduled); absent: silent.
    holding_now: dict[str, set[str]] = field(default_factory=dict)
    down: bool = False
    unsendable: bool = False  # every message fails to encode
    mark_refused: bool = False  # the record to replace does not decode

    async def send(self, message: Message, *, may_publish: Callable[[], bool]) -> None:
        self.tries.append(loop_time())
        self.seen.note()
        if self.unsendable:
            raise SendRefused("EncodeError: Object of type set is not JSON serializable")
        if self.down:
            raise BrokerUnavailable("ConnectionError: broker down")
        if not may_publish():
            raise BrokerUnavailable("not sent: this operator's Lease is not surely its own")
        self.sent.append(message)
        self.sent_at.append(loop_time())
        self.seen.note()

    async def revoke(self, task_id: str, *, terminate: bool, reason: str, keep_for: float) -> None:
        self.revoked.append(task_id)
        self.seen.note()
        if self.mark_refused:
            raise MarkRefused("AttributeError: 'float' object has no attribute 'get'")

    async def holding(self, task_ids: list[str], hostnames: set[str]) -> dict[str, set[str]]:
        self.asked.append((loop_time(), tuple(task_ids), frozenset(hostnames)))
        self.seen.note()
        if self.down:
            raise BrokerUnavailable("ConnectionError: broker down")
        return {
            host: held & set(task_ids)
            for host, held in self.holding_now.items()
            if not hostnames or host in hostnames
        }

    def close(self) -> None:
        return


@dataclass
class FakeLeases:
    """The Lease as the API server keeps it: a resourceVersion per write.  A call from
    an operator cut off fails; a hung one fails after its `seconds`, as `Kube` cuts
    every call at its timeout."""

    seen: Seen = field(default_factory=Seen)
    body: Body | None = None
    version: int = 0
    down: set[str] = field(default_factory=set)  # identities cut off from the API server
    hung: set[str] = field(default_factory=set)  # identities whose calls never answer
    writes: list[tuple[float, str, Body]] = field(default_factory=list)  # (when, who, spec)

    def client(self) -> LeaseClient:
        return LeaseClient(self)

    async def reach(self, who: str, seconds: float) -> None:
        if who in self.hung:
            await asyncio.sleep(seconds)
            raise ApiUnavailable(0, "", f"TimeoutError: no answer in {seconds}s")
        if who in self.down:
            raise ApiUnavailable(0, "", "unreachable")

    @property
    def holder(self) -> str | None:
        return None if self.body is None else self.body["spec"].get("holderIdentity")


class LeaseClient:
    """One operator's connection to the Lease (`who` is set once its Elector exists)."""

    def __init__(self, leases: FakeLeases) -> None:
        self.leases = leases
        self.who = ""

    async def lease(self, namespace: str, name: str, seconds: float) -> LeaseBody | None:
        await self.leases.reach(self.who, seconds)
        return cast(LeaseBody | None, copy.deepcopy(self.leases.body))

    async def write_lease(
        self, namespace: str, name: str, spec: Body, version: str | None, seconds: float
    ) -> None:
        await self.leases.reach(self.who, seconds)
        leases = self.leases
        current = leases.body["metadata"]["resourceVersion"] if leases.body else None
        if version != current:
            raise Conflict(409, "Conflict", "the object has been modified")
        leases.version += 1
        leases.body = {"metadata": {"resourceVersion": str(leases.version)}, "spec": spec}
        leases.writes.append((loop_time(), self.who, copy.deepcopy(spec)))
        leases.seen.note()

    async def close(self) -> None:
        return


_names = itertools.count()
MakeHarness = Callable[..., Awaitable["Harness"]]


@dataclass
class Harness:
    tracker: Tracker
    kube: FakeKube
    celery: FakeCelery
    backend: FakeBackend
    seen: Seen
    led_at: float = 0.0  # when the tracker took over (loop time)

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
                "creationTimestamp": wall_clock().isoformat(timespec="seconds"),
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

    async def echo(self, body: Body) -> None:
        """The watch's MODIFIED event of the object as the API server has it now."""
        await self.tracker.observe("MODIFIED", copy.deepcopy(self.kube.objects[name_of(body)]))

    def task_id(self, body: Body) -> str:
        return f"tr-{body['metadata']['uid']}-1"

    def phase(self, body: Body) -> Any:
        return self.kube.phase(name_of(body))

    def status(self, body: Body) -> Body:
        return self.kube.status(name_of(body))

    async def until_phase(self, body: Body, phase: str, within: float = 60.0) -> float:
        """Wait for `phase` to be written; the loop time it was written at."""
        name = name_of(body)
        await self.seen.until(lambda: self.kube.phase(name) == phase, within, f"{name} {phase}")
        return max(w.at for w in self.kube.written(name) if w.what.get("phase") == phase)


async def pass_time(seconds: float) -> None:
    """Let `seconds` of loop time pass (at once, on fake time): for asserting that
    nothing happens meanwhile, or what the clock alone brings, never to wait for
    something to happen (that is `Seen.until`)."""
    await asyncio.sleep(seconds)


def name_of(body: Body) -> str:
    name: str = body["metadata"]["name"]
    return name


def harness_config(**overrides: Any) -> OperatorConfig:
    settings: dict[str, Any] = {
        "workerLostAfter": 0,
        "statusHoldSeconds": 0,
        **overrides,
    }
    return OperatorConfig.model_validate(settings)


def make_harness(**config: Any) -> Harness:
    """A tracker on the fakes, its clocks the loop's fake time (not leading yet)."""
    seen = Seen()
    kube, celery, backend = FakeKube(seen), FakeCelery(seen), FakeBackend(seen)
    tracker = Tracker(
        harness_config(**config), kube, celery, backend, now=wall_clock, monotonic=loop_time
    )
    return Harness(tracker, kube, celery, backend, seen)


if TYPE_CHECKING:  # each fake is what the engine asks of its client: mypy checks it
    _kube: KubePort = FakeKube()
    _leases: LeasePort = LeaseClient(FakeLeases())
    _broker: BrokerPort = FakeCelery()
    _backend: BackendPort = FakeBackend()
