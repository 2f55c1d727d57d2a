"""Bounds on what is copied into status, and on what a spec may hold."""

import json
from typing import Any

import pytest
from pydantic import ValidationError

from celery_taskrun.api import bounded
from celery_taskrun.api.model import MAX_ARGS_DEPTH, MAX_ARGS_VALUES, TaskRunSpec


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


@pytest.mark.parametrize(
    ("roots", "counted"),
    [
        (([], {}), 0),
        (([1, "a", None], {"k": True}), 4),
        (([[], {}], {"k": {"j": [1, 2]}}), 6),  # containers count as values too
        (([nest(5000)], {}), 5001),  # iterative: deeper than Python's recursion limit
    ],
)
def test_values_below(roots: tuple[Any, ...], counted: int) -> None:
    assert bounded.values_below(roots, 10_000) == counted


def test_values_below_stops_past_the_limit() -> None:
    # A million items cost no more than the limit: the count stops one past it.
    assert bounded.values_below(([0] * 1_000_000, {}), 10) == 11


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"args": [[0] * (MAX_ARGS_VALUES - 2)], "kwargs": {"k": 1}}, None),
        ({"args": [[0] * (MAX_ARGS_VALUES - 1)], "kwargs": {"k": 1}}, f"{MAX_ARGS_VALUES} values"),
        ({"kwargs": {"k": nest(MAX_ARGS_DEPTH - 1)}}, None),
        ({"kwargs": {"k": nest(MAX_ARGS_DEPTH)}}, f"deeper than {MAX_ARGS_DEPTH} levels"),
    ],
    ids=["values-at-bound", "values-past-it", "depth-at-bound", "depth-past-it"],
)
def test_the_models_bounds_are_the_admission_policys(
    spec: dict[str, Any], problem: str | None
) -> None:
    """At each bound and one past it, as tests/e2e/test_hostile.py finds the policy."""
    try:
        TaskRunSpec.model_validate({"task": "t", **spec})
    except ValidationError as exc:
        assert problem is not None and problem in str(exc), exc
    else:
        assert problem is None
