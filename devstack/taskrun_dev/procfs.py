"""What /proc tells of processes: parent, group, state, start time (Linux only, like
the rest of the dev stack)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    pgid: int
    state: str
    start_ticks: int


def proc_info(pid: int) -> ProcInfo | None:
    """Parse /proc/PID/stat; None when the pid does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm may contain spaces and parentheses: the fields start after the last ')'.
    rest = raw[raw.rindex(")") + 2 :].split()
    return ProcInfo(
        pid=pid,
        ppid=int(rest[1]),
        pgid=int(rest[2]),
        state=rest[0],
        start_ticks=int(rest[19]),
    )


def memory_mib(pid: int, field: str = "VmRSS") -> float:
    """A memory figure of /proc/PID/status in MiB: `VmRSS` (resident now) or `VmHWM`
    (the resident peak of its life); 0 when the process or the field is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0.0
    for line in lines:
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def all_procs() -> list[ProcInfo]:
    infos = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = proc_info(int(entry))
            if info is not None:
                infos.append(info)
    return infos


def is_running(info: ProcInfo | None) -> bool:
    # A zombie has exited already; it only waits for its parent to reap it.
    return info is not None and info.state not in ("Z", "X")


def related_pids(pid: int, pgid: int) -> set[int]:
    """Live processes in the group, plus the leader's descendants wherever they are."""
    procs = [p for p in all_procs() if is_running(p)]
    children: dict[int, list[int]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p.pid)
    found = {p.pid for p in procs if p.pgid == pgid}
    todo = [pid]
    while todo:
        current = todo.pop()
        for child in children.get(current, []):
            if child not in found:
                found.add(child)
                todo.append(child)
    if is_running(proc_info(pid)):
        found.add(pid)
    return found
