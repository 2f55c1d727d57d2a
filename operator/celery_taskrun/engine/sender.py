"""The sender: sending a run's task, crash-safe by ordering.

(1) One metadata patch adds the finalizer and the task id about to be sent (an
annotation), (2) the task is sent with that id, (3) the caller writes the status.
A restart that finds (1) without (3) reads the backend and sends again only if the
id has no record (after waiting out what an earlier leader may still be publishing:
see `Effects.send`); a worker with the guard also drops a duplicate delivery of an id
that already ran.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from celery_taskrun.api.model import FINALIZER, INTENT_ANNOTATION
from celery_taskrun.clients.backend import BackendUnavailable
from celery_taskrun.clients.celery_client import BrokerUnavailable, SendRefused
from celery_taskrun.clients.errors import Gone, KubeError
from celery_taskrun.core import records
from celery_taskrun.core.records import TaskRecord
from celery_taskrun.core.sending import Message
from celery_taskrun.engine import faults, metrics
from celery_taskrun.engine.ports import BackendPort, BrokerPort, KubePort
from celery_taskrun.engine.runs import Run, with_finalizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sent:
    """The broker has the message."""


@dataclass(frozen=True)
class NotSent:
    """The broker did not take the message."""

    error: str
    permanent: bool  # the message cannot be sent at all; else try again later


@dataclass(frozen=True)
class Deleted:
    """The TaskRun was deleted: nothing was sent."""


class Sender:
    def __init__(self, kube: KubePort, celery: BrokerPort, backend: BackendPort) -> None:
        self.kube = kube
        self.celery = celery
        self.backend = backend

    async def send(
        self, run: Run, message: Message, *, may_publish: Callable[[], bool]
    ) -> Sent | NotSent | Deleted:
        """Record the intent, then send (`may_publish` is asked once more just before the
        message leaves: see `CeleryClient.send`)."""
        task_id = message.task_id
        recovering = run.intent == task_id  # an earlier incarnation may have sent it
        log.info(
            "submitting %s/%s as %s%s",
            run.namespace,
            run.name,
            task_id,
            " (recovering)" if recovering else "",
        )
        try:
            if not recovering or not run.guarded:
                await self._record_intent(run, task_id)
            if not (recovering and await self._has_record(task_id)):
                await faults.slow_point("send")
                await self.celery.send(message, may_publish=may_publish)
                faults.crash_point("after-send")
        except Gone:
            return Deleted()
        except SendRefused as exc:
            metrics.SUBMISSIONS.labels("refused").inc()
            return NotSent(str(exc), permanent=True)
        except (KubeError, BrokerUnavailable, BackendUnavailable) as exc:
            metrics.SUBMISSIONS.labels("failed").inc()
            if isinstance(exc, KubeError):
                metrics.API_WRITE_ERRORS.labels("metadata").inc()
            elif isinstance(exc, BrokerUnavailable):
                metrics.BACKEND_UP.labels("broker").set(0)
            log.warning("could not submit %s/%s: %s", run.namespace, run.name, exc)
            return NotSent(f"{type(exc).__name__}: {exc}", permanent=False)
        metrics.SUBMISSIONS.labels("sent").inc()
        metrics.BACKEND_UP.labels("broker").set(1)
        return Sent()

    async def _record_intent(self, run: Run, task_id: str) -> None:
        """Our finalizer and the id about to be sent, in one write, before sending."""
        version = await self.kube.add_finalizer(run.meta, FINALIZER, {INTENT_ANNOTATION: task_id})
        metrics.API_WRITES.labels("metadata").inc()
        run.meta = {
            **run.meta,
            "annotations": {INTENT_ANNOTATION: task_id},
            "finalizers": with_finalizer(run.finalizers),
            "resourceVersion": version or run.meta.get("resourceVersion"),
        }

    async def _has_record(self, task_id: str) -> bool:
        reading = (await self.backend.read([task_id]))[task_id]
        return not (isinstance(reading, TaskRecord) and reading.state == records.PENDING)
