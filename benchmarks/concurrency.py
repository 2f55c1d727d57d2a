"""Concurrency limits: a burst of N runs in one group of limit L on a worker with more
processes than L, beside Celery's own way to hold L at once (a worker of concurrency L).

    python benchmarks/concurrency.py                  # 1,000 runs, limit 10, worker x20
    python benchmarks/concurrency.py --runs 30 --limit 3 --seconds 0.3 --json   # smoke run

Ours: a stack of its own (API server, etcd, Redis, a prefork worker of concurrency 2L,
the operator as a process with one group `burst` of limit L over the `span` task); N
TaskRuns of `span(S)` created as fast as one client can.  Every figure comes from the
worker's own execution: each span records, inside the task and before Celery stores its
result, when it started and ended (the ledger's `span` entries).

- most at once: the most spans open at one moment (an end before a start at a tie);
- mean in use while runs wait: the time-weighted number of spans open from the first
  start to the last run's start (after it nobody waits);
- admission: the k-th span to end frees a place for the (L+k)-th run sent; from that end
  to that run's send decided (`status.submittedAt`): result stored, heard, the ended run
  stepped, the next one admitted and stepped;
- idle place: from the k-th end to the (L+k)-th start, both the worker's: admission, the
  intent patch, the publish and the worker's pick-up.

Baseline: the same N spans sent with `send_task` to a worker of concurrency L (what
Celery offers: a worker's --concurrency, routed by queue), measured alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from kubernetes import client, config
from latency import GROUP, PLURAL, VERSION, epoch, quantile, summary

from taskrun_dev.stack import Stack
from taskrun_workers.ledger import LEDGER_KEY, read_ledger

NAMESPACE = "bench-conc"
TASK = "taskrun_workers.tasks.span"
BASELINE_QUEUE = "conc-baseline"

Span = tuple[float, float]


def most_at_once(spans: Sequence[Span]) -> int:
    moments = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = running = 0
    for _, step in moments:
        running += step
        most = max(most, running)
    return most


def mean_in_use(spans: Sequence[Span], since: float, until: float) -> float:
    """The time-weighted number of spans open over [since, until]."""
    busy = sum(max(0.0, min(end, until) - max(start, since)) for start, end in spans)
    return busy / (until - since) if until > since else 0.0


def spans_of(stack: Stack, task_ids: set[str]) -> dict[str, Span]:
    return {
        e["task_id"]: (e["started"], e["ended"])
        for e in read_ledger(stack.broker_url)
        if e["event"] == "span" and e["task_id"] in task_ids
    }


def wait_spans(stack: Stack, count: int, timeout: float) -> None:
    """Until the ledger (cleared before the phase: every span in it is the phase's) holds
    `count` spans."""
    ledger = redis.Redis.from_url(stack.broker_url)
    deadline, spans = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        spans = sum(b'"span"' in item for item in ledger.lrange(LEDGER_KEY, 0, -1))
        if spans >= count:
            return
        time.sleep(0.5)
    raise SystemExit(f"only {spans} of {count} spans after {timeout:.0f}s")


def percentiles(seconds: list[float]) -> dict[str, Any]:
    return summary(seconds) | {"p99_ms": round(quantile(sorted(seconds), 0.99) * 1000, 1)}


def figures(
    spans: dict[str, Span], sends: list[float] | None, limit: int, created: float = 0.0
) -> dict[str, Any]:
    """`sends`: when each run's send was decided, in order (ours; None for the baseline);
    `created`: when the burst's last create returned."""
    every = list(spans.values())
    starts = sorted(start for start, _ in every)
    ends = sorted(end for _, end in every)
    gaps = [starts[limit + k] - ends[k] for k in range(len(every) - limit)]
    found: dict[str, Any] = {
        "runs": len(every),
        "most_at_once": most_at_once(every),
        "mean_in_use_while_waiting": round(mean_in_use(every, starts[0], starts[-1]), 2),
        "idle_place": percentiles(gaps),
    }
    if sends is not None:
        freed = range(len(every) - limit)
        admissions = [sends[limit + k] - ends[k] for k in freed]
        found["admission"] = percentiles(admissions)
        # Once every run is created, the operator no longer adopts and writes the burst's
        # waiting runs beside the admissions.
        steady = [sends[limit + k] - ends[k] for k in freed if ends[k] > created]
        if steady:
            found["admission_after_creates"] = percentiles(steady)
    return found


def ours(stack: Stack, runs: int, limit: int, seconds: float) -> dict[str, Any]:
    api = client.CustomObjectsApi(config.new_client_from_config(str(stack.admin_kubeconfig)))
    stack.kubectl("create", "namespace", NAMESPACE)
    redis.Redis.from_url(stack.broker_url).delete(LEDGER_KEY)
    created = time.time()
    for i in range(runs):
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "TaskRun",
            "metadata": {"name": f"c{i}"},
            "spec": {"task": TASK, "args": [seconds]},
        }
        api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)
    done = time.time()
    wait_spans(stack, runs, timeout=120 + 3 * runs * seconds / limit)
    items = api.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)["items"]
    sent = {i["status"]["taskId"]: epoch(i["status"]["submittedAt"]) for i in items}
    spans = spans_of(stack, set(sent))
    found = figures(spans, sorted(sent.values()), limit, created=done)
    return found | {"create_seconds": round(done - created, 1)}


def baseline(stack: Stack, runs: int, limit: int, seconds: float) -> dict[str, Any]:
    worker = stack.start_worker("w-baseline", queues=[BASELINE_QUEUE], concurrency=limit)
    try:
        redis.Redis.from_url(stack.broker_url).delete(LEDGER_KEY)
        app = Celery(broker=stack.broker_url, backend=stack.result_backend)
        ids = {app.send_task(TASK, args=[seconds], queue=BASELINE_QUEUE).id for _ in range(runs)}
        wait_spans(stack, runs, timeout=120 + 3 * runs * seconds / limit)
        return figures(spans_of(stack, ids), None, limit)
    finally:
        worker.stop()


def run(runs: int, limit: int, seconds: float, workers: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="taskrun-bench-") as tmp:
        stack = Stack(Path(tmp) / "stack", say=lambda _: None)
        try:
            stack.up(operator=False, worker=False)
            settings = Path(tmp) / "config.yaml"
            group = {"name": "burst", "tasks": [TASK], "limit": limit}
            settings.write_text(json.dumps({"concurrency": [group]}))
            stack.start_worker(concurrency=workers)
            stack.start_operator(config_path=settings)
            found = {"operator": ours(stack, runs, limit, seconds)}
            found["celery-worker-concurrency"] = baseline(stack, runs, limit, seconds)
            return found | {"limit": limit, "seconds": seconds, "worker_concurrency": workers}
        finally:
            stack.down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=2.0, help="each span's length")
    parser.add_argument("--worker-concurrency", type=int, default=None, help="default 2 x limit")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    workers = args.worker_concurrency or 2 * args.limit
    results = run(args.runs, args.limit, args.seconds, workers)
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"{args.runs} runs of span({args.seconds:g}s), limit {args.limit}")
    for mode in ("operator", "celery-worker-concurrency"):
        row = results[mode]
        line = (
            f"{mode:<26} most at once {row['most_at_once']}, mean in use while waiting "
            f"{row['mean_in_use_while_waiting']}, idle place median "
            f"{row['idle_place']['median_ms']} ms p99 {row['idle_place']['p99_ms']} ms"
        )
        for key in ("admission", "admission_after_creates"):
            if key in row:
                line += (
                    f", {key.replace('_', ' ')} median {row[key]['median_ms']} ms"
                    f" p99 {row[key]['p99_ms']} ms max {row[key]['max_ms']} ms"
                )
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
