"""The whole local stack: etcd, kube-apiserver, kube-controller-manager, the broker and
result backend (Redis, RabbitMQ, PostgreSQL or SQLite), Celery workers, operators.

State lives in one directory (default ./.taskrun-dev or $TASKRUN_DEV_DIR), laid out
as state.py tells.

Each component is (re)started only when it is not running with the wanted command
line and settings, so `up` is idempotent and changes of options restart just the
parts they concern.

`Stack` is the one object users hold; each of its jobs is done by a part:
  state.StateDir, StateFile   the directory's paths and lock; the remembered ports
  supervisor.Supervisor       finding, starting, waiting for and stopping processes
  controlplane.ControlPlane   etcd, kube-apiserver, kube-controller-manager
                              (controlplane.Kubectl: kubectl)
  accounts.Accounts           the CRD, RBAC and the ServiceAccounts' kubeconfigs
  services.Services           redis, workers, operators, the gateway
                              (servers: RabbitMQ, PostgreSQL, SQLite)
  environment.Environment     the exports and env.sh
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from taskrun_dev.accounts import Accounts
from taskrun_dev.binaries import Binaries, Say, ensure_binaries
from taskrun_dev.controlplane import APISERVER, CONTROLLER_MANAGER, ETCD, ControlPlane, Kubectl
from taskrun_dev.environment import Environment
from taskrun_dev.examples import run_examples
from taskrun_dev.processes import ManagedProcess, StackError, port_answers
from taskrun_dev.servers import EPMD, POSTGRESQL, RABBITMQ
from taskrun_dev.services import DEFAULT_WORKER as DEFAULT_WORKER  # benchmarks import it here
from taskrun_dev.services import GATEWAY, REDIS, Services
from taskrun_dev.state import StateDir, StateFile
from taskrun_dev.supervisor import Supervisor

# Stop order for `down`: what depends on others goes first.
_STOP_PHASES: tuple[tuple[str, ...], ...] = (
    ("operator", GATEWAY, CONTROLLER_MANAGER),
    ("worker",),
    (APISERVER,),
    (ETCD, REDIS, RABBITMQ, POSTGRESQL),
    (EPMD,),
)


def _stderr_say(message: str) -> None:
    print(f"taskrun-dev: {message}", file=sys.stderr, flush=True)


def default_dir() -> Path:
    env = os.environ.get("TASKRUN_DEV_DIR")
    return Path(env) if env else Path.cwd() / ".taskrun-dev"


def repo_root() -> Path | None:
    """The checkout this package lives in (editable install), else one above the cwd."""
    for candidate in [Path(__file__).resolve().parents[2], Path.cwd(), *Path.cwd().parents]:
        if (candidate / "deploy").is_dir() and (candidate / "pyproject.toml").is_file():
            return candidate
    return None


class Stack:
    """A local celery-taskrun stack in one state directory.

    `Stack(dir).up()` starts what is missing; `stack.env` gives the exports;
    `stack.start_worker(...)`/`stack.start_operator(...)` add processes;
    `stack.down()` stops every process recorded in the directory.
    """

    def __init__(
        self,
        dir: Path | str | None = None,
        *,
        say: Say | None = None,
        deploy_dir: Path | None = None,
        audit: bool = False,
    ) -> None:
        self.dir = Path(dir).expanduser().resolve() if dir else default_dir().resolve()
        # kube-apiserver writes an audit log of every write (see `audit_log`).
        self.audit = audit
        self.say: Say = say or _stderr_say
        root = repo_root()
        # TASKRUN_DEV_DEPLOY_DIR points at other manifests (crd.yaml, rbac.yaml, examples/).
        env_deploy = os.environ.get("TASKRUN_DEV_DEPLOY_DIR")
        self.deploy_dir = (
            deploy_dir
            or (Path(env_deploy).resolve() if env_deploy else None)
            or (root / "deploy" if root else None)
        )
        # Found (or built) on first use only: `down` and `status` never need them.
        self._binaries = functools.cache(functools.partial(ensure_binaries, self.say))

        self._paths = StateDir(self.dir)
        self._ports = StateFile(self._paths)
        self._supervisor = Supervisor(self._paths, self.say)
        self._kubectl = Kubectl(self._binaries, self._paths.admin_kubeconfig)
        self._control_plane = ControlPlane(
            self._paths, self._ports, self._supervisor, self._binaries, self.say, audit=audit
        )
        accounts = Accounts(
            self._paths, self._control_plane, self._kubectl, self.deploy_dir, self.say
        )
        self._services = Services(self._paths, self._ports, self._supervisor, accounts, self.say)
        self._environment = Environment(
            self._paths, self._supervisor, self._services, self._binaries, audit=audit
        )

        # The API (tests, benchmarks, the CLI), each name served by the part that does it.
        self.logs_dir = self._paths.logs_dir
        self.pids_dir = self._paths.pids_dir
        self.state_file = self._paths.state_file
        self.env_file = self._paths.env_file
        self.admin_kubeconfig = self._paths.admin_kubeconfig
        self.operator_kubeconfig = self._paths.operator_kubeconfig
        self.gateway_kubeconfig = self._paths.gateway_kubeconfig
        self.audit_log = self._paths.audit_log
        self.pki = self._paths.pki
        self.processes = self._supervisor.processes
        self.process = self._supervisor.process
        self.status = self._supervisor.status
        self.start_servers = self._services.start_servers
        self.start_redis = self._services.start_redis
        self.start_ledger_redis = self._services.start_ledger_redis
        self.start_rabbitmq = self._services.start_rabbitmq
        self.start_postgresql = self._services.start_postgresql
        self.start_etcd = self._control_plane.start_etcd
        self.start_apiserver = self._control_plane.start_apiserver
        self.wait_apiserver = self._control_plane.wait_apiserver
        self.start_controller_manager = self._control_plane.start_controller_manager
        self.wait_controller_manager = self._control_plane.wait_controller_manager
        self.install = accounts.install
        self.mint_token = accounts.mint_token
        self.write_operator_kubeconfig = accounts.write_operator_kubeconfig
        self.install_gateway = accounts.install_gateway
        self.start_worker = self._services.start_worker
        self.wait_worker = self._services.wait_worker
        self.start_operator = self._services.start_operator
        self.start_gateway = self._services.start_gateway
        self.write_env_file = self._environment.write_env_file
        self.kubectl = self._kubectl.run
        self.kubectl_json = self._kubectl.json

    # -- values read anew each time: ports are known once `up` chose them -----------

    @property
    def apiserver_url(self) -> str:
        return self._control_plane.apiserver_url

    @property
    def etcd_url(self) -> str:
        return self._control_plane.etcd_url

    @property
    def redis_port(self) -> int:
        return self._services.redis_port

    @property
    def broker(self) -> str:
        """The broker `up` ran: redis or rabbitmq."""
        return self._services.broker

    @property
    def backend(self) -> str:
        """The result backend `up` ran: redis, postgresql or sqlite."""
        return self._services.backend

    @property
    def broker_url(self) -> str:
        return self._services.broker_url

    @property
    def result_backend(self) -> str:
        return self._services.result_backend

    @property
    def ledger_url(self) -> str | None:
        """The Redis of the workers' execution ledger (a test aid), if the stack has one."""
        return self._services.ledger_url

    @property
    def binaries(self) -> Binaries:
        """kube-apiserver, kube-controller-manager, etcd, kubectl: from KUBEBUILDER_ASSETS
        or the build cache."""
        return self._binaries()

    @property
    def env(self) -> dict[str, str]:
        """Exports for clients of the stack (PATH starts with the binaries' directory)."""
        return self._environment.env

    @property
    def path_dirs(self) -> list[str]:
        return self._environment.path_dirs

    # -- the whole stack -------------------------------------------------------------

    def running(self) -> bool:
        """True when the control plane, the broker and the result backend all run."""
        procs = self.processes()
        servers = {self.broker, self.backend} & {REDIS, RABBITMQ, POSTGRESQL}
        names = (ETCD, APISERVER, *servers)
        return all(name in procs and procs[name].alive for name in names)

    def up(
        self,
        *,
        operator: bool = True,
        worker: bool = True,
        worker_imports: Sequence[str] = (),
        operator_config: Path | str | None = None,
        gateway: bool = False,
        broker: str = REDIS,
        backend: str = REDIS,
        ledger_redis: bool = False,
    ) -> Stack:
        """Start whatever is not running yet; return self. Safe to call again.

        `broker`: redis or rabbitmq; `backend`: redis, postgresql or sqlite. Servers
        another choice ran are stopped; workers and operators get the new URLs.
        `ledger_redis`: where neither is Redis, a Redis of the stack's own for the
        workers' execution ledger (the tests' aid; never a broker or backend).
        """
        started_at = time.monotonic()
        with self._paths.lock():
            self._ports.record_binaries(self.binaries.dir)
            # RabbitMQ and PostgreSQL boot beside the control plane; ready before the worker.
            self._services.start_servers(broker, backend, wait=False)
            if ledger_redis and REDIS not in (broker, backend):
                self._services.start_ledger_redis()
            self.start_etcd()
            self.start_apiserver(wait=False)
            self._services.wait_servers()
            # The worker boots (imports Celery) while the API server comes up.
            worker_proc = None
            if worker:
                worker_proc = self.start_worker(imports=worker_imports, wait=False)
            self.wait_apiserver()
            self.install()
            # After the CRD: the garbage collector's first discovery finds TaskRuns.  It
            # syncs while the rest starts.
            controller_manager = self.start_controller_manager()
            if worker_proc is not None:
                self.wait_worker(worker_proc)
            if operator:
                self.start_operator(config_path=operator_config)
            if gateway:
                self.start_gateway()
            if controller_manager is not None:
                self.wait_controller_manager(controller_manager)
            self.write_env_file()
        self.say(f"stack up in {time.monotonic() - started_at:.1f}s ({self.dir})")
        return self

    def down(self, timeout: float | None = None, *, purge: bool = False) -> list[str]:
        """Stop every recorded process (whole process groups); return their names.

        `timeout`: seconds from SIGTERM to SIGKILL (default: each process's own).
        `purge` also deletes the state (etcd data, certificates, logs, kubeconfigs).
        """
        with self._paths.lock():
            stopped = self._supervisor.stop_everything(_STOP_PHASES, timeout)
            self.env_file.unlink(missing_ok=True)
            if purge:
                self._paths.purge()
        if purge:
            self._paths.remove()
        return stopped

    def restart(self, name: str, *, down_for: float = 0.0, timeout: float = 90.0) -> ManagedProcess:
        """Stop `name`, wait `down_for` seconds (an outage), start it again, wait until ready.

        Same port, same command line and settings, so clients' URLs stay valid: for
        reliability tests (Redis outage, API server restart, operator or worker restart).
        """
        proc = self.process(name)
        if proc is None:
            raise StackError(f"no process named {name} in {self.dir}")
        proc.stop()
        time.sleep(down_for)
        if name == REDIS:
            return self.start_redis(timeout)
        if name == RABBITMQ:
            return self.start_rabbitmq(timeout)
        if name == POSTGRESQL:
            return self.start_postgresql(timeout)
        if name == ETCD:
            return self.start_etcd(timeout)
        if name == APISERVER:
            return self.start_apiserver(timeout=timeout)
        again = self._supervisor.respawn(proc)
        if proc.kind == "worker":
            self.wait_worker(again, timeout)
        elif proc.kind in ("operator", GATEWAY) and again.port:
            port = again.port
            self._supervisor.wait(again, lambda: port_answers(port), f"open port {port}", timeout)
        return again

    def run_examples(self, timeout: float = 180.0) -> str:
        """Apply deploy/examples/*.yaml, wait until their TaskRuns finish, return the table."""
        return run_examples(self._kubectl, self.deploy_dir, self.say, timeout)
