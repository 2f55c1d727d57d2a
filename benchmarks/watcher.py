"""An external watcher of TaskRuns, as `kubectl get taskruns -w` is: its own process,
a watch (never a poll) on one namespace, the time each run's terminal status reached it.

    python benchmarks/watcher.py --kubeconfig K --namespace NS --expected N

Prints `ready` once its watch starts from a listed resourceVersion (nothing created
afterwards is missed), `done` when N runs are terminal, and on a line `stop` (or the
end of its input) what it saw, as one JSON line: per run the moment (epoch seconds)
its terminal status arrived, phase, taskId, completedAt, and how many times the
object changed (each a write that changed it) or was deleted.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any, cast

from kubernetes import client, config, watch
from urllib3.exceptions import HTTPError

GROUP, VERSION, PLURAL = "celery.taskrun.dev", "v1alpha1", "taskruns"
TERMINAL = frozenset({"Succeeded", "Failed", "TimedOut", "Revoked"})


class Seen:
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.runs: dict[str, dict[str, Any]] = {}
        self.terminal = 0
        self.lock = threading.Lock()
        self.error = ""

    def record(self, kind: str, body: dict[str, Any], at: float) -> bool:
        """Note one watch event; True when it made the last expected run terminal."""
        name = body["metadata"]["name"]
        status = body.get("status") or {}
        with self.lock:
            run = self.runs.setdefault(name, {"modified": 0, "deleted": False, "terminal_at": None})
            run["last_phase"] = status.get("phase") or "-"
            if kind == "MODIFIED":
                run["modified"] += 1
            elif kind == "DELETED":
                run["deleted"] = True
            if status.get("phase") in TERMINAL and run["terminal_at"] is None:
                run.update(
                    terminal_at=at,
                    phase=status["phase"],
                    taskId=status.get("taskId"),
                    completedAt=status.get("completedAt"),
                )
                self.terminal += 1
                return self.terminal == self.expected
        return False


def follow(api: client.CustomObjectsApi, namespace: str, version: str, seen: Seen) -> None:
    stream = watch.Watch()
    while True:
        try:
            for event in stream.stream(
                api.list_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                resource_version=version,
                timeout_seconds=300,
            ):
                at = time.time()
                body = event["object"]
                if event["type"] not in ("ADDED", "MODIFIED", "DELETED"):
                    raise ValueError(f"{event['type']} {str(body)[:500]}")
                version = body["metadata"]["resourceVersion"]
                if seen.record(event["type"], body, at):
                    print("done", flush=True)
        # Whatever ends the watch ends the measurement (410 Gone: a phase too long for
        # the watch cache; the connection lost): the suite reports it, never waits on.
        except (client.ApiException, HTTPError, OSError, ValueError, KeyError) as exc:
            seen.error = f"watch ended: {type(exc).__name__}: {exc}"[:2000]
            print("error", flush=True)
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--expected", type=int, required=True)
    args = parser.parse_args(argv)
    api = client.CustomObjectsApi(config.new_client_from_config(args.kubeconfig))
    listing = cast(
        dict[str, Any],
        api.list_namespaced_custom_object(
            GROUP, VERSION, args.namespace, PLURAL, limit=1, _request_timeout=30
        ),
    )
    seen = Seen(args.expected)
    threading.Thread(
        target=follow,
        args=(api, args.namespace, listing["metadata"]["resourceVersion"], seen),
        daemon=True,
    ).start()
    print("ready", flush=True)
    sys.stdin.readline()
    with seen.lock:
        print(json.dumps({"runs": seen.runs, "error": seen.error}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
