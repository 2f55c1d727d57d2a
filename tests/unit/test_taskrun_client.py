"""The client's following logic against a scripted fake of the API server's watch:
resuming from the last version, re-reading after an expired version, deletion,
refusals, and `wait` running out. (The real API server is in tests/e2e.)"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Any

import pytest

from celery_taskrun.clients.errors import KubeError
from celery_taskrun.clients.paging import continue_of, pages
from celery_taskrun.clients.taskruns import TaskRunClient, wait


def run(version: str, phase: str | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "r", "resourceVersion": version}, "status": {"phase": phase}}


def event(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


class Stream:
    def __init__(self, chunks: list[bytes], hang: bool) -> None:
        self.chunks = deque(chunks)
        self.hang = hang

    async def readany(self) -> bytes:
        if self.chunks:
            return self.chunks.popleft()
        if self.hang:
            await asyncio.Event().wait()
        return b""

    async def read(self, limit: int) -> bytes:
        return b"".join(self.chunks)[:limit]


class Response:
    def __init__(self, status: int, chunks: list[bytes], hang: bool = False) -> None:
        self.status = status
        self.reason = "Refused" if status != 200 else "OK"
        self.content = Stream(chunks, hang)
        self.released = False

    def release(self) -> None:
        self.released = True


class FakeObjects:
    """Answers GETs from `gets` and each watch from `watches`, recording what was asked."""

    def __init__(self, gets: list[dict[str, Any]], watches: list[Response]) -> None:
        self.gets = deque(gets)
        self.watches = deque(watches)
        self.watched_from: list[str] = []
        self.responses: list[Response] = []

    async def get_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.gets.popleft()

    async def list_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> Response:
        assert kwargs["watch"] is True and kwargs["field_selector"] == "metadata.name=r"
        self.watched_from.append(kwargs["resource_version"])
        response = self.watches.popleft()
        self.responses.append(response)
        return response


def client_with(objects: FakeObjects) -> TaskRunClient:
    runs = TaskRunClient.__new__(TaskRunClient)
    runs.objects = objects
    return runs


async def collect(runs: TaskRunClient, count: int) -> list[str]:
    versions = []
    async for obj in runs.follow("ns", "r"):
        versions.append(obj["metadata"]["resourceVersion"])
        if len(versions) == count:
            break
    return versions


async def test_follow_resumes_each_watch_from_the_last_version() -> None:
    objects = FakeObjects(
        [run("1")],
        [
            Response(200, [event("MODIFIED", run("2")) + event("BOOKMARK", run("3"))]),
            Response(200, [event("MODIFIED", run("4"))]),
        ],
    )
    assert await collect(client_with(objects), 3) == ["1", "2", "4"]
    # The server ended the first watch: the second starts after the bookmark.
    assert objects.watched_from == ["1", "3"]
    assert objects.responses[0].released


async def test_an_expired_version_reads_the_run_again() -> None:
    expired = event("ERROR", {"code": 410, "reason": "Expired", "message": "too old"})
    objects = FakeObjects(
        [run("1"), run("9", "Running")],
        [Response(200, [expired]), Response(200, [event("MODIFIED", run("10", "Succeeded"))])],
    )
    assert await collect(client_with(objects), 3) == ["1", "9", "10"]
    assert objects.watched_from == ["1", "9"]


async def test_deletion_ends_the_follow() -> None:
    objects = FakeObjects([run("1")], [Response(200, [event("DELETED", run("2"))])])
    with pytest.raises(KubeError) as gone:
        await collect(client_with(objects), 5)
    assert gone.value.status == 404


@pytest.mark.parametrize(
    ("response", "status"),
    [
        (Response(403, [b'{"kind":"Status","reason":"Forbidden","message":"no"}']), 403),
        (Response(200, [b"not json\n"]), 0),
        (Response(200, [event("ERROR", {"code": 500, "message": "etcd"})]), 0),
        (Response(200, [b"x" * (5 * 1024 * 1024)]), 0),
    ],
    ids=["refused", "garbage", "error", "endless-line"],
)
async def test_a_broken_watch_is_a_kube_error(response: Response, status: int) -> None:
    objects = FakeObjects([run("1")], [response])
    with pytest.raises(KubeError) as failed:
        await collect(client_with(objects), 5)
    assert failed.value.status == status
    assert response.released


async def test_wait_returns_the_end_or_the_last_state_when_time_runs_out() -> None:
    ends = FakeObjects(
        [run("1", "Queued")],
        [
            Response(
                200, [event("MODIFIED", run("2", "Running")), event("MODIFIED", run("3", "Failed"))]
            )
        ],
    )
    obj, done = await wait(client_with(ends), "ns", "r", 5)
    assert (obj["status"]["phase"], done) == ("Failed", True)

    stuck = FakeObjects(
        [run("1", "Queued")], [Response(200, [event("MODIFIED", run("2", "Running"))], hang=True)]
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    obj, done = await wait(client_with(stuck), "ns", "r", 0.2)
    assert (obj["status"]["phase"], done) == ("Running", False)
    assert 0.2 <= loop.time() - started < 1
    assert stuck.responses[0].released

    # 0: just look.
    look = FakeObjects([run("1", "Running")], [])
    obj, done = await wait(client_with(look), "ns", "r", 0)
    assert (obj["status"]["phase"], done, look.watched_from) == ("Running", False, [])


@pytest.mark.parametrize(
    ("limit", "asked", "token"),
    [
        (None, [(None, 3), ("3", 3), ("6", 3)], None),  # all of them, three at a time
        (7, [(None, 3), ("3", 3), ("6", 1)], "7"),  # the last page cut to the limit
        (2, [(None, 2)], "2"),
    ],
)
async def test_pages_ask_for_at_most_a_page(
    limit: int | None, asked: list[tuple[str | None, int]], token: str | None
) -> None:
    """A list of 8 runs read in pages of 3: no request asks for more than a page,
    and the last page's continue token is where the caller goes on."""
    calls: list[tuple[str | None, int]] = []

    async def fetch(start: str | None, size: int) -> dict[str, Any]:
        calls.append((start, size))
        first = int(start or 0)
        end = min(first + size, 8)
        more = {"continue": str(end)} if end < 8 else {}
        return {"items": list(range(first, end)), "metadata": more}

    seen = [page async for page in pages(fetch, page=3, limit=limit)]
    assert calls == asked
    assert continue_of(seen[-1]) == token
