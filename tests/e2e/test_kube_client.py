"""The operator's own Kubernetes client against the real API server: the credentials
of the stack's kubeconfigs (client certificates, a token, a token file read again as it
rotates), each refusal as its typed error, a silent server cut off by the timeout; its
finalizer writes keep other controllers' finalizers and cost no refused write when the
operator's view of the object is merely stale; the Lease's create and replace; and no
generated client in the operator's process."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from celery_taskrun.api.model import FINALIZER, GROUP, KIND, PLURAL, VERSION
from celery_taskrun.api.model import FINISHED_LABEL as FINISHED
from celery_taskrun.clients.apiserver import (
    ApiServer,
    Bearer,
    Content,
    Endpoint,
    Method,
    connect,
    in_cluster,
)
from celery_taskrun.clients.errors import (
    ApiUnavailable,
    Conflict,
    Forbidden,
    Gone,
    Invalid,
    KubeError,
)
from celery_taskrun.clients.kube import Kube, objects
from taskrun_dev.processes import ManagedProcess
from taskrun_dev.stack import Stack

from support import TaskRuns, wait_for

OTHER = "example.com/another-controller"
# The client lives on the loop of the fixture that made it.
pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
def place(make_namespace: Callable[[str], str]) -> str:
    """A namespace no operator follows."""
    return make_namespace("kube-client")


@pytest.fixture
async def kube(stack: Stack) -> AsyncIterator[Kube]:
    the_kube = Kube(connect(str(stack.admin_kubeconfig)))
    yield the_kube
    await the_kube.close()


async def created(kube: Kube, namespace: str, finalizers: list[str]) -> dict[str, Any]:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": "r", "finalizers": finalizers},
        "spec": {"task": "x.y"},
    }
    return await kube.create({**body, "metadata": {**body["metadata"], "namespace": namespace}})


async def touched(kube: Kube, namespace: str) -> None:
    """Another write, which leaves any view taken before it stale: the run has finished
    (only a finished run may be labelled so)."""
    status = {"phase": "Succeeded", "message": uuid.uuid4().hex}
    await kube.patch_status(namespace, "r", status, None, whole=True)


async def others_finalizers(kube: Kube, namespace: str, listed: list[str]) -> None:
    """Another controller sets the finalizers (a merge patch, not on any version)."""
    body = {"metadata": {"finalizers": listed}}
    path = objects(namespace, PLURAL, "r")
    await kube.api.call(Method.PATCH, path, body=body, content=Content.MERGE_PATCH)


async def finalizers(kube: Kube, namespace: str) -> list[str]:
    found: list[str] = (await kube.get(namespace, "r"))["metadata"].get("finalizers") or []
    return found


async def labels(kube: Kube, namespace: str) -> dict[str, str]:
    found: dict[str, str] = (await kube.get(namespace, "r"))["metadata"].get("labels") or {}
    return found


async def others_labels(kube: Kube, namespace: str, put: dict[str, str]) -> None:
    body = {"metadata": {"labels": put}}
    path = objects(namespace, PLURAL, "r")
    await kube.api.call(Method.PATCH, path, body=body, content=Content.MERGE_PATCH)


@pytest.mark.parametrize("had", [{}, {"team": "a"}], ids=["no-labels", "labelled"])
async def test_releasing_on_a_stale_view_writes_once(
    kube: Kube, place: str, had: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    body = await created(kube, place, [FINALIZER, OTHER])
    if had:
        await others_labels(kube, place, had)
        body = await kube.get(place, "r")
    meta = body["metadata"]
    await touched(kube, place)
    reads = []
    monkeypatch.setattr(kube, "get", lambda *a: reads.append(a))  # a refusal would read
    assert await kube.release(meta, FINALIZER, (FINISHED, "Succeeded")) is not None
    assert reads == []
    monkeypatch.undo()
    assert await finalizers(kube, place) == [OTHER]
    assert await labels(kube, place) == {**had, FINISHED: "Succeeded"}
    done = {**meta, "finalizers": [OTHER], "labels": {**had, FINISHED: "Succeeded"}}
    assert await kube.release(done, FINALIZER, (FINISHED, "Succeeded")) is None


async def test_releasing_when_the_list_moved_keeps_the_others(kube: Kube, place: str) -> None:
    meta = (await created(kube, place, [FINALIZER]))["metadata"]
    await others_finalizers(kube, place, [OTHER, FINALIZER])
    await kube.release(meta, FINALIZER, None)  # our view says index 0: tested, read again
    assert await finalizers(kube, place) == [OTHER]


async def test_labelling_keeps_labels_another_set_since_our_view(kube: Kube, place: str) -> None:
    meta = (await created(kube, place, [FINALIZER]))["metadata"]  # our view: no labels
    await touched(kube, place)
    await others_labels(kube, place, {"team": "a"})
    await kube.release(meta, FINALIZER, (FINISHED, "Failed"))  # tested absent: read again
    assert await labels(kube, place) == {"team": "a", FINISHED: "Failed"}
    assert await finalizers(kube, place) == []


async def test_adding_on_a_stale_view_keeps_what_another_added(kube: Kube, place: str) -> None:
    meta = (await created(kube, place, []))["metadata"]
    await others_finalizers(kube, place, [OTHER])
    await kube.add_finalizer(meta, FINALIZER, {"note": "x"})  # a conflict, then read again
    body = await kube.get(place, "r")
    assert body["metadata"]["finalizers"] == [OTHER, FINALIZER]
    assert body["metadata"]["annotations"]["note"] == "x"


async def test_token_kubeconfig_and_each_refusal_typed(
    stack: Stack, kube: Kube, place: str
) -> None:
    operator = Kube(connect(str(stack.operator_kubeconfig)))  # a ServiceAccount's token
    try:
        await created(kube, place, [])
        assert (await operator.get(place, "r"))["spec"] == {"task": "x.y"}
        with pytest.raises(Gone) as gone:
            await operator.get(place, "missing")
        assert (gone.value.status, gone.value.reason) == (404, "NotFound")
        with pytest.raises(Conflict):
            await operator.patch_status(place, "r", {"message": "m"}, "1", whole=True)
        with pytest.raises(Invalid):
            await operator.patch_status(place, "r", {"phase": "NoSuchPhase"}, None, whole=True)
        with pytest.raises(Conflict):
            await created(kube, place, [])
        # Its RBAC reads no Secrets: refused, typed, and (an ApiUnavailable) retried.
        with pytest.raises(Forbidden) as forbidden:
            await operator.api.read("/api/v1/namespaces/kube-system/secrets")
        assert isinstance(forbidden.value, ApiUnavailable)
        assert forbidden.value.status == 403
    finally:
        await operator.close()


async def test_a_rotated_token_file_is_read_again(stack: Stack, tmp_path: Path) -> None:
    config = yaml.safe_load(stack.operator_kubeconfig.read_text())
    token = tmp_path / "token"
    token.write_text("not-a-token")
    config["users"][0]["user"] = {"tokenFile": "token"}  # relative: the kubeconfig's dir
    (tmp_path / "config").write_text(yaml.safe_dump(config))
    api = connect(str(tmp_path / "config"))
    try:
        assert isinstance(api.endpoint.bearer, Bearer)
        with pytest.raises(ApiUnavailable) as refused:
            await api.read("/version")
        assert refused.value.status == 401
        token.write_text(stack.mint_token("celery-taskrun-operator"))
        api.endpoint.bearer.read_at -= 3600  # a minute (and more) later
        assert "gitVersion" in await api.read("/version")
    finally:
        await api.close()


async def test_in_a_pod_the_service_account_is_used(stack: Stack, tmp_path: Path) -> None:
    """What the kubelet mounts (token, CA, namespace) and the service's address."""
    config = yaml.safe_load(stack.operator_kubeconfig.read_text())
    cluster = config["clusters"][0]["cluster"]
    (tmp_path / "ca.crt").write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    (tmp_path / "token").write_text(stack.mint_token("celery-taskrun-operator"))
    (tmp_path / "namespace").write_text("celery-taskrun-system\n")
    where = urlsplit(cluster["server"])
    environ = {
        "KUBERNETES_SERVICE_HOST": str(where.hostname),
        "KUBERNETES_SERVICE_PORT": str(where.port),
    }
    api = ApiServer(in_cluster(environ, tmp_path))
    try:
        assert api.namespace == "celery-taskrun-system"
        found = await api.read(objects("celery-taskrun-system"))
        assert found["kind"] == "TaskRunList"
    finally:
        await api.close()
    with pytest.raises(ValueError):
        in_cluster({}, tmp_path)


async def test_a_silent_server_is_cut_off_by_the_timeout() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # accepts, reads nothing, never answers

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    api = Kube(connect_to(f"http://127.0.0.1:{port}", seconds=0.5))
    try:
        with pytest.raises(ApiUnavailable) as unheard:
            await asyncio.wait_for(api.get("default", "r"), 10)
        assert unheard.value.status == 0
        assert accepted
    finally:
        await api.close()
        server.close()
        for writer in accepted:
            writer.close()
        await server.wait_closed()
    with pytest.raises(ApiUnavailable) as refused:  # nothing listens there any more
        await Kube(connect_to(f"http://127.0.0.1:{port}", seconds=5)).get("default", "r")
    assert refused.value.status == 0


def connect_to(server: str, seconds: float) -> ApiServer:
    return ApiServer(Endpoint(server, None, None, "default"), seconds)


async def test_the_lease_is_created_then_replaced_on_its_version(kube: Kube, place: str) -> None:
    assert await kube.lease(place, "l", 5) is None
    spec = {"holderIdentity": "a", "leaseDurationSeconds": 15}
    await kube.write_lease(place, "l", spec, None, 5)
    with pytest.raises(Conflict):  # another operator created it first
        await kube.write_lease(place, "l", spec, None, 5)
    lease = await kube.lease(place, "l", 5)
    assert lease is not None and lease["spec"]["holderIdentity"] == "a"
    version = lease["metadata"]["resourceVersion"]
    await kube.write_lease(place, "l", {**spec, "holderIdentity": "b"}, version, 5)
    with pytest.raises(Conflict):  # written since that version
        await kube.write_lease(place, "l", spec, version, 5)


async def test_delete_keeps_an_object_of_another_uid(kube: Kube, place: str) -> None:
    made = await created(kube, place, [])
    with pytest.raises(KubeError) as refused:
        await kube.delete(place, "r", str(uuid.uuid4()))
    assert refused.value.status == 409
    await kube.delete(place, "r", made["metadata"]["uid"])
    with pytest.raises(Gone):
        await kube.get(place, "r")


GENERATED_LOADED = (
    "import sys\n"
    "print(sorted(m for m, v in sys.modules.items() if m.startswith('kubernetes') and v))"
)


@pytest.mark.parametrize(
    "entry",
    [
        # The operator's entry point imports Kopf and the handlers before it reads its
        # arguments (`--help`: then it exits).
        "from celery_taskrun.engine import main\n"
        "try:\n    main.main(['--help'])\nexcept SystemExit:\n    pass\n",
        # The gateway's: its command, its app and every route built (uvicorn not run).
        "from celery_taskrun.gateway import main\n"
        "main.create_app(settings=main.settings_of(main.parse_args([])))\n",
        # The CLI's: every command's module (it connects only once a command runs).
        "from celery_taskrun.cli import main\n"
        "try:\n    main.main(['get', '--help'])\nexcept SystemExit:\n    pass\n",
    ],
    ids=["operator", "gateway", "cli"],
)
async def test_no_process_of_ours_imports_a_generated_client(entry: str) -> None:
    """What each of our processes loads, though the generated clients are installed
    (the tests use one)."""
    found = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", entry + GENERATED_LOADED],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert found.stdout.strip().splitlines()[-1] == "[]", found.stdout


def echoes_dropped(metrics_url: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=5) as answer:
        text = answer.read().decode()
    found = re.search(r"^taskrun_watch_echoes_total ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_the_echoes_of_the_operators_writes_are_dropped(
    runs: TaskRuns, operator: ManagedProcess
) -> None:
    """The shared operator's own writes come back unhandled; its runs still end.  An
    echo that arrives before its write's answer is handled as any event: of 10 runs'
    30 writes, some are dropped."""
    url = operator.url or ""
    before = await asyncio.to_thread(echoes_dropped, url)
    for i in range(10):
        runs.apply(f"sum{i}", "calculate_sum", args=[[i, 2]])
    for i in range(10):
        done = await asyncio.to_thread(runs.finished, f"sum{i}")
        assert (done["phase"], done["result"]) == ("Succeeded", i + 2)
    await asyncio.to_thread(
        wait_for, lambda: echoes_dropped(url) > before, timeout=30, what="echoes dropped"
    )
    for i in range(10):  # each labelled finished as its finalizer came off
        await asyncio.to_thread(
            wait_for,
            lambda i=i: (
                (runs.get(f"sum{i}")["metadata"].get("labels") or {}).get(FINISHED) == "Succeeded"
            ),
            timeout=30,
            what=f"sum{i} labelled",
        )


async def test_a_finished_label_leaves_the_watch_with_the_writes_own_version(
    kube: Kube, place: str
) -> None:
    """What `engine/echoes.py` relies on: the write that labels a run finished reaches
    a watch selecting unfinished runs as a DELETED event carrying that write's
    resourceVersion (so it is known for an echo, not taken for a deletion)."""
    meta = (await created(kube, place, [FINALIZER]))["metadata"]
    await touched(kube, place)
    query = {
        "watch": "true",
        "labelSelector": f"!{FINISHED}",
        "resourceVersion": meta["resourceVersion"],
        "timeoutSeconds": 10,
    }
    path = objects(place)

    async def deleted() -> dict[str, Any]:
        async with kube.api.session().get(
            kube.api.endpoint.server + path,
            params=query,
            headers={"Authorization": f"Bearer {kube.api.endpoint.bearer.current()}"}
            if kube.api.endpoint.bearer
            else {},
        ) as answer:
            async for line in answer.content:
                event: dict[str, Any] = json.loads(line)
                if event["type"] == "DELETED":
                    return event
        raise AssertionError("no DELETED event")

    watching = asyncio.create_task(deleted())
    version = await kube.release(meta, FINALIZER, (FINISHED, "Succeeded"))
    event = await asyncio.wait_for(watching, 15)
    assert event["object"]["metadata"]["resourceVersion"] == version
    assert (await kube.get(place, "r"))["metadata"]["uid"] == meta["uid"]  # not gone
