"""What a client of the stack exports, as a mapping and as env.sh for a shell."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from taskrun_dev.binaries import Binaries
from taskrun_dev.services import DEFAULT_OPERATOR, GATEWAY, Services
from taskrun_dev.state import StateDir
from taskrun_dev.supervisor import Supervisor


class Environment:
    """The kubeconfigs, the broker's and backend's URLs, the running operator's and
    gateway's URLs, and PATH."""

    def __init__(
        self,
        state_dir: StateDir,
        supervisor: Supervisor,
        services: Services,
        binaries: Callable[[], Binaries],
        *,
        audit: bool,
    ) -> None:
        self._dir = state_dir
        self._supervisor = supervisor
        self._services = services
        self._binaries = binaries
        self._audit = audit

    @property
    def env(self) -> dict[str, str]:
        """Exports for clients of the stack (PATH starts with the binaries' directory)."""
        env = {
            "KUBECONFIG": str(self._dir.admin_kubeconfig),
            "TASKRUN_OPERATOR_KUBECONFIG": str(self._dir.operator_kubeconfig),
            "CELERY_BROKER_URL": self._services.broker_url,
            "CELERY_RESULT_BACKEND": self._services.result_backend,
            "TASKRUN_DEV_DIR": str(self._dir.dir),
        }
        operator = self._supervisor.process(DEFAULT_OPERATOR)
        if operator is not None and operator.alive and operator.url:
            env["TASKRUN_METRICS_URL"] = operator.url
        gateway = self._supervisor.process(GATEWAY)
        if gateway is not None and gateway.alive and gateway.url:
            env["TASKRUN_GATEWAY_URL"] = gateway.url
        if self._audit:
            env["TASKRUN_AUDIT_LOG"] = str(self._dir.audit_log)
        env["PATH"] = os.pathsep.join([*self.path_dirs, os.environ.get("PATH", "")])
        return env

    @property
    def path_dirs(self) -> list[str]:
        """The control plane's binaries, then the project's environment (taskrun-dev,
        kubectl-taskrun, celery: the environment this stack runs from)."""
        return [str(self._binaries().dir), str(Path(sys.executable).parent)]

    def write_env_file(self) -> Path:
        env_file = self._dir.env_file
        lines = ["# Written by `taskrun-dev up`; source it: . " + shlex.quote(str(env_file))]
        for key, value in self.env.items():
            if key == "PATH":
                dirs = ":".join(shlex.quote(d) for d in self.path_dirs)
                lines.append(f'export PATH={dirs}:"$PATH"')
            else:
                lines.append(f"export {key}={shlex.quote(value)}")
        env_file.write_text("\n".join(lines) + "\n")
        return env_file
