"""Effects: the one place every side effect of the engine passes (send, revoke, status
write, finalizer removal, deletion, worker questions).  The steps and the reaper act
through it alone, so what must hold for every effect (the leader's fence, a
precondition) is put here once."""

from __future__ import annotations

import asyncio
import logging

from celery_taskrun.api.model import FINALIZER, TaskRunStatus
from celery_taskrun.clients.celery_client import BrokerUnavailable, MarkRefused
from celery_taskrun.core.step import AskWorkers, Revoke, held
from celery_taskrun.core.submission import Submission
from celery_taskrun.engine import metrics
from celery_taskrun.engine.ports import BrokerPort, KubePort
from celery_taskrun.engine.runs import Run
from celery_taskrun.engine.submitter import NotSent, Sent, Submitter
from celery_taskrun.engine.writer import StatusWriter, Written

log = logging.getLogger(__name__)


class Effects:
    def __init__(
        self,
        kube: KubePort,
        celery: BrokerPort,
        submitter: Submitter,
        writer: StatusWriter,
        *,
        revoke_timeout: float,
    ) -> None:
        self.kube = kube
        self.celery = celery
        self.submitter = submitter
        self.writer = writer
        self.revoke_timeout = revoke_timeout

    async def send(self, run: Run, submission: Submission) -> Sent | NotSent:
        return await self.submitter.submit(run, submission)

    async def write(self, run: Run, status: TaskRunStatus) -> Written:
        return await self.writer.write(run, status)

    async def revoke(self, run: Run, revoke: Revoke) -> None:
        try:
            await asyncio.wait_for(
                self.celery.revoke(
                    revoke.task_id,
                    terminate=revoke.terminate,
                    reason=revoke.reason,
                    keep_for=revoke.keep_for,
                ),
                self.revoke_timeout,
            )
        except (BrokerUnavailable, MarkRefused, TimeoutError) as exc:
            # The status still says what happened; the event says what did not.
            log.warning("could not revoke %s: %s", revoke.task_id, exc)
            await self.writer.event(
                run, "Warning", "RevokeFailed", f"could not revoke task {revoke.task_id}: {exc}"
            )

    async def ask(self, question: AskWorkers) -> bool | None:
        """Whether a worker holds the task; None when no worker answers."""
        workers = {question.worker} if question.worker else set()
        try:
            answers = await self.celery.holding([question.task_id], workers)
        except BrokerUnavailable as exc:  # nobody can say yet
            log.info("could not ask the workers about %s: %s", question.task_id, exc)
            return None
        return held(question.task_id, answers)

    async def release(self, run: Run) -> None:
        """Our finalizer off a run (raises Gone, KubeError)."""
        if await self.kube.remove_finalizer(run.meta, FINALIZER):
            metrics.API_WRITES.labels("metadata").inc()

    async def delete(self, namespace: str, name: str, uid: str) -> None:
        """A finished run deleted, its uid the precondition (raises Gone, KubeError)."""
        async with self.writer.slots:  # a takeover may find thousands past their limit
            await self.kube.delete(namespace, name, uid)
        metrics.API_WRITES.labels("delete").inc()
