"""The generated client's way to the API server, for the gateway and the CLI (the
operator speaks through `apiserver.py`): `connect` finds the credentials, `guarded`
makes each call within a timeout and turns its failure into a `KubeError`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable
from typing import TypeVar

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from celery_taskrun.clients.apiserver import kubeconfig_paths, pod_namespace
from celery_taskrun.clients.errors import KubeError, refused, unreachable

T = TypeVar("T")


async def guarded(call: Awaitable[T], seconds: float) -> T:
    """Await one API call (or a read of its answer) within `seconds`; its failure as a
    KubeError."""
    try:
        async with asyncio.timeout(seconds):
            return await call
    except ApiException as exc:
        raise refused(int(exc.status or 0), str(exc.reason or ""), exc.body) from exc
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise unreachable(exc) from exc


async def connect(
    kubeconfig: str | None = None, context: str | None = None
) -> tuple[client.ApiClient, str]:
    """A client with the caller's credentials, and the namespace of their current context.

    Like kubectl: --kubeconfig, else $KUBECONFIG, else ~/.kube/config; inside a pod
    without any, the pod's ServiceAccount. Raises KubeError when none works.
    """
    wanted = kubeconfig_paths(kubeconfig, os.environ)
    paths = [p for p in wanted if p.is_file()]
    try:
        if paths:
            joined = os.pathsep.join(str(p) for p in paths)
            contexts, current = config.list_kube_config_contexts(joined)
            chosen = current
            if context:
                chosen = next((c for c in contexts if c.get("name") == context), None)
                if chosen is None:
                    raise KubeError(0, "NoContext", f"context {context!r} not in the kubeconfig")
            namespace = ((chosen or {}).get("context") or {}).get("namespace") or "default"
            api = await config.new_client_from_config(
                config_file=joined, context=context, persist_config=False
            )
            return api, str(namespace)
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException as exc:
        where = " ".join(map(str, paths or wanted))
        raise KubeError(0, "NoConfig", f"no usable kubeconfig ({where}): {exc}") from exc
    return client.ApiClient(configuration), pod_namespace()
