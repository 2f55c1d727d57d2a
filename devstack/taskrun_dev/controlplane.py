"""etcd + kube-apiserver on loopback, as controller-runtime's envtest runs them, and
kube-controller-manager with the two controllers that make the API behave as a
cluster's does: the garbage collector (owner references cascade) and the namespace
controller (a deleted namespace empties and goes away).

The API server serves HTTPS only, authenticates clients by certificate (the admin,
O=system:masters; the controller-manager) or service-account token (the operator, and
each controller), and authorizes with RBAC, so the operator's permissions are the ones
deploy/rbac.yaml grants and the controllers' their bootstrap roles.

Here: their command lines, checks and kubeconfigs; `ControlPlane`, which runs them as
processes of the stack; `Kubectl`, the client the stack uses.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from taskrun_dev.binaries import Binaries, Say
from taskrun_dev.pki import SERVICE_CLUSTER_IP_RANGE, Pki, ensure_pki
from taskrun_dev.processes import ManagedProcess, StackError
from taskrun_dev.state import StateDir, StateFile
from taskrun_dev.supervisor import Supervisor

HOST = "127.0.0.1"
# A fixed issuer (not the URL with its port): tokens stay valid if the port changes.
SA_ISSUER = "https://kubernetes.default.svc"
CRD_NAME = "taskruns.celery.taskrun.dev"
CRON_CRD_NAME = "crontaskruns.celery.taskrun.dev"
# The CRDs deploy/ holds, each in its file (crd.yaml also holds the admission policies).
CRD_FILES = {"crd.yaml": CRD_NAME, "crontaskrun-crd.yaml": CRON_CRD_NAME}
OPERATOR_NAMESPACE = "celery-taskrun-system"
OPERATOR_SERVICE_ACCOUNT = "celery-taskrun-operator"
# Process names, and the ports' keys in stack.json (the API server's is its name).
ETCD = "etcd"
APISERVER = "kube-apiserver"
CONTROLLER_MANAGER = "kube-controller-manager"
ETCD_CLIENT_PORT = "etcd-client"
# kube-apiserver waits up to a minute for open watches on SIGTERM; its state is all in
# etcd, so a short grace is enough.
APISERVER_STOP_TIMEOUT = 3.0
# What owner references, namespace deletion and aggregated ClusterRoles (the `edit`
# role a team is given holds TaskRuns and CronTaskRuns) need; the other controllers act
# on pods, nodes, services... that nothing here runs.
CONTROLLERS = ("garbagecollector", "namespace", "clusterrole-aggregation")
# Logged once the garbage collector watches every resource: from then on a deleted
# owner's dependents go at once (the CRD is installed before, so TaskRuns are among
# them; a resource added later is watched within the collector's 30 s rediscovery).
GC_SYNCED = "Garbage collector: all resource monitors have synced"


def etcd_argv(binaries: Binaries, data_dir: Path, client_port: int, peer_port: int) -> list[str]:
    client = f"http://{HOST}:{client_port}"
    peer = f"http://{HOST}:{peer_port}"
    return [
        str(binaries.etcd),
        "--name=taskrun-dev",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=taskrun-dev={peer}",
        # A throwaway dev store: skipping fsync makes every API write much cheaper.
        "--unsafe-no-fsync=true",
        "--log-level=warn",
    ]


# What `up --audit-log` records: every write (the requests that cost the API server
# about what a create costs), at Metadata level (who, what, which object, the answer's
# code; no bodies), once the answer is complete.
AUDITED_VERBS = ("create", "update", "patch", "delete", "deletecollection")
AUDIT_POLICY: dict[str, Any] = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata", "verbs": list(AUDITED_VERBS)}, {"level": "None"}],
}
# Rotation keeps the log bounded; a benchmark of 10,000 runs writes about 60 MB.
AUDIT_LOG_MAX_MB = 200
AUDIT_LOG_BACKUPS = 3


def audit_argv(policy: Path, log: Path) -> list[str]:
    """The flags that make kube-apiserver write its audit log, `policy` already written."""
    return [
        f"--audit-policy-file={policy}",
        f"--audit-log-path={log}",
        "--audit-log-format=json",
        # Blocking: an answered request is in the file, so a reader that saw the answer
        # finds its line (batch mode would hold lines back for up to 30 s).
        "--audit-log-mode=blocking",
        f"--audit-log-maxsize={AUDIT_LOG_MAX_MB}",
        f"--audit-log-maxbackup={AUDIT_LOG_BACKUPS}",
    ]


def apiserver_argv(
    binaries: Binaries, pki: Pki, etcd_url: str, port: int, extra: Sequence[str] = ()
) -> list[str]:
    # Certificates come ready-made from pki.py (envtest uses --cert-dir instead).
    return [
        str(binaries.kube_apiserver),
        f"--etcd-servers={etcd_url}",
        f"--advertise-address={HOST}",
        f"--bind-address={HOST}",
        f"--secure-port={port}",
        f"--tls-cert-file={pki.serving_cert}",
        f"--tls-private-key-file={pki.serving_key}",
        f"--client-ca-file={pki.ca_cert}",
        f"--service-account-issuer={SA_ISSUER}",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        "--authorization-mode=RBAC",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        "--allow-privileged=true",
        # As envtest: no serviceaccount controller creates `default` service accounts
        # (the controller-manager runs only CONTROLLERS), so the admission plugin that
        # requires them would reject pods.
        "--disable-admission-plugins=ServiceAccount",
        # Endpoints may not be loopback addresses, and no pod needs the `kubernetes`
        # Service here: without this the server logs an error every few seconds.
        "--endpoint-reconciler-type=none",
        *extra,
    ]


def controller_manager_argv(binary: Path, kubeconfig: Path) -> list[str]:
    return [
        str(binary),
        f"--kubeconfig={kubeconfig}",
        f"--controllers={','.join(CONTROLLERS)}",
        # Each controller acts as its own ServiceAccount in kube-system, with a token it
        # asks the TokenRequest API for (signed by the API server's key: no
        # --service-account-private-key-file, which only the legacy token controller
        # needs), so it has just its bootstrap role system:controller:<name>.  The
        # manager's own user may read, and mint those tokens, but delete nothing.
        "--use-service-account-credentials=true",
        # The only instance: no Lease to hold.
        "--leader-elect=false",
        # No HTTPS (its /healthz and /metrics) at all, so no port: the log says when the
        # garbage collector is ready (GC_SYNCED).
        "--secure-port=0",
    ]


def _no_proxy_opener(context: ssl.SSLContext | None = None) -> urllib.request.OpenerDirector:
    # Loopback traffic must never go through an HTTP(S)_PROXY from the environment.
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


def http_get(url: str, timeout: float = 2.0, context: ssl.SSLContext | None = None) -> str | None:
    """Body of a 200 answer, or None for any error (connection refused, 5xx, ...)."""
    try:
        with _no_proxy_opener(context).open(url, timeout=timeout) as resp:
            body: bytes = resp.read()
            return body.decode("utf-8", errors="replace") if resp.status == 200 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def etcd_healthy(client_port: int) -> bool:
    body = http_get(f"http://{HOST}:{client_port}/health")
    if body is None:
        return False
    try:
        return bool(json.loads(body).get("health") == "true")
    except ValueError:
        return False


def admin_ssl_context(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
    return context


def apiserver_ready(port: int, pki: Pki) -> bool:
    return http_get(f"https://{HOST}:{port}/readyz", context=admin_ssl_context(pki)) == "ok"


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _kubeconfig(server: str, pki: Pki, user: str, credentials: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "taskrun-dev",
                "cluster": {"server": server, "certificate-authority-data": _b64(pki.ca_cert)},
            }
        ],
        "users": [{"name": user, "user": credentials}],
        "contexts": [
            {
                "name": f"{user}@taskrun-dev",
                "context": {"cluster": "taskrun-dev", "user": user, "namespace": "default"},
            }
        ],
        "current-context": f"{user}@taskrun-dev",
        "preferences": {},
    }


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    tmp.replace(path)


def write_cert_kubeconfig(
    path: Path, server: str, pki: Pki, user: str, cert: Path, key: Path
) -> None:
    creds = {"client-certificate-data": _b64(cert), "client-key-data": _b64(key)}
    _write_private(path, yaml.safe_dump(_kubeconfig(server, pki, user, creds), sort_keys=False))


def write_token_kubeconfig(path: Path, server: str, pki: Pki, user: str, token: str) -> None:
    config = _kubeconfig(server, pki, user, {"token": token})
    _write_private(path, yaml.safe_dump(config, sort_keys=False))


class Kubectl:
    """The built kubectl, as cluster admin unless told another kubeconfig."""

    def __init__(self, binaries: Callable[[], Binaries], admin_kubeconfig: Path) -> None:
        self._binaries = binaries
        self._admin_kubeconfig = admin_kubeconfig

    def run(
        self,
        *args: str,
        input: str | None = None,
        check: bool = False,
        kubeconfig: Path | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl as cluster admin (or with `kubeconfig`).

        check=True raises StackError (with kubectl's stderr) on a non-zero exit.
        """
        argv = [
            str(self._binaries().kubectl),
            f"--kubeconfig={kubeconfig or self._admin_kubeconfig}",
            *args,
        ]
        result = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise StackError(
                f"kubectl {' '.join(args)} failed (exit {result.returncode}):\n"
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        return result

    def json(self, *args: str, kubeconfig: Path | None = None) -> Any:
        """`kubectl ... -o json`, parsed."""
        result = self.run(*args, "-o", "json", check=True, kubeconfig=kubeconfig)
        return json.loads(result.stdout)


class ControlPlane:
    """etcd and kube-apiserver as processes of the stack, on the ports it remembers."""

    def __init__(
        self,
        state_dir: StateDir,
        ports: StateFile,
        supervisor: Supervisor,
        binaries: Callable[[], Binaries],
        say: Say,
        *,
        audit: bool,
    ) -> None:
        self._dir = state_dir
        self._ports = ports
        self._supervisor = supervisor
        self._binaries = binaries
        self._say = say
        self._audit = audit

    @property
    def apiserver_url(self) -> str:
        return f"https://{HOST}:{self._ports.known_port(APISERVER)}"

    @property
    def etcd_url(self) -> str:
        return f"http://{HOST}:{self._ports.known_port(ETCD_CLIENT_PORT)}"

    def start_etcd(self, timeout: float = 30.0) -> ManagedProcess:
        client = self._ports.port(ETCD_CLIENT_PORT, self._supervisor.alive_port(ETCD))
        peer = self._ports.port("etcd-peer", self._supervisor.alive_port(ETCD, "peer_port"))
        argv = etcd_argv(self._binaries(), self._dir.dir / "etcd", client, peer)
        proc, started = self._supervisor.ensure(
            ETCD,
            ETCD,
            argv,
            settings={},
            port=client,
            url=f"http://{HOST}:{client}",
            extra_meta={"peer_port": peer},
        )
        if started:
            self._say(f"etcd on 127.0.0.1:{client}")
            self._supervisor.wait(proc, lambda: etcd_healthy(client), "become healthy", timeout)
        return proc

    def start_apiserver(self, *, wait: bool = True, timeout: float = 90.0) -> ManagedProcess:
        """Start kube-apiserver (HTTPS, RBAC) on its remembered port; wait for /readyz."""
        pki = ensure_pki(self._dir.pki.dir)
        port = self._ports.port(APISERVER, self._supervisor.alive_port(APISERVER))
        extra: list[str] = []
        if self._audit:
            audit_log = self._dir.audit_log
            policy = audit_log.with_name("policy.yaml")
            policy.parent.mkdir(parents=True, exist_ok=True)
            policy.write_text(yaml.safe_dump(AUDIT_POLICY, sort_keys=False))
            extra = audit_argv(policy, audit_log)
        argv = apiserver_argv(self._binaries(), pki, self.etcd_url, port, extra)
        url = f"https://{HOST}:{port}"
        proc, started = self._supervisor.ensure(
            APISERVER,
            APISERVER,
            argv,
            settings={},
            port=port,
            url=url,
            stop_timeout=APISERVER_STOP_TIMEOUT,
        )
        write_cert_kubeconfig(
            self._dir.admin_kubeconfig, url, pki, "admin", pki.admin_cert, pki.admin_key
        )
        if started:
            self._say(f"kube-apiserver on {url}")
        if wait:
            self.wait_apiserver(timeout)
        return proc

    def wait_apiserver(self, timeout: float = 90.0) -> None:
        proc = self._supervisor.process(APISERVER)
        if proc is None:
            raise StackError("kube-apiserver is not running")
        port = proc.port or self._ports.known_port(APISERVER)
        pki = self._dir.pki

        def ready() -> bool:
            return apiserver_ready(port, pki)

        self._supervisor.wait(proc, ready, "report /readyz ok", timeout, interval=0.25)

    def start_controller_manager(self) -> ManagedProcess | None:
        """Start kube-controller-manager (CONTROLLERS) with its own client certificate;
        None when the binaries have none (KUBEBUILDER_ASSETS from envtest)."""
        binary = self._binaries().kube_controller_manager
        if binary is None:
            self._say(
                "warning: no kube-controller-manager beside kube-apiserver: owner references "
                "will not cascade and deleted namespaces stay Terminating"
            )
            return None
        pki = ensure_pki(self._dir.pki.dir)
        kubeconfig = self._dir.controller_manager_kubeconfig
        write_cert_kubeconfig(
            kubeconfig,
            self.apiserver_url,
            pki,
            CONTROLLER_MANAGER,
            pki.controller_manager_cert,
            pki.controller_manager_key,
        )
        proc, started = self._supervisor.ensure(
            CONTROLLER_MANAGER,
            CONTROLLER_MANAGER,
            controller_manager_argv(binary, kubeconfig),
            settings={},
        )
        if started:
            self._say(f"kube-controller-manager ({', '.join(CONTROLLERS)})")
        return proc

    def wait_controller_manager(self, proc: ManagedProcess, timeout: float = 60.0) -> None:
        """Wait until the garbage collector watches every resource."""

        def synced() -> bool:
            return GC_SYNCED in proc.log_text()

        self._supervisor.wait(proc, synced, "log that the garbage collector synced", timeout, 0.2)
