"""The Kubernetes API calls the tracker makes itself (status, finalizer, events).

Kopf's handlers patch only when they return; the tracker is a long-lived loop, so
it writes through its own asynchronous client.  Every call has a timeout, and its
failures come out as the typed errors of `errors.py`: `Gone` (the object no longer
exists), `Conflict`, `TooLarge` (the write was refused for its size, by the API server
or etcd), `Invalid` (refused by the schema) and `ApiUnavailable` (anything else: try
again).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any

from celery_taskrun.api.bodies import LeaseBody, ObjectMeta, TaskRunBody
from celery_taskrun.api.model import GROUP, KIND, PLURAL, VERSION
from celery_taskrun.clients.apiserver import ApiServer, Content, Method, decoded, path_of
from celery_taskrun.clients.errors import ApiUnavailable, Conflict, Gone, Invalid, refused
from celery_taskrun.clients.paging import OPERATOR_PAGE, pages

RESOURCE_VERSION = re.compile(rb'"resourceVersion":"([0-9]+)"')
LEASES = ("apis", "coordination.k8s.io", "v1", "namespaces")
# Objects' metadata only, for what needs no more (a watch of deletions).
METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
# A watch asks the server to end it after this long (then it is made again).
WATCH_SECONDS = 270


def objects(namespace: str, plural: str = PLURAL, *rest: str) -> str:
    """The path of our group's `plural` in `namespace` (then a name, a subresource)."""
    return path_of("apis", GROUP, VERSION, "namespaces", namespace, plural, *rest)


class Kube:
    def __init__(self, api: ApiServer, written: Callable[[str], None] | None = None) -> None:
        self.api = api
        # Told the resourceVersion of each TaskRun status or metadata write of ours
        # (engine/echoes.py drops their watch events); never a change of the spec.
        self.written = written

    async def close(self) -> None:
        await self.api.close()

    async def _write(
        self,
        method: Method,
        path: str,
        body: Any,
        content: Content = Content.JSON,
        seconds: float | None = None,
    ) -> str | None:
        """A write whose answer is not decoded (decoding the whole object back was most
        of a client's cost); the resourceVersion written."""
        answer = await self.api.call(method, path, body=body, content=content, seconds=seconds)
        # The API server writes map keys in order: metadata's resourceVersion is the first.
        version = RESOURCE_VERSION.search(answer)
        return version.group(1).decode() if version else None

    async def patch_status(
        self,
        namespace: str,
        name: str,
        patch: dict[str, Any],
        version: str | None,
        *,
        whole: bool = False,
        plural: str = PLURAL,
    ) -> str | None:
        """Set each top-level status field of `patch` (None: remove it); `whole`: `patch`
        is the whole status, for an object that has none yet.  Made on the
        resourceVersion `version` when given: an object replaced under the same name, or
        written by someone else since, refuses it (Conflict) rather than take a stale
        status.  The resourceVersion written.

        A JSON Patch, not a merge patch: a merge patch cannot store a null member (a
        task's result `{"found": null}` would read back as `{}`)."""
        ops: list[dict[str, Any]] = []
        if version:
            ops.append({"op": "replace", "path": "/metadata/resourceVersion", "value": version})
        if whole:
            value = {key: field for key, field in patch.items() if field is not None}
            ops.append({"op": "add", "path": "/status", "value": value})
        else:
            for key, field in patch.items():
                path = "/status/" + _pointer(key)
                op = {"op": "remove", "path": path} if field is None else None
                ops.append(op or {"op": "add", "path": path, "value": field})
        path = objects(namespace, plural, name, "status")
        version = await self._write(Method.PATCH, path, ops, Content.JSON_PATCH)
        return self._ours(version) if plural == PLURAL else version

    def _ours(self, version: str | None) -> str | None:
        if version and self.written is not None:
            self.written(version)
        return version

    async def add_finalizer(
        self, meta: Mapping[str, Any], finalizer: str, annotations: dict[str, str]
    ) -> str | None:
        """Add `finalizer` and `annotations` in one merge patch made on the resourceVersion
        `meta` has (a merge patch replaces the whole list: the version keeps a finalizer
        someone else added meanwhile); on a conflict the object is read and the patch made
        once more.  Returns the resourceVersion written."""
        for attempt in range(2):
            current = [f for f in meta.get("finalizers") or [] if isinstance(f, str)]
            changes: ObjectMeta = {
                "finalizers": current if finalizer in current else [*current, finalizer],
                "annotations": annotations,
            }
            if meta.get("resourceVersion"):
                changes["resourceVersion"] = meta["resourceVersion"]
            try:
                return await self._patch(meta, {"metadata": changes}, Content.MERGE_PATCH)
            except Conflict:
                if attempt:
                    raise
            meta = await self._same(meta)
        return None

    async def _same(self, meta: Mapping[str, Any]) -> ObjectMeta:
        return (await self.read(meta))["metadata"]

    async def read(self, meta: Mapping[str, Any]) -> TaskRunBody:
        """The object `meta` names, read again; Gone when the name now holds another
        object (deleted and created anew): a write meant for one never lands on the
        other."""
        body = await self.get(meta["namespace"], meta["name"])
        if meta.get("uid") and body["metadata"].get("uid") != meta["uid"]:
            raise Gone(404, "NotFound", f"{meta['name']} was replaced by another object")
        return body

    async def release(
        self, meta: Mapping[str, Any], finalizer: str, label: tuple[str, str] | None
    ) -> str | None:
        """Remove `finalizer` and set `label`, in one JSON patch made on what `meta` says
        (`release_ops`): no resourceVersion is needed, so a view of the object that later
        writes made stale costs nothing unless the finalizers or the labels' map moved;
        then (422) the object is read and the patch made once more.  Returns the
        resourceVersion written, None when there was nothing to change."""
        for attempt in range(2):
            ops = release_ops(meta, finalizer, label)
            if not ops:
                return None
            try:
                return await self._patch(meta, ops, Content.JSON_PATCH)
            except Invalid:
                if attempt:
                    raise
            meta = await self._same(meta)
        return None

    async def _patch(self, meta: Mapping[str, Any], body: Any, content: Content) -> str | None:
        path = objects(meta["namespace"], PLURAL, meta["name"])
        return self._ours(await self._write(Method.PATCH, path, body, content))

    async def get(self, namespace: str, name: str, plural: str = PLURAL) -> TaskRunBody:
        """A TaskRun (or an object of our group's kind `plural`)."""
        body: Any = await self.api.read(objects(namespace, plural, name))
        return body  # type: ignore[no-any-return]

    async def list_taskruns(
        self, namespace: str | None, selector: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Every TaskRun of a namespace (or of the cluster), a bounded page at a time;
        those `selector` (a label selector) selects."""
        path = _taskruns(namespace)

        async def fetch(token: str | None, size: int) -> dict[str, Any]:
            query: dict[str, str | int] = {"limit": size}
            if selector:
                query["labelSelector"] = selector
            if token:
                query["continue"] = token
            return await self.api.read(path, query=query)

        async for page in pages(fetch, page=OPERATOR_PAGE):
            for item in page.get("items") or []:
                yield item

    async def version_now(self, namespace: str | None) -> str:
        """The TaskRuns' resourceVersion now (a list of at most one's metadata): a watch
        from it misses nothing that happens after."""
        query: dict[str, str | int] = {"limit": 1}
        page = await self.api.read(_taskruns(namespace), query=query, accept=METADATA_LIST)
        version = (page.get("metadata") or {}).get("resourceVersion")
        if not isinstance(version, str) or not version:
            raise ApiUnavailable(0, "NoVersion", "a list without a resourceVersion")
        return version

    async def deletions(
        self, namespace: str | None, selector: str, since: str
    ) -> AsyncIterator[tuple[str | None, str]]:
        """One watch of the TaskRuns `selector` selects, from `since`, their metadata
        only, until the server ends it (WATCH_SECONDS): for each event the uid of the
        run deleted (None for any other change) and the version the watch is at.
        Gone when `since` is older than the API server remembers (410)."""
        query: dict[str, str | int] = {
            "watch": "true",
            "labelSelector": selector,
            "resourceVersion": since,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": WATCH_SECONDS,
        }
        events = self.api.events(
            _taskruns(namespace), query=query, seconds=WATCH_SECONDS + 30, accept=METADATA
        )
        async with aclosing(events):  # the stream released however this one ends
            async for event in events:
                kind, found = event.get("type"), event.get("object")
                found = found if isinstance(found, dict) else {}
                if kind == "ERROR":
                    code = found.get("code")
                    code = code if isinstance(code, int) else 0
                    raise refused(code, str(found.get("reason") or ""), "")
                meta = found.get("metadata")
                meta = meta if isinstance(meta, dict) else {}
                version, uid = meta.get("resourceVersion"), meta.get("uid")
                if not isinstance(version, str):
                    continue
                yield (uid if kind == "DELETED" and isinstance(uid, str) else None), version

    async def lease(self, namespace: str, name: str, seconds: float) -> LeaseBody | None:
        """The Lease, or None when there is none."""
        try:
            body: Any = await self.api.read(
                path_of(*LEASES, namespace, "leases", name), seconds=seconds
            )
        except Gone:
            return None
        return body  # type: ignore[no-any-return]

    async def write_lease(
        self,
        namespace: str,
        name: str,
        spec: dict[str, Any],
        version: str | None,
        seconds: float,
    ) -> None:
        """Create the Lease (`version` None) or replace it if it is still `version`:
        Conflict when another operator wrote first."""
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        if version is None:
            await self._write(
                Method.POST, path_of(*LEASES, namespace, "leases"), body, seconds=seconds
            )
        else:
            body["metadata"]["resourceVersion"] = version
            path = path_of(*LEASES, namespace, "leases", name)
            await self._write(Method.PUT, path, body, seconds=seconds)

    async def delete(self, namespace: str, name: str, uid: str) -> None:
        body = {"preconditions": {"uid": uid}}
        await self._write(Method.DELETE, objects(namespace, PLURAL, name), body)

    async def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create a TaskRun; the object made (a Conflict when the name is taken)."""
        namespace = body["metadata"]["namespace"]
        answer = await self.api.call(Method.POST, objects(namespace), body=dict(body))
        return decoded(answer)

    async def cancel(self, namespace: str, name: str, uid: str) -> None:
        """Set `spec.cancel` on the TaskRun `uid` (a name now holding another: Invalid)."""
        ops = [
            {"op": "test", "path": "/metadata/uid", "value": uid},
            {"op": "add", "path": "/spec/cancel", "value": True},
        ]
        await self._write(Method.PATCH, objects(namespace, PLURAL, name), ops, Content.JSON_PATCH)

    async def event(
        self,
        namespace: str,
        name: str,
        uid: str,
        kind: str,
        reason: str,
        message: str,
        *,
        of: str = KIND,
    ) -> None:
        """A core/v1 Event on the object (a TaskRun, or `of` another kind), as `kubectl
        describe` and dashboards show."""
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            # An event's name is a DNS subdomain (253 characters), like the TaskRun's.
            "metadata": {"name": f"{name[:240]}.{uuid.uuid4().hex[:12]}", "namespace": namespace},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": of,
                "name": name,
                "namespace": namespace,
                "uid": uid,
            },
            "reason": reason,
            "message": message[:1024],
            "type": kind,
            "source": {"component": "celery-taskrun"},
            "reportingComponent": "celery-taskrun",
            "reportingInstance": "celery-taskrun-operator",
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        await self._write(
            Method.POST, path_of("api", "v1", "namespaces", namespace, "events"), body
        )


def _taskruns(namespace: str | None) -> str:
    return objects(namespace) if namespace else path_of("apis", GROUP, VERSION, PLURAL)


def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def release_ops(
    meta: Mapping[str, Any], finalizer: str, label: tuple[str, str] | None
) -> list[dict[str, Any]]:
    """The JSON patch that takes `finalizer` off and puts `label` on the object `meta`
    describes, each part tested first against what `meta` says (the uid: this object,
    not another made under its name; the finalizer at its index; the labels' map
    present, or absent: a test for null passes only on a missing member), so a patch
    made on a stale view is refused (422) rather than remove another's finalizer or
    replace labels someone else just set.  Empty when there is nothing to change."""
    ops: list[dict[str, Any]] = []
    current = [f for f in meta.get("finalizers") or [] if isinstance(f, str)]
    if finalizer in current:
        path = f"/metadata/finalizers/{current.index(finalizer)}"
        ops += [{"op": "test", "path": path, "value": finalizer}, {"op": "remove", "path": path}]
    labels = meta.get("labels")
    if label is not None and (not isinstance(labels, Mapping) or labels.get(label[0]) != label[1]):
        key, value = label
        if isinstance(labels, Mapping) and labels:
            ops.append({"op": "add", "path": f"/metadata/labels/{_pointer(key)}", "value": value})
        else:
            ops += [
                {"op": "test", "path": "/metadata/labels", "value": None},
                {"op": "add", "path": "/metadata/labels", "value": {key: value}},
            ]
    if ops and meta.get("uid"):
        ops.insert(0, {"op": "test", "path": "/metadata/uid", "value": meta["uid"]})
    return ops
