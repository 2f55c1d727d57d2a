"""The whole local stack: etcd, kube-apiserver, redis, Celery workers, operators.

State lives in one directory (default ./.taskrun-dev or $TASKRUN_DEV_DIR):
  stack.json           ports and the binaries directory
  pids/NAME.json       one per running process (see processes.py)
  logs/NAME.log        each process's output (the previous run's in NAME.log.prev)
  pki/                 CA, API server and admin certificates, service-account key
  etcd/, redis/        data directories
  audit/               the API server's audit log of writes (with `up --audit-log`)
  admin.kubeconfig     cluster admin (O=system:masters)
  operator.kubeconfig  the operator's ServiceAccount token: RBAC as deployed
  gateway.kubeconfig   the gateway's ServiceAccount token (with `up --gateway`)
  env.sh               exports for a shell

Each component is (re)started only when it is not running with the wanted command
line and settings, so `up` is idempotent and changes of options restart just the
parts they concern.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from taskrun_dev import controlplane as cp
from taskrun_dev import services
from taskrun_dev.binaries import Binaries, Say, ensure_binaries
from taskrun_dev.pki import Pki, ensure_pki
from taskrun_dev.processes import (
    DEFAULT_STOP_TIMEOUT,
    ManagedProcess,
    StackError,
    free_port,
    load_all,
    port_answers,
    port_is_free,
    stop_all,
    wait_until,
)

ETCD = "etcd"
APISERVER = "kube-apiserver"
REDIS = "redis"
DEFAULT_WORKER = "worker1"
DEFAULT_OPERATOR = "operator"
GATEWAY = "gateway"
GATEWAY_SERVICE_ACCOUNT = "celery-taskrun-gateway"
# What the local stack takes from deploy/gateway.yaml: the gateway's identity and rights
# (the gateway itself runs as a process, not as the Deployment).
_GATEWAY_RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")

# Stop order for `down`: what depends on others goes first.
_STOP_PHASES: tuple[tuple[str, ...], ...] = (
    ("operator", GATEWAY),
    ("worker",),
    (APISERVER,),
    (ETCD, REDIS),
)

TOKEN_DURATION = "24h"
# kube-apiserver waits up to a minute for open watches on SIGTERM; its state is all in
# etcd, so a short grace is enough.
_STOP_TIMEOUTS = {APISERVER: 3.0}


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
        # Processes started through this object: they keep their Popen, so we reap them.
        self._started: dict[str, ManagedProcess] = {}
        self._binaries: Binaries | None = None

    # -- paths -----------------------------------------------------------------

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

    # -- persisted state ---------------------------------------------------------

    def _load_state(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            data = {}
        data.setdefault("ports", {})
        return data

    def _save_state(self, state: Mapping[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    def _port(self, key: str, in_use: int | None = None) -> int:
        """The port for `key`: `in_use` (a live process has it), else the remembered one
        if still free (URLs and kubeconfigs survive restarts), else a new free one."""
        state = self._load_state()
        remembered = state["ports"].get(key)
        if in_use:
            port = in_use
        elif isinstance(remembered, int) and port_is_free(remembered):
            port = remembered
        else:
            port = free_port()
        if remembered != port:
            state["ports"][key] = port
            self._save_state(state)
        return port

    def _known_port(self, key: str) -> int:
        port = self._load_state()["ports"].get(key)
        if not isinstance(port, int):
            raise StackError(f"the stack in {self.dir} has no {key} port yet: run `up` first")
        return port

    # -- addresses ---------------------------------------------------------------

    @property
    def apiserver_url(self) -> str:
        return f"https://{cp.HOST}:{self._known_port(APISERVER)}"

    @property
    def etcd_url(self) -> str:
        return f"http://{cp.HOST}:{self._known_port('etcd-client')}"

    @property
    def redis_port(self) -> int:
        return self._known_port(REDIS)

    @property
    def broker_url(self) -> str:
        return f"redis://{cp.HOST}:{self.redis_port}/0"

    @property
    def result_backend(self) -> str:
        return f"redis://{cp.HOST}:{self.redis_port}/1"

    @property
    def binaries(self) -> Binaries:
        """kube-apiserver, etcd, kubectl: from KUBEBUILDER_ASSETS or the build cache."""
        if self._binaries is None:
            self._binaries = ensure_binaries(self.say)
        return self._binaries

    # -- processes ---------------------------------------------------------------

    def processes(self) -> dict[str, ManagedProcess]:
        """Every process recorded in the state directory (alive or not)."""
        found = load_all(self.pids_dir)
        for name, proc in self._started.items():
            if name in found and found[name].pid == proc.pid:
                found[name] = proc
        return found

    def process(self, name: str) -> ManagedProcess | None:
        return self.processes().get(name)

    def _alive(self, name: str) -> ManagedProcess | None:
        proc = self.process(name)
        return proc if proc is not None and proc.alive else None

    def _alive_port(self, name: str, meta_key: str | None = None) -> int | None:
        proc = self._alive(name)
        if proc is None:
            return None
        port = proc.meta.get(meta_key) if meta_key else proc.port
        return port if isinstance(port, int) else None

    def status(self) -> list[dict[str, Any]]:
        return [proc.describe() for proc in self.processes().values()]

    def running(self) -> bool:
        """True when the control plane and redis all run."""
        procs = self.processes()
        return all(name in procs and procs[name].alive for name in (ETCD, APISERVER, REDIS))

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        # One `up`/`down` at a time per state directory.
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / ".lock").open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def _ensure(
        self,
        name: str,
        kind: str,
        argv: list[str],
        *,
        env: dict[str, str],
        compare_env: Mapping[str, str],
        port: int | None = None,
        url: str | None = None,
        cwd: Path | None = None,
        extra_meta: Mapping[str, Any] | None = None,
    ) -> tuple[ManagedProcess, bool]:
        """Start `name` unless it already runs with this argv and settings.

        Returns the process and whether it was started now.
        """
        wanted = {"argv": argv, "env": dict(compare_env), "cwd": str(cwd) if cwd else None}
        current = self.process(name)
        if current is not None and current.alive:
            if current.meta.get("spec") == wanted:
                return current, False
            self.say(f"{name}: settings changed, restarting (pid {current.pid})")
            current.stop()
        elif current is not None:
            # Dead but recorded: clear leftovers of its group before starting again.
            current.stop(timeout=2.0)
        proc = ManagedProcess.spawn(
            name,
            argv,
            kind=kind,
            env=env,
            log_dir=self.logs_dir,
            pid_dir=self.pids_dir,
            port=port,
            url=url,
            cwd=cwd,
            meta={"spec": wanted, **(extra_meta or {})},
            stop_timeout=_STOP_TIMEOUTS.get(name, DEFAULT_STOP_TIMEOUT),
        )
        self._started[name] = proc
        return proc, True

    def _await(
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

    # -- components ----------------------------------------------------------------

    def start_redis(self, timeout: float = 20.0) -> ManagedProcess:
        """Start redis (on its remembered port, so URLs stay valid across restarts)."""
        port = self._port(REDIS, self._alive_port(REDIS))
        data_dir = self.dir / "redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = services.redis_argv(port, data_dir)
        proc, started = self._ensure(
            REDIS,
            REDIS,
            argv,
            env=services.base_env({}, None),
            compare_env={},
            port=port,
            url=f"redis://{cp.HOST}:{port}",
        )
        if started:
            self.say(f"redis on 127.0.0.1:{port}")
            self._await(proc, lambda: services.redis_pings(port), "answer PING", timeout)
        return proc

    def start_etcd(self, timeout: float = 30.0) -> ManagedProcess:
        client = self._port("etcd-client", self._alive_port(ETCD))
        peer = self._port("etcd-peer", self._alive_port(ETCD, "peer_port"))
        data_dir = self.dir / "etcd"
        argv = cp.etcd_argv(self.binaries, data_dir, client, peer)
        proc, started = self._ensure(
            ETCD,
            ETCD,
            argv,
            env=services.base_env({}, None),
            compare_env={},
            port=client,
            url=f"http://{cp.HOST}:{client}",
            extra_meta={"peer_port": peer},
        )
        if started:
            self.say(f"etcd on 127.0.0.1:{client}")
            self._await(proc, lambda: cp.etcd_healthy(client), "become healthy", timeout)
        return proc

    def start_apiserver(self, *, wait: bool = True, timeout: float = 90.0) -> ManagedProcess:
        """Start kube-apiserver (HTTPS, RBAC) on its remembered port; wait for /readyz."""
        pki = ensure_pki(self.pki.dir)
        port = self._port(APISERVER, self._alive_port(APISERVER))
        extra: list[str] = []
        if self.audit:
            policy = self.audit_log.with_name("policy.yaml")
            policy.parent.mkdir(parents=True, exist_ok=True)
            policy.write_text(yaml.safe_dump(cp.AUDIT_POLICY, sort_keys=False))
            extra = cp.audit_argv(policy, self.audit_log)
        argv = cp.apiserver_argv(self.binaries, pki, self.etcd_url, port, extra)
        url = f"https://{cp.HOST}:{port}"
        proc, started = self._ensure(
            APISERVER,
            APISERVER,
            argv,
            env=services.base_env({}, None),
            compare_env={},
            port=port,
            url=url,
        )
        cp.write_admin_kubeconfig(self.admin_kubeconfig, url, pki)
        if started:
            self.say(f"kube-apiserver on {url}")
        if wait:
            self.wait_apiserver(timeout)
        return proc

    def wait_apiserver(self, timeout: float = 90.0) -> None:
        proc = self.process(APISERVER)
        if proc is None:
            raise StackError("kube-apiserver is not running")
        port = proc.port or self._known_port(APISERVER)

        def ready() -> bool:
            return cp.apiserver_ready(port, self.pki)

        self._await(proc, ready, "report /readyz ok", timeout, interval=0.25)

    def install(self) -> None:
        """Apply the CRD and RBAC, wait for the CRD, mint the operator's kubeconfig."""
        crd = self.deploy_dir / "crd.yaml" if self.deploy_dir else None
        if crd is not None and crd.is_file():
            self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd), check=True)
            self.kubectl(
                "wait",
                "--for=condition=Established",
                f"crd/{cp.CRD_NAME}",
                "--timeout=60s",
                check=True,
            )
        else:
            self.say(f"warning: {crd or 'deploy/crd.yaml'} not found, TaskRun CRD not installed")
        rbac = self.deploy_dir / "rbac.yaml" if self.deploy_dir else None
        if rbac is None or not rbac.is_file():
            raise StackError(f"{rbac or 'deploy/rbac.yaml'} not found: cannot grant the operator")
        self.kubectl("apply", "-f", str(rbac), check=True)
        self.write_operator_kubeconfig()

    def mint_token(
        self,
        service_account: str = cp.OPERATOR_SERVICE_ACCOUNT,
        namespace: str = cp.OPERATOR_NAMESPACE,
        duration: str = TOKEN_DURATION,
    ) -> str:
        """A TokenRequest token for a ServiceAccount (what a pod would be given)."""
        result = self.kubectl(
            "create",
            "token",
            service_account,
            "-n",
            namespace,
            f"--duration={duration}",
            check=True,
        )
        return result.stdout.strip()

    def write_operator_kubeconfig(self, path: Path | None = None) -> Path:
        path = path or self.operator_kubeconfig
        user = f"system:serviceaccount:{cp.OPERATOR_NAMESPACE}:{cp.OPERATOR_SERVICE_ACCOUNT}"
        cp.write_token_kubeconfig(path, self.apiserver_url, self.pki, user, self.mint_token())
        return path

    def start_worker(
        self,
        name: str = DEFAULT_WORKER,
        env_overrides: Mapping[str, str] | None = None,
        queues: Sequence[str] = (),
        imports: Sequence[str] = (),
        *,
        app: str = services.DEFAULT_WORKER_APP,
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
            # The execution ledger (a test aid, off by default) in the broker's Redis.
            "TASKRUN_LEDGER_URL": "broker",
        }
        if imports:
            settings["TASKRUN_WORKER_IMPORTS"] = ",".join(imports)
        settings.update(env_overrides or {})
        argv = services.worker_argv(
            name, app=app, queues=queues, concurrency=concurrency, pool=pool, extra_args=extra_args
        )
        proc, started = self._ensure(
            name,
            "worker",
            argv,
            env=services.base_env(settings, None),
            compare_env=settings,
            cwd=cwd or Path.cwd(),
        )
        if started:
            self.say(f"celery worker {name} ({app}, pool {pool} x{concurrency})")
        if wait:
            self.wait_worker(proc, timeout)
        return proc

    def wait_worker(self, proc: ManagedProcess, timeout: float = 60.0) -> None:
        pattern = re.compile(services.worker_ready_pattern(proc.name))

        def ready() -> bool:
            return pattern.search(proc.log_text()) is not None

        self._await(proc, ready, "log 'ready'", timeout, interval=0.2)

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
        metrics_port = self._port(f"metrics-{name}", self._alive_port(name))
        settings = {
            "KUBECONFIG": str(kubeconfig or self.operator_kubeconfig),
            "CELERY_BROKER_URL": self.broker_url,
            "CELERY_RESULT_BACKEND": self.result_backend,
            "TASKRUN_METRICS_HOST": cp.HOST,
            "TASKRUN_METRICS_PORT": str(metrics_port),
            # Leader election: operators sharing a Lease never both act.  Each named
            # process its own by default (several may watch different namespaces).
            "TASKRUN_LEASE_NAME": f"celery-taskrun-{name}",
        }
        if config_path is not None:
            settings["TASKRUN_CONFIG"] = str(Path(config_path).resolve())
        settings.update(env_overrides or {})
        port = int(settings["TASKRUN_METRICS_PORT"])
        argv = services.operator_argv(extra_args)
        proc, started = self._ensure(
            name,
            "operator",
            argv,
            env=services.base_env(settings, None),
            compare_env=settings,
            port=port,
            url=f"http://{cp.HOST}:{port}/metrics",
            cwd=cwd or Path.cwd(),
        )
        if started:
            self.say(f"operator {name}, metrics on http://127.0.0.1:{port}/metrics")
        if wait:
            what = f"open its metrics port {port}"
            self._await(proc, lambda: port_answers(port), what, timeout, interval=0.2)
        return proc

    def install_gateway(self) -> Path:
        """Apply the gateway's ServiceAccount and RBAC (deploy/gateway.yaml); mint its
        kubeconfig. Returns the kubeconfig's path."""
        manifest = self.deploy_dir / "gateway.yaml" if self.deploy_dir else None
        if manifest is None or not manifest.is_file():
            raise StackError(f"{manifest or 'deploy/gateway.yaml'} not found")
        docs = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
        rbac = [d for d in docs if d.get("kind") in _GATEWAY_RBAC_KINDS]
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(rbac), check=True)
        user = f"system:serviceaccount:{cp.OPERATOR_NAMESPACE}:{GATEWAY_SERVICE_ACCOUNT}"
        token = self.mint_token(GATEWAY_SERVICE_ACCOUNT)
        path = self.gateway_kubeconfig
        cp.write_token_kubeconfig(path, self.apiserver_url, self.pki, user, token)
        return path

    def start_gateway(
        self, *, extra_args: Sequence[str] = (), wait: bool = True, timeout: float = 60.0
    ) -> ManagedProcess:
        """Start (or keep) the gateway on 127.0.0.1 with its own ServiceAccount's rights.

        Ready once its port accepts connections; its URL goes into env.sh.
        """
        if not self.gateway_kubeconfig.is_file() or self._alive(GATEWAY) is None:
            self.install_gateway()
        port = self._port(GATEWAY, self._alive_port(GATEWAY))
        settings = {"KUBECONFIG": str(self.gateway_kubeconfig)}
        proc, started = self._ensure(
            GATEWAY,
            GATEWAY,
            services.gateway_argv(port, extra_args),
            env=services.base_env(settings, None),
            compare_env=settings,
            port=port,
            url=f"http://{cp.HOST}:{port}",
            cwd=Path.cwd(),
        )
        if started:
            self.say(f"gateway on http://127.0.0.1:{port}")
        if wait:
            what = f"open its port {port}"
            self._await(proc, lambda: port_answers(port), what, timeout, interval=0.1)
        return proc

    def restart(self, name: str, *, down_for: float = 0.0, timeout: float = 90.0) -> ManagedProcess:
        """Stop `name`, wait `down_for` seconds (an outage), start it again, wait until ready.

        Same port, same command line and settings, so clients' URLs stay valid: for
        reliability tests (Redis outage, API server restart, operator or worker restart).
        """
        proc = self.process(name)
        if proc is None:
            raise StackError(f"no process named {name} in {self.dir}")
        spec = proc.meta.get("spec") or {}
        proc.stop()
        time.sleep(down_for)
        if name == REDIS:
            return self.start_redis(timeout)
        if name == ETCD:
            return self.start_etcd(timeout)
        if name == APISERVER:
            return self.start_apiserver(timeout=timeout)
        cwd = spec.get("cwd")
        again = ManagedProcess.spawn(
            name,
            spec["argv"],
            kind=proc.kind,
            env=services.base_env(spec.get("env", {}), None),
            log_dir=self.logs_dir,
            pid_dir=self.pids_dir,
            port=proc.port,
            url=proc.url,
            cwd=Path(cwd) if cwd else None,
            meta=proc.meta,
            stop_timeout=proc.stop_timeout,
        )
        self._started[name] = again
        if proc.kind == "worker":
            self.wait_worker(again, timeout)
        elif proc.kind in ("operator", GATEWAY) and again.port:
            port = again.port
            self._await(again, lambda: port_answers(port), f"open port {port}", timeout)
        return again

    # -- the whole stack ---------------------------------------------------------

    def up(
        self,
        *,
        operator: bool = True,
        worker: bool = True,
        worker_imports: Sequence[str] = (),
        operator_config: Path | str | None = None,
        gateway: bool = False,
    ) -> Stack:
        """Start whatever is not running yet; return self. Safe to call again."""
        started_at = time.monotonic()
        with self._lock():
            self.dir.mkdir(parents=True, exist_ok=True)
            state = self._load_state()
            state["binaries_dir"] = str(self.binaries.dir)
            self._save_state(state)
            self.start_redis()
            self.start_etcd()
            self.start_apiserver(wait=False)
            # The worker boots (imports Celery) while the API server comes up.
            worker_proc = None
            if worker:
                worker_proc = self.start_worker(imports=worker_imports, wait=False)
            self.wait_apiserver()
            self.install()
            if worker_proc is not None:
                self.wait_worker(worker_proc)
            if operator:
                self.start_operator(config_path=operator_config)
            if gateway:
                self.start_gateway()
            self.write_env_file()
        self.say(f"stack up in {time.monotonic() - started_at:.1f}s ({self.dir})")
        return self

    def down(self, timeout: float | None = None, *, purge: bool = False) -> list[str]:
        """Stop every recorded process (whole process groups); return their names.

        `timeout`: seconds from SIGTERM to SIGKILL (default: each process's own).
        `purge` also deletes the state (etcd data, certificates, logs, kubeconfigs).
        """
        with self._lock():
            procs = self.processes()
            stopped: list[str] = []
            for phase in _STOP_PHASES:
                batch = [p for p in procs.values() if p.kind in phase or p.name in phase]
                if batch:
                    stop_all(batch, timeout=timeout)
                    stopped += [p.name for p in batch]
            rest = [p for p in procs.values() if p.name not in stopped]
            if rest:
                stop_all(rest, timeout=timeout)
                stopped += [p.name for p in rest]
            self._started.clear()
            self.env_file.unlink(missing_ok=True)
            if purge:
                for sub in ("etcd", "redis", "pki", "pids", "logs", "audit"):
                    shutil.rmtree(self.dir / sub, ignore_errors=True)
                for file in (
                    self.state_file,
                    self.admin_kubeconfig,
                    self.operator_kubeconfig,
                    self.gateway_kubeconfig,
                ):
                    file.unlink(missing_ok=True)
        if purge:
            (self.dir / ".lock").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.dir.rmdir()  # only if nothing else of the user's is in it
        return stopped

    # -- environment -------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """Exports for clients of the stack (PATH starts with the binaries' directory)."""
        env = {
            "KUBECONFIG": str(self.admin_kubeconfig),
            "TASKRUN_OPERATOR_KUBECONFIG": str(self.operator_kubeconfig),
            "CELERY_BROKER_URL": self.broker_url,
            "CELERY_RESULT_BACKEND": self.result_backend,
            "TASKRUN_DEV_DIR": str(self.dir),
        }
        operator = self.process(DEFAULT_OPERATOR)
        if operator is not None and operator.alive and operator.url:
            env["TASKRUN_METRICS_URL"] = operator.url
        gateway = self.process(GATEWAY)
        if gateway is not None and gateway.alive and gateway.url:
            env["TASKRUN_GATEWAY_URL"] = gateway.url
        if self.audit:
            env["TASKRUN_AUDIT_LOG"] = str(self.audit_log)
        env["PATH"] = os.pathsep.join([*self.path_dirs, os.environ.get("PATH", "")])
        return env

    @property
    def path_dirs(self) -> list[str]:
        """The control plane's binaries, then the project's environment (taskrun-dev,
        kubectl-taskrun, celery: the environment this stack runs from)."""
        return [str(self.binaries.dir), str(Path(sys.executable).parent)]

    def write_env_file(self) -> Path:
        lines = ["# Written by `taskrun-dev up`; source it: . " + shlex.quote(str(self.env_file))]
        for key, value in self.env.items():
            if key == "PATH":
                dirs = ":".join(shlex.quote(d) for d in self.path_dirs)
                lines.append(f'export PATH={dirs}:"$PATH"')
            else:
                lines.append(f"export {key}={shlex.quote(value)}")
        self.env_file.write_text("\n".join(lines) + "\n")
        return self.env_file

    # -- kubectl ---------------------------------------------------------------------

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = False,
        kubeconfig: Path | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl as cluster admin (or with `kubeconfig`).

        check=True raises StackError (with kubectl's stderr) on a non-zero exit.
        """
        return cp.run_kubectl(
            self.binaries,
            kubeconfig or self.admin_kubeconfig,
            args,
            input=input,
            check=check,
            timeout=timeout,
        )

    def kubectl_json(self, *args: str, kubeconfig: Path | None = None) -> Any:
        """`kubectl ... -o json`, parsed."""
        result = self.kubectl(*args, "-o", "json", check=True, kubeconfig=kubeconfig)
        return json.loads(result.stdout)

    # -- examples --------------------------------------------------------------------

    def run_examples(self, timeout: float = 180.0) -> str:
        """Apply deploy/examples/*.yaml, wait until their TaskRuns finish, return the table."""
        examples = sorted((self.deploy_dir / "examples").glob("*.yaml")) if self.deploy_dir else []
        if not examples:
            self.say("warning: no deploy/examples/*.yaml to apply")
        runs: list[tuple[str, str]] = []
        for path in examples:
            applied = self.kubectl_json("apply", "-f", str(path))
            items = applied.get("items", [applied]) if applied.get("kind") == "List" else [applied]
            for item in items:
                if item.get("kind") == "TaskRun":
                    meta = item["metadata"]
                    runs.append((meta.get("namespace", "default"), meta["name"]))
        self.say(f"applied {len(runs)} example TaskRuns; waiting up to {timeout:.0f}s")
        deadline = time.monotonic() + timeout
        for namespace, name in runs:
            left = max(1, int(deadline - time.monotonic()))
            result = self.kubectl(
                "wait",
                "--for=condition=Finished",
                f"taskrun/{name}",
                "-n",
                namespace,
                f"--timeout={left}s",
                timeout=left + 30,
            )
            if result.returncode != 0:
                self.say(f"warning: {namespace}/{name} not finished: {result.stderr.strip()}")
        table: str = self.kubectl("get", "taskruns", "-A", check=True).stdout
        return table
