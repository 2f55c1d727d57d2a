"""Fault injection for crash tests: the one crash a test cannot time from outside.

`TASKRUN_FAULT=exit-after-send` makes the operator exit at once, as `kill -9` would,
right after it sent a task and before it recorded that in status: the window the
submission protocol exists for. Never set outside tests.
"""

from __future__ import annotations

import os


def crash_point(name: str) -> None:
    if os.environ.get("TASKRUN_FAULT") == f"exit-{name}":
        os._exit(137)
