"""What a follower of one run does with its namespace's shared watch events."""

from __future__ import annotations

from typing import Any

import pytest

from celery_taskrun.core.outcomes import Step
from celery_taskrun.core.watching import Delivery, delivery, identity, newer


def run(uid: Any = "u1", version: Any = "10") -> dict[str, Any]:
    return {"metadata": {"name": "r", "uid": uid, "resourceVersion": version}}


@pytest.mark.parametrize(
    ("version", "than", "answer"),
    [
        ("11", "10", True),
        ("10", "10", False),
        ("9", "10", False),
        ("100", "99", True),  # numbers, not strings: "100" < "99" as text
        (None, "10", True),
        ("10", None, True),
        ("abc", "10", True),  # not an etcd revision: cannot be ordered, so shown
    ],
)
def test_newer(version: str | None, than: str | None, answer: bool) -> None:
    assert newer(version, than) is answer


@pytest.mark.parametrize(
    ("step", "obj", "uid", "last", "what"),
    [
        (Step.UPDATE, run(version="11"), "u1", "10", Delivery.SHOW),
        (Step.UPDATE, run(version="10"), "u1", "10", Delivery.SKIP),  # the version read
        (Step.UPDATE, run(version="9"), "u1", "10", Delivery.SKIP),  # queued before the read
        (Step.UPDATE, run(uid="u0", version="11"), "u1", "10", Delivery.SKIP),  # name reused
        (Step.GONE, run(version="12"), "u1", "10", Delivery.GONE),
        (Step.GONE, run(uid="u0", version="12"), "u1", "10", Delivery.SKIP),  # the old one
        (Step.UPDATE, run(uid=None, version="11"), None, "10", Delivery.SHOW),
        (Step.UPDATE, {"metadata": "hostile"}, "u1", "10", Delivery.SKIP),
    ],
)
def test_delivery(
    step: Step, obj: dict[str, Any], uid: str | None, last: str | None, what: Delivery
) -> None:
    assert delivery(step, obj, uid, last) is what


def test_identity_ignores_what_is_not_a_string() -> None:
    assert identity(run(uid=7, version=["1"])) == (None, None)
    assert identity({}) == (None, None)
