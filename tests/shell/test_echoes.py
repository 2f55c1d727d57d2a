"""The echoes of our own writes leave Kopf's watch stream; every other event stays."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from celery_taskrun.api.cron import CRON_LABEL
from celery_taskrun.engine.echoes import Echoes, without_echoes


def event(kind: str, version: str, **labels: str) -> dict[str, Any]:
    meta = {"name": "r", "uid": "u", "resourceVersion": version, "labels": labels}
    return {"type": kind, "object": {"metadata": meta}}


async def passed(events: list[Any], echoes: Echoes) -> list[Any]:
    async def stream(**_: Any) -> AsyncIterator[Any]:
        for one in events:
            yield one

    return [one async for one in without_echoes(stream, echoes)(settings=None)]


@pytest.mark.asyncio
async def test_only_the_events_our_writes_made_are_dropped_once() -> None:
    echoes = Echoes()
    for version in ("11", "13", "14", "15", "16"):
        echoes.written(version)
    events = [
        event("ADDED", "10"),
        event("MODIFIED", "11"),  # our write: dropped
        event("MODIFIED", "12"),  # someone else's
        event("MODIFIED", "13", **{CRON_LABEL: "c"}),  # a cron's run: the schedule reads it
        event("DELETED", "14"),  # our finished label took it out of the selection: dropped
        event("DELETED", "17"),  # a deletion: handled
        "a bookmark",  # Kopf's own markers go through
        event("MODIFIED", "16"),  # ours
        event("MODIFIED", "16"),  # the same again (a watch restarted before it): handled
    ]
    kept = await passed(events, echoes)
    assert kept == [events[0], events[2], events[3], events[5], events[6], events[8]]
    assert list(echoes.versions) == ["13", "15"]


@pytest.mark.asyncio
async def test_the_versions_remembered_are_bounded() -> None:
    echoes = Echoes(limit=2)
    for version in ("1", "2", "3"):
        echoes.written(version)
    kept = await passed([event("MODIFIED", v) for v in ("1", "2", "3")], echoes)
    assert [e["object"]["metadata"]["resourceVersion"] for e in kept] == ["1"]
