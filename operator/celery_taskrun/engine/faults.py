"""Fault injection for tests: the faults a test cannot cause from outside.

- `TASKRUN_FAULT=exit-after-send` makes the operator exit at once, as `kill -9` would,
  right after it sent a task and before it recorded that in status: the window the
  submission protocol exists for.
- `TASKRUN_FAULT=exit-after-create` makes it exit likewise right after it created a
  slot's TaskRun and before the CronTaskRun's status records the slot.
- `TASKRUN_FAULT=stall-loop` stops the tracker's loop from turning (as a bug would),
  so the liveness endpoint can be seen to fail.
- `TASKRUN_FAULT=slow-send` holds each send for 3 s after its intent is recorded, so
  a test can delete a TaskRun while its task is being sent.

Never set outside tests.
"""

from __future__ import annotations

import asyncio
import os


def crash_point(name: str) -> None:
    if os.environ.get("TASKRUN_FAULT") == f"exit-{name}":
        os._exit(137)


async def stall_point(name: str) -> None:
    if os.environ.get("TASKRUN_FAULT") == f"stall-{name}":
        await asyncio.Event().wait()


async def slow_point(name: str, seconds: float = 3.0) -> None:
    if os.environ.get("TASKRUN_FAULT") == f"slow-{name}":
        await asyncio.sleep(seconds)
