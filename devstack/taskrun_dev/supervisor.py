"""The stack's processes as a whole: find them, (re)start them when their settings change,
wait until they are ready, stop them in order."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from taskrun_dev.binaries import Say
from taskrun_dev.processes import (
    DEFAULT_STOP_TIMEOUT,
    ManagedProcess,
    StackError,
    load_all,
    stop_all,
    wait_until,
)
from taskrun_dev.state import StateDir

# Settings the stack decides; inherited values would make runs depend on the shell.
# RABBITMQ_ and ERL_ (ERL_FLAGS, ERL_EPMD_PORT...) would change the stack's RabbitMQ node.
_OWNED_ENV_PREFIXES = ("CELERY_", "TASKRUN_", "RABBITMQ_", "ERL_")
_OWNED_ENV_NAMES = ("KUBECONFIG",)


def _process_env(settings: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment minus stack-owned settings, plus the process's own."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_OWNED_ENV_PREFIXES) and key not in _OWNED_ENV_NAMES
    }
    env.update(settings)
    return env


class Supervisor:
    """The processes recorded in one state directory."""

    def __init__(self, state_dir: StateDir, say: Say) -> None:
        self._dir = state_dir
        self._say = say
        # Processes started through this object: they keep their Popen, so we reap them.
        self._started: dict[str, ManagedProcess] = {}

    def processes(self) -> dict[str, ManagedProcess]:
        """Every process recorded in the state directory (alive or not)."""
        found = load_all(self._dir.pids_dir)
        for name, proc in self._started.items():
            if name in found and found[name].pid == proc.pid:
                found[name] = proc
        return found

    def process(self, name: str) -> ManagedProcess | None:
        return self.processes().get(name)

    def alive(self, name: str) -> ManagedProcess | None:
        proc = self.process(name)
        return proc if proc is not None and proc.alive else None

    def alive_port(self, name: str, meta_key: str | None = None) -> int | None:
        """The port a live `name` holds (its own, or the one recorded under `meta_key`)."""
        proc = self.alive(name)
        if proc is None:
            return None
        port = proc.meta.get(meta_key) if meta_key else proc.port
        return port if isinstance(port, int) else None

    def status(self) -> list[dict[str, Any]]:
        return [proc.describe() for proc in self.processes().values()]

    def ensure(
        self,
        name: str,
        kind: str,
        argv: list[str],
        *,
        settings: Mapping[str, str],
        port: int | None = None,
        url: str | None = None,
        cwd: Path | None = None,
        extra_meta: Mapping[str, Any] | None = None,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    ) -> tuple[ManagedProcess, bool]:
        """Start `name` unless it already runs with this argv and settings (environment
        variables the stack decides).

        Returns the process and whether it was started now.
        """
        wanted = {"argv": argv, "env": dict(settings), "cwd": str(cwd) if cwd else None}
        current = self.process(name)
        if current is not None and current.alive:
            if current.meta.get("spec") == wanted:
                return current, False
            self._say(f"{name}: settings changed, restarting (pid {current.pid})")
            current.stop()
        elif current is not None:
            # Dead but recorded: clear leftovers of its group before starting again.
            current.stop(timeout=2.0)
        proc = ManagedProcess.spawn(
            name,
            argv,
            kind=kind,
            env=_process_env(settings),
            log_dir=self._dir.logs_dir,
            pid_dir=self._dir.pids_dir,
            port=port,
            url=url,
            cwd=cwd,
            meta={"spec": wanted, **(extra_meta or {})},
            stop_timeout=stop_timeout,
        )
        self._started[name] = proc
        return proc, True

    def respawn(self, proc: ManagedProcess) -> ManagedProcess:
        """Start a stopped process again as `ensure` last started it: same command line,
        settings and port."""
        spec = proc.meta.get("spec") or {}
        cwd = spec.get("cwd")
        again = ManagedProcess.spawn(
            proc.name,
            spec["argv"],
            kind=proc.kind,
            env=_process_env(spec.get("env", {})),
            log_dir=self._dir.logs_dir,
            pid_dir=self._dir.pids_dir,
            port=proc.port,
            url=proc.url,
            cwd=Path(cwd) if cwd else None,
            meta=proc.meta,
            stop_timeout=proc.stop_timeout,
        )
        self._started[proc.name] = again
        return again

    def wait(
        self,
        proc: ManagedProcess,
        check: Callable[[], bool],
        what: str,
        timeout: float,
        interval: float = 0.1,
    ) -> None:
        """Wait for `check`; if the process dies or times out, stop it and raise."""
        try:
            ok = wait_until(check, timeout=timeout, interval=interval, abort=proc.death_reason)
        except StackError:
            ok = False
        if not ok:
            raise self._fail(proc, f"{what} within {timeout:.0f}s")

    def _fail(self, proc: ManagedProcess, what: str) -> StackError:
        """Stop a process that failed to come up; the error carries its log tail."""
        reason = proc.death_reason()
        if reason is None:
            reason = f"{proc.name} did not {what}; log {proc.log_path}:\n{proc.tail()}"
            proc.stop(timeout=5.0)
        else:
            proc.stop(timeout=1.0)
        return StackError(reason)

    def stop_everything(
        self, phases: Sequence[Sequence[str]], timeout: float | None = None
    ) -> list[str]:
        """Stop every recorded process, phase by phase (each a list of kinds or names),
        then the rest; return their names. `timeout`: see processes.stop_all."""
        recorded = list(self.processes().values())
        # Also what this object started and no record names any more (its state
        # directory removed under it, as a concurrent pytest's clean-up of old base
        # temporary directories does): nothing it started may outlive it.
        pids = {p.pid for p in recorded}
        procs = recorded + [p for p in self._started.values() if p.pid not in pids and p.alive]
        stopped: list[str] = []
        for phase in phases:
            batch = [p for p in procs if p.kind in phase or p.name in phase]
            if batch:
                stop_all(batch, timeout=timeout)
                stopped += [p.name for p in batch]
        rest = [p for p in procs if p.name not in stopped]
        if rest:
            stop_all(rest, timeout=timeout)
            stopped += [p.name for p in rest]
        self._started.clear()
        return stopped
