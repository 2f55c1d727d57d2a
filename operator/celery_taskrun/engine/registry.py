"""The registry: every run the tracker follows, by uid and by task id, and the runs
finished and released whose watch events are only echoes of our own writes."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator

from celery_taskrun.engine import metrics
from celery_taskrun.engine.runs import Run

# How many released runs are remembered: their echoes arrive within seconds.
RELEASED_MEMORY = 10_000


class Registry:
    def __init__(self, on_forget: Callable[[str], None] = lambda uid: None) -> None:
        self.on_forget = on_forget  # what else lets go of a run (its scheduled look)
        self._runs: dict[str, Run] = {}
        self._by_task: dict[str, str] = {}
        self._released: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._runs)

    def __iter__(self) -> Iterator[Run]:
        return iter(list(self._runs.values()))

    def get(self, uid: str) -> Run | None:
        return self._runs.get(uid)

    def holds(self, run: Run) -> bool:
        """Whether `run` is still the one followed under its uid (not forgotten)."""
        return self._runs.get(run.uid) is run

    def of_task(self, task_id: str) -> Run | None:
        uid = self._by_task.get(task_id)
        return self._runs.get(uid) if uid else None

    def add(self, run: Run) -> None:
        self._runs[run.uid] = run
        if run.status.taskId:
            self._by_task[run.status.taskId] = run.uid
        metrics.IN_FLIGHT.set(len(self._runs))

    def bind(self, task_id: str, run: Run) -> None:
        """Records of `task_id` are news of `run` (a wake-up may come before the status
        naming it is written)."""
        self._by_task[task_id] = run.uid

    def unbind(self, task_id: str | None) -> None:
        if task_id:
            self._by_task.pop(task_id, None)

    def forget(self, uid: str) -> Run | None:
        run = self._runs.pop(uid, None)
        self.on_forget(uid)
        if run is not None:
            self.unbind(run.status.taskId)
            metrics.IN_FLIGHT.set(len(self._runs))
        return run

    def release(self, uid: str) -> None:
        """A finished run let go: its later watch events are echoes (bounded memory)."""
        self._released[uid] = None
        if len(self._released) > RELEASED_MEMORY:
            self._released.popitem(last=False)

    def unrelease(self, uid: str) -> None:
        self._released.pop(uid, None)

    def released(self, uid: str) -> bool:
        return uid in self._released

    def clear(self) -> None:
        self._runs.clear()
        self._by_task.clear()
        self._released.clear()
        metrics.IN_FLIGHT.set(0)
