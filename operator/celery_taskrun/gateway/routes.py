"""The HTTP routes: submit, list, status, wait and cancel, each authorized by RBAC on
`taskruns` in the namespace (auth.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from celery_taskrun.api.cron import PLURAL as CRON_PLURAL
from celery_taskrun.api.model import Phase
from celery_taskrun.clients.paging import continue_of
from celery_taskrun.gateway import views
from celery_taskrun.gateway.auth import Caller, Verb
from celery_taskrun.gateway.state import gateway_of
from celery_taskrun.gateway.wait_path import (
    DEFAULT_WAIT_SECONDS,
    MAX_WAIT_SECONDS,
    WaitRequest,
    answer,
)

log = logging.getLogger(__name__)

LIST_LIMIT = 100

Namespace = Annotated[
    str, PathParam(pattern=views.NAMESPACE_PATTERN, max_length=63, description="A namespace.")
]
Name = Annotated[
    str,
    PathParam(pattern=views.NAME_PATTERN, max_length=views.NAME_MAX, description="A TaskRun."),
]
PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {"model": views.Problem, "description": text}
    for code, text in (
        (401, "No bearer token, or the API server does not know it."),
        (403, "RBAC does not allow this on taskruns in the namespace."),
        (503, "The Kubernetes API is unavailable, or too many waits and streams are open."),
    )
}
ON_A_RUN: dict[int | str, dict[str, Any]] = {
    **PROBLEMS,
    404: {"model": views.Problem, "description": "No such TaskRun."},
}

# Declares the scheme in the OpenAPI document; the token was reviewed by admission.py.
bearer_scheme = HTTPBearer(
    auto_error=False, description="A Kubernetes bearer token (a ServiceAccount's, or a user's)."
)


async def caller(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]
) -> Caller:
    who: Caller = request.state.caller
    return who


def on_namespace(verb: Verb) -> Callable[..., Coroutine[Any, Any, Caller]]:
    async def dependency(
        request: Request, namespace: Namespace, who: Annotated[Caller, Depends(caller)]
    ) -> Caller:
        await gateway_of(request).auth.authorize(who, verb, namespace)
        return who

    return dependency


def on_schedules(verb: Verb) -> Callable[..., Coroutine[Any, Any, Caller]]:
    async def dependency(
        request: Request, namespace: Namespace, who: Annotated[Caller, Depends(caller)]
    ) -> Caller:
        await gateway_of(request).auth.authorize(who, verb, namespace, resource=CRON_PLURAL)
        return who

    return dependency


def on_run(verb: Verb) -> Callable[..., Coroutine[Any, Any, Caller]]:
    async def dependency(
        request: Request,
        namespace: Namespace,
        name: Name,
        who: Annotated[Caller, Depends(caller)],
    ) -> Caller:
        await gateway_of(request).auth.authorize(who, verb, namespace, name)
        return who

    return dependency


def add_routes(app: FastAPI) -> None:
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
        created = await gateway_of(request).runs.create(namespace, body.spec(), name=body.name)
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
        # `limit` runs read a page at a time, each page summarized and dropped: the
        # gateway never holds more than a page of whole runs, whatever `limit` asks.
        items, token = [], None
        pages = gateway_of(request).runs.pages(
            namespace, limit=limit, label_selector=labelSelector, continue_token=continue_
        )
        async for page in pages:
            items += [
                views.summary(obj)
                for obj in page.get("items") or []
                if views.matches(obj, phase or (), task)
            ]
            token = continue_of(page)
        return JSONResponse({"items": items, "continue": token})

    @app.get(
        f"{views.API}/namespaces/{{namespace}}/crontaskruns",
        response_model=views.ScheduleList,
        responses=PROBLEMS,
        summary="List CronTaskRuns: each schedule with its last and next run",
    )
    async def list_schedules(
        request: Request,
        namespace: Namespace,
        who: Annotated[Caller, Depends(on_schedules(Verb.LIST))],
        limit: Annotated[int, Query(ge=1, le=500)] = LIST_LIMIT,
        continue_: Annotated[str | None, Query(alias="continue", max_length=4096)] = None,
    ) -> JSONResponse:
        # Paged like the runs: a template holds a TaskRun spec, as large as one.
        items, token = [], None
        pages = gateway_of(request).runs.pages(
            namespace, limit=limit, continue_token=continue_, plural=CRON_PLURAL
        )
        async for page in pages:
            items += [views.schedule_summary(obj) for obj in page.get("items") or []]
            token = continue_of(page)
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
        return JSONResponse(views.run_view(await gateway_of(request).runs.get(namespace, name)))

    @app.get(
        f"{one}/wait",
        response_model=views.RunView,
        responses={
            **ON_A_RUN,
            429: {
                "model": views.Problem,
                "description": "The caller has as many waits and streams open as one may.",
            },
        },
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
    ) -> Response:
        # Most waits never come here (wait_path.py): those the short path leaves.
        return await answer(gateway_of(request), who, WaitRequest(namespace, name, seconds))

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
        obj = await gateway_of(request).runs.cancel(namespace, name)
        log.info("%s cancelled taskrun %s/%s", who.username, namespace, name)
        return JSONResponse(views.run_view(obj))

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, bool]:
        return {"ok": True}
