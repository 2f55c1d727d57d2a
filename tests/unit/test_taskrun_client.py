"""The client's following logic against a scripted API server on loopback (an aiohttp
server answering reads and watches from a script): resuming from the last version,
re-reading after an expired version, deletion, refusals, and `wait` running out.
(The real API server is in tests/e2e.)"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from celery_taskrun.clients.apiserver import ApiServer, Endpoint
from celery_taskrun.clients.errors import KubeError
from celery_taskrun.clients.paging import continue_of, pages
from celery_taskrun.clients.taskruns import TaskRunClient, wait

# The server and its client live on the loop of the fixture that made them.
pytestmark = pytest.mark.asyncio(loop_scope="session")


def run(version: str, phase: str | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "r", "resourceVersion": version}, "status": {"phase": phase}}


def event(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


@dataclass
class Response:
    """One watch's answer: its status, its chunks, then the end (or silence)."""

    status: int
    chunks: list[bytes]
    hang: bool = False
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class FakeApiServer:
    """Answers GETs from `gets` and each watch from `watches`, recording what was asked."""

    def __init__(self, gets: list[dict[str, Any]], watches: list[Response]) -> None:
        self.gets = deque(gets)
        self.watches = deque(watches)
        self.watched_from: list[str] = []
        self.responses: list[Response] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") != "true":
            return web.json_response(self.gets.popleft())
        assert request.query["fieldSelector"] == "metadata.name=r"
        self.watched_from.append(request.query["resourceVersion"])
        script = self.watches.popleft()
        self.responses.append(script)
        try:
            if script.status != 200:
                return web.Response(status=script.status, body=b"".join(script.chunks))
            response = web.StreamResponse()
            await response.prepare(request)
            for chunk in script.chunks:
                await response.write(chunk)
            if script.hang:
                await asyncio.Event().wait()
            return response
        finally:
            script.closed.set()


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    """Serves a FakeApiServer on loopback; the client of it."""
    runners: list[web.AppRunner] = []
    clients: list[TaskRunClient] = []

    async def start(fake: FakeApiServer) -> TaskRunClient:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", fake.handle)
        # A handler is cancelled when its client goes: a watch left hanging is seen closed.
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        runs = TaskRunClient(ApiServer(Endpoint(f"http://127.0.0.1:{port}", None, None, "ns")))
        clients.append(runs)
        return runs

    yield start
    for runs in clients:
        await runs.close()
    for runner in runners:
        await runner.cleanup()


async def collect(runs: TaskRunClient, count: int) -> list[str]:
    versions = []
    async for obj in runs.follow("ns", "r"):
        versions.append(obj["metadata"]["resourceVersion"])
        if len(versions) == count:
            break
    return versions


async def test_follow_resumes_each_watch_from_the_last_version(serve: Any) -> None:
    objects = FakeApiServer(
        [run("1")],
        [
            Response(200, [event("MODIFIED", run("2")) + event("BOOKMARK", run("3"))]),
            Response(200, [event("MODIFIED", run("4"))]),
        ],
    )
    assert await collect(await serve(objects), 3) == ["1", "2", "4"]
    # The server ended the first watch: the second starts after the bookmark.
    assert objects.watched_from == ["1", "3"]


async def test_an_expired_version_reads_the_run_again(serve: Any) -> None:
    expired = event("ERROR", {"code": 410, "reason": "Expired", "message": "too old"})
    objects = FakeApiServer(
        [run("1"), run("9", "Running")],
        [Response(200, [expired]), Response(200, [event("MODIFIED", run("10", "Succeeded"))])],
    )
    assert await collect(await serve(objects), 3) == ["1", "9", "10"]
    assert objects.watched_from == ["1", "9"]


async def test_deletion_ends_the_follow(serve: Any) -> None:
    objects = FakeApiServer([run("1")], [Response(200, [event("DELETED", run("2"))])])
    with pytest.raises(KubeError) as gone:
        await collect(await serve(objects), 5)
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
async def test_a_broken_watch_is_a_kube_error(serve: Any, response: Response, status: int) -> None:
    objects = FakeApiServer([run("1")], [response])
    with pytest.raises(KubeError) as failed:
        await collect(await serve(objects), 5)
    assert failed.value.status == status


async def test_wait_returns_the_end_or_the_last_state_when_time_runs_out(serve: Any) -> None:
    ends = FakeApiServer(
        [run("1", "Queued")],
        [
            Response(
                200, [event("MODIFIED", run("2", "Running")), event("MODIFIED", run("3", "Failed"))]
            )
        ],
    )
    obj, done = await wait(await serve(ends), "ns", "r", 5)
    assert (obj["status"]["phase"], done) == ("Failed", True)

    stuck = FakeApiServer(
        [run("1", "Queued")], [Response(200, [event("MODIFIED", run("2", "Running"))], hang=True)]
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    obj, done = await wait(await serve(stuck), "ns", "r", 0.2)
    assert (obj["status"]["phase"], done) == ("Running", False)
    assert 0.2 <= loop.time() - started < 1
    # The watch given up is closed, not left to the server's timeout.
    async with asyncio.timeout(5):
        await stuck.responses[0].closed.wait()

    # 0: just look.
    look = FakeApiServer([run("1", "Running")], [])
    obj, done = await wait(await serve(look), "ns", "r", 0)
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
