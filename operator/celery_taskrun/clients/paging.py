"""Every list the operator and the gateway make, a bounded page at a time (issue 16).

A page is held whole while it is decoded: its JSON as bytes, the same as a Python str
(4 bytes a character as soon as one character lies outside the BMP), then the objects.
So a page's size follows from the worst TaskRun the admission policy lets in:

- its spec: 2,048 values and 256 KiB of args and kwargs, at most 0.4 MiB of JSON (a
  control character is 6 bytes of JSON and 4 of CEL's rendering) and 0.4 MiB decoded;
- its metadata: the API server's 256 KiB of annotations;
- its status, as the operator bounds it: result, progress, error, messages, earlier
  attempts, about 0.2 MiB with the default `maxResultBytes`.

About 0.9 MiB of JSON, under 6 MiB while it is decoded (up to 3.6 MiB of str), 1.2 MiB
once decoded: a page of 20 stays under 120 MiB at its peak, the operator's limit in the
chart is 512 MiB; the gateway reads at most 2 pages of 10 at once (its limit: 256 MiB).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

OPERATOR_PAGE = 20
GATEWAY_PAGE = 10
GATEWAY_PAGES_AT_ONCE = 2

# (continue token or None, how many) -> one page of a list, as the API server sends it.
Fetch = Callable[[str | None, int], Awaitable[dict[str, Any]]]


def continue_of(page: dict[str, Any]) -> str | None:
    return (page.get("metadata") or {}).get("continue") or None


async def pages(
    fetch: Fetch, *, page: int, limit: int | None = None, token: str | None = None
) -> AsyncIterator[dict[str, Any]]:
    """The pages of a list from `token` on, `page` objects each, until `limit` objects
    (None: all of them) or the list's end; the last page's continue token goes on."""
    left = limit
    while left is None or left > 0:
        size = page if left is None else min(page, left)
        found = await fetch(token, size)
        yield found
        token = continue_of(found)
        if token is None:
            return
        if left is not None:
            left -= len(found.get("items") or [])
