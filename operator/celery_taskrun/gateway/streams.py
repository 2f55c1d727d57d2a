"""The WebSocket streams: a run's changes, or a namespace's, as JSON messages.

A stream is refused like an HTTP request (401, 403, 404, 429, 503), before the handshake
when it can be; after it, with an ERROR message and a close code of 4000 + the status,
the message as the close's reason. A stream outlives the token and rights it was opened
with, so it checks them again every `recheck_seconds`: a token expired or revoked, or a
RoleBinding taken away, closes it then (plus the reviews' few seconds of cache).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Coroutine
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from celery_taskrun.clients.errors import KubeError
from celery_taskrun.gateway import views
from celery_taskrun.gateway.auth import Caller, Refused, Verb, bearer_token, protocol_token
from celery_taskrun.gateway.state import Gateway, gateway_of, problem

# The live page's snapshot of a namespace.
LIVE_LIMIT = 500
# The subprotocol the page offers beside its token (the one the gateway selects).
SUBPROTOCOL = "taskrun.v1"
# WebSocket close codes: 4000 + the HTTP status that would have been sent.
WS_CLOSE_BASE = 4000
# A close frame's reason is at most 123 bytes.
MAX_CLOSE_REASON = 123


@dataclass(frozen=True)
class Access:
    """What a stream watches, and the token it was opened with."""

    gateway: Gateway
    token: str | None
    namespace: str
    name: str | None

    async def check(self) -> Caller:
        """The caller, if its token is valid and RBAC lets it watch; else Refused."""
        who = await self.gateway.auth.authenticate(self.token)
        await self.gateway.auth.authorize(who, Verb.WATCH, self.namespace, self.name)
        return who

    async def lapse(self) -> None:
        """Raises Refused once a periodic check is refused (never returns)."""
        while True:
            await asyncio.sleep(self.gateway.settings.recheck_seconds)
            await self.check()


async def _fail(
    ws: WebSocket, status: int, detail: Any, headers: dict[str, str] | None = None
) -> None:
    """Say no: before the handshake completes, as an HTTP response with that status
    (the WebSocket Denial Response extension); after, as one ERROR message and a close
    with 4000 + the status, and the detail as its reason."""
    if ws.application_state is WebSocketState.CONNECTING:
        if "websocket.http.response" in ws.scope.get("extensions", {}):
            await ws.send_denial_response(problem(status, detail, headers))
        else:
            await ws.close(WS_CLOSE_BASE + status)
    elif ws.client_state is WebSocketState.CONNECTED:
        reason = str(detail).encode()[:MAX_CLOSE_REASON].decode(errors="ignore")
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await ws.send_json({"type": "ERROR", "status": status, "detail": detail})
            await ws.close(WS_CLOSE_BASE + status, reason)


async def _refuse(ws: WebSocket, refusal: Refused) -> None:
    await _fail(ws, refusal.status, str(refusal), dict(refusal.headers))


async def _admit(ws: WebSocket, namespace: str, name: str | None) -> tuple[Access, Caller] | None:
    """Authenticate and authorize a handshake, from a header or (browsers) a subprotocol."""
    if not re.fullmatch(views.NAMESPACE_PATTERN, namespace) or (
        name is not None
        and (len(name) > views.NAME_MAX or not re.fullmatch(views.NAME_PATTERN, name))
    ):
        await _fail(ws, 422, "invalid namespace or name")
        return None
    offered = list(ws.scope.get("subprotocols") or [])
    token = bearer_token(ws.headers.get("authorization")) or protocol_token(offered)
    access = Access(gateway_of(ws), token, namespace, name)
    try:
        return access, await access.check()
    except Refused as exc:
        await _refuse(ws, exc)
        return None


async def _until_disconnect(ws: WebSocket) -> None:
    """Returns when the client goes away (anything it sends is ignored)."""
    while (await ws.receive())["type"] != "websocket.disconnect":
        pass


async def _serve(
    ws: WebSocket, access: Access, who: Caller, pump: Coroutine[Any, Any, None]
) -> None:
    """Accept, run `pump` until it ends, the client leaves or the caller's rights lapse,
    then close (1000 when the pump ended, else saying why)."""
    tasks: list[asyncio.Future[None]] = []
    try:
        with access.gateway.followers.hold(who):
            offered = list(ws.scope.get("subprotocols") or [])
            await ws.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
            sending = asyncio.ensure_future(pump)
            others = (_until_disconnect(ws), access.lapse())
            tasks = [sending, *(asyncio.ensure_future(other) for other in others)]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a lapse raises Refused; the pump, a KubeError
            if sending in done and ws.client_state is WebSocketState.CONNECTED:
                await ws.close(1000)
    except Refused as exc:
        await _refuse(ws, exc)
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


def add_streams(app: FastAPI) -> None:
    collection = f"{views.API}/namespaces/{{namespace}}/taskruns"

    @app.websocket(f"{collection}/{{name}}/stream")
    async def stream_run(ws: WebSocket, namespace: str, name: str) -> None:
        """The run now, then a message (a run view) per change; closed (1000) after the
        terminal one. Refused like the HTTP routes (401, 403, 404, 429) before the handshake."""
        admitted = await _admit(ws, namespace, name)
        if admitted is None:
            return
        access, who = admitted
        async with aclosing(access.gateway.watches.follow(namespace, name)) as versions:
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

            await _serve(ws, access, who, pump())

    @app.websocket(f"{collection}/stream")
    async def stream_namespace(ws: WebSocket, namespace: str) -> None:
        """The namespace live: a SNAPSHOT of summaries, then one message per change."""
        admitted = await _admit(ws, namespace, None)
        if admitted is None:
            return
        access, who = admitted

        async def pump() -> None:
            events = access.gateway.watches.follow_namespace(
                namespace, limit=LIVE_LIMIT, view=views.summary
            )
            async with aclosing(events) as changes:
                async for kind, payload in changes:
                    if isinstance(payload, list):
                        await ws.send_json({"type": kind, "items": payload})
                    else:
                        await ws.send_json({"type": kind, "run": payload})

        await _serve(ws, access, who, pump())
