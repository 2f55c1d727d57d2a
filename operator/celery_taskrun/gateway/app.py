"""The gateway: the seed's task API (submit, status, wait, stream) with TaskRuns as store.

An application in the cluster gets the operator's guarantees without speaking
Kubernetes: it POSTs a spec, follows the run by `wait` or a WebSocket, cancels it.
Identity and rights are Kubernetes' own (see auth.py); the gateway then acts with its
own ServiceAccount. Waits and streams follow the API server's watch, never a loop of
reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import aclosing
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, WebSocket
from fastapi import Path as PathParam
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from kubernetes_asyncio import client
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect, WebSocketState

from celery_taskrun.api.model import Phase
from celery_taskrun.clients.errors import KubeError
from celery_taskrun.clients.taskruns import TaskRunClient, wait
from celery_taskrun.clients.transport import connect
from celery_taskrun.gateway import views
from celery_taskrun.gateway.auth import (
    Authorizer,
    Caller,
    Forbidden,
    ReviewUnavailable,
    Unauthenticated,
    Verb,
    bearer_token,
    protocol_token,
)

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
# A spec is at most 256 KiB of args and kwargs: a larger body is not a TaskRun.
MAX_BODY_BYTES = 1024 * 1024
# The longest a `wait` may be asked to hold a request.
MAX_WAIT_SECONDS = 3600.0
DEFAULT_WAIT_SECONDS = 30.0
# Waits and streams at once (each holds one watch on the API server).
MAX_FOLLOWERS = 1000
# The live page's snapshot of a namespace.
LIVE_LIMIT = 500
LIST_LIMIT = 100
# The subprotocol the page offers beside its token (the one the gateway selects).
SUBPROTOCOL = "taskrun.v1"
# WebSocket close codes: 4000 + the HTTP status that would have been sent.
WS_CLOSE_BASE = 4000
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

Namespace = Annotated[
    str, PathParam(pattern=views.NAMESPACE_PATTERN, max_length=63, description="A namespace.")
]
Name = Annotated[
    str,
    PathParam(pattern=views.NAME_PATTERN, max_length=views.NAME_MAX, description="A TaskRun."),
]
Connector = Callable[[], Awaitable[client.ApiClient]]
PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {"model": views.Problem, "description": text}
    for code, text in (
        (401, "No bearer token, or the API server does not know it."),
        (403, "RBAC does not allow this on taskruns in the namespace."),
        (503, "The Kubernetes API is unavailable, or too many waits are open."),
    )
}
ON_A_RUN: dict[int | str, dict[str, Any]] = {
    **PROBLEMS,
    404: {"model": views.Problem, "description": "No such TaskRun."},
}


class TooBusy(Exception):
    """MAX_FOLLOWERS waits and streams are open already."""


class Gateway:
    """What the routes share: the TaskRun client, the authorizer, the open followers."""

    def __init__(self, runs: TaskRunClient, auth: Authorizer, max_followers: int) -> None:
        self.runs = runs
        self.auth = auth
        self.max_followers = max_followers
        self.followers = 0

    @contextlib.asynccontextmanager
    async def following(self) -> AsyncIterator[None]:
        if self.followers >= self.max_followers:
            raise TooBusy()
        self.followers += 1
        try:
            yield
        finally:
            self.followers -= 1


class BodyLimit:
    """Refuse a request body over `limit` bytes (413) before anything parses it."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            size += len(message.get("body", b""))
            if size > self.limit:
                response = JSONResponse(
                    {"detail": f"the body is over {self.limit} bytes"}, status_code=413
                )
                await response(scope, receive, send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        await self.app(scope, _replay([{"type": "http.request", "body": body}], receive), send)


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        if then is None:
            return {"type": "http.disconnect"}
        return await then()

    return receive


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


# Declares the scheme in the OpenAPI document; the token is read by `caller` itself.
bearer_scheme = HTTPBearer(
    auto_error=False, description="A Kubernetes bearer token (a ServiceAccount's, or a user's)."
)


async def caller(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]
) -> Caller:
    try:
        return await _gateway(request).auth.authenticate(
            bearer_token(request.headers.get("authorization"))
        )
    except Unauthenticated as exc:
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from exc
    except ReviewUnavailable as exc:
        raise HTTPException(503, "credentials cannot be checked now; try again") from exc


async def _authorize(
    request: Request, who: Caller, verb: Verb, namespace: str, name: str | None
) -> None:
    try:
        await _gateway(request).auth.authorize(who, verb, namespace, name)
    except Forbidden as exc:
        raise HTTPException(403, str(exc)) from exc
    except ReviewUnavailable as exc:
        raise HTTPException(503, "permissions cannot be checked now; try again") from exc


def on_namespace(verb: Verb) -> Callable[..., Coroutine[Any, Any, Caller]]:
    async def dependency(
        request: Request, namespace: Namespace, who: Annotated[Caller, Depends(caller)]
    ) -> Caller:
        await _authorize(request, who, verb, namespace, None)
        return who

    return dependency


def on_run(verb: Verb) -> Callable[..., Coroutine[Any, Any, Caller]]:
    async def dependency(
        request: Request,
        namespace: Namespace,
        name: Name,
        who: Annotated[Caller, Depends(caller)],
    ) -> Caller:
        await _authorize(request, who, verb, namespace, name)
        return who

    return dependency


def create_app(
    connector: Connector | None = None, *, max_followers: int = MAX_FOLLOWERS
) -> FastAPI:
    """The ASGI app; `connector` makes the gateway's own API client (default: its
    kubeconfig or in-cluster ServiceAccount, as `connect` finds them)."""

    async def default_connector() -> client.ApiClient:
        api, _ = await connect()
        return api

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        api = await (connector or default_connector)()
        app.state.gateway = Gateway(TaskRunClient(api), Authorizer(api), max_followers)
        try:
            yield
        finally:
            await api.close()

    app = FastAPI(
        title="celery-taskrun gateway",
        version=_version(),
        description="The seed's task API (submit, status, wait, stream, cancel) over "
        "TaskRuns. Authenticate with a Kubernetes bearer token; each action is "
        "authorized by RBAC on `taskruns` in the namespace.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit)
    _errors(app)
    _routes(app)
    _streams(app)
    _page(app)
    return app


def _version() -> str:
    try:
        return version("celery-taskrun")
    except PackageNotFoundError:
        return "0"


def _problem(status: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _errors(app: FastAPI) -> None:
    @app.exception_handler(KubeError)
    async def kube_error(request: Request, exc: KubeError) -> JSONResponse:
        status, detail = views.http_error(exc, "query" if request.method == "GET" else "body")
        if status >= 500:
            log.warning("%s %s: API server: %s", request.method, request.url.path, exc)
        return _problem(status, detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400:
            # A body that is not JSON at all (not even UTF-8): one kind of refusal, 422.
            detail = [{"loc": ["body"], "msg": "the body is not JSON", "type": "json_invalid"}]
            return _problem(422, detail)
        return await http_exception_handler(request, exc)

    @app.exception_handler(TooBusy)
    async def too_busy(request: Request, exc: TooBusy) -> JSONResponse:
        return _problem(503, "too many waits open; try again", {"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return _problem(500, "internal error")


def _routes(app: FastAPI) -> None:
    collection = f"{views.API}/namespaces/{{namespace}}/taskruns"
    one = f"{collection}/{{name}}"

    @app.post(
        collection,
        status_code=201,
        response_model=views.Submitted,
        responses={
            **PROBLEMS,
            404: {"model": views.Problem, "description": "No such namespace."},
            409: {"model": views.Problem, "description": "A TaskRun of that name exists."},
            413: {"model": views.Problem, "description": "The body is too large."},
        },
        summary="Submit a task (the seed's delay()): create a TaskRun",
    )
    async def submit(
        request: Request,
        namespace: Namespace,
        body: views.SubmitRequest,
        who: Annotated[Caller, Depends(on_namespace(Verb.CREATE))],
    ) -> JSONResponse:
        created = await _gateway(request).runs.create(namespace, body.spec(), name=body.name)
        name = str(created["metadata"]["name"])
        links = views.urls(namespace, name)
        log.info("%s created taskrun %s/%s", who.username, namespace, name)
        return JSONResponse(
            {"name": name, "namespace": namespace, **links},
            status_code=201,
            headers={"Location": links["statusUrl"]},
        )

    @app.get(
        collection,
        response_model=views.RunList,
        responses=PROBLEMS,
        summary="List TaskRuns (summaries), filtered by phase and task",
    )
    async def list_runs(
        request: Request,
        namespace: Namespace,
        who: Annotated[Caller, Depends(on_namespace(Verb.LIST))],
        phase: Annotated[list[Phase] | None, Query(description="Any of these phases.")] = None,
        task: Annotated[
            str | None, Query(max_length=256, description="A task name or glob.")
        ] = None,
        labelSelector: Annotated[str | None, Query(max_length=1024)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = LIST_LIMIT,
        continue_: Annotated[str | None, Query(alias="continue", max_length=4096)] = None,
    ) -> JSONResponse:
        page = await _gateway(request).runs.page(
            namespace, limit=limit, label_selector=labelSelector, continue_token=continue_
        )
        items = [
            views.summary(obj)
            for obj in page.get("items") or []
            if views.matches(obj, phase or (), task)
        ]
        token = (page.get("metadata") or {}).get("continue") or None
        return JSONResponse({"items": items, "continue": token})

    @app.get(
        one,
        response_model=views.RunView,
        responses=ON_A_RUN,
        summary="A TaskRun's status (the seed's /tasks/{id}/status)",
    )
    async def get_run(
        request: Request,
        namespace: Namespace,
        name: Name,
        who: Annotated[Caller, Depends(on_run(Verb.GET))],
    ) -> JSONResponse:
        return JSONResponse(views.run_view(await _gateway(request).runs.get(namespace, name)))

    @app.get(
        f"{one}/wait",
        response_model=views.RunView,
        responses=ON_A_RUN,
        summary="Wait for the end (the seed's get(timeout)): `finished` says whether it came",
    )
    async def wait_run(
        request: Request,
        namespace: Namespace,
        name: Name,
        who: Annotated[Caller, Depends(on_run(Verb.WATCH))],
        seconds: Annotated[
            float,
            Query(
                alias="timeout",
                ge=0,
                le=MAX_WAIT_SECONDS,
                allow_inf_nan=False,
                description="Seconds to wait at most; then the current state, finished false.",
            ),
        ] = DEFAULT_WAIT_SECONDS,
    ) -> JSONResponse:
        gateway = _gateway(request)
        async with gateway.following():
            obj, _ = await wait(gateway.runs, namespace, name, seconds)
        return JSONResponse(views.run_view(obj))

    @app.post(
        f"{one}/cancel",
        response_model=views.RunView,
        responses=ON_A_RUN,
        summary="Cancel (revoke) the task: spec.cancel true",
    )
    async def cancel_run(
        request: Request,
        namespace: Namespace,
        name: Name,
        who: Annotated[Caller, Depends(on_run(Verb.PATCH))],
    ) -> JSONResponse:
        obj = await _gateway(request).runs.cancel(namespace, name)
        log.info("%s cancelled taskrun %s/%s", who.username, namespace, name)
        return JSONResponse(views.run_view(obj))

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, bool]:
        return {"ok": True}


async def _fail(ws: WebSocket, status: int, detail: Any) -> None:
    """Say no: before the handshake completes, as an HTTP response with that status
    (the WebSocket Denial Response extension); after, as one ERROR message and a close
    with 4000 + the status."""
    if ws.application_state is WebSocketState.CONNECTING:
        if "websocket.http.response" in ws.scope.get("extensions", {}):
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            await ws.send_denial_response(_problem(status, detail, headers))
        else:
            await ws.close(WS_CLOSE_BASE + status)
    elif ws.client_state is WebSocketState.CONNECTED:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await ws.send_json({"type": "ERROR", "status": status, "detail": detail})
            await ws.close(WS_CLOSE_BASE + status)


async def _admit(ws: WebSocket, verb: Verb, namespace: str, name: str | None) -> Gateway | None:
    """Authenticate and authorize a handshake, from a header or (browsers) a subprotocol."""
    gateway: Gateway = ws.app.state.gateway
    valid = re.fullmatch(views.NAMESPACE_PATTERN, namespace) and (
        name is None or (len(name) <= views.NAME_MAX and re.fullmatch(views.NAME_PATTERN, name))
    )
    offered = list(ws.scope.get("subprotocols") or [])
    token = bearer_token(ws.headers.get("authorization")) or protocol_token(offered)
    try:
        if not valid:
            await _fail(ws, 422, "invalid namespace or name")
            return None
        who = await gateway.auth.authenticate(token)
        await gateway.auth.authorize(who, verb, namespace, name)
    except Unauthenticated as exc:
        await _fail(ws, 401, str(exc))
        return None
    except Forbidden as exc:
        await _fail(ws, 403, str(exc))
        return None
    except ReviewUnavailable:
        await _fail(ws, 503, "credentials cannot be checked now; try again")
        return None
    return gateway


async def _until_disconnect(ws: WebSocket) -> None:
    """Returns when the client goes away (anything it sends is ignored)."""
    while (await ws.receive())["type"] != "websocket.disconnect":
        pass


async def _serve(ws: WebSocket, gateway: Gateway, pump: Coroutine[Any, Any, None]) -> None:
    """Accept, run `pump` until it ends or the client leaves, then close (1000 when the
    pump ended, else saying why)."""
    tasks: list[asyncio.Future[None]] = []
    try:
        async with gateway.following():
            offered = list(ws.scope.get("subprotocols") or [])
            await ws.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
            sending = asyncio.ensure_future(pump)
            tasks = [sending, asyncio.ensure_future(_until_disconnect(ws))]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if sending in done:
                sending.result()
                if ws.client_state is WebSocketState.CONNECTED:
                    await ws.close(1000)
    except TooBusy:
        await _fail(ws, 503, "too many streams open; try again")
    except KubeError as exc:
        await _fail(ws, *views.http_error(exc))
    except (WebSocketDisconnect, ConnectionError):
        pass
    finally:
        if not tasks:
            pump.close()  # never started
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _streams(app: FastAPI) -> None:
    collection = f"{views.API}/namespaces/{{namespace}}/taskruns"

    @app.websocket(f"{collection}/{{name}}/stream")
    async def stream_run(ws: WebSocket, namespace: str, name: str) -> None:
        """The run now, then a message (a run view) per change; closed (1000) after the
        terminal one. Refused like the HTTP routes (401, 403, 404) before the handshake."""
        gateway = await _admit(ws, Verb.WATCH, namespace, name)
        if gateway is None:
            return
        async with aclosing(gateway.runs.follow(namespace, name)) as versions:
            try:
                first = await anext(versions)
            except KubeError as exc:
                await _fail(ws, *views.http_error(exc))
                return

            async def pump() -> None:
                last = None
                obj = first
                while True:
                    view = views.run_view(obj)
                    seen = (view["spec"], view["status"])
                    if seen != last:
                        await ws.send_json(view)
                        last = seen
                    if view["finished"]:
                        return
                    obj = await anext(versions)

            await _serve(ws, gateway, pump())

    @app.websocket(f"{collection}/stream")
    async def stream_namespace(ws: WebSocket, namespace: str) -> None:
        """The namespace live: a SNAPSHOT of summaries, then one message per change."""
        gateway = await _admit(ws, Verb.WATCH, namespace, None)
        if gateway is None:
            return

        async def pump() -> None:
            events = gateway.runs.follow_namespace(namespace, limit=LIVE_LIMIT)
            async with aclosing(events) as changes:
                async for kind, payload in changes:
                    if isinstance(payload, list):
                        items = [views.summary(obj) for obj in payload]
                        await ws.send_json({"type": kind, "items": items})
                    else:
                        await ws.send_json({"type": kind, "run": views.summary(payload)})

        await _serve(ws, gateway, pump())


def _page(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.middleware("http")
    async def no_sniffing(request: Request, call_next: Callable[..., Any]) -> Response:
        response: Response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response
