"""The local stack itself: RBAC on, CRD established, loopback only, clean `down`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from taskrun_dev import controlplane as cp
from taskrun_dev.binaries import controlplane_source, versions
from taskrun_dev.processes import ManagedProcess, StackError
from taskrun_dev.procfs import is_running, proc_info
from taskrun_dev.services import redis_pings
from taskrun_dev.stack import Stack
from taskrun_dev.state import StateDir
from taskrun_dev.supervisor import Supervisor

from support import beyond_loopback, listening_addresses

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
OPERATOR_USER = "system:serviceaccount:celery-taskrun-system:celery-taskrun-operator"
MANAGER_USER = "system:kube-controller-manager"
GARBAGE_COLLECTOR = "system:serviceaccount:kube-system:generic-garbage-collector"
NAMESPACE_CONTROLLER = "system:serviceaccount:kube-system:namespace-controller"

# A Celery app of our own for process tests, so they do not depend on the product's tasks.
PROBE_APP = """
import os
from celery import Celery
app = Celery("probe", broker=os.environ["CELERY_BROKER_URL"],
             backend=os.environ["CELERY_RESULT_BACKEND"])
"""


def _can_i(stack: Stack, *args: str) -> str:
    result = stack.kubectl("auth", "can-i", *args, kubeconfig=stack.operator_kubeconfig)
    return result.stdout.strip()


@pytest.mark.parametrize(("file", "name"), sorted(cp.CRD_FILES.items()))
def test_crds_are_established(stack: Stack, file: str, name: str) -> None:
    if not (REPO / "deploy" / file).is_file():
        pytest.skip(f"deploy/{file} not generated yet")
    crd = stack.kubectl_json("get", "crd", name)
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions.get("Established") == "True"
    plural = name.split(".", 1)[0]
    assert stack.kubectl("get", plural, "-A", check=True).returncode == 0


def test_server_is_the_pinned_version(stack: Stack) -> None:
    if os.environ.get("KUBEBUILDER_ASSETS"):
        pytest.skip("binaries come from KUBEBUILDER_ASSETS")
    kube_version, _ = versions(controlplane_source())
    info = json.loads(stack.kubectl("version", "-o", "json", check=True).stdout)
    assert info["serverVersion"]["gitVersion"] == kube_version
    assert info["clientVersion"]["gitVersion"] == kube_version
    manager = stack.binaries.kube_controller_manager
    assert manager is not None
    built = subprocess.run([manager, "--version"], capture_output=True, text=True, timeout=30)
    assert built.stdout.split() == ["Kubernetes", kube_version]


def test_operator_kubeconfig_is_the_service_account(stack: Stack) -> None:
    whoami = stack.kubectl_json("auth", "whoami", kubeconfig=stack.operator_kubeconfig)
    assert whoami["status"]["userInfo"]["username"] == OPERATOR_USER


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
        ("get", "taskruns.celery.taskrun.dev", "yes"),
        ("list", "taskruns.celery.taskrun.dev", "yes"),
        ("watch", "taskruns.celery.taskrun.dev", "yes"),
        ("patch", "taskruns.celery.taskrun.dev", "yes"),
        ("update", "taskruns.celery.taskrun.dev", "no"),  # patches only
        ("patch", "taskruns.celery.taskrun.dev/status", "yes"),
        ("update", "taskruns.celery.taskrun.dev/status", "no"),
        ("create", "events", "yes"),
        ("create", "events.events.k8s.io", "no"),
        ("list", "customresourcedefinitions.apiextensions.k8s.io", "yes"),
        ("watch", "namespaces", "yes"),
        ("list", "secrets", "no"),
        ("get", "configmaps", "no"),
        ("create", "taskruns.celery.taskrun.dev", "yes"),  # a schedule's slots
        ("watch", "crontaskruns.celery.taskrun.dev", "yes"),
        ("patch", "crontaskruns.celery.taskrun.dev", "yes"),
        ("create", "crontaskruns.celery.taskrun.dev", "no"),
        ("delete", "crontaskruns.celery.taskrun.dev", "no"),
        ("update", "crontaskruns.celery.taskrun.dev/status", "yes"),
        ("update", "crontaskruns.celery.taskrun.dev/finalizers", "yes"),
        ("delete", "namespaces", "no"),
        ("create", "pods", "no"),
    ],
)
def test_operator_rbac(stack: Stack, verb: str, resource: str, allowed: str) -> None:
    # `can-i VERB TYPE/NAME` would read a subresource as an object's name.
    resource, _, subresource = resource.partition("/")
    asked = [f"--subresource={subresource}"] if subresource else []
    assert _can_i(stack, verb, resource, *asked, "--all-namespaces") == allowed


@pytest.mark.parametrize(
    ("verb", "namespace", "allowed"),
    [
        ("update", "celery-taskrun-system", "yes"),
        ("create", "celery-taskrun-system", "yes"),
        ("delete", "celery-taskrun-system", "no"),
        ("update", "default", "no"),
    ],
)
def test_operator_may_use_its_lease_only(
    stack: Stack, verb: str, namespace: str, allowed: str
) -> None:
    assert _can_i(stack, verb, "leases.coordination.k8s.io", "-n", namespace) == allowed


def test_operator_is_really_forbidden_secrets(stack: Stack) -> None:
    # can-i asks the authorizer; this proves the token is what the server enforces.
    denied = stack.kubectl("get", "secrets", "-A", kubeconfig=stack.operator_kubeconfig)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    allowed = stack.kubectl("get", "namespaces", kubeconfig=stack.operator_kubeconfig)
    assert allowed.returncode == 0, allowed.stderr


def test_admin_is_cluster_admin(stack: Stack) -> None:
    assert stack.kubectl("auth", "can-i", "*", "*", "--all-namespaces").stdout.strip() == "yes"


@pytest.mark.parametrize(
    ("user", "verb", "resource", "allowed"),
    [
        # The manager's own user reads everything and mints its controllers' tokens ...
        (MANAGER_USER, "watch", "taskruns.celery.taskrun.dev", "yes"),
        (MANAGER_USER, "create", "serviceaccounts/token", "yes"),
        (MANAGER_USER, "delete", "configmaps", "no"),
        (MANAGER_USER, "delete", "taskruns.celery.taskrun.dev", "no"),
        # ... which act with their own bootstrap roles only.
        (GARBAGE_COLLECTOR, "delete", "taskruns.celery.taskrun.dev", "yes"),
        (GARBAGE_COLLECTOR, "create", "taskruns.celery.taskrun.dev", "no"),
        (NAMESPACE_CONTROLLER, "delete", "namespaces", "yes"),
    ],
)
def test_controller_manager_rbac(
    stack: Stack, user: str, verb: str, resource: str, allowed: str
) -> None:
    result = stack.kubectl("auth", "can-i", verb, resource, "-A", f"--as={user}")
    assert result.stdout.strip() == allowed


def test_controllers_run_as_their_service_accounts(stack: Stack) -> None:
    if stack.process(cp.CONTROLLER_MANAGER) is None:
        pytest.skip("no kube-controller-manager (KUBEBUILDER_ASSETS without one)")
    # The manager made them to ask the TokenRequest API for each controller's token.
    accounts = stack.kubectl_json("get", "serviceaccounts", "-n", "kube-system")
    names = {item["metadata"]["name"] for item in accounts["items"]}
    assert {"generic-garbage-collector", "namespace-controller"} <= names


def test_env_exports(stack: Stack) -> None:
    env = stack.env
    assert env["KUBECONFIG"] == str(stack.admin_kubeconfig)
    assert env["CELERY_BROKER_URL"] == f"redis://127.0.0.1:{stack.redis_port}/0"
    assert env["CELERY_RESULT_BACKEND"] == f"redis://127.0.0.1:{stack.redis_port}/1"
    assert env["PATH"].split(os.pathsep)[0] == str(stack.binaries.dir)
    assert redis_pings(stack.redis_port)


def test_everything_listens_on_loopback_only(
    stack: Stack, worker: ManagedProcess, operator: ManagedProcess
) -> None:
    pids: set[int] = set()
    for proc in stack.processes().values():
        pids |= proc.group_pids()
    addresses = listening_addresses(pids)
    assert addresses, "no listening sockets found"
    bad = beyond_loopback(addresses)
    assert not bad, f"listening beyond loopback: {bad}"


def test_worker_fixture_answers_ping(stack: Stack, worker: ManagedProcess) -> None:
    assert worker.alive
    node = f"{worker.name}@{socket.gethostname()}"
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "taskrun_workers.app", "inspect", "ping",
         "-d", node, "--timeout", "10"],
        env={**os.environ, **stack.env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pong" in result.stdout


def test_operator_fixture_serves_metrics(operator: ManagedProcess) -> None:
    assert operator.alive
    assert operator.url is not None
    assert cp.http_get(operator.url) is not None


def test_failed_start_reports_the_log_tail(stack: Stack, tmp_path: Path) -> None:
    with pytest.raises(StackError) as failure:
        stack.start_worker("broken", app="no_such_module_anywhere", timeout=30)
    assert "broken" in str(failure.value)
    assert "no_such_module_anywhere" in str(failure.value)  # Celery's error, from the log
    assert stack.process("broken") is None  # stopped and forgotten
    # Its log would otherwise show up in every later failure report of the session.
    for log in stack.logs_dir.glob("broken.log*"):
        log.unlink()


def test_namespace_fixture(stack: Stack, namespace: str) -> None:
    assert namespace.startswith("t-test-namespace-fixture-")
    ns = stack.kubectl_json("get", "namespace", namespace)
    assert ns["status"]["phase"] == "Active"


def test_restart_respawns_with_the_same_settings(stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "probe_app.py").write_text(PROBE_APP)
    worker = stack.start_worker(
        "restart-probe", app="probe_app", env_overrides={"PYTHONPATH": str(tmp_path)}
    )
    again = stack.restart(worker.name, down_for=0.2)
    assert again.pid != worker.pid and again.alive
    assert not worker.alive
    again.stop()
    assert stack.process("restart-probe") is None


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskrun_dev.cli", *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _dead(pid: int) -> bool:
    return not is_running(proc_info(pid))  # a zombie waiting for init has exited


def test_cli_lifecycle_leaves_no_process_behind(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # Built (minutes, the first time) here rather than within the CLI's time budget.
    Stack(state).binaries  # noqa: B018
    try:
        _cli_lifecycle(state, tmp_path)
    finally:
        Stack(state).down(timeout=5.0)  # whatever an assertion left running


def _cli_lifecycle(state: Path, tmp_path: Path) -> None:
    up = _run_cli("up", "--no-operator", "--no-worker", "--dir", str(state))
    assert up.returncode == 0, up.stderr
    env_file = state / "env.sh"
    assert up.stdout.strip().splitlines()[-1] == str(env_file)
    assert "export KUBECONFIG=" in env_file.read_text()

    # The env file alone gives a working shell: the built kubectl, admin access.
    shell = subprocess.run(
        ["bash", "-c", f". {env_file} && command -v kubectl && kubectl get namespace default"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},  # kubectl caches in ~/.kube
    )  # fmt: skip
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.startswith(str(Stack(state).binaries.dir))

    stack = Stack(state)
    first_pids = {name: proc.pid for name, proc in stack.processes().items()}
    control_plane = {"etcd", "kube-apiserver", "redis"}
    if stack.binaries.kube_controller_manager is not None:
        control_plane.add(cp.CONTROLLER_MANAGER)
    assert set(first_pids) == control_plane

    again = _run_cli("up", "--no-operator", "--no-worker", "--dir", str(state))
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == str(env_file)
    assert "already running" in again.stderr
    assert {name: p.pid for name, p in Stack(state).processes().items()} == first_pids

    # Redis comes back on the same port, so broker URLs stay valid.
    redis_port = stack.redis_port
    redis = stack.process("redis")
    assert redis is not None
    redis.stop()
    assert not redis_pings(redis_port)
    assert stack.start_redis().port == redis_port

    # A prefork worker: its pool children must go down with it.
    (tmp_path / "probe_app.py").write_text(PROBE_APP)
    worker = stack.start_worker(
        "probe", app="probe_app", env_overrides={"PYTHONPATH": str(tmp_path)}
    )
    assert len(worker.group_pids()) >= 3, "expected the main process and 2 pool children"

    pids: set[int] = set()
    for proc in stack.processes().values():
        pids |= proc.group_pids()
    status = _run_cli("status", "--dir", str(state))
    assert status.returncode == 0, status.stdout
    assert "probe" in status.stdout

    down = _run_cli("down", "--dir", str(state))
    assert down.returncode == 0, down.stderr
    assert not worker.alive  # also reaps our own child; the CLI's belong to init
    left = sorted(pid for pid in pids if not _dead(pid))
    assert not left, f"still running after down: {left}"
    assert not list((state / "pids").glob("*.json"))

    assert _run_cli("down", "--dir", str(state)).returncode == 0
    assert "nothing running" in _run_cli("status", "--dir", str(state)).stdout


def test_down_stops_what_it_started_even_when_its_records_are_gone(tmp_path: Path) -> None:
    """A concurrent pytest session may delete this session's base temporary directory
    (it keeps only the newest few): the pid files go with it, and what was started
    must still be stopped at the end."""
    supervisor = Supervisor(StateDir(tmp_path / "stack"), say=lambda _: None)
    proc, started = supervisor.ensure("sleeper", "test", ["sleep", "600"], settings={})
    assert started and proc.alive
    for pid_file in (tmp_path / "stack" / "pids").glob("*.json"):
        pid_file.unlink()
    assert supervisor.stop_everything([]) == ["sleeper"]
    assert not is_running(proc_info(proc.pid))
