"""The engine's background tasks: spawned, supervised, and all stopped together."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

log = logging.getLogger(__name__)

CANCEL_AGAIN_SECONDS = 0.5


async def supervised(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """Run `run` for as long as it is wanted, restarting it when it fails."""
    delay = 1.0
    while True:
        try:
            await run()
            return  # finished on its own (a backend without wake-ups, a listing done)
        except Exception:  # a bug: restart rather than stop every run
            log.exception("%s failed; restarting in %.0fs", name, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30.0)


class Tasks:
    def __init__(self) -> None:
        self._running: set[asyncio.Task[Any]] = set()

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(set(self._running))

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def cancel_all(self) -> None:
        while self._running:  # tasks spawned meanwhile included
            for task in self._running:
                task.cancel()
            # A task may outlive one cancellation (Python 3.11's `wait_for` can lose one
            # that meets the end of the call it waits on): ask until all have stopped.
            await asyncio.wait(set(self._running), timeout=CANCEL_AGAIN_SECONDS)
