"""Leader election: of the operators sharing a Lease, one acts, the others stand by.

Every operator runs the election; the one holding the Lease (`kubectl get lease`
shows it) acts, the others watch it and take over once it has not been renewed for a
lease duration.  A leader that could not renew for the renew deadline stops acting
first: before anyone may take over.  The decisions are `leases`'; this is the I/O.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from celery_taskrun.api.config import OperatorConfig
from celery_taskrun.clients.errors import Conflict, KubeError
from celery_taskrun.core.leases import Act, LeaseView, held, leading, next_act
from celery_taskrun.engine import metrics
from celery_taskrun.engine.fence import Fence
from celery_taskrun.engine.ports import LeasePort

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_NAMESPACE = "celery-taskrun-system"


def identity() -> str:
    """This process, as the Lease names its holder: the pod (hostname), and more."""
    return f"{socket.gethostname()}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


def lease_namespace(config: OperatorConfig) -> str:
    if config.leaseNamespace:
        return config.leaseNamespace
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or DEFAULT_NAMESPACE
    except OSError:
        return DEFAULT_NAMESPACE


class Elector:
    def __init__(
        self,
        kube: LeasePort,
        config: OperatorConfig,
        *,
        on_lead: Callable[[], Awaitable[None]],
        on_lose: Callable[[], Awaitable[None]],
        fence: Fence,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.namespace = lease_namespace(config)
        self.name = config.leaseName
        self.me = identity()
        self.duration = config.leaseDurationSeconds
        self.deadline = config.leaseRenewDeadlineSeconds
        self.period = config.leaseRetryPeriodSeconds
        self.on_lead = on_lead
        self.on_lose = on_lose
        self.fence = fence  # moved on every renewal: the tracker's effects wait at it
        self.monotonic = monotonic
        self.leading = False
        self.renewed: float | None = None  # when we last renewed (our clock)
        self.seen: tuple[str, float] | None = None  # (version, when first seen)
        self.beat = monotonic()

    def health(self, timeout: float) -> str | None:
        stalled = self.monotonic() - self.beat
        if stalled > timeout:
            return f"the leader election has not turned for {stalled:.0f}s"
        return None

    async def campaign(self) -> None:
        """Hold or wait for the Lease, for the operator's lifetime."""
        log.info("leader election on lease %s/%s as %s", self.namespace, self.name, self.me)
        metrics.LEADER.set(0)
        try:
            while True:
                await self._try()
                await self._check()
                self.beat = self.monotonic()
                await asyncio.sleep(min(self.period, self._left()))
        finally:
            if self.leading:
                await self._lose("shutting down")
                await self._release()

    def _left(self) -> float:
        """Seconds a leader has left to renew (a standby: a retry period)."""
        if not self.leading or self.renewed is None:
            return self.period
        return max(self.deadline - (self.monotonic() - self.renewed), 0.05)

    async def _try(self) -> None:
        # A try never outlasts the time left to renew: a hung call must not keep a
        # leader acting past its deadline.
        timeout = min(max(self.period, 1.0), self._left())
        sent = self.monotonic()  # a renewal holds from when it was asked, not answered
        try:
            body = await self.kube.lease(self.namespace, self.name, timeout)
            lease = LeaseView.of(body) if body is not None else None
            now = self.monotonic()
            if lease is not None and (self.seen is None or self.seen[0] != lease.version):
                self.seen = (lease.version, now)
            unchanged_for = now - self.seen[1] if lease is not None and self.seen else 0.0
            act = next_act(lease, self.me, unchanged_for)
            if act is Act.WAIT:
                return
            spec = held(self.me, self.duration, datetime.now(UTC), lease, act)
            version = lease.version if lease is not None else None
            await self.kube.write_lease(self.namespace, self.name, spec, version, timeout)
        except Conflict:
            return  # another operator wrote first
        except KubeError as exc:
            log.info("lease %s/%s not renewed or taken: %s", self.namespace, self.name, exc)
            return
        self.renewed = sent
        self.fence.hold(sent + self.deadline)
        if not self.leading:
            self.leading = True
            metrics.LEADER.set(1)
            log.info("leading: this operator acts (lease %s/%s)", self.namespace, self.name)
            await self.on_lead()

    async def _check(self) -> None:
        renewed_ago = None if self.renewed is None else self.monotonic() - self.renewed
        if self.leading and not leading(renewed_ago, self.deadline):
            await self._lose(f"not renewed for {renewed_ago:.1f}s")

    async def _release(self) -> None:
        """Hand the Lease over at once (a rolling update's standby need not wait)."""
        spec = {"holderIdentity": "", "leaseDurationSeconds": 1}
        try:
            body = await self.kube.lease(self.namespace, self.name, self.period)
            lease = LeaseView.of(body) if body is not None else None
            if lease is not None and lease.holder == self.me:
                await self.kube.write_lease(
                    self.namespace, self.name, spec, lease.version, self.period
                )
        except KubeError as exc:
            log.info("lease not released (it will expire): %s", exc)

    async def _lose(self, why: str) -> None:
        self.leading = False
        self.renewed = None
        self.fence.hold(-math.inf)
        metrics.LEADER.set(0)
        log.warning("no longer leading (%s): standing by", why)
        await self.on_lose()
