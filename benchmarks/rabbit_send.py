"""What a confirmed send costs on RabbitMQ, beside Celery's own send in the same run.

A rabbitmq-server of its own (the dev stack's, servers alone: no control plane) and two
senders publishing the same messages to the same kind of queue:

- `celery`: Celery's `send_task` as the operator sent before (the baseline): the queue
  declared by kombu (cached per connection), no publisher confirm;
- `confirmed`: the operator's sender now (`amqp_confirm.ConfirmedPublisher`): a passive
  check of the queue, a mandatory publish and its confirm, each send.

Each is timed one send at a time (latency) and from `--threads` threads at once (the
operator's sending pool; throughput).

    python benchmarks/rabbit_send.py                  # 2,000 sends each way
    python benchmarks/rabbit_send.py --sends 50 --json  # the smoke run the tests use
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from celery import Celery

from celery_taskrun.api.config import OperatorConfig
from celery_taskrun.clients.amqp_confirm import ConfirmedPublisher
from celery_taskrun.clients.celery_client import make_app
from celery_taskrun.core.sending import Message
from taskrun_dev.servers import RABBITMQ
from taskrun_dev.stack import Stack


def message(queue: str) -> Message:
    return Message(
        task="bench.noop",
        task_id=f"tr-{uuid.uuid4()}",
        args=[1],
        kwargs={},
        options={"queue": queue},
    )


def baseline(broker_url: str) -> Any:
    app = Celery("bench-baseline", broker=broker_url)
    app.conf.update(task_serializer="json", task_publish_retry_policy={"max_retries": 0})

    def send(m: Message) -> None:
        app.send_task(m.task, args=m.args, kwargs=m.kwargs, task_id=m.task_id, **m.options)

    return send


def confirmed(broker_url: str) -> Any:
    settings = OperatorConfig(brokerUrl=broker_url, resultBackend="db+sqlite:///:memory:")
    publisher = ConfirmedPublisher(make_app(settings, results=False))

    def send(m: Message) -> None:
        publisher.publish(m, lambda: True)

    return send


def measure(send: Any, sends: int, threads: int) -> dict[str, float]:
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    send(message(queue))  # connections open, the queue declared
    took: list[float] = []
    for _ in range(sends):
        m = message(queue)
        began = time.perf_counter()
        send(m)
        took.append(time.perf_counter() - began)
    messages = [message(queue) for _ in range(sends)]
    with ThreadPoolExecutor(threads) as pool:
        began = time.perf_counter()
        list(pool.map(send, messages))
        parallel = time.perf_counter() - began
    ordered = sorted(took)
    return {
        "median_ms": statistics.median(took) * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "per_s_one_thread": sends / sum(took),
        "per_s_threads": sends / parallel,
    }


def table(results: dict[str, Any]) -> str:
    lines = [
        f"{'sender':<10} {'median ms':>10} {'p99 ms':>8} {'/s 1 thread':>12} "
        f"{'/s ' + str(results['threads']) + ' threads':>13}"
    ]
    for name in ("celery", "confirmed"):
        r = results[name]
        lines.append(
            f"{name:<10} {r['median_ms']:>10.2f} {r['p99_ms']:>8.2f} "
            f"{r['per_s_one_thread']:>12.0f} {r['per_s_threads']:>13.0f}"
        )
    lines.append(f"load average at the end: {results['load']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sends", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--json", action="store_true", help="the figures as JSON, last")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-rabbit-") as tmp:
        stack = Stack(Path(tmp), say=lambda _: None)
        try:
            stack.start_servers(RABBITMQ, "sqlite")
            url = stack.broker_url
            results: dict[str, Any] = {"sends": args.sends, "threads": args.threads}
            # Interleaved, twice each: the machine's load drifts less between them.
            for name, make in (("celery", baseline), ("confirmed", confirmed)) * 2:
                figures = measure(make(url), args.sends, args.threads)
                if name not in results or figures["median_ms"] < results[name]["median_ms"]:
                    results[name] = figures
            results["load"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        finally:
            stack.down()
    print(table(results))
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
