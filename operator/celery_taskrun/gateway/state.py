"""What the gateway's modules share: its settings, the state its routes use
(`app.state.gateway`), and the shape of a refusal."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response

from celery_taskrun.api.bodies import TaskRunBody
from celery_taskrun.clients.errors import KubeError
from celery_taskrun.clients.taskruns import TaskRunClient
from celery_taskrun.gateway import views
from celery_taskrun.gateway.auth import Authorizer
from celery_taskrun.gateway.followers import MAX_FOLLOWERS, MAX_FOLLOWERS_PER_CALLER, Followers
from celery_taskrun.gateway.watches import LINGER_SECONDS, Watches

log = logging.getLogger(__name__)

# Versions of runs kept rendered: the waits of a run are answered within moments.
RENDERED = 16
# A stream's token and rights are checked again this often (seconds).
RECHECK_SECONDS = 60.0


@dataclass(frozen=True)
class Settings:
    max_followers: int = MAX_FOLLOWERS
    max_followers_per_caller: int = MAX_FOLLOWERS_PER_CALLER
    recheck_seconds: float = RECHECK_SECONDS
    # A namespace's watch stops this long after its last wait or stream ends.
    watch_linger_seconds: float = LINGER_SECONDS
    # The TokenReview audiences a caller's token must have one of; none: the API
    # server's own.
    audiences: tuple[str, ...] = ()


class Rendered:
    """Each version of a run rendered once (its view, as JSON), however many waits it
    answers: the waits of a run get the same object from the namespace's watch, and
    rendering it for each of 20 waits was most of a terminal event's cost."""

    def __init__(self, size: int = RENDERED) -> None:
        self.size = size
        # By the object's id; the object is kept, so its id is not reused meanwhile.
        self._items: OrderedDict[int, tuple[TaskRunBody, bytes]] = OrderedDict()

    def answer(self, obj: TaskRunBody) -> Response:
        key = id(obj)
        item = self._items.get(key)
        if item is not None and item[0] is obj:
            body = item[1]
        else:
            body = bytes(JSONResponse(views.run_view(obj)).body)
            self._items[key] = (obj, body)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        self._items.move_to_end(key)
        return Response(body, media_type=JSONResponse.media_type)


class Gateway:
    """What the routes share: the TaskRun client, the authorizer, the namespaces'
    watches and the open followers."""

    def __init__(self, runs: TaskRunClient, auth: Authorizer, settings: Settings) -> None:
        self.runs = runs
        self.auth = auth
        self.settings = settings
        self.watches = Watches(runs, settings.watch_linger_seconds)
        self.rendered = Rendered()
        self.followers = Followers(settings.max_followers, settings.max_followers_per_caller)


def gateway_of(connection: HTTPConnection) -> Gateway:
    """The gateway serving a request or a WebSocket."""
    gateway: Gateway = connection.app.state.gateway
    return gateway


def problem(status: int, detail: Any, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def kube_problem(method: str, path: str, exc: KubeError) -> JSONResponse:
    """The answer to a request the API server refused (or could not answer)."""
    status, detail = views.http_error(exc, "query" if method == "GET" else "body")
    if status >= 500:
        log.warning("%s %s: API server: %s", method, path, exc)
    return problem(status, detail)
