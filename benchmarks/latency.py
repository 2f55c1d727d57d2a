"""Status latency: from a task's end (the backend's `date_done`) to a watcher seeing
its terminal status, with the operator's wake-ups on and off, against the seed's own
polling loop (`AsyncResult` with backoff 0.5 s x1.5 capped at 5 s) in the same run.

    python benchmarks/latency.py --runs 40          # full run (about two minutes)
    python benchmarks/latency.py --runs 3 --json    # the smoke run the tests use

It brings up its own stack (kube-apiserver, etcd, Redis, a prefork worker) under a
temporary directory, one operator per mode on a namespace of its own, and stops it all.
Tasks are sent one after another with a random gap, so the worker is never the queue.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from figures import epoch, quantile
from kubernetes import client, config, watch

from taskrun_dev.stack import Stack

GROUP, VERSION, PLURAL = "celery.taskrun.dev", "v1alpha1", "taskruns"
TASK = "taskrun_workers.tasks.sleep"


TERMINAL = ("Succeeded", "Failed", "TimedOut", "Revoked")


def summary(latencies: list[float], phases: list[str] | None = None) -> dict[str, Any]:
    """The figures of one mode; `phases`, how its runs ended, when each must have
    succeeded (a lag measured to a failure measures nothing)."""
    ordered = sorted(latencies)
    p95 = quantile(ordered, 0.95)
    figures: dict[str, Any] = {}
    if phases is not None:
        if set(phases) != {"Succeeded"}:
            raise SystemExit(f"runs must all succeed; they ended {sorted(phases)}")
        figures["phases"] = sorted(set(phases))
    return {
        **figures,
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(p95 * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def watch_terminal(
    api: client.CustomObjectsApi,
    namespace: str,
    expected: int,
    seen: dict[str, tuple[float, str]],
    done: threading.Event,
) -> None:
    """Record when each TaskRun's terminal status reaches a watcher (as kubectl -w), and
    its phase."""
    stream = watch.Watch()
    for event in stream.stream(
        api.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, timeout_seconds=600
    ):
        body = event["object"]
        status = body.get("status") or {}
        if status.get("phase") in TERMINAL and body["metadata"]["name"] not in seen:
            lag = time.time() - epoch(status["completedAt"])
            seen[body["metadata"]["name"]] = (lag, status["phase"])
            if len(seen) >= expected:
                break
    done.set()


def operator_mode(
    stack: Stack,
    api: client.CustomObjectsApi,
    name: str,
    wakeups: bool,
    runs: int,
    gap: float,
    workdir: Path,
) -> dict[str, Any]:
    namespace = f"bench-{name}"
    stack.kubectl("create", "namespace", namespace)
    cfg = workdir / f"{name}.yaml"
    cfg.write_text(f"wakeups: {str(wakeups).lower()}\n")
    operator = stack.start_operator(
        f"op-{name}", config_path=cfg, extra_args=["--namespace", namespace]
    )
    seen: dict[str, tuple[float, str]] = {}
    done = threading.Event()
    watcher = threading.Thread(
        target=watch_terminal, args=(api, namespace, runs, seen, done), daemon=True
    )
    watcher.start()
    try:
        for i in range(runs):
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "TaskRun",
                "metadata": {"name": f"r{i}"},
                "spec": {"task": TASK, "args": [random.uniform(0.05, 0.3)]},
            }
            api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
            time.sleep(gap * random.uniform(0.5, 1.5))
        if not done.wait(120):
            raise SystemExit(f"{name}: only {len(seen)} of {runs} runs finished")
    finally:
        operator.stop()
    return summary([lag for lag, _ in seen.values()], [phase for _, phase in seen.values()])


async def seed_poll(app: Celery, task_id: str) -> tuple[float, float, str]:
    """The seed's poll_result_with_backoff (0.5 s, x1.5, capped at 5 s), as it is written:
    `result.ready()` on the loop.  Returns when it saw the end, the backend's
    `date_done`, in epoch seconds, and how the task ended (as a TaskRun phase)."""
    result = AsyncResult(task_id, app=app)
    interval = 0.5
    while True:
        if result.ready():
            phase = "Succeeded" if result.successful() else f"Celery {result.state}"
            return time.time(), epoch(result.date_done), phase
        await asyncio.sleep(interval)
        interval = min(interval * 1.5, 5.0)


def seed_baseline(stack: Stack, runs: int, gap: float) -> dict[str, Any]:
    """The seed's poll_result_with_backoff, one coroutine per task, as a client would."""
    app = Celery(broker=stack.broker_url, backend=stack.result_backend)

    async def poll(task_id: str) -> tuple[float, str]:
        seen, done, phase = await seed_poll(app, task_id)
        return seen - done, phase

    async def main() -> list[tuple[float, str]]:
        pollers = []
        for _ in range(runs):
            sent = await asyncio.to_thread(app.send_task, TASK, args=[random.uniform(0.05, 0.3)])
            pollers.append(asyncio.create_task(poll(sent.id)))
            await asyncio.sleep(gap * random.uniform(0.5, 1.5))
        return list(await asyncio.gather(*pollers))

    polled = asyncio.run(main())
    return summary([lag for lag, _ in polled], [phase for _, phase in polled])


def run(runs: int, gap: float, say: Callable[[str], None]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="taskrun-bench-") as tmp:
        stack = Stack(Path(tmp) / "stack", say=lambda _: None)
        try:
            stack.up(operator=False, worker=True)
            api = client.CustomObjectsApi(
                config.new_client_from_config(str(stack.admin_kubeconfig))
            )
            results = {}
            for name, wakeups in (("wakeups-on", True), ("wakeups-off", False)):
                say(f"{name}: {runs} runs")
                results[name] = operator_mode(stack, api, name, wakeups, runs, gap, Path(tmp))
            say(f"seed-polling: {runs} tasks")
            results["seed-polling"] = seed_baseline(stack, runs, gap)
            return results
        finally:
            stack.down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--gap", type=float, default=0.6, help="mean seconds between sends")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = run(args.runs, args.gap, lambda line: print(line, file=sys.stderr))
    if args.json:
        print(json.dumps(results))
    else:
        print(f"{'mode':<14}{'n':>4}{'median ms':>12}{'p95 ms':>10}{'max ms':>10}")
        for mode, row in results.items():
            print(
                f"{mode:<14}{row['n']:>4}{row['median_ms']:>12}{row['p95_ms']:>10}"
                f"{row['max_ms']:>10}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
