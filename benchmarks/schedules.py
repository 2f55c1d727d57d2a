"""Schedules at scale: lateness from a slot's due time to its TaskRun's creation, with
N CronTaskRuns `@every P`, beside celery beat sending the same N entries.

    python benchmarks/schedules.py                          # 1,000 @every 60s, 3 periods
    python benchmarks/schedules.py --schedules 3 --period 2 --periods 2 --json  # smoke run

Ours: a stack of its own (API server, etcd, Redis, a worker, the operator as a
process); N CronTaskRuns created as fast as one client can; a watcher (a watch on the
namespace's TaskRuns) notes when it sees each run ADDED: lateness = that moment minus
the slot in the run's name (an upper bound: the watch's delivery is included). The
operator's CPU (/proc, over the measured periods) and memory (RSS at the end), per
schedule.

Baseline: `celery beat` with N entries every P seconds (`relative`, so each period's
sends fall due together at a whole second, at minutes for P = 60 s) against the same
Redis; the bench takes each message off the queue as it arrives: lateness = arrival
minus its due time. One beat must run, and only one: its standby costs nothing because
there is none (a second beat sends everything twice).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis
from figures import process_ticks, profile_breakdown
from kubernetes import client, config, watch
from latency import GROUP, VERSION, quantile, summary
from suite import py_spy
from urllib3.exceptions import MaxRetryError, ProtocolError

from taskrun_dev.stack import Stack

NAMESPACE = "bench-cron"
TASK = "taskrun_workers.tasks.echo"
CRON_LABEL = f"{GROUP}/cron"
BEAT_QUEUE = "beat-bench"
TICKS = os.sysconf("SC_CLK_TCK")


def figures(lateness: list[float], expected: int) -> dict[str, Any]:
    if not lateness:
        raise SystemExit(f"nothing measured: none of {expected} slots was seen")
    p99 = quantile(sorted(lateness), 0.99)
    return {**summary(lateness), "p99_ms": round(p99 * 1000, 1), "expected": expected}


def cpu_seconds(pid: int) -> float:
    return process_ticks(Path(f"/proc/{pid}/stat").read_text())[1] / TICKS


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Watcher(threading.Thread):
    """Notes when each TaskRun a schedule made is first seen."""

    def __init__(self, api: client.CustomObjectsApi) -> None:
        super().__init__(daemon=True)
        self.api = api
        self.seen: dict[str, float] = {}
        self.stream = watch.Watch()

    def run(self) -> None:
        version = None
        while True:  # the API server ends a watch now and then: go on from where it was
            try:
                for event in self.stream.stream(
                    self.api.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    NAMESPACE,
                    "taskruns",
                    label_selector=CRON_LABEL,
                    resource_version=version,
                ):
                    meta = event["object"]["metadata"]
                    version = meta["resourceVersion"]
                    self.seen.setdefault(meta["name"], time.time())
            except (ProtocolError, client.ApiException):
                version = None  # too old, or cut: list again (seen keeps the first sight)
            except MaxRetryError:
                return  # the stack is going down


def ours(
    stack: Stack, schedules: int, period: int, periods: int, profile: Path | None = None
) -> dict[str, Any]:
    operator = stack.start_operator()
    api = client.CustomObjectsApi(config.new_client_from_config(str(stack.admin_kubeconfig)))
    stack.kubectl("create", "namespace", NAMESPACE, check=True)
    watcher = Watcher(api)
    watcher.start()
    began = time.time()
    for i in range(schedules):
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "CronTaskRun",
            "metadata": {"name": f"s{i}"},
            "spec": {
                "schedule": f"@every {period}s",
                "successfulRunsHistoryLimit": 1,
                "failedRunsHistoryLimit": 1,
                "taskRunTemplate": {"spec": {"task": TASK, "args": [i]}},
            },
        }
        api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "crontaskruns", body)
    created = time.time()
    start = created + period  # from the first period after every schedule exists
    end = start + period * periods
    cpu = cpu_seconds(operator.pid)
    with py_spy(operator.pid, profile) if profile else contextlib.nullcontext():
        while time.time() < end + 2:
            time.sleep(0.5)
    cpu = cpu_seconds(operator.pid) - cpu
    lateness = [
        seen - int(name.rsplit("-", 1)[1])
        for name, seen in list(watcher.seen.items())
        if start <= int(name.rsplit("-", 1)[1]) <= end
    ]
    rss = rss_mib(operator.pid)
    operator.stop()
    return {
        **figures(lateness, schedules * periods),
        "create_seconds": round(created - began, 1),
        "cpu_ms_per_slot": round(1000 * cpu / max(len(lateness), 1), 2),
        "rss_mib": round(rss, 1),
        "rss_kib_per_schedule": round(1024 * rss / schedules, 1),
    }


BEAT_APP = """
import os
from datetime import timedelta
from celery import Celery
from celery.schedules import schedule

app = Celery("beat_bench", broker=os.environ["CELERY_BROKER_URL"])
every = timedelta(seconds=int(os.environ["BEAT_PERIOD"]))
app.conf.beat_schedule = {
    f"s{i}": {
        "task": "bench.echo",
        "schedule": schedule(every, relative=True),
        "args": [i],
        "options": {"queue": os.environ["BEAT_QUEUE"]},
    }
    for i in range(int(os.environ["BEAT_ENTRIES"]))
}
app.conf.beat_max_loop_interval = 1
"""


def beat(stack: Stack, schedules: int, period: int, periods: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="taskrun-bench-beat-") as tmp:
        Path(tmp, "beat_bench.py").write_text(BEAT_APP)
        env = {
            **os.environ,
            "CELERY_BROKER_URL": stack.broker_url,
            "BEAT_PERIOD": str(period),
            "BEAT_ENTRIES": str(schedules),
            "BEAT_QUEUE": BEAT_QUEUE,
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "beat_bench", "beat", "-s",
             str(Path(tmp) / "beat-schedule"), "--loglevel=WARNING"],
            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            broker = redis.Redis.from_url(stack.broker_url)
            start = time.time() + period  # its first period is its start-up
            end = start + period * periods
            lateness: list[float] = []
            while time.time() < end:
                got = broker.brpop([BEAT_QUEUE], timeout=1)
                if got is None:
                    continue
                arrived = time.time()
                due = math.floor(arrived / period) * period  # the grid it falls due on
                if arrived >= start:
                    lateness.append(arrived - due)
            return figures(lateness, schedules * periods)
        finally:
            proc.terminate()
            proc.wait(30)


def run(schedules: int, period: int, periods: int, profile: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="taskrun-bench-cron-") as tmp:
        stack = Stack(Path(tmp) / "stack", say=lambda _: None)
        try:
            stack.up(operator=False, worker=False)
            stack.start_worker(extra_args=["--concurrency=4"])
            return {
                "operator": ours(stack, schedules, period, periods, profile),
                "celery-beat": beat(stack, schedules, period, periods),
            }
        finally:
            stack.down()


def inclusive(lines: list[str], top: int) -> list[tuple[str, float]]:
    """The frames holding the most samples, each counted once a stack (py-spy raw)."""
    held: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        for frame in set(stack.split(";")):
            held[frame.split(" (")[0] + " " + frame.rsplit("/", 1)[-1][:60]] += int(count)
    return [(frame, n / max(total, 1)) for frame, n in held.most_common(top)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--period", type=int, default=60, help="seconds")
    parser.add_argument("--periods", type=int, default=3, help="periods measured")
    parser.add_argument("--profile", type=Path, help="sample the operator with py-spy into it")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = run(args.schedules, args.period, args.periods, args.profile)
    if args.profile:
        breakdown = profile_breakdown(args.profile.read_text().splitlines(), top=15)
        print("by layer:", {k: f"{v:.0%}" for k, v in breakdown.groups.items()})
        for frame, share in inclusive(args.profile.read_text().splitlines(), 25):
            print(f"{share:6.1%}  {frame}")
    if args.json:
        print(json.dumps(results))
    else:
        for kind, row in results.items():
            print(
                f"{kind:<12} n={row['n']} of {row['expected']}: median {row['median_ms']} ms,"
                f" p99 {row['p99_ms']} ms, worst {row['max_ms']} ms"
            )
        mine = results["operator"]
        print(
            f"operator: {mine['cpu_ms_per_slot']} ms CPU per slot, "
            f"RSS {mine['rss_mib']} MiB ({mine['rss_kib_per_schedule']} KiB per schedule); "
            f"{args.schedules} CronTaskRuns created in {mine['create_seconds']} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
