"""Redis, Celery workers, operators and the gateway: their command lines and readiness
checks, and `Services`, which runs them as processes of the stack, with the broker and
result backend chosen (servers.py: RabbitMQ, PostgreSQL, SQLite)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from taskrun_dev import servers
from taskrun_dev.accounts import Accounts
from taskrun_dev.binaries import Say
from taskrun_dev.processes import ManagedProcess, StackError, port_answers
from taskrun_dev.servers import EPMD, POSTGRESQL, RABBITMQ, SQLITE
from taskrun_dev.state import StateDir, StateFile
from taskrun_dev.supervisor import Supervisor

HOST = "127.0.0.1"
DEFAULT_WORKER_APP = "taskrun_workers.app"
OPERATOR_SCRIPT = "celery-taskrun-operator"
GATEWAY_SCRIPT = "celery-taskrun-gateway"
# Process names (redis's and the gateway's are also their ports' keys in stack.json).
REDIS = "redis"
# A Redis for the tests' aids only (the execution ledger), on a stack whose broker and
# backend are neither Redis: never a broker or a backend.
LEDGER_REDIS = "ledger-redis"
DEFAULT_WORKER = "worker1"
DEFAULT_OPERATOR = "operator"
GATEWAY = "gateway"
BROKERS = (REDIS, RABBITMQ)
BACKENDS = (REDIS, POSTGRESQL, SQLITE)


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


class Services:
    """Redis, workers, operators and the gateway as processes of the stack."""

    def __init__(
        self,
        state_dir: StateDir,
        ports: StateFile,
        supervisor: Supervisor,
        accounts: Accounts,
        say: Say,
    ) -> None:
        self._dir = state_dir
        self._ports = ports
        self._supervisor = supervisor
        self._accounts = accounts
        self._say = say

    @property
    def redis_port(self) -> int:
        return self._ports.known_port(REDIS)

    @property
    def broker(self) -> str:
        return self._ports.servers()[0]

    @property
    def backend(self) -> str:
        return self._ports.servers()[1]

    @property
    def broker_url(self) -> str:
        if self.broker == RABBITMQ:
            return servers.rabbitmq_url(self._ports.known_port(RABBITMQ))
        return f"redis://{HOST}:{self.redis_port}/0"

    @property
    def result_backend(self) -> str:
        if self.backend == POSTGRESQL:
            return servers.postgresql_url(self._ports.known_port(POSTGRESQL))
        if self.backend == SQLITE:
            return servers.sqlite_url(self._dir.dir / SQLITE / "results.db")
        return f"redis://{HOST}:{self.redis_port}/1"

    @property
    def ledger_url(self) -> str | None:
        """The Redis holding the workers' execution ledger (a test aid): the broker's or
        the result backend's when one is Redis, else the aid `start_ledger_redis` runs."""
        if self.broker == REDIS:
            return self.broker_url
        if self.backend == REDIS:
            return self.result_backend
        port = self._supervisor.alive_port(LEDGER_REDIS)
        return f"redis://{HOST}:{port}/0" if port else None

    def start_servers(
        self, broker: str = REDIS, backend: str = REDIS, *, wait: bool = True
    ) -> None:
        """Run the broker and the result backend asked for, and stop the servers the
        stack ran for an earlier choice; the workers and operators started from now on
        get their URLs. `wait=False`: RabbitMQ and PostgreSQL boot while the caller goes
        on, until `wait_servers`."""
        if broker not in BROKERS or backend not in BACKENDS:
            raise StackError(
                f"--broker {broker} --backend {backend}: the broker is one of "
                f"{', '.join(BROKERS)}, the backend one of {', '.join(BACKENDS)}"
            )
        wanted = {broker, backend} - {SQLITE}
        if RABBITMQ in wanted:
            wanted.add(EPMD)
        # Stopped first: the servers wanted may take over ports they held.
        unwanted = [
            proc
            for name in (RABBITMQ, EPMD, POSTGRESQL, REDIS)
            if name not in wanted and (proc := self._supervisor.alive(name)) is not None
        ]
        for proc in unwanted:
            self._say(f"{proc.name}: not asked for any more, stopping (pid {proc.pid})")
            proc.stop()
        self._ports.record_servers(broker, backend)
        if REDIS in wanted:
            self.start_redis()
        if RABBITMQ in wanted:
            self.start_rabbitmq(wait=wait)
        if POSTGRESQL in wanted:
            self.start_postgresql(wait=wait)
        if backend == SQLITE:
            (self._dir.dir / SQLITE).mkdir(parents=True, exist_ok=True)

    def wait_servers(self, timeout: float = 90.0) -> None:
        """Wait until the broker and the result backend chosen answer."""
        for name, wait in ((RABBITMQ, self.wait_rabbitmq), (POSTGRESQL, self.wait_postgresql)):
            proc = self._supervisor.process(name)
            if name in (self.broker, self.backend) and proc is not None:
                wait(proc, timeout)

    def start_redis(self, timeout: float = 20.0) -> ManagedProcess:
        """Start redis (on its remembered port, so URLs stay valid across restarts)."""
        return self._start_redis(REDIS, timeout)

    def start_ledger_redis(self, timeout: float = 20.0) -> ManagedProcess:
        """Start the aid Redis of `ledger_url` (workers started later write to it)."""
        return self._start_redis(LEDGER_REDIS, timeout)

    def _start_redis(self, name: str, timeout: float) -> ManagedProcess:
        port = self._ports.port(name, self._supervisor.alive_port(name))
        data_dir = self._dir.dir / name
        data_dir.mkdir(parents=True, exist_ok=True)
        proc, started = self._supervisor.ensure(
            name,
            REDIS,
            redis_argv(port, data_dir),
            settings={},
            port=port,
            url=f"redis://{HOST}:{port}",
        )
        if started:
            self._say(f"{name} on 127.0.0.1:{port}")
            self._supervisor.wait(proc, lambda: redis_pings(port), "answer PING", timeout)
        return proc

    def start_rabbitmq(self, timeout: float = 90.0, *, wait: bool = True) -> ManagedProcess:
        """Start RabbitMQ and its epmd (each on its remembered port); `wait`: until AMQP
        connections open."""
        epmd_port = self._ports.port(EPMD, self._supervisor.alive_port(EPMD))
        epmd, started = self._supervisor.ensure(
            EPMD, EPMD, servers.epmd_argv(epmd_port), settings={}, port=epmd_port
        )
        if started:
            self._supervisor.wait(epmd, lambda: port_answers(epmd_port), "listen", timeout)
        port = self._ports.port(RABBITMQ, self._supervisor.alive_port(RABBITMQ))
        dist_port = self._ports.port(
            f"{RABBITMQ}-dist", self._supervisor.alive_port(RABBITMQ, "dist_port")
        )
        data_dir = self._dir.dir / RABBITMQ
        servers.rabbitmq_config(data_dir, port)
        proc, started = self._supervisor.ensure(
            RABBITMQ,
            RABBITMQ,
            [servers.rabbitmq_server()],
            settings=servers.rabbitmq_env(data_dir, dist_port, epmd_port),
            port=port,
            url=servers.rabbitmq_url(port),
            extra_meta={"dist_port": dist_port},
        )
        if started:
            self._say(f"rabbitmq on 127.0.0.1:{port} (epmd on {epmd_port})")
            if wait:
                self.wait_rabbitmq(proc, timeout)
        return proc

    def wait_rabbitmq(self, proc: ManagedProcess, timeout: float = 90.0) -> None:
        port = proc.port
        assert port is not None
        self._supervisor.wait(
            proc, lambda: servers.amqp_answers(port), "open AMQP connections", timeout, 0.3
        )

    def start_postgresql(self, timeout: float = 60.0, *, wait: bool = True) -> ManagedProcess:
        """Start PostgreSQL (its cluster made on first use); `wait`: until it takes
        sessions and the stack's database is there."""
        port = self._ports.port(POSTGRESQL, self._supervisor.alive_port(POSTGRESQL))
        data_dir = self._dir.dir / POSTGRESQL / "data"
        servers.initdb(data_dir)
        proc, started = self._supervisor.ensure(
            POSTGRESQL,
            POSTGRESQL,
            servers.postgres_argv(data_dir, port),
            settings={},
            port=port,
            url=servers.postgresql_url(port),
        )
        if started:
            self._say(f"postgresql on 127.0.0.1:{port}")
            if wait:
                self.wait_postgresql(proc, timeout)
        return proc

    def wait_postgresql(self, proc: ManagedProcess, timeout: float = 60.0) -> None:
        port = proc.port
        assert port is not None
        self._supervisor.wait(
            proc, lambda: servers.postgres_answers(port), "accept sessions", timeout, 0.2
        )
        servers.ensure_database(port)

    def start_worker(
        self,
        name: str = DEFAULT_WORKER,
        env_overrides: Mapping[str, str] | None = None,
        queues: Sequence[str] = (),
        imports: Sequence[str] = (),
        *,
        app: str = DEFAULT_WORKER_APP,
        concurrency: int = 2,
        pool: str = "prefork",
        extra_args: Sequence[str] = (),
        cwd: Path | None = None,
        wait: bool = True,
        timeout: float = 60.0,
    ) -> ManagedProcess:
        """Start (or keep) a Celery worker named `name` (node `name@host`) on the stack's redis.

        `imports` extra task modules (env TASKRUN_WORKER_IMPORTS); `env_overrides` win over
        everything, e.g. another CELERY_RESULT_BACKEND.
        """
        settings = {
            "CELERY_BROKER_URL": self.broker_url,
            "CELERY_RESULT_BACKEND": self.result_backend,
        }
        # The execution ledger (a test aid, off by default) in the stack's Redis, if any.
        ledger = self.ledger_url
        if ledger is not None:
            settings["TASKRUN_LEDGER_URL"] = ledger
        if imports:
            settings["TASKRUN_WORKER_IMPORTS"] = ",".join(imports)
        settings.update(env_overrides or {})
        argv = worker_argv(
            name, app=app, queues=queues, concurrency=concurrency, pool=pool, extra_args=extra_args
        )
        proc, started = self._supervisor.ensure(
            name, "worker", argv, settings=settings, cwd=cwd or Path.cwd()
        )
        if started:
            self._say(f"celery worker {name} ({app}, pool {pool} x{concurrency})")
        if wait:
            self.wait_worker(proc, timeout)
        return proc

    def wait_worker(self, proc: ManagedProcess, timeout: float = 60.0) -> None:
        pattern = re.compile(worker_ready_pattern(proc.name))

        def ready() -> bool:
            return pattern.search(proc.log_text()) is not None

        self._supervisor.wait(proc, ready, "log 'ready'", timeout, interval=0.2)

    def start_operator(
        self,
        name: str = DEFAULT_OPERATOR,
        env_overrides: Mapping[str, str] | None = None,
        config_path: Path | str | None = None,
        *,
        kubeconfig: Path | None = None,
        extra_args: Sequence[str] = (),
        cwd: Path | None = None,
        wait: bool = True,
        timeout: float = 60.0,
    ) -> ManagedProcess:
        """Start (or keep) the operator as its own process, with the operator's RBAC.

        Ready once its metrics port (TASKRUN_METRICS_PORT) accepts connections.
        """
        metrics_port = self._ports.port(f"metrics-{name}", self._supervisor.alive_port(name))
        settings = {
            "KUBECONFIG": str(kubeconfig or self._dir.operator_kubeconfig),
            "CELERY_BROKER_URL": self.broker_url,
            "CELERY_RESULT_BACKEND": self.result_backend,
            "TASKRUN_METRICS_HOST": HOST,
            "TASKRUN_METRICS_PORT": str(metrics_port),
            # Leader election: operators sharing a Lease never both act.  Each named
            # process its own by default (several may watch different namespaces).
            "TASKRUN_LEASE_NAME": f"celery-taskrun-{name}",
        }
        if config_path is not None:
            settings["TASKRUN_CONFIG"] = str(Path(config_path).resolve())
        settings.update(env_overrides or {})
        port = int(settings["TASKRUN_METRICS_PORT"])
        proc, started = self._supervisor.ensure(
            name,
            "operator",
            operator_argv(extra_args),
            settings=settings,
            port=port,
            url=f"http://{HOST}:{port}/metrics",
            cwd=cwd or Path.cwd(),
        )
        if started:
            self._say(f"operator {name}, metrics on http://127.0.0.1:{port}/metrics")
        if wait:
            what = f"open its metrics port {port}"
            self._supervisor.wait(proc, lambda: port_answers(port), what, timeout, interval=0.2)
        return proc

    def start_gateway(
        self,
        name: str = GATEWAY,
        *,
        extra_args: Sequence[str] = (),
        wait: bool = True,
        timeout: float = 60.0,
    ) -> ManagedProcess:
        """Start (or keep) a gateway named `name` on 127.0.0.1 with the gateway's own
        ServiceAccount's rights.

        Ready once its port accepts connections; the URL of the one named `gateway`
        goes into env.sh.
        """
        kubeconfig = self._dir.gateway_kubeconfig
        if not kubeconfig.is_file() or self._supervisor.alive(name) is None:
            self._accounts.install_gateway()
        port = self._ports.port(name, self._supervisor.alive_port(name))
        proc, started = self._supervisor.ensure(
            name,
            GATEWAY,
            gateway_argv(port, extra_args),
            settings={"KUBECONFIG": str(kubeconfig)},
            port=port,
            url=f"http://{HOST}:{port}",
            cwd=Path.cwd(),
        )
        if started:
            self._say(f"{name} on http://127.0.0.1:{port}")
        if wait:
            what = f"open its port {port}"
            self._supervisor.wait(proc, lambda: port_answers(port), what, timeout, interval=0.1)
        return proc
