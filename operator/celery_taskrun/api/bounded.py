"""Bounds on everything copied into a TaskRun's status (pure).

A task returns, raises and reports whatever it likes, and a status write the API
server refuses for its size leaves a run stuck.  So every value taken from a backend
record passes through here on its way into status: strings are cut to a byte budget
(UTF-8, never mid-character), JSON values to a size and a nesting depth, numbers to
what a Kubernetes integer or a finite float can hold.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

CUT = "…"
# Nesting kept in status: Kubernetes decodes at most 10,000 levels, Python's JSON
# codecs about 1,000; results and progress deeper than this become a preview.
MAX_DEPTH = 32
INT64_MAX = 2**63 - 1

# Per-field budgets, in UTF-8 bytes.
MESSAGE_BYTES = 1024  # status.message, each condition's message, attempts[].message
NAME_BYTES = 256  # exception type names, worker hostnames
STATE_BYTES = 64  # Celery state names (custom ones come from the task)
ERROR_MESSAGE_BYTES = 4096  # error.message
PROGRESS_INFO_BYTES = 16 * 1024  # progress.info


def text(value: object, limit: int) -> str:
    """`value` as a string of at most `limit` UTF-8 bytes; a cut one ends with `…`."""
    string = value if isinstance(value, str) else str(value)
    if len(string) <= limit // 4 or len(encoded := string.encode()) <= limit:
        return string
    keep = encoded[: max(limit - len(CUT.encode()), 0)].decode(errors="ignore")
    return keep + CUT


def tail(value: str, limit: int) -> str:
    """The end of `value` within `limit` UTF-8 bytes (a traceback's end says where)."""
    encoded = value.encode()
    if len(encoded) <= limit:
        return value
    return CUT + "\n" + encoded[-max(limit - 4, 0) :].decode(errors="ignore")


def deeper_than(value: Any, limit: int) -> bool:
    """Whether a JSON value nests more than `limit` containers deep (iteratively)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def values_below(roots: Iterable[Any], limit: int) -> int:
    """How many JSON values `roots` hold below themselves (the roots not counted),
    counting no further than `limit` + 1: the work stays bounded whatever they hold."""
    # Iterators, not lists of children: a list of a million items costs nothing
    # beyond the `limit` + 1 counted.
    stack = [iter(_children(root)) for root in roots]
    found = 0
    while stack and found <= limit:
        child = next(stack[-1], _END)
        if child is _END:
            stack.pop()
            continue
        found += 1
        stack.append(iter(_children(child)))
    return found


_END = object()


def _children(node: Any) -> Iterable[Any]:
    if isinstance(node, dict):
        return node.values()
    return node if isinstance(node, list | tuple) else ()


def encoded(value: Any) -> str | None:
    """Compact JSON of `value`, or None when it has none (too deep, not JSON)."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False, default=str)
    except (ValueError, TypeError, RecursionError):
        return None


def json_value(value: Any, limit: int) -> tuple[Any, int | None]:
    """(`value`, None) when it fits `limit` bytes as JSON and MAX_DEPTH levels;
    else (a preview string, the full size in bytes, or 0 when it cannot be encoded)."""
    as_json = encoded(value)
    if as_json is None:
        return f"<a {type(value).__name__} nested too deeply to show>", 0
    size = len(as_json.encode())
    if size <= limit and not deeper_than(value, MAX_DEPTH):
        return value, None
    return preview(as_json, limit), size


def preview(text_value: str, limit: int) -> str:
    """The start of a value too large for status: a quarter of the bound, at least 256."""
    return text(text_value, max(limit // 4, 256))


def number(value: Any) -> float | None:
    """A finite float from a JSON number; None for anything else (bool, NaN, 1e400)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        result = float(value)
    except OverflowError:
        return None
    return result if math.isfinite(result) else None


def count(value: Any, limit: int = INT64_MAX) -> int | None:
    """A non-negative int within `limit` (Kubernetes integers are int64), else None."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= limit else None
