"""The operator's own Kubernetes client against the real API server: its finalizer
writes keep other controllers' finalizers and cost no refused write when the
operator's view of the object is merely stale."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from kubernetes_asyncio import client, config

from celery_taskrun.api.model import FINALIZER, GROUP, KIND, PLURAL, VERSION
from celery_taskrun.clients.kube import Kube
from taskrun_dev.stack import Stack

OTHER = "example.com/another-controller"
# The client lives on the loop of the fixture that made it.
pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
def place(make_namespace: Callable[[str], str]) -> str:
    """A namespace no operator follows."""
    return make_namespace("kube-client")


@pytest.fixture
async def kube(stack: Stack) -> AsyncIterator[Kube]:
    api = await config.new_client_from_config(str(stack.admin_kubeconfig))
    the_kube = Kube(api)
    yield the_kube
    await the_kube.close()


async def created(kube: Kube, namespace: str, finalizers: list[str]) -> dict[str, Any]:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": "r", "finalizers": finalizers},
        "spec": {"task": "x.y"},
    }
    made: dict[str, Any] = await kube.objects.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )
    return made


async def touched(kube: Kube, namespace: str) -> None:
    """Another write, which leaves any view taken before it stale."""
    await kube.patch_status(namespace, "r", {"message": uuid.uuid4().hex}, None, whole=True)


async def finalizers(kube: Kube, namespace: str) -> list[str]:
    found: list[str] = (await kube.get(namespace, "r"))["metadata"].get("finalizers") or []
    return found


async def test_removing_on_a_stale_view_writes_once(
    kube: Kube, place: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    meta = (await created(kube, place, [FINALIZER, OTHER]))["metadata"]
    await touched(kube, place)
    reads = []
    monkeypatch.setattr(kube, "get", lambda *a: reads.append(a))  # a refusal would read
    assert await kube.remove_finalizer(meta, FINALIZER) is not None
    assert reads == []
    monkeypatch.undo()
    assert await finalizers(kube, place) == [OTHER]
    assert await kube.remove_finalizer({**meta, "finalizers": [OTHER]}, FINALIZER) is None


async def test_removing_when_the_list_moved_keeps_the_others(kube: Kube, place: str) -> None:
    meta = (await created(kube, place, [FINALIZER]))["metadata"]
    patch = client.CustomObjectsApi(kube.api).patch_namespaced_custom_object
    await patch(
        GROUP, VERSION, place, PLURAL, "r", {"metadata": {"finalizers": [OTHER, FINALIZER]}},
        _content_type="application/merge-patch+json",
    )  # fmt: skip
    await kube.remove_finalizer(meta, FINALIZER)  # our view says index 0: tested, read again
    assert await finalizers(kube, place) == [OTHER]


async def test_adding_on_a_stale_view_keeps_what_another_added(kube: Kube, place: str) -> None:
    meta = (await created(kube, place, []))["metadata"]
    patch = client.CustomObjectsApi(kube.api).patch_namespaced_custom_object
    await patch(
        GROUP, VERSION, place, PLURAL, "r", {"metadata": {"finalizers": [OTHER]}},
        _content_type="application/merge-patch+json",
    )  # fmt: skip
    await kube.add_finalizer(meta, FINALIZER, {"note": "x"})  # a conflict, then read again
    body = await kube.get(place, "r")
    assert body["metadata"]["finalizers"] == [OTHER, FINALIZER]
    assert body["metadata"]["annotations"]["note"] == "x"
