"""Managed background processes: start detached, record in pid files, log, stop.

Every process runs in its own session (so its own process group): it survives the
CLI that started it, and stopping the group also stops children such as Celery's
prefork pool. A pid file records the pid together with the kernel's start time of
that pid, so a recycled pid is never mistaken for ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskrun_dev.procfs import all_procs, is_running, proc_info, related_pids

DEFAULT_STOP_TIMEOUT = 10.0


class StackError(RuntimeError):
    """A component failed to start or to answer; the message says which and why."""


# ---------------------------------------------------------------------------
# ports and waiting


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel considers free now (another process may still race us for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers do (Go, redis): a port whose old connections linger in
        # TIME_WAIT is free for a new listener.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def port_answers(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.1,
    abort: Callable[[], str | None] | None = None,
) -> bool:
    """Poll `check` until it is true (True) or the timeout passes (False).

    `abort` returns a reason to give up early (e.g. the process died); it is raised
    as StackError.
    """
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if abort is not None:
            reason = abort()
            if reason:
                raise StackError(reason)
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, or a note that it is missing."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(data.splitlines()[-lines:])


# ---------------------------------------------------------------------------
# the managed process


@dataclass
class ManagedProcess:
    """A background process of the dev stack, as recorded in its pid file."""

    name: str
    kind: str
    pid: int
    pgid: int
    start_ticks: int
    argv: list[str]
    log_path: Path
    pid_file: Path
    port: int | None = None
    url: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    started_at: float = 0.0
    # Seconds between SIGTERM and SIGKILL when stopping.
    stop_timeout: float = DEFAULT_STOP_TIMEOUT
    # Only set in the process that spawned it: lets us reap the child (no zombies).
    _popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    # -- creation ---------------------------------------------------------------

    @classmethod
    def spawn(
        cls,
        name: str,
        argv: Sequence[str],
        *,
        kind: str,
        env: Mapping[str, str],
        log_dir: Path,
        pid_dir: Path,
        port: int | None = None,
        url: str | None = None,
        cwd: Path | None = None,
        meta: Mapping[str, Any] | None = None,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    ) -> ManagedProcess:
        log_dir.mkdir(parents=True, exist_ok=True)
        pid_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}.log"
        if log_path.exists():
            # Keep the previous run's log for post-mortems; the new one starts empty so
            # readiness checks only see this run's lines.
            log_path.replace(log_dir / f"{name}.log.prev")
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
            )
        info = proc_info(popen.pid)
        proc = cls(
            name=name,
            kind=kind,
            pid=popen.pid,
            pgid=popen.pid,
            start_ticks=info.start_ticks if info else 0,
            argv=list(argv),
            log_path=log_path,
            pid_file=pid_dir / f"{name}.json",
            port=port,
            url=url,
            meta=dict(meta or {}),
            started_at=time.time(),
            stop_timeout=stop_timeout,
            _popen=popen,
        )
        proc.save()
        return proc

    @classmethod
    def load(cls, pid_file: Path) -> ManagedProcess | None:
        try:
            data = json.loads(pid_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return cls(
            name=data["name"],
            kind=data["kind"],
            pid=data["pid"],
            pgid=data["pgid"],
            start_ticks=data["start_ticks"],
            argv=data["argv"],
            log_path=Path(data["log_path"]),
            pid_file=pid_file,
            port=data.get("port"),
            url=data.get("url"),
            meta=data.get("meta", {}),
            started_at=data.get("started_at", 0.0),
            stop_timeout=data.get("stop_timeout", DEFAULT_STOP_TIMEOUT),
        )

    def save(self) -> None:
        data = {
            "name": self.name,
            "kind": self.kind,
            "pid": self.pid,
            "pgid": self.pgid,
            "start_ticks": self.start_ticks,
            "argv": self.argv,
            "log_path": str(self.log_path),
            "port": self.port,
            "url": self.url,
            "meta": self.meta,
            "started_at": self.started_at,
            "stop_timeout": self.stop_timeout,
        }
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.pid_file)

    # -- state ------------------------------------------------------------------

    def _reap(self) -> None:
        if self._popen is not None:
            self._popen.poll()

    @property
    def alive(self) -> bool:
        """True while the process we started (not a recycled pid) is running."""
        self._reap()
        info = proc_info(self.pid)
        return is_running(info) and info is not None and info.start_ticks == self.start_ticks

    @property
    def returncode(self) -> int | None:
        """Exit code, known only in the process that spawned it."""
        return None if self._popen is None else self._popen.poll()

    def group_pids(self) -> set[int]:
        """Live pids of this process, its group and its descendants."""
        self._reap()
        if not self.alive:
            leader = proc_info(self.pgid)
            if is_running(leader) and leader is not None and leader.start_ticks != self.start_ticks:
                return set()  # the pid was recycled into someone else's group leader
            # Our leader is gone: group members that still carry its pgid are ours.
            return {p.pid for p in all_procs() if p.pgid == self.pgid and is_running(p)}
        return related_pids(self.pid, self.pgid)

    def tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str, timeout: float) -> bool:
        """Wait for a regex in this run's log; StackError if the process dies first."""
        regex = re.compile(pattern)
        return wait_until(
            lambda: regex.search(self.log_text()) is not None,
            timeout=timeout,
            interval=0.2,
            abort=self.death_reason,
        )

    def death_reason(self) -> str | None:
        if self.alive:
            return None
        code = self.returncode
        how = f" (exit code {code})" if code is not None else ""
        return f"{self.name} exited during startup{how}; log {self.log_path}:\n{self.tail()}"

    # -- stopping ---------------------------------------------------------------

    def send_signal(self, sig: int, *, group: bool = True) -> None:
        """Signal the process (and by default its whole group) if still ours."""
        if not self.alive and not group:
            return
        if group:
            for pid in self.group_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM the group, SIGKILL whatever is left after `timeout` (default
        stop_timeout), forget the pid file."""
        stop_all([self], timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the whole group at once (a crash, as tests simulate it)."""
        pids = self.group_pids()
        _signal_pids(pids, signal.SIGKILL)
        _wait_gone(pids, self, timeout=5.0)
        self._reap()
        self.pid_file.unlink(missing_ok=True)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "pid": self.pid,
            "alive": self.alive,
            "port": self.port,
            "url": self.url,
            "log": str(self.log_path),
        }


def _signal_pids(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _gone(pids: Iterable[int], procs: Iterable[ManagedProcess]) -> bool:
    for proc in procs:
        proc._reap()
    return not any(is_running(proc_info(pid)) for pid in pids)


def _wait_gone(pids: set[int], proc: ManagedProcess, timeout: float) -> bool:
    return wait_until(lambda: _gone(pids, [proc]), timeout=timeout, interval=0.05)


def stop_all(procs: Sequence[ManagedProcess], timeout: float | None = None) -> None:
    """Stop several processes in parallel: SIGTERM every group at once, then SIGKILL each
    one still running after `timeout` (default: its own stop_timeout)."""
    started = time.monotonic()
    pending = [(proc, proc.group_pids()) for proc in procs]
    for _, pids in pending:
        _signal_pids(pids, signal.SIGTERM)
    killed: set[str] = set()
    while pending:
        pending = [(proc, pids) for proc, pids in pending if not _gone(pids, [proc])]
        waited = time.monotonic() - started
        for proc, pids in pending:
            limit = proc.stop_timeout if timeout is None else timeout
            if proc.name not in killed and waited >= limit:
                # Re-scan: children forked after the first scan must not survive either.
                pids |= proc.group_pids()
                _signal_pids(pids, signal.SIGKILL)
                killed.add(proc.name)
            elif proc.name in killed and waited >= limit + 5.0:
                left = sorted(pid for pid in pids if is_running(proc_info(pid)))
                raise StackError(f"{proc.name}: processes still alive after SIGKILL: {left}")
        time.sleep(0.05)
    for proc in procs:
        proc._reap()
        proc.pid_file.unlink(missing_ok=True)


def load_all(pid_dir: Path) -> dict[str, ManagedProcess]:
    """Every process recorded in the pid directory, alive or not."""
    found: dict[str, ManagedProcess] = {}
    if pid_dir.is_dir():
        for pid_file in sorted(pid_dir.glob("*.json")):
            proc = ManagedProcess.load(pid_file)
            if proc is not None:
                found[proc.name] = proc
    return found
