"""The fence: a leader acts only while its Lease is surely its own.

The elector moves the fence on every renewal: the Lease is surely ours until the renew
deadline after the renewal was *sent* (the standby waits a whole lease duration, longer,
from when it saw the renewal).  Every side effect waits at the fence (`Effects`), so a
leader frozen past its lease (a long GC, CPU throttling, SIGSTOP) does nothing when it
wakes until it has read the Lease again: then either it still holds it and goes on, or
it has lost it and steps down, which cancels what was waiting.  The clock is monotonic:
it runs on while a process is stopped.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable


class Fence:
    def __init__(
        self, until: float = math.inf, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.until = until  # monotonic seconds; the default: no election, always open
        self.monotonic = monotonic
        self._moved = asyncio.Event()

    def open(self) -> bool:
        """Whether the Lease is surely ours now (callable from any thread)."""
        return self.monotonic() < self.until

    def hold(self, until: float) -> None:
        """The Lease is surely ours until `until` (-inf: not ours)."""
        self.until = until
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()

    async def wait(self) -> None:
        """Return once the Lease is surely ours (at once while it is)."""
        while not self.open():
            await self._moved.wait()
