"""The operator and a worker run as the manifests' securityContext says, for real.

No container runtime here, so each runs the way the pod would, as near as Linux allows
without one: from the image's virtualenv (the wheel plus runtime dependencies only), as
uid/gid 10001 with no capabilities, in a private mount namespace where the whole root
filesystem is read-only and only a fresh tmpfs (the pod's /tmp emptyDir) is writable.
The operator gets deploy/operator.yaml's own arguments (config file, Kopf liveness
endpoint) and environment; the worker deploy/worker.yaml's command.  A TaskRun on the
worker's own queue must succeed, and the liveness and metrics endpoints must answer.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging_helpers import DEPLOY, cluster_wide_operator, image_env, load_all, one

from taskrun_dev.processes import free_port
from taskrun_dev.stack import Stack

pytestmark = pytest.mark.e2e

UID = 10001
UNSHARE = ["unshare", "--mount", "--propagation", "private"]
# In the new mount namespace: root read-only, a tmpfs on the scratch dir ($0), then drop
# to the image's user with no capabilities at all, and run the command ("$@").
SANDBOX = (
    'mount -o remount,bind,ro / && mount -t tmpfs -o size=64m,mode=1777 tmpfs "$0" && '
    f"exec setpriv --reuid={UID} --regid={UID} --clear-groups "
    '--inh-caps=-all --bounding-set=-all -- "$@"'
)


def sandbox_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to make a mount namespace and switch to uid 10001"
    for tool in ("unshare", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} (util-linux) is not installed"
    probe = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -o remount,bind,ro /",
        ],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return f"cannot make a read-only mount namespace here: {probe.stderr.strip()}"
    return None


class Sandboxed:
    """One process in the sandbox, in its own process group; stopped by its pid."""

    def __init__(self, argv: list[str], env: dict[str, str], scratch: Path, log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*UNSHARE, "sh", "-c", SANDBOX, str(scratch), *argv],
                env=env,
                cwd=scratch.parent,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def get(url: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        return response.status, response.read().decode()


@pytest.fixture
def pod_dir(image_venv: Path) -> Iterator[Path]:
    """A world-readable directory for the pod's files, beside the image's virtualenv."""
    path = image_venv.parent / f"pod-{uuid.uuid4().hex[:6]}"
    (path / "tmp").mkdir(parents=True)
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def iso_namespace(make_namespace: Callable[[str], str]) -> str:
    return make_namespace("iso-pod")


def container(docs: list[dict[str, Any]], suffix: str) -> dict[str, Any]:
    deployment = one(docs, "Deployment", suffix)
    result: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return result


def test_operator_and_worker_run_read_only_as_uid_10001(
    stack: Stack, image_venv: Path, pod_dir: Path, iso_namespace: str
) -> None:
    why_not = sandbox_unavailable()
    if why_not:
        pytest.skip(why_not)
    busy = cluster_wide_operator(stack)
    if busy:
        pytest.skip(f"operator {busy} watches the whole cluster: it would handle the run too")

    operator_docs = load_all((DEPLOY / "operator.yaml").read_text())
    worker_docs = load_all((DEPLOY / "worker.yaml").read_text())
    scratch = pod_dir / "tmp"
    # The ConfigMap's file and a token kubeconfig for the operator's ServiceAccount.
    config = pod_dir / "config.yaml"
    queue = f"pod-{iso_namespace.rsplit('-', 1)[-1]}"
    settings = yaml.safe_load(one(operator_docs, "ConfigMap")["data"]["config.yaml"])
    # deploy/'s policy allows the default queue only; this run has a queue of its own.
    settings["policies"][0]["queues"].append(queue)
    config.write_text(yaml.safe_dump(settings))
    kubeconfig = pod_dir / "operator.kubeconfig"
    shutil.copy(stack.write_operator_kubeconfig(), kubeconfig)
    for path in (config, kubeconfig):
        path.chmod(0o644)

    # The image's ENV (uid 10001 has no passwd entry on this host: as under OpenShift).
    base_env = {
        **image_env(),
        "PATH": f"{image_venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": "/nonexistent",
        "TMPDIR": str(scratch),
        "CELERY_BROKER_URL": stack.broker_url,
        "CELERY_RESULT_BACKEND": stack.result_backend,
    }
    operator_container = container(operator_docs, "-operator")
    liveness_port, metrics_port = free_port(), free_port()
    args = []
    for arg in operator_container["args"]:
        if arg.startswith("--config="):
            arg = f"--config={config}"
        elif arg.startswith("--liveness="):
            # Loopback only here; in the pod it is 0.0.0.0:8080.
            arg = f"--liveness=http://127.0.0.1:{liveness_port}/healthz"
        args.append(arg)
    # The URLs come from the stack (base_env), not from the Secret's demo ones.
    operator_env = {e["name"]: e["value"] for e in operator_container["env"] if "value" in e}
    assert operator_env["TASKRUN_METRICS_PORT"] == "9808"
    operator_env.update(TASKRUN_METRICS_HOST="127.0.0.1", TASKRUN_METRICS_PORT=str(metrics_port))

    worker_command = container(worker_docs, "-worker")["command"]
    worker_env = {
        e["name"]: e["value"] for e in container(worker_docs, "-worker")["env"] if "value" in e
    }

    logs = stack.logs_dir
    worker = Sandboxed(
        [*worker_command, "-n", f"{queue}@%h", "-Q", queue],
        {**base_env, **worker_env},
        scratch,
        logs / f"{queue}-worker.log",
    )
    # A Lease of its own: the stack's operator holds the default one, and operators
    # sharing a Lease never both act.
    lease = {"TASKRUN_LEASE_NAME": f"celery-taskrun-{queue}"}
    operator = Sandboxed(
        ["celery-taskrun-operator", *args, f"--namespace={iso_namespace}"],
        {**base_env, **operator_env, **lease, "KUBECONFIG": str(kubeconfig)},
        scratch,
        logs / f"{queue}-operator.log",
    )
    try:
        manifest = (
            "apiVersion: celery.taskrun.dev/v1alpha1\nkind: TaskRun\n"
            "metadata: {name: sum}\n"
            f"spec: {{task: taskrun_workers.tasks.calculate_sum, args: [[1, 2, 3, 4, 5]], "
            f"queue: {queue}, timeout: 90}}\n"
        )
        stack.kubectl("apply", "-n", iso_namespace, "-f", "-", input=manifest, check=True)
        waited = stack.kubectl(
            "wait", "taskrun/sum", "-n", iso_namespace, "--for=condition=Succeeded",
            "--timeout=120s",
        )  # fmt: skip
        status = stack.kubectl_json("get", "taskrun", "sum", "-n", iso_namespace).get("status")
        assert waited.returncode == 0, (
            f"{waited.stderr}\nstatus: {status}\n--- operator:\n{operator.text()[-3000:]}"
            f"\n--- worker:\n{worker.text()[-3000:]}"
        )
        assert status is not None
        assert status["result"] == 15
        assert status["worker"].startswith(f"{queue}@"), status["worker"]

        code, _ = get(f"http://127.0.0.1:{liveness_port}/healthz")
        assert code == 200
        code, metrics = get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert code == 200 and "# TYPE" in metrics
        stack.kubectl("delete", "taskrun", "sum", "-n", iso_namespace, "--timeout=60s", check=True)
        for proc in (operator, worker):
            text = proc.text()
            assert "Read-only file system" not in text, text[-3000:]
            assert "Permission denied" not in text, text[-3000:]
    finally:
        operator.stop()
        worker.stop()
