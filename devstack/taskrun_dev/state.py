"""The stack's state directory: where each file lives, who may change it, what it remembers.

Layout (default ./.taskrun-dev or $TASKRUN_DEV_DIR):
  stack.json           ports, the broker and backend chosen, the binaries directory
  pids/NAME.json       one per running process (see processes.py)
  logs/NAME.log        each process's output (the previous run's in NAME.log.prev)
  pki/                 CA, API server, admin and controller-manager certificates,
                       service-account key
  etcd/, redis/, rabbitmq/, postgresql/, sqlite/
                       data directories
  audit/               the API server's audit log of writes (with `up --audit-log`)
  admin.kubeconfig     cluster admin (O=system:masters)
  controller-manager.kubeconfig
                       kube-controller-manager's client certificate
  operator.kubeconfig  the operator's ServiceAccount token: RBAC as deployed
  gateway.kubeconfig   the gateway's ServiceAccount token (with `up --gateway`)
  env.sh               exports for a shell
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskrun_dev.pki import Pki
from taskrun_dev.processes import StackError, free_port, port_is_free

# What `down --purge` deletes besides the kubeconfigs and stack.json.
_PURGED_DIRS = (
    "etcd",
    "redis",
    "rabbitmq",
    "postgresql",
    "sqlite",
    "pki",
    "pids",
    "logs",
    "audit",
)


@dataclass(frozen=True)
class StateDir:
    """The paths of one state directory, its lock, and its removal."""

    dir: Path

    @property
    def logs_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def pids_dir(self) -> Path:
        return self.dir / "pids"

    @property
    def state_file(self) -> Path:
        return self.dir / "stack.json"

    @property
    def env_file(self) -> Path:
        return self.dir / "env.sh"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.dir / "admin.kubeconfig"

    @property
    def controller_manager_kubeconfig(self) -> Path:
        return self.dir / "controller-manager.kubeconfig"

    @property
    def operator_kubeconfig(self) -> Path:
        return self.dir / "operator.kubeconfig"

    @property
    def gateway_kubeconfig(self) -> Path:
        return self.dir / "gateway.kubeconfig"

    @property
    def audit_log(self) -> Path:
        """The API server's audit log (with `audit=True`): one JSON line per write."""
        return self.dir / "audit" / "audit.log"

    @property
    def pki(self) -> Pki:
        return Pki(self.dir / "pki")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        # One `up`/`down` at a time per state directory.
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / ".lock").open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def purge(self) -> None:
        """Delete the state (etcd data, certificates, logs, kubeconfigs); under the lock."""
        for sub in _PURGED_DIRS:
            shutil.rmtree(self.dir / sub, ignore_errors=True)
        for file in (
            self.state_file,
            self.admin_kubeconfig,
            self.controller_manager_kubeconfig,
            self.operator_kubeconfig,
            self.gateway_kubeconfig,
        ):
            file.unlink(missing_ok=True)

    def remove(self) -> None:
        """After `purge`, once the lock is released: the lock file, then the directory
        unless something else of the user's is in it."""
        (self.dir / ".lock").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.dir.rmdir()


class StateFile:
    """stack.json: the ports the stack chose, so URLs and kubeconfigs survive restarts."""

    def __init__(self, state_dir: StateDir) -> None:
        self._dir = state_dir

    def _load(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self._dir.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            data = {}
        data.setdefault("ports", {})
        return data

    def _save(self, state: Mapping[str, Any]) -> None:
        self._dir.dir.mkdir(parents=True, exist_ok=True)
        tmp = self._dir.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self._dir.state_file)

    def record_binaries(self, binaries_dir: Path) -> None:
        state = self._load()
        state["binaries_dir"] = str(binaries_dir)
        self._save(state)

    def record_servers(self, broker: str, backend: str) -> None:
        state = self._load()
        state["servers"] = {"broker": broker, "backend": backend}
        self._save(state)

    def servers(self) -> tuple[str, str]:
        """The broker and result backend `up` last ran (Redis and Redis before any)."""
        chosen = self._load().get("servers") or {}
        return chosen.get("broker", "redis"), chosen.get("backend", "redis")

    def port(self, key: str, in_use: int | None = None) -> int:
        """The port for `key`: `in_use` (a live process has it), else the remembered one
        if still free (URLs and kubeconfigs survive restarts), else a new free one."""
        state = self._load()
        remembered = state["ports"].get(key)
        if in_use:
            port = in_use
        elif isinstance(remembered, int) and port_is_free(remembered):
            port = remembered
        else:
            port = free_port()
        if remembered != port:
            state["ports"][key] = port
            self._save(state)
        return port

    def known_port(self, key: str) -> int:
        port = self._load()["ports"].get(key)
        if not isinstance(port, int):
            raise StackError(f"the stack in {self._dir.dir} has no {key} port yet: run `up` first")
        return port
