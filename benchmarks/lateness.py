"""Lateness of deadlines and cancels, as a user sees them.

- deadline: a running task with `timeout: T`; lateness = when a watcher sees the run
  TimedOut, minus (submittedAt + T);
- cancel: a running task patched `cancel: true`; lateness = when a watcher sees it
  Revoked, minus the moment the patch returned.

    python benchmarks/lateness.py --runs 20
    python benchmarks/lateness.py --runs 1 --json     # the smoke run the tests use

Brings up its own stack (API server, etcd, Redis, prefork worker of concurrency 4,
operator) under a temporary directory and stops it all.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from latency import GROUP, PLURAL, VERSION, epoch, summary

from taskrun_dev.stack import Stack

DEADLINE = 1.5


def seen(api: client.CustomObjectsApi, namespace: str, name: str, phase: str) -> float:
    """Block until a watcher sees `name` in `phase`; return that moment."""
    stream = watch.Watch()
    for event in stream.stream(
        api.list_namespaced_custom_object,
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        field_selector=f"metadata.name={name}",
        timeout_seconds=60,
    ):
        if (event["object"].get("status") or {}).get("phase") == phase:
            stream.stop()
            return time.time()
    raise SystemExit(f"{name} never reached {phase}")


def create(api: client.CustomObjectsApi, namespace: str, name: str, **spec: Any) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TaskRun",
        "metadata": {"name": name},
        "spec": {"task": "taskrun_workers.tasks.sleep", "args": [30], **spec},
    }
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def run(runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="taskrun-bench-") as tmp:
        stack = Stack(Path(tmp) / "stack", say=lambda _: None)
        try:
            stack.up(operator=False, worker=False)
            stack.start_worker(extra_args=["--concurrency=4"])
            stack.start_operator()
            api = client.CustomObjectsApi(
                config.new_client_from_config(str(stack.admin_kubeconfig))
            )
            stack.kubectl("create", "namespace", "bench")
            deadline, cancel = [], []
            for i in range(runs):
                create(api, "bench", f"d{i}", timeout=DEADLINE)
                ended = seen(api, "bench", f"d{i}", "TimedOut")
                status = api.get_namespaced_custom_object(GROUP, VERSION, "bench", PLURAL, f"d{i}")[
                    "status"
                ]
                deadline.append(ended - (epoch(status["submittedAt"]) + DEADLINE))
                create(api, "bench", f"c{i}")
                seen(api, "bench", f"c{i}", "Running")
                api.patch_namespaced_custom_object(
                    GROUP, VERSION, "bench", PLURAL, f"c{i}", {"spec": {"cancel": True}}
                )
                asked = time.time()
                cancel.append(seen(api, "bench", f"c{i}", "Revoked") - asked)
            return {"deadline": summary(deadline), "cancel": summary(cancel)}
        finally:
            stack.down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = run(args.runs)
    if args.json:
        print(json.dumps(results))
    else:
        for kind, row in results.items():
            print(
                f"{kind:<9} n={row['n']} median {row['median_ms']} ms, p95 {row['p95_ms']} ms,"
                f" worst {row['max_ms']} ms"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
