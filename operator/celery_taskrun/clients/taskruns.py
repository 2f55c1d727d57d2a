"""TaskRuns through the API server, for clients: create, read, cancel, list, and follow
one run or a namespace by the API server's watch (never a polling loop).

The shell the CLI and the gateway share; what an event means is decided in
`outcomes.py`. Every call has a timeout; a watch is bounded by the server's
`timeoutSeconds` and re-made from the last version seen, so followers run until their
caller stops them (`asyncio.timeout`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any

from celery_taskrun.api.bodies import ObjectMeta, TaskRunBody, TaskRunList
from celery_taskrun.api.model import GROUP, KIND, PLURAL, VERSION
from celery_taskrun.clients.apiserver import ApiServer, Content, Method, decoded
from celery_taskrun.clients.errors import ApiUnavailable, Gone
from celery_taskrun.clients.kube import objects
from celery_taskrun.clients.paging import GATEWAY_PAGE, GATEWAY_PAGES_AT_ONCE, pages
from celery_taskrun.core.outcomes import Step, Verdict, WatchError, finished, interpret, status_of

# One request (not a watch): connect, send, read the answer.
REQUEST_TIMEOUT = 15.0
# A watch asks the server to end it after this long; we then watch again from the
# last version, so a silent connection is noticed within this bound.
WATCH_SECONDS = 120
# A watch's every read is bounded by what is left of its whole length.
WATCH_TIMEOUT = WATCH_SECONDS + REQUEST_TIMEOUT


def name_prefix(task: str) -> str:
    """A `generateName` from a task name: `pkg.tasks.calculate_sum` -> `calculate-sum-`."""
    last = task.rsplit(".", 1)[-1].lower()
    slug = re.sub(r"[^a-z0-9]+", "-", last).strip("-")[:40].strip("-")
    return f"{slug or 'taskrun'}-"


def resource_version(obj: Mapping[str, Any]) -> str | None:
    version = (obj.get("metadata") or {}).get("resourceVersion")
    return version if isinstance(version, str) else None


class TaskRunClient:
    """TaskRuns of any namespace, as the identity of `api`."""

    def __init__(self, api: ApiServer) -> None:
        self.api = api
        # Concurrent lists multiply a page's memory: a few pages are read at once.
        self.reading = asyncio.Semaphore(GATEWAY_PAGES_AT_ONCE)

    async def close(self) -> None:
        await self.api.close()

    async def get(self, namespace: str, name: str, plural: str = PLURAL) -> TaskRunBody:
        """A TaskRun (or an object of our group's kind `plural`)."""
        body: Any = await self.api.read(objects(namespace, plural, name), seconds=REQUEST_TIMEOUT)
        return body  # type: ignore[no-any-return]

    async def create(
        self, namespace: str, spec: Mapping[str, Any], *, name: str | None = None
    ) -> TaskRunBody:
        """Create a TaskRun; without `name`, the API server names it after the task."""
        metadata: ObjectMeta = {"namespace": namespace}
        if name:
            metadata["name"] = name
        else:
            metadata["generateName"] = name_prefix(str(spec.get("task", "")))
        return await self.create_body(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "metadata": metadata,
                "spec": dict(spec),
            }
        )

    async def create_body(self, manifest: Mapping[str, Any]) -> TaskRunBody:
        """Create the TaskRun `manifest` describes whole."""
        namespace = str(manifest["metadata"]["namespace"])
        answer = await self.api.call(
            Method.POST, objects(namespace), body=dict(manifest), seconds=REQUEST_TIMEOUT
        )
        body: Any = decoded(answer)
        return body  # type: ignore[no-any-return]

    async def cancel(self, namespace: str, name: str) -> TaskRunBody:
        """Set `spec.cancel: true` (the operator revokes the task)."""
        return await self.patch_spec(namespace, name, {"cancel": True})

    async def patch_spec(
        self, namespace: str, name: str, spec: Mapping[str, Any], plural: str = PLURAL
    ) -> TaskRunBody:
        """Merge `spec` into the object's spec."""
        answer = await self.api.call(
            Method.PATCH,
            objects(namespace, plural, name),
            body={"spec": dict(spec)},
            content=Content.MERGE_PATCH,
            seconds=REQUEST_TIMEOUT,
        )
        body: Any = decoded(answer)
        return body  # type: ignore[no-any-return]

    async def page(
        self,
        namespace: str,
        *,
        limit: int,
        label_selector: str | None = None,
        continue_token: str | None = None,
        plural: str = PLURAL,
    ) -> TaskRunList:
        """A page of the namespace's TaskRuns (or objects of our group's kind `plural`)."""
        query: dict[str, str | int] = {"limit": limit}
        if label_selector:
            query["labelSelector"] = label_selector
        if continue_token:
            query["continue"] = continue_token
        async with self.reading:
            body: Any = await self.api.read(
                objects(namespace, plural), query=query, seconds=REQUEST_TIMEOUT
            )
        return body  # type: ignore[no-any-return]

    def pages(
        self,
        namespace: str,
        *,
        limit: int,
        label_selector: str | None = None,
        continue_token: str | None = None,
        plural: str = PLURAL,
    ) -> AsyncIterator[dict[str, Any]]:
        """Up to `limit` TaskRuns (or objects of our group's kind `plural`) from
        `continue_token` on, in pages of GATEWAY_PAGE."""

        async def fetch(token: str | None, size: int) -> dict[str, Any]:
            found = await self.page(
                namespace,
                limit=size,
                label_selector=label_selector,
                continue_token=token,
                plural=plural,
            )
            return dict(found)

        return pages(fetch, page=GATEWAY_PAGE, limit=limit, token=continue_token)

    async def watch(
        self, namespace: str, version: str, field_selector: str | None
    ) -> AsyncGenerator[Verdict, None]:
        """One watch from `version`, until the server ends it (WATCH_SECONDS)."""
        query: dict[str, str | int] = {
            "watch": "true",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": WATCH_SECONDS,
        }
        if field_selector:
            query["fieldSelector"] = field_selector
        events = self.api.events(
            objects(namespace), query=query, seconds=WATCH_TIMEOUT, accept="application/json"
        )
        async with aclosing(events):
            async for event in events:
                try:
                    verdict = interpret(event)
                except WatchError as exc:
                    # The API server sent what a watch never sends: as if it were unreachable.
                    raise ApiUnavailable(0, "WatchFailed", f"the watch failed: {exc}") from exc
                yield verdict

    async def follow(self, namespace: str, name: str) -> AsyncGenerator[TaskRunBody, None]:
        """The TaskRun now, then each new version of it, as the watch delivers them.

        Raises Gone (404) when it does not exist or is deleted. Never ends by itself.
        """
        obj = await self.get(namespace, name)
        yield obj
        version = resource_version(obj) or "0"
        selector = f"metadata.name={name}"
        while True:
            resync = False
            async with aclosing(self.watch(namespace, version, selector)) as verdicts:
                async for verdict in verdicts:
                    version = verdict.resource_version or version
                    if verdict.step is Step.UPDATE and verdict.obj is not None:
                        yield verdict.obj
                    elif verdict.step is Step.GONE:
                        raise Gone(404, "NotFound", f"taskrun {name} was deleted")
                    elif verdict.step is Step.RESYNC:
                        resync = True
                        break
            if resync:
                obj = await self.get(namespace, name)
                version = resource_version(obj) or "0"
                yield obj


async def wait(
    runs: TaskRunClient, namespace: str, name: str, seconds: float | None
) -> tuple[TaskRunBody, bool]:
    """The seed's `get(timeout=...)` over the watch: (the run, whether it finished).

    Reads the run once whatever `seconds` is (0: just look); then follows it until it
    finishes or `seconds` run out (None: no limit), and returns the last version seen.
    """
    loop = asyncio.get_running_loop()
    deadline = None if seconds is None else loop.time() + seconds
    async with aclosing(runs.follow(namespace, name)) as versions:
        obj = await anext(versions)
        if finished(status_of(obj)) or (deadline is not None and loop.time() >= deadline):
            return obj, finished(status_of(obj))
        try:
            async with asyncio.timeout_at(deadline):
                async for obj in versions:
                    if finished(status_of(obj)):
                        return obj, True
        except TimeoutError:
            pass
    return obj, False
