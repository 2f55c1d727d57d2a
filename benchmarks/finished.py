"""What finished runs cost while they are kept: the operator's memory, its API calls
while nothing changes, and a takeover, with N finished TaskRuns in the cluster.

    python benchmarks/finished.py --runs 100000        # DESIGN's target (about 20 minutes)
    python benchmarks/finished.py --runs 200 --json    # the smoke run the tests use

A stack of its own (no worker: a probe run only needs to be sent).  The operator's
config keeps every run: a TTL of a week (so each finished run has one to keep) and the
default history limits (1,000 per namespace), the runs spread over namespaces of
`--per-namespace` each, so none is deleted.

1. Idle: the operator started with no TaskRuns; ready once it sends a probe run; RSS.
2. N finished TaskRuns are created straight through the API server, labelled finished
   as the operator leaves them, their terminal status written at once through the
   status subresource (16 clients).
3. With them kept: the operator started again, time until it sends a probe run (a
   start lists every run), and until its index holds every finished run (its gauge
   `taskrun_finished_kept`, where the build has it), then, once its CPU is quiet,
   over `--window` seconds: its
   RSS, CPU, and every request the API server answered about TaskRuns (its
   `apiserver_request_total`, all clients: nothing else touches TaskRuns then) and
   the operator's writes of any kind (the audit log).
4. A takeover: a second operator on the same Lease stands by; the leader is stopped
   (SIGTERM: it hands the Lease over) and the time until the new leader sends a probe
   run is taken, with its CPU meanwhile, and until its index is filled.

Each of `--variants` (git revisions, `.` the installed tree; default `main,.`) is
measured on the same objects in the same run, the first being the baseline: a
revision's operator package is `git archive`d into the run's directory and put first
on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from figures import OPERATOR_USER, prometheus_samples
from kubernetes import client, config
from latency import GROUP, PLURAL, VERSION
from revisions import operator_package
from scale import cpu_seconds

from celery_taskrun.api.model import FINISHED_LABEL
from taskrun_dev.audit import AuditLog
from taskrun_dev.procfs import memory_mib
from taskrun_dev.stack import Stack

TASK = "taskrun_workers.tasks.calculate_sum"
PROBE_NAMESPACE = "fin-probe"
TTL_SECONDS = 7 * 24 * 3600
CLIENTS = 16
# DESIGN.md / issue 19: the targets.
TARGET_RSS_OVER_IDLE_MIB = 50.0
TARGET_CALLS_PER_MINUTE = 0.0
TARGET_TAKEOVER_S = 10.0
QUIET_CPU_PERCENT = 5.0


def finished_status(i: int, finished: datetime) -> dict[str, Any]:
    """The terminal status the operator writes for a trivial run (one in ten failed)."""
    failed = i % 10 == 9
    phase, state = ("Failed", "FAILURE") if failed else ("Succeeded", "SUCCESS")
    at = finished.isoformat().replace("+00:00", "Z")
    outcome = "False" if failed else "True"
    conditions = [
        {"type": "Succeeded", "status": outcome, "reason": "TaskError" if failed else phase},
        {"type": "Finished", "status": "True", "reason": phase},
        {"type": "Reconciling", "status": "False", "reason": phase},
        {"type": "Ready", "status": outcome, "reason": phase},
        {"type": "Stalled", "status": "True" if failed else "False", "reason": phase},
    ]
    status: dict[str, Any] = {
        "phase": phase,
        "state": state,
        "taskId": f"00000000-0000-4000-8000-{i:012d}",
        "attempt": 1,
        "submittedAt": at,
        "startedAt": at,
        "completedAt": at,
        "observedGeneration": 1,
        "conditions": [
            {**c, "observedGeneration": 1, "lastTransitionTime": at, "message": ""}
            for c in conditions
        ],
    }
    if failed:
        status["reason"] = "TaskError"
        status["error"] = {"type": "ValueError", "message": "bad input", "traceback": "..."}
    else:
        status["result"] = i + 1
    return status


def namespace_of(i: int, per_namespace: int) -> str:
    return f"fin-{i // per_namespace:04d}"


def create_finished(api: client.CustomObjectsApi, runs: int, per_namespace: int) -> float:
    """`runs` TaskRuns, each created then given its terminal status; seconds taken."""
    began = datetime.now(UTC) - timedelta(hours=1)

    def create(i: int) -> None:
        namespace = namespace_of(i, per_namespace)
        status = finished_status(i, began + timedelta(milliseconds=i))
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "TaskRun",
            "metadata": {"name": f"f{i}"},
            "spec": {"task": TASK, "args": [[i, 1]]},
        }
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        api.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, f"f{i}", {"status": status}
        )
        # Labelled as the operator leaves a finished run (a baseline ignores the label).
        labels = {"metadata": {"labels": {FINISHED_LABEL: status["phase"]}}}
        api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, f"f{i}", labels)

    started = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(create, range(runs)))
    return time.monotonic() - started


def taskrun_requests(admin: client.ApiClient) -> dict[str, float]:
    """Requests the API server answered about TaskRuns so far, by verb (all clients)."""
    url = f"{admin.configuration.host}/metrics"
    response = admin.call_api("GET", url, _request_timeout=30)
    response.read()
    text = response.data.decode()
    out: dict[str, float] = {}
    for labels, value in prometheus_samples(text, "apiserver_request_total").items():
        if 'resource="taskruns"' in labels:
            verb = labels.split('verb="', 1)[1].split('"', 1)[0]
            out[verb] = out.get(verb, 0.0) + value
    return out


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


class Probe:
    """A fresh TaskRun in the probe namespace at each call; the seconds until it is sent."""

    def __init__(self, api: client.CustomObjectsApi) -> None:
        self.api = api
        self.count = 0

    def sent_after(self, began: float, timeout: float) -> float:
        name = f"probe-{self.count}"
        self.count += 1
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "TaskRun",
            "metadata": {"name": name},
            "spec": {"task": TASK, "args": [[1, 1]], "queue": "nobody"},
        }
        self.api.create_namespaced_custom_object(GROUP, VERSION, PROBE_NAMESPACE, PLURAL, body)

        def sent() -> bool:
            obj = self.api.get_namespaced_custom_object(
                GROUP, VERSION, PROBE_NAMESPACE, PLURAL, name
            )
            return bool((obj.get("status") or {}).get("taskId"))

        wait_until(sent, timeout, f"probe {name} to be sent")
        return time.monotonic() - began


def wait_quiet(pid: int, timeout: float) -> float:
    """Until the process uses under QUIET_CPU_PERCENT of a core over 2 s; seconds taken."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        before = cpu_seconds(pid)
        time.sleep(2.0)
        if 100 * (cpu_seconds(pid) - before) / 2.0 < QUIET_CPU_PERCENT:
            return time.monotonic() - began
    raise SystemExit(f"operator {pid} not quiet within {timeout:.0f}s")


def indexed_after(operator: Any, runs: int, began: float, timeout: float) -> float | None:
    """Seconds from `began` until the operator's index holds every finished run (its
    gauge `taskrun_finished_kept`, updated every 5 s); None for a build without it."""

    def count() -> float | None:
        with urllib.request.urlopen(operator.url, timeout=5) as answer:
            found = prometheus_samples(answer.read().decode(), "taskrun_finished_kept")
        return found.get("")

    if count() is None:
        return None
    wait_until(lambda: (count() or 0) >= runs, timeout, "every finished run indexed", 0.5)
    return time.monotonic() - began


def operator_writes(audit: AuditLog) -> dict[str, int]:
    out: dict[str, int] = {}
    for write in audit.read_new():
        if write.user == OPERATOR_USER:
            key = f"{write.verb} {write.resource}"
            out[key] = out.get(key, 0) + 1
    return out


class Variant:
    """One operator build: PYTHONPATH first (the baseline) or the installed one."""

    def __init__(self, stack: Stack, name: str, config_path: Path, source: Path | None) -> None:
        self.stack, self.name, self.config_path = stack, name, config_path
        self.env = {"PYTHONPATH": str(source)} if source else {}

    def start(self, role: str) -> Any:
        env = {**self.env, "TASKRUN_LEASE_NAME": f"fin-{self.name}"}
        return self.stack.start_operator(
            f"fin-{self.name}-{role}", env_overrides=env, config_path=self.config_path
        )


def idle(variant: Variant, probe: Probe, timeout: float) -> dict[str, Any]:
    began = time.monotonic()
    operator = variant.start("idle")
    ready = probe.sent_after(began, timeout)
    wait_quiet(operator.pid, timeout)
    rss = memory_mib(operator.pid)
    operator.stop()
    return {"ready_s": round(ready, 2), "rss_mib": rss}


def kept(
    variant: Variant,
    runs: int,
    probe: Probe,
    admin: client.ApiClient,
    audit: AuditLog,
    window: float,
    timeout: float,
) -> dict[str, Any]:
    began = time.monotonic()
    leader = variant.start("a")
    cpu_start = cpu_seconds(leader.pid)
    ready = probe.sent_after(began, timeout)
    # The finished runs are indexed apart, after the live ones are acted on.
    indexed = indexed_after(leader, runs, began, timeout)
    settled = wait_quiet(leader.pid, timeout) + time.monotonic() - began
    start_cpu = cpu_seconds(leader.pid) - cpu_start
    operator_writes(audit)  # what came before the window is not counted
    requests, cpu = taskrun_requests(admin), cpu_seconds(leader.pid)
    t0 = time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - t0
    after = taskrun_requests(admin)
    calls = {verb: n - requests.get(verb, 0) for verb, n in after.items()}
    calls = {verb: n for verb, n in calls.items() if n}
    writes = operator_writes(audit)
    out: dict[str, Any] = {
        "start_ready_s": round(ready, 2),
        "start_indexed_s": None if indexed is None else round(indexed, 1),
        "start_settled_s": round(settled, 1),
        "start_cpu_s": round(start_cpu, 2),
        "rss_mib": memory_mib(leader.pid),
        "peak_rss_mib": memory_mib(leader.pid, "VmHWM"),
        "quiet_cpu_percent": round(100 * (cpu_seconds(leader.pid) - cpu) / elapsed, 2),
        "window_s": round(elapsed, 1),
        "taskrun_calls_per_minute": round(60 * sum(calls.values()) / elapsed, 2),
        "taskrun_calls_by_verb": calls,
        "operator_writes_in_window": writes,
    }
    # The takeover: a standby on the same Lease, settled; then the leader goes.
    standby = variant.start("b")
    standby_cpu = cpu_seconds(standby.pid)
    wait_quiet(standby.pid, timeout)
    out["standby_rss_mib"] = memory_mib(standby.pid)
    out["standby_start_cpu_s"] = round(cpu_seconds(standby.pid) - standby_cpu, 2)
    cpu = cpu_seconds(standby.pid)
    began = time.monotonic()
    leader.stop()
    out["takeover_ready_s"] = round(probe.sent_after(began, timeout), 2)
    indexed = indexed_after(standby, runs, began, timeout)
    out["takeover_indexed_s"] = None if indexed is None else round(indexed, 1)
    out["takeover_cpu_s"] = round(cpu_seconds(standby.pid) - cpu, 2)
    wait_quiet(standby.pid, timeout)
    out["takeover_settled_cpu_s"] = round(cpu_seconds(standby.pid) - cpu, 2)
    out["leader_after_takeover_rss_mib"] = memory_mib(standby.pid)
    standby.stop()
    return out


def verdicts(row: dict[str, Any]) -> dict[str, bool]:
    """Issue 19's targets, met or not, for one variant's figures."""
    return {
        "rss_over_idle": row["kept"]["rss_mib"] - row["idle"]["rss_mib"]
        <= TARGET_RSS_OVER_IDLE_MIB,
        "calls_per_minute": row["kept"]["taskrun_calls_per_minute"] <= TARGET_CALLS_PER_MINUTE,
        "takeover": row["kept"]["takeover_ready_s"] <= TARGET_TAKEOVER_S,
    }


def render(results: dict[str, Any]) -> str:
    lines = [
        f"{results['runs']:,} finished runs kept, created in {results['create_s']} s; "
        f"load average {results['load_before']} before, {results['load_after']} after",
        f"{'figure':<44} {'target':<14} " + " ".join(f"{v:>16}" for v in results["variants"]),
    ]
    rows = results["variants"]

    def line(label: str, target: str, get: Callable[[dict[str, Any]], Any]) -> None:
        lines.append(
            f"{label:<44} {target:<14} " + " ".join(f"{get(r)!s:>16}" for r in rows.values())
        )

    line("RSS idle (MiB)", "", lambda r: r["idle"]["rss_mib"])
    line("RSS with the runs kept (MiB)", "<= idle + 50", lambda r: r["kept"]["rss_mib"])
    line(
        "  over idle (MiB)",
        "<= 50",
        lambda r: round(r["kept"]["rss_mib"] - r["idle"]["rss_mib"], 1),
    )
    line("  peak during the start (MiB)", "", lambda r: r["kept"]["peak_rss_mib"])
    line(
        "TaskRun API calls / minute, nothing changing",
        "0",
        lambda r: r["kept"]["taskrun_calls_per_minute"],
    )
    line("CPU while nothing changes (% of a core)", "", lambda r: r["kept"]["quiet_cpu_percent"])
    line("start: probe sent (s)", "", lambda r: r["kept"]["start_ready_s"])
    line("start: finished runs indexed (s)", "", lambda r: r["kept"].get("start_indexed_s"))
    line("start: CPU until quiet (s)", "", lambda r: r["kept"]["start_cpu_s"])
    line("takeover: probe sent (s)", "<= 10", lambda r: r["kept"]["takeover_ready_s"])
    line("takeover: finished runs indexed (s)", "", lambda r: r["kept"].get("takeover_indexed_s"))
    line("takeover: CPU until quiet (s)", "", lambda r: r["kept"]["takeover_settled_cpu_s"])
    line("standby RSS (MiB)", "", lambda r: r["kept"]["standby_rss_mib"])
    for name, row in rows.items():
        met = ", ".join(f"{k} {'met' if ok else 'NOT met'}" for k, ok in verdicts(row).items())
        lines.append(f"{name}: {met}")
    return "\n".join(lines)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run(runs: int, per_namespace: int, window: float, revisions: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="taskrun-finished-") as tmp:
        stack = Stack(Path(tmp) / "stack", say=lambda _: None, audit=True)
        try:
            stack.up(operator=False, worker=False)
            config_path = Path(tmp) / "config.yaml"
            config_path.write_text(yaml.safe_dump({"ttlSecondsAfterFinished": TTL_SECONDS}))
            admin = config.new_client_from_config(str(stack.admin_kubeconfig))
            admin.configuration.connection_pool_maxsize = CLIENTS * 2
            api = client.CustomObjectsApi(admin)
            namespaces = {namespace_of(i, per_namespace) for i in range(runs)}
            for namespace in sorted(namespaces | {PROBE_NAMESPACE}):
                stack.kubectl("create", "namespace", namespace)
            audit = AuditLog(stack.audit_log)
            probe = Probe(api)
            variants = {
                rev: Variant(
                    stack,
                    f"v{k}",
                    config_path,
                    None if rev == "." else operator_package(rev, Path(tmp) / f"v{k}"),
                )
                for k, rev in enumerate(revisions)
            }
            timeout = max(120.0, runs / 200)
            rows: dict[str, dict[str, Any]] = {
                n: {"idle": idle(v, probe, timeout)} for n, v in variants.items()
            }
            load_before = load_average()
            created = create_finished(api, runs, per_namespace)
            for name, variant in variants.items():
                rows[name]["kept"] = kept(variant, runs, probe, admin, audit, window, timeout)
            for row in rows.values():
                row["verdicts"] = verdicts(row)
            return {
                "runs": runs,
                "per_namespace": per_namespace,
                "create_s": round(created, 1),
                "load_before": load_before,
                "load_after": load_average(),
                "variants": rows,
            }
        finally:
            stack.down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--per-namespace", type=int, default=1000)
    parser.add_argument("--window", type=float, default=60.0, help="seconds of nothing changing")
    parser.add_argument("--variants", default="main,.", help="git revisions, `.`: this tree")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = run(args.runs, args.per_namespace, args.window, args.variants.split(","))
    print(render(results), file=sys.stderr)
    print(json.dumps(results) if args.json else json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
