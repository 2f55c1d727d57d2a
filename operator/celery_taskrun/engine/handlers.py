"""Kopf wiring: every watch event goes to the tracker, nothing else.

Only `on.event` is used: it costs no API writes of Kopf's own (no progress or
last-handled annotations, no Kopf finalizer), so a run's writes are the tracker's
alone.  Kopf still brings the watch, its reconnects, and the operator lifecycle.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import kopf

from celery_taskrun.api.config import OperatorConfig, globbed
from celery_taskrun.api.cron import PLURAL as CRON_PLURAL
from celery_taskrun.api.model import FINISHED_LABEL, GROUP, PLURAL, VERSION
from celery_taskrun.clients.apiserver import connect
from celery_taskrun.clients.backend import open_backend
from celery_taskrun.clients.celery_client import CeleryClient, make_app
from celery_taskrun.clients.kube import Kube
from celery_taskrun.clients.paging import OPERATOR_PAGE
from celery_taskrun.engine.elector import Elector
from celery_taskrun.engine.fence import Fence
from celery_taskrun.engine.schedules import Schedules
from celery_taskrun.engine.tasks import supervised
from celery_taskrun.engine.tracker import Tracker

log = logging.getLogger(__name__)


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config: OperatorConfig = memo["config"]
    # The tracker posts its own events; Kopf's would echo handler logs as events.
    settings.posting.enabled = False
    settings.watching.server_timeout = 270
    # Kopf waits this long for more events of an object before handling the latest;
    # the tracker's handling is idempotent and cheap, so a cancel need not wait 0.1 s.
    settings.batching.batch_window = 0.01
    settings.networking.request_timeout = 30
    # Kopf lists every object in one response unless told otherwise.
    settings.watching.chunk_size = OPERATOR_PAGE
    # Finished runs are the reaper's alone (its index, filled by a takeover's listing):
    # Kopf neither lists nor follows them, however many are kept.
    settings.watching.label_selectors[GROUP, PLURAL] = f"!{FINISHED_LABEL}"
    # Named namespaces are watched by name.  Kopf would otherwise list the namespaces,
    # then watch them from a listing of their own, and never serve one created between
    # the two (globs are served by one cluster-wide watch: see main).  Kopf's CRD
    # scanning goes with it: the CRD must exist when the operator starts.
    named: list[str] = memo["namespaces"]
    settings.scanning.disabled = bool(named) and not globbed(named)
    app = make_app(config)
    backend = open_backend(
        config.resultBackend,
        app,
        max_record_bytes=config.maxRecordBytes,
        timeout=config.backendTimeout,
    )
    kube = Kube(connect(seconds=config.apiTimeout), written=memo["echoes"].written)
    # Closed until the election says the Lease is ours, and whenever it may not be.
    fence = Fence(until=-math.inf)
    tracker = Tracker(
        config,
        kube,
        CeleryClient(app, make_app(config, results=False), timeout=config.brokerTimeout),
        backend,
        namespaces=memo["namespaces"],
        fence=fence,
    )
    # Only the holder of the Lease acts; the tracker stands by until then.  The election
    # has connections of its own: a queue of the tracker's writes must not hold up a
    # renewal until the leader steps down.
    schedules = Schedules(config, kube, fence=fence)

    async def lead() -> None:
        await tracker.lead()
        await schedules.lead()

    async def step_down() -> None:
        await schedules.step_down()
        await tracker.step_down()

    lease_kube = Kube(connect(seconds=config.apiTimeout))
    elector = Elector(lease_kube, config, on_lead=lead, on_lose=step_down, fence=fence)
    # Each operator says who it is in its requests: the API server's audit log then
    # tells two replicas of one ServiceAccount apart (a leader that lost its Lease must
    # write nothing; the log shows it).
    for api in (kube.api, lease_kube.api):
        api.user_agent = f"celery-taskrun-operator ({elector.me})"
    memo["tracker"], memo["elector"], memo["schedules"] = tracker, elector, schedules
    memo["campaign"] = asyncio.create_task(supervised("leader election", elector.campaign))
    log.info("celery-taskrun operator started (backend %s)", config.resultBackend.split("://")[0])


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    campaign: asyncio.Task[None] | None = memo.get("campaign")
    if campaign is not None:
        campaign.cancel()  # hands the Lease over, if held
        await asyncio.gather(campaign, return_exceptions=True)
    elector: Elector | None = memo.get("elector")
    if elector is not None:
        await elector.kube.close()
    schedules: Schedules | None = memo.get("schedules")
    if schedules is not None:
        await schedules.step_down()
    tracker: Tracker | None = memo.get("tracker")
    if tracker is not None:
        await tracker.stop()


@kopf.on.probe(id="tracker")
async def tracker_health(memo: kopf.Memo, **_: Any) -> str:
    """The liveness endpoint fails when the tracker stops making progress, or the
    election stops turning."""
    tracker: Tracker | None = memo.get("tracker")
    elector: Elector | None = memo.get("elector")
    if tracker is None or elector is None:
        raise kopf.PermanentError("the tracker has not started")
    problem = tracker.health() or elector.health(tracker.config.livenessTimeout)
    if problem is not None:
        raise kopf.PermanentError(problem)
    return "leading" if elector.leading else "standing by"


def namespace_of(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata")
    return str(meta.get("namespace", "")) if isinstance(meta, dict) else ""


@kopf.on.event(GROUP, VERSION, PLURAL)
async def on_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    tracker: Tracker = memo["tracker"]
    schedules: Schedules = memo["schedules"]
    obj = dict(event["object"])
    if tracker.handles(namespace_of(obj)):
        schedules.observe_run(event.get("type"), obj)
    await tracker.observe(event.get("type"), obj)


@kopf.on.event(GROUP, VERSION, CRON_PLURAL)
async def on_cron_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    tracker: Tracker = memo["tracker"]
    schedules: Schedules = memo["schedules"]
    obj = dict(event["object"])
    # A cluster-wide watch serves namespace globs (see main): only ours are followed.
    if tracker.handles(namespace_of(obj)):
        schedules.observe(event.get("type"), obj)
