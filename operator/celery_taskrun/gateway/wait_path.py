"""The wait (`GET .../namespaces/{namespace}/taskruns/{name}/wait`) answered before
FastAPI's routing: a wait is held for minutes, 10,000 at once, and a FastAPI request
held that long keeps its router's, its dependencies' and its exit stacks' frames and
objects (docs/benchmarks.md: most of the memory per wait). Here a held wait is its
ASGI call, its follower and its timer.

Only a request the FastAPI route would take as it is comes this way (a namespace and
a name of their patterns, at most one `timeout`, a plain number in range); any other
goes on to the route, which refuses it in its own words (422 and its details). The
answers are the route's: the same review, the same refusals, the same body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from celery_taskrun.clients.errors import KubeError
from celery_taskrun.gateway import views
from celery_taskrun.gateway.auth import Caller, Refused, Verb
from celery_taskrun.gateway.state import Gateway, kube_problem, problem

# The longest a `wait` may be asked to hold a request.
MAX_WAIT_SECONDS = 3600.0
DEFAULT_WAIT_SECONDS = 30.0

PATH = re.compile(rf"{views.API}/namespaces/([^/]+)/taskruns/([^/]+)/wait")
NAMESPACE = re.compile(views.NAMESPACE_PATTERN)
NAME = re.compile(views.NAME_PATTERN)
# A number as anyone writes one; an exponent, a sign or spaces go the FastAPI way.
SECONDS = re.compile(r"[0-9]{1,10}(\.[0-9]{1,10})?")


@dataclass(frozen=True)
class WaitRequest:
    namespace: str
    name: str
    seconds: float


def wait_request(method: str, path: str, query: bytes) -> WaitRequest | None:
    """The wait a request asks for, when it is one the route takes as it is (pure)."""
    found = PATH.fullmatch(path)
    if method != "GET" or found is None:
        return None
    namespace, name = found.groups()
    if not NAMESPACE.fullmatch(namespace) or len(name) > views.NAME_MAX:
        return None
    if not NAME.fullmatch(name):
        return None
    # As Starlette reads a query string.
    asked = [
        v for k, v in parse_qsl(query.decode("latin-1"), keep_blank_values=True) if k == "timeout"
    ]
    if not asked:
        return WaitRequest(namespace, name, DEFAULT_WAIT_SECONDS)
    if len(asked) > 1 or not SECONDS.fullmatch(asked[0]):
        return None
    seconds = float(asked[0])
    if seconds > MAX_WAIT_SECONDS:
        return None
    return WaitRequest(namespace, name, seconds)


async def answer(gateway: Gateway, caller: Caller, asked: WaitRequest) -> Response:
    """The wait's answer, once the caller may watch the run (the route's and the short
    path's)."""
    with gateway.followers.hold(caller):
        obj = await gateway.watches.wait(asked.namespace, asked.name, asked.seconds)
    return gateway.rendered.answer(obj)


class WaitPath:
    """Plain ASGI, inside `Admission` (which has reviewed the caller's token)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        asked = None
        if scope["type"] == "http":
            asked = wait_request(scope["method"], scope["path"], scope["query_string"])
        if asked is None:
            await self.app(scope, receive, send)
            return
        gateway: Gateway = scope["app"].state.gateway
        caller: Caller = scope["state"]["caller"]
        try:
            await gateway.auth.authorize(caller, Verb.WATCH, asked.namespace, asked.name)
            response = await answer(gateway, caller, asked)
        except Refused as exc:
            response = problem(exc.status, str(exc), exc.headers)
        except KubeError as exc:
            response = kube_problem(scope["method"], scope["path"], exc)
        await response(scope, receive, send)
