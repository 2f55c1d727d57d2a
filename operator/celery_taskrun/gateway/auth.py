"""Who calls, and may they: Kubernetes' own answers (TokenReview, SubjectAccessReview).

The caller's bearer token is reviewed by the API server; each action is then asked of
the API server's authorizer as a SubjectAccessReview on `taskruns` in the namespace,
so who may do what through the gateway is plain RBAC. Answers are cached briefly (a
few seconds, bounded), as the API server's own webhook authenticator does.

With audiences configured, a token is accepted only when it was issued for one of them
(a token minted for the gateway cannot be replayed against the API server, nor the
API server's tokens against the gateway).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Generic, TypeVar

from celery_taskrun.api.model import GROUP, PLURAL
from celery_taskrun.clients.apiserver import ApiServer, Method, decoded
from celery_taskrun.clients.errors import KubeError
from celery_taskrun.clients.taskruns import REQUEST_TIMEOUT

log = logging.getLogger(__name__)

# A ServiceAccount token is ~1 KiB; anything far longer is not a token.
MAX_TOKEN_BYTES = 16 * 1024
# Kubernetes' own WebSocket convention (kubectl exec from a browser): the token rides in
# a subprotocol, since browsers cannot set headers on a WebSocket.
TOKEN_PROTOCOL_PREFIX = "base64url.bearer.authorization.k8s.io."
AUTHENTICATION_TTL = 10.0
AUTHORIZATION_TTL = 5.0
CACHE_SIZE = 4096
TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"


class Verb(StrEnum):
    GET = "get"
    LIST = "list"
    WATCH = "watch"
    CREATE = "create"
    PATCH = "patch"


class Refused(Exception):
    """A request the gateway refuses: answered with `status`, `headers` and the message."""

    status: ClassVar[int]
    headers: ClassVar[Mapping[str, str]] = {}


class Unauthenticated(Refused):
    """No token, or the API server does not know it (for the audiences): 401."""

    status = 401
    headers: ClassVar[Mapping[str, str]] = {"WWW-Authenticate": "Bearer"}


class Forbidden(Refused):
    """Authenticated, but RBAC does not allow the action: 403."""

    status = 403


class ReviewUnavailable(Refused):
    """The API server could not answer a review: 503, never an allow."""

    status = 503


@dataclass(frozen=True)
class Caller:
    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if well formed."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_BYTES:
        return None
    return token


def protocol_token(protocols: Sequence[str]) -> str | None:
    """The token a browser sends as the subprotocol `base64url.bearer.authorization.k8s.io.X`."""
    for protocol in protocols:
        if protocol.startswith(TOKEN_PROTOCOL_PREFIX):
            encoded = protocol[len(TOKEN_PROTOCOL_PREFIX) :]
            if len(encoded) > MAX_TOKEN_BYTES * 2:
                return None
            try:
                raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
                return bearer_token("Bearer " + raw.decode("ascii"))
            except (binascii.Error, ValueError):
                return None
    return None


K = TypeVar("K")
V = TypeVar("V")


@dataclass
class TtlCache(Generic[K, V]):
    """At most `size` entries, each good for `ttl` seconds of the given clock (pure)."""

    ttl: float
    size: int = CACHE_SIZE
    _items: OrderedDict[K, tuple[float, V]] = field(default_factory=OrderedDict)

    def get(self, key: K, now: float) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        expires, value = item
        if now >= expires:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V, now: float) -> None:
        self._items[key] = (now + self.ttl, value)
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def caller_from_review(status: Any, audiences: Sequence[str] = ()) -> Caller | None:
    """The user of a TokenReview's status (as the API server sent it: any JSON), None
    when not authenticated (for one of `audiences`, when asked)."""
    status = _mapping(status)
    user = status.get("user")
    if status.get("authenticated") is not True or not isinstance(user, Mapping):
        return None
    # An authenticator that ignores audiences answers none: then the token is one for
    # the API server, not for the audiences asked (the TokenReview API's own rule).
    if audiences and not set(_strings(status.get("audiences"))) & set(audiences):
        return None
    extra = _mapping(user.get("extra"))
    return Caller(
        username=str(user.get("username") or ""),
        uid=str(user.get("uid") or ""),
        groups=_strings(user.get("groups")),
        extra=tuple(sorted((str(k), _strings(vs)) for k, vs in extra.items())),
    )


def access_review(
    caller: Caller, verb: Verb, namespace: str, name: str | None, resource: str = PLURAL
) -> dict[str, Any]:
    """The SubjectAccessReview body for `caller` doing `verb` on `resource` (pure)."""
    attributes: dict[str, Any] = {
        "namespace": namespace,
        "verb": verb.value,
        "group": GROUP,
        "resource": resource,
    }
    if name:
        attributes["name"] = name
    spec: dict[str, Any] = {
        "user": caller.username,
        "groups": list(caller.groups),
        "resourceAttributes": attributes,
    }
    if caller.uid:
        spec["uid"] = caller.uid
    if caller.extra:
        spec["extra"] = {key: list(values) for key, values in caller.extra}
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}


class Authorizer:
    """Reviews with the gateway's own identity (it may create both kinds of review)."""

    def __init__(
        self,
        api: ApiServer,
        audiences: Sequence[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ):
        self.api = api
        self.audiences = list(audiences)
        self.clock = clock
        # A 1-tuple, so that "not authenticated" (None) is cached too.
        self._callers: TtlCache[str, tuple[Caller | None]] = TtlCache(AUTHENTICATION_TTL)
        self._decisions: TtlCache[tuple[Caller, Verb, str, str | None, str], bool] = TtlCache(
            AUTHORIZATION_TTL
        )

    async def _review(self, path: str, body: Mapping[str, Any], unavailable: str) -> Any:
        """The review's status, as the API server answers it (any JSON)."""
        try:
            answer = await self.api.call(Method.POST, path, body=body, seconds=REQUEST_TIMEOUT)
            return decoded(answer).get("status")
        except KubeError as exc:
            # The detail goes to the log, never to the caller.
            log.warning("%s failed: %s", body.get("kind"), exc)
            raise ReviewUnavailable(f"{unavailable} cannot be checked now; try again") from exc

    async def authenticate(self, token: str | None) -> Caller:
        if token is None:
            raise Unauthenticated("a bearer token is required")
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._callers.get(key, self.clock())
        if cached is None:
            spec: dict[str, Any] = {"token": token}
            if self.audiences:
                spec["audiences"] = self.audiences
            review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
            status = await self._review(TOKEN_REVIEWS, review, "credentials")
            cached = (caller_from_review(status, self.audiences),)
            self._callers.put(key, cached, self.clock())
        caller = cached[0]
        if caller is None:
            raise Unauthenticated("the token is not valid")
        return caller

    async def authorize(
        self,
        caller: Caller,
        verb: Verb,
        namespace: str,
        name: str | None = None,
        resource: str = PLURAL,
    ) -> None:
        key = (caller, verb, namespace, name, resource)
        allowed = self._decisions.get(key, self.clock())
        if allowed is None:
            review = access_review(caller, verb, namespace, name, resource)
            status = await self._review(ACCESS_REVIEWS, review, "permissions")
            allowed = _mapping(status).get("allowed") is True
            self._decisions.put(key, allowed, self.clock())
        if not allowed:
            target = f"{resource}/{name}" if name else resource
            raise Forbidden(
                f"{caller.username} may not {verb.value} {target} in namespace {namespace}"
            )
