"""Admission's cost to the API server: how long one create of the worst specs takes.

DESIGN.md's target: admission answers any spec, admitted or refused, within 100 ms of
API-server time.  Each spec is created `--reps` times on a fresh local stack (no
operator, no worker), timed from the moment its encoded body is handed to the
connection to the answer, under each policy:

- `none`: no bounded-input policy bound, what the API server costs by itself (decoding
  the body, the CRD's schema, storing the object): no policy can go below it;
- `now`: this tree's deploy/crd.yaml;
- `before`: `--before REV`'s deploy/crd.yaml (the issue's figures: `--before 87b715d`,
  a walk of every value in CEL).

    python benchmarks/admission.py                       # none and now, 5 reps each
    python benchmarks/admission.py --before 87b715d      # and the policy of a revision
    python benchmarks/admission.py --reps 1 --json       # the smoke run the tests use
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes import config
from latency import GROUP, PLURAL, VERSION
from revisions import shown

from celery_taskrun.api.model import MAX_ARGS_BYTES, MAX_ARGS_DEPTH, MAX_ARGS_VALUES
from taskrun_dev.stack import Stack

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "default"
BINDING = "taskruns.celery.taskrun.dev-bounded-input"
TARGET_MS = 100.0


def _many(item: str, count: int) -> str:
    return "[" + ",".join([item] * count) + "]"


def _keys(count: int) -> str:
    return "{" + ",".join(f'"{i:x}":0' for i in range(count)) + "}"


def _nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


# Name -> the spec's args and kwargs as raw JSON (json.dumps stops near 1,000 levels).
SPECS: dict[str, tuple[str, str]] = {
    "zeros at the values bound": (f"[{_many('0', MAX_ARGS_VALUES - 1)}]", "{}"),
    "zeros one past it": (f"[{_many('0', MAX_ARGS_VALUES)}]", "{}"),
    "empty lists at the values bound": (f"[{_many('[]', MAX_ARGS_VALUES - 1)}]", "{}"),
    "keys at the values bound": ("[]", f'{{"k":{_keys(MAX_ARGS_VALUES - 1)}}}'),
    "depth at the bound": (f"[{_nested(MAX_ARGS_DEPTH - 1)}]", "{}"),
    "depth one past it": (f"[{_nested(MAX_ARGS_DEPTH)}]", "{}"),
    "a string at the bytes bound": (json.dumps(["x" * (MAX_ARGS_BYTES - 10)]), "{}"),
    "deep and large (31 maps, 200 KB)": (
        "[]",
        '{"a":' * MAX_ARGS_DEPTH + json.dumps("x" * 200_000) + "}" * MAX_ARGS_DEPTH,
    ),
    # The issue's: 10,000 empty lists admitted after 0.56 s, 80,000 refused after 33 s.
    "10,000 empty lists": (f"[{_many('[]', 10_000)}]", "{}"),
    "30,000 empty lists": (f"[{_many('[]', 30_000)}]", "{}"),
    "80,000 empty lists": (f"[{_many('[]', 80_000)}]", "{}"),
    "9,990 levels": (f"[{_nested(9990)}]", "{}"),
    "a megabyte of zeros (500,000)": (f"[{_many('0', 500_000)}]", "{}"),
}


class Creates:
    """Timed creates of raw manifests through one connection (the admin's certificate)."""

    def __init__(self, stack: Stack) -> None:
        self.api = config.new_client_from_config(str(stack.admin_kubeconfig))
        self.url = (
            f"{self.api.configuration.host}/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}"
        )

    def once(self, args: str, kwargs: str) -> tuple[int, float, str]:
        name = f"bench-{uuid.uuid4().hex[:8]}"
        body = (
            f'{{"apiVersion":"{GROUP}/{VERSION}","kind":"TaskRun","metadata":{{"name":"{name}"}},'
            f'"spec":{{"task":"bench.task","args":{args},"kwargs":{kwargs}}}}}'
        ).encode()
        pool = self.api.rest_client.pool_manager
        started = time.perf_counter()
        answer = pool.request(
            "POST", self.url, body=body, headers={"Content-Type": "application/json"}
        )
        seconds = time.perf_counter() - started
        if answer.status == 201:
            pool.request("DELETE", f"{self.url}/{name}")
            return answer.status, seconds, ""
        message = str(json.loads(answer.data).get("message", ""))
        return answer.status, seconds, message.rsplit("denied request: ", 1)[-1][:100]


# Probes that tell the three apart, each with the answer that shows it in force: too
# deep (refused by either policy, admitted without one); more values than this policy
# allows (refused by it, admitted by one that counts no values, as before issue 16).
DEEP = f"[{_nested(MAX_ARGS_DEPTH + 5)}]"
MANY = f"[{_many('0', MAX_ARGS_VALUES + 1000)}]"


def enforce(stack: Stack, manifest: str | None, probe: str, wanted: int) -> None:
    """Apply `manifest` (the CRD and its policies), or take the bounded-input binding
    away (None); then wait until `probe` is answered `wanted`."""
    if manifest is None:
        stack.kubectl("delete", "validatingadmissionpolicybinding", BINDING, check=True)
    else:
        stack.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", "-", input=manifest, check=True
        )
    creates = Creates(stack)
    deadline = time.monotonic() + 30
    while creates.once(probe, "{}")[0] != wanted:
        if time.monotonic() > deadline:
            raise SystemExit(f"the policy change took no effect within 30 s (wanted {wanted})")
        time.sleep(0.2)  # a policy takes effect a moment after it is written


def measure(stack: Stack, reps: int) -> dict[str, dict[str, Any]]:
    creates = Creates(stack)
    figures = {}
    for name, (args, kwargs) in SPECS.items():
        answers = [creates.once(args, kwargs) for _ in range(reps)]
        times = sorted(seconds * 1000 for _, seconds, _ in answers)
        figures[name] = {
            "status": answers[0][0],
            "message": answers[0][2],
            "median_ms": round(statistics.median(times), 1),
            "max_ms": round(times[-1], 1),
            "body_bytes": len(args) + len(kwargs),
        }
    return figures


def run(reps: int, before: str | None) -> dict[str, Any]:
    current = (ROOT / "deploy" / "crd.yaml").read_text()
    policies: dict[str, tuple[str | None, str, int]] = {"now": (current, MANY, 422)}
    if before:
        policies["before"] = (shown(before, "deploy/crd.yaml"), MANY, 201)
    policies["none"] = (None, DEEP, 201)
    results: dict[str, Any] = {"reps": reps, "revision": before, "target_ms": TARGET_MS}
    with tempfile.TemporaryDirectory(prefix="taskrun-bench-") as tmp:
        stack = Stack(Path(tmp) / "stack", say=lambda _: None)
        try:
            stack.up(operator=False, worker=False)
            for label, (manifest, probe, wanted) in policies.items():
                enforce(stack, manifest, probe, wanted)
                results[label] = measure(stack, reps)
        finally:
            stack.down()
    return results


def table(results: dict[str, Any]) -> str:
    labels = [label for label in ("none", "now", "before") if label in results]
    lines = [
        "| spec | body | " + " | ".join(f"{label} (ms, median)" for label in labels) + " |",
        "|---|---|" + "---|" * len(labels),
    ]
    for name in SPECS:
        cells = []
        for label in labels:
            row = results[label][name]
            answer = "admitted" if row["status"] == 201 else f"refused {row['status']}"
            late = " **over**" if label == "now" and row["median_ms"] > TARGET_MS else ""
            cells.append(f"{row['median_ms']:.0f} {answer}{late}")
        body = results[labels[0]][name]["body_bytes"]
        lines.append(f"| {name} | {body:,} B | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="creates of each spec")
    parser.add_argument("--before", default=None, help="a git revision's policy as well")
    parser.add_argument("--json", action="store_true", help="the figures as JSON, last")
    args = parser.parse_args(argv)
    results = run(args.reps, args.before)
    print(table(results))
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
