"""Command lines, environments and readiness checks of redis, Celery workers, operators."""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from taskrun_dev.processes import StackError

HOST = "127.0.0.1"
DEFAULT_WORKER_APP = "taskrun_workers.app"
OPERATOR_SCRIPT = "celery-taskrun-operator"
GATEWAY_SCRIPT = "celery-taskrun-gateway"

# Settings the stack decides; inherited values would make runs depend on the shell.
_OWNED_ENV_PREFIXES = ("CELERY_", "TASKRUN_")
_OWNED_ENV_NAMES = ("KUBECONFIG",)


def base_env(extra: Mapping[str, str], overrides: Mapping[str, str] | None) -> dict[str, str]:
    """The caller's environment minus stack-owned settings, plus ours, plus overrides."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_OWNED_ENV_PREFIXES) and key not in _OWNED_ENV_NAMES
    }
    env.update(extra)
    env.update(overrides or {})
    return env


# -- redis ---------------------------------------------------------------------


def redis_argv(port: int, data_dir: Path) -> list[str]:
    server = shutil.which("redis-server")
    if server is None:
        raise StackError(
            "redis-server not found on PATH: install it with `apt-get install redis-server` "
            "(the Debian package)"
        )
    return [
        server,
        "--bind",
        HOST,
        "--port",
        str(port),
        "--dir",
        str(data_dir),
        # A dev broker: no snapshots, no AOF, nothing to recover on the next start.
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
    ]


def redis_pings(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


# -- celery worker ---------------------------------------------------------------


def worker_argv(
    name: str,
    *,
    app: str = DEFAULT_WORKER_APP,
    queues: Sequence[str] = (),
    concurrency: int = 2,
    pool: str = "prefork",
    extra_args: Sequence[str] = (),
) -> list[str]:
    # `python -m celery` from this interpreter: the same environment as the stack,
    # and the working directory on sys.path so users' own task modules import.
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        "--loglevel=INFO",
        "-n",
        f"{name}@%h",
    ]
    if queues:
        argv += ["-Q", ",".join(queues)]
    return [*argv, *extra_args]


def worker_ready_pattern(name: str) -> str:
    # Celery logs "<nodename> ready." once the consumer is up.
    return rf"{re.escape(name)}@\S+ ready\."


# -- operator ------------------------------------------------------------------


def console_script(name: str) -> str:
    # The console script as a user runs it; next to this interpreter first, so a
    # virtualenv's copy wins over another one on PATH.
    beside = Path(sys.executable).parent / name
    script = str(beside) if os.access(beside, os.X_OK) else shutil.which(name)
    if script is None:
        raise StackError(f"{name} not found: install the project (`pip install -e .`)")
    return script


def operator_argv(extra_args: Sequence[str] = ()) -> list[str]:
    return [console_script(OPERATOR_SCRIPT), *extra_args]


# -- gateway -------------------------------------------------------------------


def gateway_argv(port: int, extra_args: Sequence[str] = ()) -> list[str]:
    return [console_script(GATEWAY_SCRIPT), "--host", HOST, "--port", str(port), *extra_args]
