"""The echoes of our own writes, dropped from the watch before Kopf handles them.

Every status or finalizer write the tracker makes comes back as a watch event; 3 of a
trivial run's 4 events are such echoes, and each cost Kopf's per-event work (a worker,
the handler's kwargs, a logger) before our handler could see it changed nothing.  The
resourceVersion each write answered is remembered; the watch event carrying it is
dropped where Kopf's watcher reads the stream.  Only what our own write made is
dropped: the API server's watch delivers every other writer's change as an event of its
own, with its own version, before ours.  An echo that arrives before its write's answer
is simply handled (the tracker ignores it as before).

The write that labels a run finished takes it out of the watch's selection: the API
server says so with a DELETED event carrying that write's version, an echo too (the
run is not gone: the reaper keeps it).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any

from celery_taskrun.api.cron import CRON_LABEL
from celery_taskrun.engine import metrics

# Versions remembered at most: an echo Kopf never sees (a watch restarted past it)
# leaves its entry until pushed out, a few hundred bytes each.
REMEMBERED = 16_384
# A write of ours changes the object (MODIFIED) or takes it out of the selection (DELETED).
ECHOED = ("MODIFIED", "DELETED")


class Echoes:
    def __init__(self, limit: int = REMEMBERED) -> None:
        self.limit = limit
        self.versions: OrderedDict[str, None] = OrderedDict()

    def written(self, version: str) -> None:
        """A write of ours answered with `version`."""
        self.versions[version] = None
        if len(self.versions) > self.limit:
            self.versions.popitem(last=False)

    def echo(self, event: Any) -> bool:
        """Whether the watch event is the echo of a write of ours (then forgotten).  A
        run a CronTaskRun owns is always handled: the schedule learns its end from the
        status written."""
        if not isinstance(event, dict) or event.get("type") not in ECHOED or not self.versions:
            return False
        meta = (event.get("object") or {}).get("metadata") or {}
        version = meta.get("resourceVersion")
        if not isinstance(version, str) or version not in self.versions:
            return False
        if CRON_LABEL in (meta.get("labels") or {}):
            return False
        del self.versions[version]
        metrics.ECHOES.inc()
        return True


Watch = Callable[..., AsyncIterator[Any]]


def without_echoes(watch: Watch, echoes: Echoes) -> Watch:
    """Kopf's watch stream (`kopf._cogs.clients.watching.infinite_watch`), its events
    that are echoes of our writes left out."""

    async def watched(**options: Any) -> AsyncIterator[Any]:
        async for event in watch(**options):
            if not echoes.echo(event):
                yield event

    return watched
