"""How a call to the API server fails: one `KubeError`, typed by what its caller can do.

Each carries the HTTP status (0 when the API server was never heard from), the
Status's reason, and its message (bounded: it may travel to a user).  The operator
acts on the class (`Gone`: forget the object; `Conflict`: read it again;
`TooLarge`, `Invalid`: write something else; `ApiUnavailable`: try again later); the
gateway and the CLI answer by the status.
"""

from __future__ import annotations

import json

# Bounded copies of the API server's refusal.
MAX_REASON = 100
MAX_MESSAGE = 1000


class KubeError(Exception):
    """The API server refused (status >= 400) or could not be used (status 0)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(status, reason, message)
        self.status = status
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message or self.reason


class Gone(KubeError):
    """The object no longer exists (404), or the version asked for is gone (410)."""


class Conflict(KubeError):
    """Someone else changed the object first (409): read it again."""


class TooLarge(KubeError):
    """The request was refused for its size (413, or etcd's request limit)."""


class Invalid(KubeError):
    """The API server refused the content (422): retrying it as is cannot help."""


class ApiUnavailable(KubeError):
    """Unreachable, timed out, or refused for a reason worth retrying."""


class Forbidden(ApiUnavailable):
    """Refused by RBAC (403): worth retrying, as a role may be granted meanwhile."""


def refused(status: int, reason: str, body: str | bytes | None) -> KubeError:
    """The KubeError of a refused request, with the reason and message of the API
    server's Status when the body is one."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else body or ""
    message = ""
    try:
        parsed = json.loads(text) if text else {}
    except ValueError:
        parsed = {}
    if isinstance(parsed, dict):
        reason = str(parsed.get("reason") or reason)
        message = str(parsed.get("message") or "")
    return _kind(status, text)(status, reason[:MAX_REASON], message[:MAX_MESSAGE])


def _kind(status: int, text: str) -> type[KubeError]:
    if status in (404, 410):
        return Gone
    if status == 409:
        return Conflict
    # etcd refuses an oversized write as an internal error; only its words tell.
    if status == 413 or (status == 500 and ("too large" in text or "larger than max" in text)):
        return TooLarge
    if status == 422:
        return Invalid
    if status == 403:
        return Forbidden
    return ApiUnavailable


def unreachable(exc: BaseException) -> ApiUnavailable:
    """The API server was not heard from (connection refused, reset, timed out)."""
    why = type(exc).__name__
    return ApiUnavailable(0, "Unreachable", f"the API server could not be reached ({why})")
