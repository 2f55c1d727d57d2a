"""Bounds on what is copied into status."""

import json
from typing import Any

import pytest

from celery_taskrun.api import bounded


@pytest.mark.parametrize(
    ("value", "limit", "expected"),
    [
        ("short", 10, "short"),
        ("abcdefghijkl", 8, "abcde…"),
        ("ééééé", 7, "éé…"),  # never cut inside a character
        (12345, 3, "…"),
    ],
)
def test_text(value: object, limit: int, expected: str) -> None:
    assert bounded.text(value, limit) == expected
    assert len(bounded.text(value, limit).encode()) <= max(limit, len(expected.encode()))


def test_tail_keeps_the_end() -> None:
    cut = bounded.tail("line\n" * 1000 + "ValueError: boom", 64)
    assert cut.endswith("ValueError: boom") and len(cut.encode()) <= 64


def nest(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(("depth", "deeper"), [(0, False), (32, False), (33, True), (9000, True)])
def test_deeper_than(depth: int, deeper: bool) -> None:
    # The outer list is level 0: 32 levels are 0..31.
    assert bounded.deeper_than([nest(depth - 1)] if depth else 1, 32) is deeper


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ({"a": [1, 2]}, True),
        ("x" * 2000, False),
        (nest(40), False),
        (nest(5000), False),
    ],
)
def test_json_value(value: Any, kept: bool) -> None:
    out, size = bounded.json_value(value, 1024)
    if kept:
        assert (out, size) == (value, None)
    else:
        assert isinstance(out, str) and size is not None
        assert len(json.dumps(out).encode()) <= 1024


@pytest.mark.parametrize(
    ("value", "number"),
    [(1, 1.0), (2.5, 2.5), (True, None), ("3", None), (10**400, None), (float("nan"), None)],
)
def test_number(value: Any, number: float | None) -> None:
    assert bounded.number(value) == number


@pytest.mark.parametrize(("value", "count"), [(3, 3), (-1, None), (2**63, None), (True, None)])
def test_count(value: Any, count: int | None) -> None:
    assert bounded.count(value) == count
