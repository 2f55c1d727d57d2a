"""Leader election on a coordination.k8s.io Lease (pure): what to do with it now.

The rules are Kubernetes' own (client-go's leaderelection): the holder renews every
retry period; another takes the Lease only once the record has stayed unchanged for
a whole lease duration, as timed on its own clock (never by comparing `renewTime` with
a clock that may be skewed); and a holder that could not renew for the renew deadline,
shorter than the duration, stops acting before anyone may take over.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any


class Act(enum.Enum):
    CREATE = "create"  # no Lease yet: create it, held by us
    RENEW = "renew"  # ours: renew it
    TAKE = "take"  # free or expired: take it over
    WAIT = "wait"  # another holds it


@dataclass(frozen=True)
class LeaseView:
    """What a Lease says, as far as the election reads it."""

    holder: str | None
    duration: float
    transitions: int
    version: str  # resourceVersion: a change means the holder renewed

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> LeaseView:
        spec = body.get("spec") or {}
        holder = spec.get("holderIdentity")
        duration = spec.get("leaseDurationSeconds")
        transitions = spec.get("leaseTransitions")
        return cls(
            holder=holder if isinstance(holder, str) and holder else None,
            duration=float(duration) if isinstance(duration, int) and duration > 0 else 0.0,
            transitions=transitions if isinstance(transitions, int) else 0,
            version=str((body.get("metadata") or {}).get("resourceVersion") or ""),
        )


def next_act(lease: LeaseView | None, me: str, unchanged_for: float) -> Act:
    """What to do, `unchanged_for` seconds (our clock) after the record last changed."""
    if lease is None:
        return Act.CREATE
    if lease.holder == me:
        return Act.RENEW
    if lease.holder is None or unchanged_for >= lease.duration:
        return Act.TAKE
    return Act.WAIT


def leading(renewed_ago: float | None, renew_deadline: float) -> bool:
    """Still the leader: the last successful renewal is within the renew deadline."""
    return renewed_ago is not None and renewed_ago < renew_deadline


def micro_time(moment: datetime) -> str:
    """A MicroTime as the API server stores it."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def held(
    me: str, duration: float, now: datetime, lease: LeaseView | None, act: Act
) -> dict[str, Any]:
    """The Lease spec to write for `act` (not WAIT)."""
    spec: dict[str, Any] = {
        "holderIdentity": me,
        "leaseDurationSeconds": max(int(duration), 1),
        "renewTime": micro_time(now),
    }
    if act is not Act.RENEW:
        spec["acquireTime"] = micro_time(now)
        before = lease.transitions if lease else 0
        spec["leaseTransitions"] = before + 1 if lease and lease.holder else before
    return spec
