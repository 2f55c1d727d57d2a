"""Waits and streams open at once. They share one API-server watch per namespace
(watches.py), but each holds a connection, a queue and a task: their number is bounded
in all (503; 10,000 held ~255 MiB, docs/benchmarks.md), and per caller (429) so that
one tenant cannot hold them all."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import ClassVar

from celery_taskrun.gateway.auth import Caller, Refused

MAX_FOLLOWERS = 10_000
MAX_FOLLOWERS_PER_CALLER = 100


class TooBusy(Refused):
    """The gateway's waits and streams are all open."""

    status = 503
    headers: ClassVar[Mapping[str, str]] = {"Retry-After": "1"}


class TooMany(Refused):
    """The caller's waits and streams are all open: one must end first."""

    status = 429
    headers: ClassVar[Mapping[str, str]] = {"Retry-After": "1"}


class Followers:
    """The waits and streams open now, in all and per caller (by username: the identity
    RBAC knows)."""

    def __init__(
        self, limit: int = MAX_FOLLOWERS, per_caller: int = MAX_FOLLOWERS_PER_CALLER
    ) -> None:
        self.limit = limit
        self.per_caller = per_caller
        self.open = 0
        self.by_caller: Counter[str] = Counter()

    @contextlib.contextmanager
    def hold(self, caller: Caller) -> Iterator[None]:
        who = caller.username
        if self.by_caller[who] >= self.per_caller:
            raise TooMany(
                f"{who} has {self.per_caller} waits and streams open, the most one caller "
                "may; end one first"
            )
        if self.open >= self.limit:
            raise TooBusy("too many waits and streams open; try again")
        self.open += 1
        self.by_caller[who] += 1
        try:
            yield
        finally:
            self.open -= 1
            self.by_caller[who] -= 1
            if not self.by_caller[who]:
                del self.by_caller[who]
