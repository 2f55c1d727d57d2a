"""What one follower of a run does with an event of its namespace's shared watch (pure).

A follower reads its run once (a GET) after joining the namespace's watch, so events
queued before that read may be older than it: each event is kept only when it is the
same run (uid: a name may be reused) and a newer version than the last one shown.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

from celery_taskrun.core.outcomes import Step


class Delivery(Enum):
    SKIP = "skip"  # another run of that name, or a version already shown
    SHOW = "show"  # a newer version of the run
    GONE = "gone"  # the run was deleted


def identity(obj: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(uid, resourceVersion) of an object, None where missing or not a string."""
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    uid, version = meta.get("uid"), meta.get("resourceVersion")
    return (
        uid if isinstance(uid, str) else None,
        version if isinstance(version, str) else None,
    )


def newer(version: str | None, than: str | None) -> bool:
    """Whether `version` comes after `than`. The API server's versions are etcd
    revisions, integers that only grow; one that is not an integer cannot be ordered,
    so it counts as newer (shown twice rather than never)."""
    if version is None or than is None:
        return True
    try:
        return int(version) > int(than)
    except ValueError:
        return True


def delivery(step: Step, obj: Mapping[str, Any], uid: str | None, last: str | None) -> Delivery:
    """What a follower of run `uid`, last shown at version `last`, does with an event."""
    their_uid, version = identity(obj)
    if uid is not None and their_uid != uid:
        return Delivery.SKIP
    if step is Step.GONE:
        return Delivery.GONE
    return Delivery.SHOW if newer(version, last) else Delivery.SKIP
