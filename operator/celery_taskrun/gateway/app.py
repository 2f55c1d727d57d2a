"""The gateway: the seed's task API (submit, status, wait, stream) with TaskRuns as store.

An application in the cluster gets the operator's guarantees without speaking
Kubernetes: it POSTs a spec, follows the run by `wait` or a WebSocket, cancels it.
Identity and rights are Kubernetes' own (see auth.py); the gateway then acts with its
own ServiceAccount. Waits and streams follow the API server's watch (one per namespace,
shared: watches.py), never a loop of reads. This module assembles the app: its errors,
its routes (routes.py), its streams (streams.py), its metrics and the live page.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import make_asgi_app
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from celery_taskrun.clients.apiserver import ApiServer, connect
from celery_taskrun.clients.errors import KubeError
from celery_taskrun.clients.taskruns import REQUEST_TIMEOUT, TaskRunClient
from celery_taskrun.gateway.admission import Admission
from celery_taskrun.gateway.auth import Authorizer, Refused
from celery_taskrun.gateway.routes import add_routes
from celery_taskrun.gateway.state import Gateway, Settings, kube_problem, problem
from celery_taskrun.gateway.streams import add_streams
from celery_taskrun.gateway.wait_path import WaitPath

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

Connector = Callable[[], Awaitable[ApiServer]]


def create_app(connector: Connector | None = None, settings: Settings | None = None) -> FastAPI:
    """The ASGI app; `connector` makes the gateway's own API client (default: its
    kubeconfig or in-cluster ServiceAccount, as `connect` finds them)."""
    settings = settings or Settings()

    async def default_connector() -> ApiServer:
        return connect(seconds=REQUEST_TIMEOUT)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        api = await (connector or default_connector)()
        auth = Authorizer(api, settings.audiences)
        app.state.gateway = gateway = Gateway(TaskRunClient(api), auth, settings)
        # What is loaded by now (modules, the app) lives as long as the process: kept
        # out of the collector's full passes, which 10,000 held waits make long enough
        # (hundreds of ms) to delay the answers due meanwhile.
        gc.freeze()
        try:
            yield
        finally:
            await gateway.watches.close()
            await api.close()

    app = FastAPI(
        title="celery-taskrun gateway",
        version=_version(),
        description="The seed's task API (submit, status, wait, stream, cancel) over "
        "TaskRuns. Authenticate with a Kubernetes bearer token; each action is "
        "authorized by RBAC on `taskruns` in the namespace.",
        lifespan=lifespan,
    )
    # Outermost last: Admission reviews the token, then a wait takes its short path.
    app.add_middleware(WaitPath)
    app.add_middleware(Admission)
    _errors(app)
    add_routes(app)
    add_streams(app)
    _page(app)
    return app


def _version() -> str:
    try:
        return version("celery-taskrun")
    except PackageNotFoundError:
        return "0"


def _errors(app: FastAPI) -> None:
    @app.exception_handler(KubeError)
    async def kube_error(request: Request, exc: KubeError) -> JSONResponse:
        return kube_problem(request.method, request.url.path, exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400:
            # A body that is not JSON at all (not even UTF-8): one kind of refusal, 422.
            detail = [{"loc": ["body"], "msg": "the body is not JSON", "type": "json_invalid"}]
            return problem(422, detail)
        return await http_exception_handler(request, exc)

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> JSONResponse:
        return problem(exc.status, str(exc), exc.headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return problem(500, "internal error")


def _page(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    # The gateway's figures (watches held, followers): counts only, no tenant's names.
    app.mount("/metrics", make_asgi_app())
    app.add_middleware(NoSniffing)


class NoSniffing:
    """Every HTTP answer says `X-Content-Type-Options: nosniff`. Plain ASGI: Starlette's
    `@app.middleware` costs each open request (10,000 waits) a task group and streams."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).setdefault("X-Content-Type-Options", "nosniff")
            await send(message)

        await self.app(scope, receive, sending)
