"""Sending, revoking and marking tasks through Celery, off the event loop.

Celery's client calls block (kombu connections, broadcasts), and Kopf runs every
handler on one asyncio loop: each call runs in a small thread pool of its own.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from celery import Celery

from .config import OperatorConfig
from .submission import Submission

# Fail fast when the broker is down: the tracker retries on its own schedule.
PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}
PING_SECONDS = 2.0
SOCKET_OPTIONS = {"socket_connect_timeout": 3, "socket_timeout": 5}


def make_app(config: OperatorConfig) -> Celery:
    app = Celery("celery-taskrun-operator", broker=config.brokerUrl, backend=config.resultBackend)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_publish_retry_policy=PUBLISH_RETRY,
        broker_transport_options=SOCKET_OPTIONS,
        result_backend_transport_options=SOCKET_OPTIONS,
        broker_connection_retry=False,
        broker_connection_retry_on_startup=False,
    )
    return app


class CeleryClient:
    def __init__(self, app: Celery, threads: int = 8) -> None:
        self.app = app
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="celery-client")

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, partial(fn, *args, **kwargs))

    async def send(self, submission: Submission) -> None:
        await self._call(
            self.app.send_task,
            submission.task,
            args=submission.args,
            kwargs=submission.kwargs,
            task_id=submission.task_id,
            **submission.options,
        )

    async def revoke(self, task_id: str, *, terminate: bool, reason: str) -> None:
        """Revoke for the workers online, and record REVOKED in the backend.

        The broadcast reaches only the workers online now; the stored REVOKED state is
        what the worker guard (taskrun_workers.guard) checks before running a task,
        so a worker that comes online later does not run it either.
        """
        await self._call(self.app.control.revoke, task_id, terminate=terminate)
        await self._call(self.app.backend.mark_as_revoked, task_id, reason)

    async def alive(self, hostnames: set[str]) -> set[str]:
        """Which of these workers answer a ping (their main process, even when busy)."""
        replies = await self._call(
            self.app.control.ping, destination=sorted(hostnames), timeout=PING_SECONDS
        )
        return {name for reply in replies or [] for name in reply}

    async def still_running(self, task_id: str, worker: str | None) -> bool | None:
        """Whether the worker reports the task active, reserved or scheduled right now;
        None when no worker answers (reconnecting, or gone: the liveness check decides)."""
        inspect = self.app.control.inspect(
            destination=[worker] if worker else None, timeout=PING_SECONDS
        )
        replies = await self._call(inspect.query_task, task_id)
        if not replies:
            return None
        return any(task_id in (reply or {}) for reply in replies.values())

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
