"""The CLI's arguments (pure): values, `KEY=VALUE`, durations, and the spec they make."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from celery_taskrun.api.model import TaskRunSpec


class UsageError(ValueError):
    """A command line that cannot mean anything: exit code 2."""


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity parse in Python but are not JSON: the API server would refuse them.
    raise ValueError(name)


def parse_value(text: str) -> Any:
    """An ARG or a VALUE: JSON when it parses as JSON, else the string itself."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except ValueError:
        return text


def parse_kwargs(items: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` items into kwargs; VALUE as `parse_value`; a key given twice is refused."""
    kwargs: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--kwarg {item!r}: expected KEY=VALUE")
        if key in kwargs:
            raise UsageError(f"--kwarg {key} given twice")
        kwargs[key] = parse_value(value)
    return kwargs


_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")


def parse_duration(text: str) -> float:
    """Seconds from `30`, `2.5`, `30s`, `2m`, `1h`, `1m30s`, `500ms` (never negative)."""
    text = text.strip()
    if _NUMBER.fullmatch(text):
        seconds = float(text)
    else:
        parts = _PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise UsageError(f"invalid duration {text!r}: use seconds, or e.g. 30s, 2m, 1m30s")
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if not math.isfinite(seconds):
        raise UsageError(f"invalid duration {text!r}")
    return seconds


def build_spec(
    task: str,
    args: Sequence[str],
    kwargs: Sequence[str],
    options: dict[str, Any],
) -> dict[str, Any]:
    """The TaskRun spec `run` asks for, validated by the same model as the operator's.

    `options` are spec fields by their spec names (None: not given). Raises UsageError
    with the model's complaint when the spec is invalid.
    """
    raw: dict[str, Any] = {"task": task}
    if args:
        raw["args"] = [parse_value(a) for a in args]
    if kwargs:
        raw["kwargs"] = parse_kwargs(kwargs)
    raw.update({key: value for key, value in options.items() if value is not None})
    try:
        spec = TaskRunSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors()
        )
        raise UsageError(f"invalid TaskRun spec: {problems}") from exc
    dumped: dict[str, Any] = spec.model_dump(mode="json", exclude_unset=True, exclude_none=True)
    return dumped
