"""Effects: the one place every side effect of the engine passes (send, revoke, status
write, finalizer removal, deletion, worker questions).  The steps and the reaper act
through it alone, so what must hold for every effect is put here once: each waits at
the leader's fence (`fence.py`), and a send checks it again in the thread that
publishes, just before the message leaves."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from celery_taskrun.api.bodies import TaskRunBody
from celery_taskrun.api.model import FINALIZER, TaskRunStatus
from celery_taskrun.clients.celery_client import (
    PUBLISH_BOUND_SECONDS,
    BrokerUnavailable,
    MarkRefused,
)
from celery_taskrun.core.sending import Message
from celery_taskrun.core.step import AskWorkers, Revoke, held
from celery_taskrun.engine import metrics
from celery_taskrun.engine.fence import Fence
from celery_taskrun.engine.ports import Body, BrokerPort, KubePort
from celery_taskrun.engine.runs import Run
from celery_taskrun.engine.sender import Deleted, NotSent, Sender, Sent
from celery_taskrun.engine.writer import StatusWriter, Written

log = logging.getLogger(__name__)


class Effects:
    def __init__(
        self,
        kube: KubePort,
        celery: BrokerPort,
        sender: Sender,
        writer: StatusWriter,
        *,
        fence: Fence,
        revoke_timeout: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.celery = celery
        self.sender = sender
        self.writer = writer
        self.fence = fence
        self.revoke_timeout = revoke_timeout
        self.monotonic = monotonic
        self.settled_at = -math.inf  # see `took_over`

    async def read(self, run: Run) -> TaskRunBody:
        """The object as the API server has it now (raises Gone when it no longer
        exists, or the name now holds another object)."""
        return await self.kube.read(run.meta)

    async def exists(self, meta: Body) -> None:
        """Raises Gone unless the object `meta` names (its uid) still exists."""
        await self.kube.read(meta)

    def took_over(self) -> None:
        """This operator now leads: what an earlier leader was publishing may still land
        for PUBLISH_BOUND_SECONDS."""
        self.settled_at = self.monotonic() + PUBLISH_BOUND_SECONDS

    async def send(self, run: Run, message: Message) -> Sent | NotSent | Deleted:
        if run.inherited == message.task_id:  # an earlier leader may be sending it now
            await asyncio.sleep(self.settled_at - self.monotonic())
        await self.fence.wait()  # after any wait: the Lease must be ours when we send
        return await self.sender.send(run, message, may_publish=self.fence.open)

    async def write(self, run: Run, status: TaskRunStatus) -> Written:
        await self.fence.wait()
        return await self.writer.write(run, status)

    async def revoke(self, run: Run, revoke: Revoke) -> None:
        await self.fence.wait()
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

    async def event(self, run: Run, kind: str, reason: str, message: str) -> None:
        await self.fence.wait()
        await self.writer.event(run, kind, reason, message)

    async def ask(self, question: AskWorkers) -> bool | None:
        """Whether a worker holds the task; None when no worker answers."""
        workers = {question.worker} if question.worker else set()
        try:
            answers = await self.celery.holding([question.task_id], workers)
        except BrokerUnavailable as exc:  # nobody can say yet
            log.info("could not ask the workers about %s: %s", question.task_id, exc)
            return None
        return held(question.task_id, answers)

    async def release(self, meta: Body, label: tuple[str, str] | None) -> None:
        """Our finalizer off a run and `label` on (raises Gone, KubeError)."""
        await self.fence.wait()
        if await self.kube.release(meta, FINALIZER, label):
            metrics.API_WRITES.labels("metadata").inc()

    async def delete(self, namespace: str, name: str, uid: str) -> None:
        """A finished run deleted, its uid the precondition (raises Gone, KubeError)."""
        await self.fence.wait()
        async with self.writer.slots:  # a takeover may find thousands past their limit
            await self.kube.delete(namespace, name, uid)
        metrics.API_WRITES.labels("delete").inc()
