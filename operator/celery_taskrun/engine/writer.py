"""The status writer: one patch of what changed, an event for each new phase or
reason, and the metrics of both.

A write refused for its size (the API server's request limit, etcd's object limit)
or its content is tried again smaller (`transitions.shrunk`), twice at most: a run's
status is never refused for ever.  What was written becomes the run's status.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from celery_taskrun.api.config import EventPolicy
from celery_taskrun.api.model import Phase, Reason, TaskRunStatus
from celery_taskrun.clients.errors import Conflict, Gone, Invalid, KubeError, TooLarge
from celery_taskrun.core.content import shrunk
from celery_taskrun.core.redact import redact, scrubbed
from celery_taskrun.core.timing import parse_time
from celery_taskrun.engine import metrics
from celery_taskrun.engine.ports import KubePort
from celery_taskrun.engine.runs import Fingerprints, Run, dump, fingerprints

log = logging.getLogger(__name__)

WARNING_PHASES = frozenset({Phase.FAILED, Phase.TIMED_OUT, Phase.REVOKED})
SHRINK_LEVELS = 2


def posts_event(policy: EventPolicy, phase: Phase, warning: bool) -> bool:
    """Whether a status change written is also announced by an Event."""
    return phase.terminal or warning or policy is EventPolicy.TRANSITIONS


class Written(enum.Enum):
    WRITTEN = "written"  # the API server holds the new status
    UNCHANGED = "unchanged"  # nothing visible changed: no write
    GONE = "gone"  # the object no longer exists
    STALE = "stale"  # the object changed since our view of it (or is another one): read it
    FAILED = "failed"  # not written: try again later
    REFUSED = "refused"  # refused even at its smallest: trying again cannot help


def changes(written: Fingerprints, desired: dict[str, Any]) -> tuple[dict[str, Any], Fingerprints]:
    """What changed from what was written to `desired`, by top-level key (None: the key
    is gone), and the fingerprints of `desired`."""
    prints = fingerprints(desired)
    patch: dict[str, Any] = {k: v for k, v in desired.items() if written.get(k) != prints[k]}
    patch.update({k: None for k in written if k not in desired})
    return patch, prints


class StatusWriter:
    def __init__(
        self,
        kube: KubePort,
        *,
        concurrency: int,
        now: Callable[[], datetime],
        events: EventPolicy,
        secrets: Sequence[str] = (),
    ) -> None:
        self.kube = kube
        self.events = events
        self.now = now
        self.slots = asyncio.Semaphore(concurrency)
        self.secrets = list(secrets)  # never written: the passwords of the connections

    async def write(self, run: Run, status: TaskRunStatus) -> Written:
        """Make the API server hold `status` (or a smaller version of it), secrets
        redacted."""
        status = scrubbed(status, self.secrets)
        old_phase, old_reason = run.written_phase
        for level in range(SHRINK_LEVELS + 1):
            desired = dump(status)
            patch, prints = changes(run.written, desired)
            if not patch:
                run.status, run.synced = status, True
                return Written.UNCHANGED
            try:
                async with self.slots:
                    version = await self.kube.patch_status(
                        run.namespace,
                        run.name,
                        patch,
                        run.meta.get("resourceVersion"),
                        whole=not run.written,
                    )
            except Gone:
                return Written.GONE
            except Conflict:
                metrics.API_WRITE_ERRORS.labels("status").inc()
                run.synced = False
                return Written.STALE
            except (TooLarge, Invalid) as exc:
                metrics.API_WRITE_ERRORS.labels("status").inc()
                log.warning(
                    "status of %s/%s refused (%s); writing it smaller", run.namespace, run.name, exc
                )
                status = shrunk(status, level + 1)
                continue
            except KubeError as exc:
                metrics.API_WRITE_ERRORS.labels("status").inc()
                log.warning("status write for %s/%s failed: %s", run.namespace, run.name, exc)
                run.synced = False
                return Written.FAILED
            metrics.API_WRITES.labels("status").inc()
            run.status, run.written, run.synced = status, prints, True
            run.written_phase = (status.phase, status.reason)
            if version:  # the next write is made on it
                run.meta = {**run.meta, "resourceVersion": version}
            if (status.phase, status.reason) != (old_phase, old_reason):
                await self._announce(run, status)
            return Written.WRITTEN
        log.error("status of %s/%s refused even at its smallest", run.namespace, run.name)
        return Written.REFUSED

    async def _announce(self, run: Run, status: TaskRunStatus) -> None:
        phase = status.phase or Phase.PENDING
        metrics.TRANSITIONS.labels(phase.value, status.reason or "").inc()
        if phase.terminal:
            done = parse_time(status.completedAt)
            if done is not None and phase is not Phase.REVOKED:
                metrics.STATUS_LATENCY.observe(max((self.now() - done).total_seconds(), 0.0))
        warning = phase in WARNING_PHASES or status.reason == Reason.BACKEND_UNAVAILABLE
        if not posts_event(self.events, phase, warning):
            return
        await self.event(
            run,
            "Warning" if warning else "Normal",
            status.reason or phase.value,
            f"{phase.value}: {status.message}" if status.message else phase.value,
        )

    async def event(self, run: Run, kind: str, reason: str, message: str) -> None:
        try:
            message = redact(message, self.secrets)
            await self.kube.event(run.namespace, run.name, run.uid, kind, reason, message)
            metrics.API_WRITES.labels("event").inc()
        except KubeError as exc:  # an event is worth a try, never a failure
            metrics.API_WRITE_ERRORS.labels("event").inc()
            log.info("event for %s/%s not posted: %s", run.namespace, run.name, exc)
