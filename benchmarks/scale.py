"""Many runs in flight: submission throughput, the operator's memory and CPU, backend
load and API writes per TaskRun, against the seed's polling of the same number of tasks.

    python benchmarks/scale.py --runs 10000          # DESIGN's target (about 15 minutes)
    python benchmarks/scale.py --runs 20 --json      # the smoke run the tests use

1. N TaskRuns are created on a queue no worker consumes, so all N stay in flight.
   Measured: time until all are Queued (submissions per second), then over a quiet
   window the operator's resident memory and CPU, and Redis commands per second.
2. A worker starts on that queue: time until all N are Succeeded, and API writes per
   TaskRun from the operator's own metrics.
3. Baseline: N tasks sent with `send_task` and followed the seed's way (one
   `AsyncResult.state` read per task per poll, backoff 0.5 s x1.5 to 5 s) over the same
   window: Redis commands per second.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from celery.result import AsyncResult
from figures import prometheus_samples
from kubernetes import client, config
from latency import GROUP, PLURAL, VERSION

from taskrun_dev.procfs import memory_mib
from taskrun_dev.stack import Stack

NAMESPACE = "scale"
QUEUE = "held"
TASK = "taskrun_workers.tasks.calculate_sum"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def commands(r: redis.Redis) -> int:
    return int(r.info("stats")["total_commands_processed"])


def metric(url: str, name: str) -> dict[str, float]:
    """The operator's samples of metric `name`, by label set."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return prometheus_samples(text, name)


def metric_sum(url: str, name: str) -> float:
    return sum(metric(url, name).values())


def phases(api: client.CustomObjectsApi, namespace: str = NAMESPACE) -> dict[str, int]:
    counts: dict[str, int] = {}
    token = None
    while True:
        page = api.list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, limit=2000, _continue=token
        )
        for item in page["items"]:
            phase = (item.get("status") or {}).get("phase", "-")
            counts[phase] = counts.get(phase, 0) + 1
        token = page["metadata"].get("continue")
        if not token:
            return counts


def wait_all(
    api: client.CustomObjectsApi,
    phase: str,
    n: int,
    timeout: float,
    namespace: str = NAMESPACE,
    interval: float = 1.0,
) -> float:
    began = time.monotonic()
    while phases(api, namespace).get(phase, 0) < n:
        if time.monotonic() - began > timeout:
            raise SystemExit(f"not all {n} runs reached {phase}: {phases(api, namespace)}")
        time.sleep(interval)
    return time.monotonic() - began


def trivial_run(i: int, queue: str | None = None) -> dict[str, Any]:
    """TaskRun `r<i>` of a trivial task (a sum), on `queue` or the default one."""
    spec: dict[str, Any] = {"task": TASK, "args": [[i, 1]]}
    if queue:
        spec["queue"] = queue
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TaskRun",
        "metadata": {"name": f"r{i}"},
        "spec": spec,
    }


def create_held(api: client.CustomObjectsApi, namespace: str, runs: int) -> float:
    """Create `runs` TaskRuns on a queue no worker consumes (8 clients); the seconds taken."""

    def create(i: int) -> None:
        api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, trivial_run(i, QUEUE)
        )

    began = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(runs)))
    return time.monotonic() - began


def command_calls(r: redis.Redis) -> dict[str, int]:
    """Calls per Redis command so far (commands a Lua script runs count as their own)."""
    stats = r.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}


def load(r: redis.Redis, window: float, pid: int | None = None) -> dict[str, Any]:
    before, calls = commands(r), command_calls(r)
    cpu_before, began = cpu_seconds(pid) if pid else 0.0, time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - began
    total, calls_after = commands(r) - before, command_calls(r)
    # The measurement's own INFO calls are not load.
    by_command = {
        name: n - calls.get(name, 0)
        for name, n in calls_after.items()
        if n > calls.get(name, 0) and name != "info"
    }
    out: dict[str, Any] = {
        "redis_commands_per_s": round(
            (total - (calls_after.get("info", 0) - calls.get("info", 0))) / elapsed, 1
        ),
        "redis_commands_per_s_by_command": {
            name: round(n / elapsed, 1)
            for name, n in sorted(by_command.items(), key=lambda item: -item[1])
        },
    }
    if pid:
        out["operator_cpu_percent"] = round(100 * (cpu_seconds(pid) - cpu_before) / elapsed, 1)
        out["operator_rss_mib"] = memory_mib(pid)
    return out


def operator_side(stack: Stack, runs: int, window: float) -> dict[str, Any]:
    api = client.CustomObjectsApi(config.new_client_from_config(str(stack.admin_kubeconfig)))
    stack.kubectl("create", "namespace", NAMESPACE)
    operator = stack.start_operator(extra_args=["--namespace", NAMESPACE])
    backend = redis.Redis.from_url(stack.result_backend)
    idle_rss = memory_mib(operator.pid)
    created = create_held(api, NAMESPACE, runs)
    queued = wait_all(api, "Queued", runs, timeout=max(120, runs / 5)) + created
    quiet = load(backend, window, operator.pid)
    url = f"{operator.url}"
    writes_queued = metric_sum(url, "taskrun_api_writes_total")
    worker = stack.start_worker(queues=[QUEUE], extra_args=["--concurrency=4"])
    done = wait_all(api, "Succeeded", runs, timeout=max(120, runs / 5))
    writes = metric_sum(url, "taskrun_api_writes_total")
    worker.stop()
    operator.stop()
    return {
        "runs": runs,
        "create_s": round(created, 1),
        "all_queued_s": round(queued, 1),
        "submitted_per_s": round(runs / queued, 1),
        "operator_idle_rss_mib": idle_rss,
        **quiet,
        "redis_commands_per_run_per_s": round(quiet["redis_commands_per_s"] / runs, 3),
        "all_succeeded_s": round(done, 1),
        "completed_per_s": round(runs / done, 1),
        "api_writes_per_run_queued": round(writes_queued / runs, 2),
        "api_writes_per_run_total": round(writes / runs, 2),
    }


def seed_side(stack: Stack, runs: int, window: float) -> dict[str, Any]:
    """The seed's poll_result_with_backoff for every task, one GET per task per poll."""
    app = Celery(broker=stack.broker_url, backend=stack.result_backend)
    backend = redis.Redis.from_url(stack.result_backend)
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: app.send_task("x.y", queue="held-seed").id, range(runs)))
    now = time.monotonic()
    due = [(now, 0.5, tid) for tid in ids]
    heapq.heapify(due)
    before, began = commands(backend), time.monotonic()
    while time.monotonic() - began < window:
        at, interval, tid = due[0]
        if at > time.monotonic():
            time.sleep(min(at - time.monotonic(), 0.05))
            continue
        heapq.heapreplace(due, (at + interval, min(interval * 1.5, 5.0), tid))
        AsyncResult(tid, app=app).state  # noqa: B018 (the seed's read)
    elapsed = time.monotonic() - began
    return {
        "runs": runs,
        "redis_commands_per_s": round((commands(backend) - before) / elapsed, 1),
        "redis_commands_per_run_per_s": round((commands(backend) - before) / elapsed / runs, 3),
    }


def run(runs: int, window: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="taskrun-bench-") as tmp:
        stack = Stack(Path(tmp) / "stack", say=lambda _: None)
        try:
            stack.up(operator=False, worker=False)
            return {
                "operator": operator_side(stack, runs, window),
                "seed-polling": seed_side(stack, runs, window),
            }
        finally:
            stack.down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10000)
    parser.add_argument("--window", type=float, default=20.0, help="seconds of quiet load")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = run(args.runs, args.window)
    print(json.dumps(results) if args.json else json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
