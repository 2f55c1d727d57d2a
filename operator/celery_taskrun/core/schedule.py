"""When each run is looked at next: a heap of due times on an injected clock (pure).

One entry per run counts: scheduling a run again replaces its earlier entry (left in
the heap and skipped when it surfaces, which is cheaper than removing it).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Schedule(Generic[K]):
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock  # seconds, monotonic
        self._heap: list[tuple[float, int, K]] = []
        self._tokens: dict[K, int] = {}
        self._counter = 0

    def __len__(self) -> int:
        return len(self._tokens)

    def at(self, key: K, delay: float) -> bool:
        """Look at `key` in `delay` seconds; True when that is now the earliest entry."""
        self._counter += 1
        self._tokens[key] = self._counter
        heapq.heappush(self._heap, (self.clock() + max(delay, 0.0), self._counter, key))
        if len(self._heap) > 4 * len(self._tokens) + 64:
            self._compact()
        return self._heap[0][1] == self._counter

    def drop(self, key: K) -> None:
        self._tokens.pop(key, None)

    def due(self) -> list[K]:
        """Every key due by now, each once, earliest first; they leave the schedule."""
        now = self.clock()
        found: list[K] = []
        while self._heap and self._heap[0][0] <= now:
            _, token, key = heapq.heappop(self._heap)
            if self._tokens.get(key) == token:
                del self._tokens[key]
                found.append(key)
        return found

    def wait(self) -> float | None:
        """Seconds until the next entry is due (0 if one is), None if nothing waits."""
        while self._heap and self._tokens.get(self._heap[0][2]) != self._heap[0][1]:
            heapq.heappop(self._heap)
        if not self._heap:
            return None
        return max(self._heap[0][0] - self.clock(), 0.0)

    def _compact(self) -> None:
        self._heap = [entry for entry in self._heap if self._tokens.get(entry[2]) == entry[1]]
        heapq.heapify(self._heap)
