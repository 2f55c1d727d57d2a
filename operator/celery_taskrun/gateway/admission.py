"""What an API request passes before any route sees it: its bearer token is reviewed
before a byte of its body is read (an anonymous upload costs its headers, never a
megabyte read and decoded), then its body is bounded (413). The caller goes into the
request's state (`caller`), where the routes take it."""

from __future__ import annotations

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from celery_taskrun.gateway import views
from celery_taskrun.gateway.auth import Refused, bearer_token
from celery_taskrun.gateway.state import gateway_of, problem

# A spec is at most 256 KiB of args and kwargs: a larger body is not a TaskRun.
MAX_BODY_BYTES = 1024 * 1024
# A refused request's body is never read: the connection is closed rather than drained.
UNREAD = {"Connection": "close"}


class Admission:
    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(f"{views.API}/"):
            await self.app(scope, receive, send)
            return
        request = HTTPConnection(scope)
        try:
            token = bearer_token(request.headers.get("authorization"))
            request.state.caller = await gateway_of(request).auth.authenticate(token)
        except Refused as exc:
            await problem(exc.status, str(exc), {**exc.headers, **UNREAD})(scope, receive, send)
            return
        if scope["method"] in ("POST", "PUT", "PATCH"):
            bounded = await _read_body(receive, self.limit)
            if bounded is None:
                refusal = problem(413, f"the body is over {self.limit} bytes", UNREAD)
                await refusal(scope, receive, send)
                return
            receive = bounded
        await self.app(scope, receive, send)


async def _read_body(receive: Receive, limit: int) -> Receive | None:
    """`receive` replaying the body once read whole, or None when it is over `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return _replay([message])
        size += len(message.get("body", b""))
        if size > limit:
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return _replay([{"type": "http.request", "body": b"".join(chunks)}], receive)


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        if then is None:
            return {"type": "http.disconnect"}
        return await then()

    return receive
