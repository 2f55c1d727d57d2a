"""What the engine needs of its clients, as Protocols: the Kubernetes API (TaskRuns,
events and the Lease), the broker, the result backend.

The real clients (`clients.kube.Kube`, `clients.celery_client.CeleryClient`,
`clients.backend.RedisResultBackend` / `CeleryResultBackend`) satisfy them
structurally, and so do the shell tests' fakes: the engine's constructors are
annotated with these, never with a concrete client.  The failures each method may
raise are the clients' own exceptions (`KubeError` and its kinds, `BrokerUnavailable`,
`SendRefused`, `MarkRefused`, `BackendUnavailable`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Protocol

from celery_taskrun.api.bodies import LeaseBody, TaskRunBody
from celery_taskrun.clients.backend import OnRecord, OnResync
from celery_taskrun.core.records import Reading
from celery_taskrun.core.sending import Message

Body = dict[str, Any]


class KubePort(Protocol):
    """The TaskRuns and their events, as the tracker writes them."""

    async def patch_status(
        self,
        namespace: str,
        name: str,
        patch: Body,
        version: str | None,
        *,
        whole: bool = False,
    ) -> str | None:
        """Merge `patch` into the status (a key set to None is deleted), on the
        resourceVersion `version` when given (Conflict when the object moved on); the
        resourceVersion written."""
        ...

    async def read(self, meta: Mapping[str, Any]) -> TaskRunBody:
        """The object `meta` names as the API server has it; Gone when it no longer
        exists, or the name now holds another object (another uid)."""
        ...

    async def add_finalizer(
        self, meta: Body, finalizer: str, annotations: dict[str, str]
    ) -> str | None: ...

    async def release(
        self, meta: Body, finalizer: str, label: tuple[str, str] | None
    ) -> str | None:
        """`finalizer` off, `label` on: the resourceVersion written; None when there was
        nothing to change."""
        ...

    def list_taskruns(
        self, namespace: str | None, selector: str | None = None
    ) -> AsyncIterator[Body]: ...

    async def version_now(self, namespace: str | None) -> str: ...

    def deletions(
        self, namespace: str | None, selector: str, since: str
    ) -> AsyncIterator[tuple[str | None, str]]:
        """One watch from `since`: the uid of each run deleted (None: another change),
        and the version the watch is at (Gone when `since` is too old)."""
        ...

    async def delete(self, namespace: str, name: str, uid: str) -> None: ...

    async def event(
        self, namespace: str, name: str, uid: str, kind: str, reason: str, message: str
    ) -> None: ...

    async def close(self) -> None: ...


class LeasePort(Protocol):
    """The Lease the leader election holds (its own connections: see handlers)."""

    async def lease(self, namespace: str, name: str, seconds: float) -> LeaseBody | None: ...

    async def write_lease(
        self, namespace: str, name: str, spec: Body, version: str | None, seconds: float
    ) -> None:
        """Create (`version` None) or replace the Lease; Conflict when another wrote first."""
        ...

    async def close(self) -> None: ...


class BrokerPort(Protocol):
    """Celery: sending, revoking, and asking the workers what they hold."""

    async def send(self, message: Message, *, may_publish: Callable[[], bool]) -> None:
        """Publish the message (`may_publish` is asked just before it leaves)."""
        ...

    async def revoke(
        self, task_id: str, *, terminate: bool, reason: str, keep_for: float
    ) -> None: ...

    async def holding(self, task_ids: list[str], hostnames: set[str]) -> dict[str, set[str]]: ...

    def close(self) -> None: ...


class BackendPort(Protocol):
    """The result backend: batched reads, and wake-ups where it has them."""

    async def read(self, task_ids: Sequence[str]) -> dict[str, Reading]: ...

    async def watch(self, on_record: OnRecord, on_resync: OnResync) -> None:
        """Deliver records as they are stored, until cancelled; return at once if unable."""
        ...

    async def close(self) -> None: ...
