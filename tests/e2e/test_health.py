"""What tells the world a run's health, and the operator's own: kstatus (Flux's reader,
sigs.k8s.io/cli-utils, run as the Go library itself) on TaskRuns and CronTaskRuns from
the real API server, and the operator's liveness endpoint when its tracker stops
turning."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from taskrun_dev.processes import ManagedProcess, free_port
from taskrun_dev.stack import Stack

from support import TaskRuns, wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
KSTATUS_BUILD = REPO / "devstack" / "tools" / "kstatus" / "build.sh"


@pytest.fixture(scope="session")
def kstatus() -> Path:
    """The kstatus reader, built by devstack/tools/kstatus/build.sh (cached)."""
    built = subprocess.run([str(KSTATUS_BUILD)], capture_output=True, text=True, timeout=1800)
    if built.returncode != 0:
        if shutil.which("go") is None:
            pytest.skip("devstack/tools/kstatus/build.sh needs Go (1.26+) the first time")
        pytest.fail(f"kstatus build failed:\n{built.stderr[-3000:]}")
    return Path(built.stdout.strip())


def read(kstatus: Path, stack: Stack, namespace: str, name: str, kind: str = "taskrun") -> str:
    """kstatus's verdict (Current, InProgress, Failed, ...) on the object as stored."""
    body = stack.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=True)
    out = subprocess.run(
        [str(kstatus)], input=body.stdout, capture_output=True, text=True, check=True
    ).stdout
    return out.split()[1]


def test_kstatus_reads_a_run_as_in_progress_until_it_succeeds(
    runs: TaskRuns, stack: Stack, kstatus: Path
) -> None:
    # No operator watches this namespace: the TaskRun is as the API server made it.
    unwatched = f"unwatched-{uuid.uuid4().hex[:6]}"
    stack.kubectl("create", "namespace", unwatched, check=True)
    try:
        manifest = runs.manifest("fresh", {"task": "taskrun_workers.tasks.calculate_sum"})
        manifest["metadata"]["namespace"] = unwatched
        stack.kubectl("apply", "-f", "-", input=json.dumps(manifest), check=True)
        stored = stack.kubectl_json("get", "taskrun", "fresh", "-n", unwatched)
        assert stored["status"] == {"observedGeneration": 0}
        assert read(kstatus, stack, unwatched, "fresh") == "InProgress"
    finally:
        stack.kubectl("delete", "namespace", unwatched, "--wait=false")

    runs.apply("ok", "calculate_sum", args=[[1, 2]])
    runs.apply("bad", "fail", args=["no"])
    runs.apply("slow", "sleep", args=[30])
    runs.finished("ok")
    runs.finished("bad")
    runs.wait_phase("slow", "Running")
    assert read(kstatus, stack, runs.namespace, "ok") == "Current"
    assert read(kstatus, stack, runs.namespace, "bad") == "Failed"
    assert read(kstatus, stack, runs.namespace, "slow") == "InProgress"


def test_kstatus_reads_a_crontaskrun_as_in_progress_until_observed(
    stack: Stack, make_namespace: Callable[[str], str], kstatus: Path
) -> None:
    # No operator watches this namespace: the operator's writes are made here by hand.
    namespace = make_namespace("unwatched")
    cron = {
        "apiVersion": "celery.taskrun.dev/v1alpha1",
        "kind": "CronTaskRun",
        "metadata": {"name": "nightly", "namespace": namespace},
        "spec": {"schedule": "@daily", "taskRunTemplate": {"spec": {"task": "a.b"}}},
    }
    stack.kubectl("apply", "-f", "-", input=json.dumps(cron), check=True)
    assert read(kstatus, stack, namespace, "nightly", "crontaskrun") == "InProgress"

    def observed(generation: int) -> None:
        ready = {
            "type": "Ready",
            "status": "True",
            "reason": "Scheduled",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
            "observedGeneration": generation,
        }
        status = {"status": {"observedGeneration": generation, "conditions": [ready]}}
        stack.kubectl(
            "patch", "crontaskrun", "nightly", "-n", namespace, "--subresource=status",
            "--type=merge", "-p", json.dumps(status), check=True,
        )  # fmt: skip

    observed(1)
    assert read(kstatus, stack, namespace, "nightly", "crontaskrun") == "Current"
    stack.kubectl(
        "patch", "crontaskrun", "nightly", "-n", namespace, "--type=merge",
        "-p", '{"spec": {"schedule": "@hourly"}}', check=True,
    )  # fmt: skip
    assert read(kstatus, stack, namespace, "nightly", "crontaskrun") == "InProgress"
    observed(2)
    assert read(kstatus, stack, namespace, "nightly", "crontaskrun") == "Current"


@pytest.fixture
def operators(stack: Stack, tmp_path: Path) -> Iterator[list[ManagedProcess]]:
    started: list[ManagedProcess] = []
    yield started
    for proc in started:
        proc.stop()


def healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_liveness_fails_when_the_tracker_stops_turning(
    stack: Stack, tmp_path: Path, operators: list[ManagedProcess]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("livenessTimeout: 5\n")
    ports = {}
    for name, fault in (("op-live", None), ("op-stalled", "stall-loop")):
        ports[name] = free_port()
        operators.append(
            stack.start_operator(
                name,
                config_path=config,
                env_overrides={"TASKRUN_FAULT": fault} if fault else {},
                # Namespaces nobody uses: these operators only answer their probes.
                extra_args=[
                    "--namespace",
                    f"{name}-none",
                    "--liveness",
                    f"http://127.0.0.1:{ports[name]}/healthz",
                ],
            )
        )
    wait_for(lambda: healthz(ports["op-live"]) == 200, timeout=30, what="a live tracker: 200")
    # Kopf keeps a probe's answer 10 s; the stall shows after livenessTimeout (5 s).
    wait_for(lambda: healthz(ports["op-stalled"]) == 500, timeout=45, what="a stalled one: 500")
    assert healthz(ports["op-live"]) == 200
