"""The benchmark suite: DESIGN.md's targets, each beside a baseline measured in the same run.

    python benchmarks/suite.py                 # the full suite (about 10 minutes on 2 cores)
    python benchmarks/suite.py --profile       # ... with the operator under py-spy in the burst
    python benchmarks/suite.py --phases bare,burst --profile   # just the CPU profile
    make bench                                 # the same as the first line

On a fresh local stack of its own (devstack's `Stack`, the API server writing an audit
log of every write; a Celery worker of trivial tasks; the operator as a process, with
its ServiceAccount and default settings), in this order:

1. bare: one client creates `--runs` bare TaskRuns as fast as it can, the operator not
   yet started: the API server's own rate on this machine, the reference of step 3.
2. paced: TaskRuns arrive at `--rate` per second for `--paced-seconds`. Status lag =
   from the task's end (`date_done` of its record in Redis) to the moment an external
   watcher (watcher.py, a watch on taskruns in a process of its own) sees the
   terminal status. API writes per run, counted from the API server's audit log (the
   operator's user, this namespace), from the watch (changes + Events) and from the
   operator's metric `taskrun_api_writes_total`.
3. burst: one client creates `--runs` TaskRuns as fast as it can; end to end = from
   the first create to the watcher seeing the last run end. Operator CPU per run from
   /proc (utime + stime over the burst); `--profile` samples it with py-spy and says
   where the CPU goes.
4. scale: the worker stops; `--in-flight` TaskRuns on a queue no worker consumes; once
   all are Queued, the operator's RSS and Redis commands per second over `--window`.
Beside each, the seed's strategy (each task polled on its own, 0.5 s x1.5 capped at
5 s, no Kubernetes): the same paced and burst sends, and as many held tasks polled.

Prints a table (figure, target, ours, seed's strategy, previous figures), writes the
figures as JSON and draws the lag distribution and the burst's throughput (plot.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from figures import (
    OPERATOR_USER,
    PREVIOUS,
    TARGET_BURST_RATIO,
    TARGET_CPU_MS_PER_RUN,
    TARGET_IDLE_RSS_MIB,
    TARGET_IN_FLIGHT,
    TARGET_PACED_P99_MS,
    TARGET_REDIS_PER_S,
    TARGET_RSS_MIB,
    TARGET_WRITES_PER_RUN,
    by_label,
    contention,
    cores,
    epoch,
    lag_summary,
    machine_busy_ticks,
    offsets,
    process_ticks,
    profile_breakdown,
    rate,
    render_table,
    table_rows,
    watched_writes_per_run,
    writes_per_run,
)
from kubernetes import client, config
from latency import GROUP, PLURAL, VERSION, seed_poll
from scale import (
    TASK,
    cpu_seconds,
    create_held,
    load,
    metric,
    seed_side,
    trivial_run,
    wait_all,
)

from taskrun_dev.audit import AuditLog, Write
from taskrun_dev.processes import ManagedProcess
from taskrun_dev.procfs import memory_mib
from taskrun_dev.stack import DEFAULT_WORKER, Stack

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PHASES = ("bare", "paced", "burst", "scale")
NAMESPACES = {phase: f"bench-{phase}" for phase in PHASES}
# Writes that land after a run is seen terminal (a finalizer removed, an Event) count too:
# a namespace is done once the operator has not written to it for this long.
QUIET_SECONDS = 1.5
SUITE = "benchmark (client, watcher, py-spy)"
META_KEY = "celery-task-meta-{}"

Say = Callable[[str], None]


# -- the external watcher, in a process of its own ---------------------------------------


class Watcher:
    """watcher.py on one namespace; its lines arrive on a queue, read with timeouts."""

    def __init__(self, kubeconfig: Path, namespace: str, expected: int) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "watcher.py"),
                f"--kubeconfig={kubeconfig}",
                f"--namespace={namespace}",
                f"--expected={expected}",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("")

    def expect(self, word: str, timeout: float) -> None:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            line = f"nothing for {timeout:.0f} s"
        if line != word:
            raise SystemExit(f"the watcher was to say {word!r}: {line}; {self.summary()}")

    def summary(self) -> str:
        """What the watcher saw so far (runs by their last phase), for an error message."""
        if self.proc.poll() is not None:
            return f"the watcher exited {self.proc.returncode}"
        report = self.stop(timeout=30)
        phases = Counter(run["last_phase"] for run in report["runs"].values())
        return f"runs seen by phase {dict(phases)} {report['error']}".strip()

    def stop(self, timeout: float = 60) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        line = ""
        try:  # "done" or "error" may come before the report
            while not line.startswith("{"):
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            report: dict[str, Any] = json.loads(line)
        except (queue.Empty, ValueError):
            raise SystemExit("the watcher gave no report") from None
        self.proc.wait(timeout)
        return report

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# -- the stack and its clients ------------------------------------------------------------


@dataclass
class Bench:
    stack: Stack
    say: Say
    api: client.CustomObjectsApi = field(init=False)
    core: client.CoreV1Api = field(init=False)
    backend: redis.Redis = field(init=False)
    audit_log: AuditLog = field(init=False)
    writes: list[Write] = field(default_factory=list)
    operator: ManagedProcess | None = None

    def __post_init__(self) -> None:
        api_client = config.new_client_from_config(str(self.stack.admin_kubeconfig))
        self.api = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.backend = redis.Redis.from_url(self.stack.result_backend, socket_timeout=30)
        self.audit_log = AuditLog(self.stack.audit_log)

    def audited(self) -> list[Write]:
        self.writes += self.audit_log.read_new()
        return self.writes

    def operator_writes(self, namespace: str) -> int:
        return sum(
            1 for w in self.audited() if w.user == OPERATOR_USER and w.namespace == namespace
        )

    def quiesce(self, namespace: str, timeout: float = 60) -> None:
        """Wait until the operator has stopped writing to `namespace`."""
        deadline = time.monotonic() + timeout
        count, since = self.operator_writes(namespace), time.monotonic()
        while time.monotonic() - since < QUIET_SECONDS:
            if time.monotonic() > deadline:
                raise SystemExit(f"the operator still writes to {namespace} after {timeout} s")
            time.sleep(0.25)
            now = self.operator_writes(namespace)
            if now != count:
                count, since = now, time.monotonic()

    def cpu_mark(self) -> CpuMark:
        """The machine's busy ticks, and those of each of the stack's processes and ours."""
        names = {proc.pid: name for name, proc in self.stack.processes().items()}
        names[os.getpgrp()] = SUITE
        ticks: Counter[str] = Counter()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                group, used = process_ticks(stat.read_text())
            except (OSError, IndexError, ValueError):  # gone since listed
                continue
            if group in names:
                ticks[names[group]] += used
        return CpuMark(time.monotonic(), machine_busy_ticks(Path("/proc/stat").read_text()), ticks)

    def cores_since(self, mark: CpuMark, runs: int = 0) -> dict[str, Any]:
        """Cores used since `mark` by the stack (and the suite) and by everything else;
        with `runs`, each process's CPU milliseconds per run."""
        now, tick = self.cpu_mark(), os.sysconf("SC_CLK_TCK")
        seconds = now.at - mark.at
        # A process that ended meanwhile took its ticks along: none count negative.
        used = {name: max(0, n - mark.ticks[name]) for name, n in now.ticks.items()}
        out: dict[str, Any] = {
            "stack": cores(sum(used.values()), seconds, tick),
            "outside": cores(
                max(0, now.machine - mark.machine - sum(used.values())), seconds, tick
            ),
        }
        if runs:
            out["ms_per_run"] = {
                name: round(1000 * n / tick / runs, 2)
                for name, n in sorted(used.items(), key=lambda item: -item[1])
            }
        return out

    def namespace(self, name: str) -> str:
        self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        return name

    def create(self, namespace: str, body: dict[str, Any]) -> None:
        self.api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def metric_writes(self) -> dict[str, float]:
        assert self.operator is not None and self.operator.url
        return by_label(metric(self.operator.url, "taskrun_api_writes_total"), "kind")

    def echoes(self) -> float:
        """Watch events of the operator's own writes it dropped unhandled, so far."""
        assert self.operator is not None and self.operator.url
        return sum(metric(self.operator.url, "taskrun_watch_echoes_total").values())

    def events(self, namespace: str) -> int:
        listed = self.core.list_namespaced_event(namespace, _request_timeout=60)
        return sum(1 for e in listed.items if e.involved_object.kind == "TaskRun")

    def date_done(self, task_ids: Sequence[str]) -> dict[str, float]:
        """The backend's `date_done` of each task (epoch seconds), read from Redis."""
        found: dict[str, float] = {}
        for start in range(0, len(task_ids), 500):
            chunk = task_ids[start : start + 500]
            for task_id, raw in zip(
                chunk, self.backend.mget([META_KEY.format(t) for t in chunk]), strict=True
            ):
                done = json.loads(raw).get("date_done") if raw else None
                if isinstance(done, str):
                    found[task_id] = epoch(done)
        return found


@dataclass(frozen=True)
class CpuMark:
    at: float
    machine: int
    ticks: Counter[str]


# -- phases ----------------------------------------------------------------------------


def bare(bench: Bench, runs: int) -> dict[str, Any]:
    namespace = bench.namespace(NAMESPACES["bare"])
    mark = bench.cpu_mark()
    for i in range(runs):
        bench.create(namespace, trivial_run(i))
    seconds = time.monotonic() - mark.at
    used = bench.cores_since(mark, runs)
    # The operator never watches this namespace; the objects go, so that it stays lean.
    bench.api.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    return {"runs": runs, "seconds": round(seconds, 2), "rate": rate(runs, seconds), "cores": used}


@contextmanager
def py_spy(pid: int, output: Path) -> Iterator[None]:
    """Sample `pid` with py-spy (raw collapsed stacks into `output`) while inside."""
    binary = Path(sys.executable).parent / "py-spy"
    found = str(binary) if binary.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("--profile needs py-spy: pip install py-spy (in the [dev] extras)")
    # --gil: only the thread holding the GIL, i.e. the Python work; threads parked in
    # the thread pool or the event loop's epoll would otherwise count as busy.
    argv = [found, "record", "--pid", str(pid), "--rate", "100", "--format", "raw", "--gil"]
    argv += ["--full-filenames", "--output", str(output)]
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        _, err = spy.communicate(timeout=60)
        if not output.exists():
            raise SystemExit(f"py-spy wrote no profile: {err.strip()[-2000:]}")


def drive(
    bench: Bench,
    phase: str,
    runs: int,
    offset: Callable[[int], float] | None,
    profile: Path | None = None,
) -> dict[str, Any]:
    """Create `runs` trivial TaskRuns, at `offset(i)` seconds from the start or as fast as
    one client can (None), and follow them to their end and their last write."""
    assert bench.operator is not None
    namespace = bench.namespace(NAMESPACES[phase])
    watcher = Watcher(bench.stack.admin_kubeconfig, namespace, runs)
    try:
        watcher.expect("ready", 60)
        metric_before, cpu_before = bench.metric_writes(), cpu_seconds(bench.operator.pid)
        echoes_before = bench.echoes()
        mark = bench.cpu_mark()
        with ExitStack() as sampling:
            if profile:
                sampling.enter_context(py_spy(bench.operator.pid, profile))
            created: list[float] = []
            start = time.time()
            for i in range(runs):
                if offset is not None:
                    time.sleep(max(0.0, start + offset(i) - time.time()))
                bench.create(namespace, trivial_run(i))
                created.append(time.time())
            watcher.expect("done", max(120.0, runs / 5))
            bench.quiesce(namespace)
        cpu = cpu_seconds(bench.operator.pid) - cpu_before
        used = bench.cores_since(mark, runs)
        metric_after = bench.metric_writes()
        echoes = bench.echoes() - echoes_before
        report = watcher.stop()
    finally:
        watcher.kill()
    seen = report["runs"]
    done = bench.date_done([run["taskId"] for run in seen.values() if run.get("taskId")])
    lags, from_status = [], 0
    for run in seen.values():
        ended = done.get(run.get("taskId") or "")
        if ended is None and run.get("completedAt"):
            ended, from_status = epoch(run["completedAt"]), from_status + 1
        if ended is not None:
            lags.append(run["terminal_at"] - ended)
    finished = [run["terminal_at"] for run in seen.values()]
    metric_writes = sum(metric_after.values()) - sum(metric_before.values())
    return {
        "runs": runs,
        "phases": sorted({run["phase"] for run in seen.values()}),
        "seconds": round(max(finished) - start, 2),
        "rate": rate(runs, max(finished) - start),
        "create_rate": rate(runs, created[-1] - start),
        "lag": lag_summary(lags),
        "lag_from_completed_at": from_status,
        "lags_ms": sorted(round(lag * 1000, 1) for lag in lags),
        "created_s": offsets(created, start),
        "finished_s": offsets(finished, start),
        "operator_cpu_ms_per_run": round(1000 * cpu / runs, 2),
        "echoes_dropped_per_run": round(echoes / runs, 2),
        "cores": used,
        "profiled": profile is not None,
        "writes": {
            "audit": writes_per_run(bench.audited(), namespace, runs),
            "watch": watched_writes_per_run(
                {name: run["modified"] for name, run in seen.items()},
                sum(run["deleted"] for run in seen.values()),
                bench.events(namespace),
                runs,
            ),
            "metric": {
                "per_run": round(metric_writes / runs, 2),
                "by_kind": {
                    kind: round((value - metric_before.get(kind, 0.0)) / runs, 2)
                    for kind, value in metric_after.items()
                },
            },
        },
    }


def scale(bench: Bench, runs: int, window: float) -> dict[str, Any]:
    assert bench.operator is not None
    worker = bench.stack.process(DEFAULT_WORKER)
    if worker is not None:  # its own polling of the broker would count as the operator's
        worker.stop()
    namespace = bench.namespace(NAMESPACES["scale"])
    idle_rss = memory_mib(bench.operator.pid)
    created = create_held(bench.api, namespace, runs)
    queued = created + wait_all(
        bench.api, "Queued", runs, max(300.0, runs / 5), namespace=namespace, interval=2.0
    )
    mark = bench.cpu_mark()
    quiet = load(bench.backend, window, bench.operator.pid)
    return {
        "cores": bench.cores_since(mark),
        "runs": runs,
        "all_queued_s": round(queued, 1),
        "submitted_per_s": rate(runs, queued),
        "operator_idle_rss_mib": idle_rss,
        **quiet,
        "api_writes_per_run_until_queued": writes_per_run(bench.audited(), namespace, runs),
    }


# -- the seed's strategy, no Kubernetes ----------------------------------------------------


def seed_drive(stack: Stack, runs: int, offset: Callable[[int], float] | None) -> dict[str, Any]:
    """Send `runs` trivial tasks as `drive` creates TaskRuns; poll each the seed's way."""
    app = Celery(broker=stack.broker_url, backend=stack.result_backend)

    async def main() -> tuple[float, list[tuple[float, float, str]]]:
        pollers = []
        start = time.time()
        for i in range(runs):
            if offset is not None:
                await asyncio.sleep(max(0.0, start + offset(i) - time.time()))
            sent = app.send_task(TASK, args=[[i, 1]])
            pollers.append(asyncio.create_task(seed_poll(app, sent.id)))
            await asyncio.sleep(0)
        return start, list(await asyncio.gather(*pollers))

    timeout = max(120.0, runs / 5)
    try:
        start, ends = asyncio.run(asyncio.wait_for(main(), timeout))
    except TimeoutError:
        raise SystemExit(
            f"the seed's polling: not all {runs} tasks ended in {timeout:.0f} s"
        ) from None
    failed = sorted({phase for _, _, phase in ends} - {"Succeeded"})
    if failed:
        raise SystemExit(f"the seed's polling: tasks ended {failed}, not all succeeded")
    last = max(seen for seen, _, _ in ends)
    return {
        "runs": runs,
        "rate": rate(runs, last - start),
        "lag": lag_summary(seen - done for seen, done, _ in ends),
        "lags_ms": sorted(round((seen - done) * 1000, 1) for seen, done, _ in ends),
        "finished_s": offsets((seen for seen, _, _ in ends), start),
    }


# -- the whole suite -----------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    phases: tuple[str, ...]
    runs: int
    rate: float
    paced_seconds: float
    in_flight: int
    window: float
    profile: Path | None
    dir: Path


def run(options: Options, say: Say) -> dict[str, Any]:
    stack = Stack(options.dir, say=lambda _: None, audit=True)
    results: dict[str, Any] = {"seed": {}, "writes": {}}
    try:
        say(f"stack in {options.dir}")
        stack.up(operator=False, worker=True)
        bench = Bench(stack, say)
        if "bare" in options.phases:
            say(f"bare: {options.runs} creates, operator stopped")
            results["bare"] = bare(bench, options.runs)
        namespaces = [NAMESPACES[p] for p in options.phases if p != "bare"]
        bench.operator = stack.start_operator(
            extra_args=[arg for ns in namespaces for arg in ("--namespace", ns)]
        )
        if "paced" in options.phases:
            runs = max(1, round(options.rate * options.paced_seconds))
            say(f"paced: {runs} runs at {options.rate:g}/s")
            paced = drive(bench, "paced", runs, lambda i: i / options.rate)
            results["paced"] = {"arrival_rate": options.rate, **paced}
            say("seed's strategy, paced")
            results["seed"]["paced"] = seed_drive(stack, runs, lambda i: i / options.rate)
        if "burst" in options.phases:
            say(f"burst: {options.runs} runs" + (" under py-spy" if options.profile else ""))
            results["burst"] = drive(bench, "burst", options.runs, None, options.profile)
            say("seed's strategy, burst")
            results["seed"]["burst"] = seed_drive(stack, options.runs, None)
        for phase in ("paced", "burst"):
            if phase in results:
                results["writes"][phase] = results[phase].pop("writes")
        if options.profile:
            breakdown = profile_breakdown(options.profile.read_text().splitlines())
            results["profile"] = {"file": str(options.profile), **breakdown.as_json()}
        if "scale" in options.phases:
            say(f"scale: {options.in_flight} runs in flight, {options.window:g} s window")
            results["scale"] = scale(bench, options.in_flight, options.window)
            bench.operator.stop()
            say(f"seed's strategy, {options.in_flight} tasks polled")
            results["seed"]["scale"] = seed_side(stack, options.in_flight, options.window)
    finally:
        stack.down()
    return results


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30, check=False
    ).stdout.strip()


def describe(options: Options) -> dict[str, Any]:
    # The operator measured: the last commit of operator/, and whether it has changes.
    operator = git("log", "-1", "--format=%h", "--", "operator")
    if git("status", "--porcelain", "--", "operator"):
        operator += "-dirty"
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git("describe", "--always", "--dirty"),
        "operator_commit": operator,
        "cpus": os.cpu_count(),
        # The machine is shared: what else ran shows in the load before the suite.
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "phases": list(options.phases),
        "runs": options.runs,
        "rate": options.rate,
        "paced_seconds": options.paced_seconds,
        "in_flight": options.in_flight,
        "window": options.window,
        "targets": {
            "writes_per_run": TARGET_WRITES_PER_RUN,
            "paced_p99_ms": TARGET_PACED_P99_MS,
            "burst_ratio": TARGET_BURST_RATIO,
            "cpu_ms_per_run": TARGET_CPU_MS_PER_RUN,
            "rss_mib": TARGET_RSS_MIB,
            "idle_rss_mib": TARGET_IDLE_RSS_MIB,
            "redis_per_s": TARGET_REDIS_PER_S,
            "in_flight": TARGET_IN_FLIGHT,
        },
        "previous": PREVIOUS,
    }


def profile_lines(results: dict[str, Any]) -> list[str]:
    profile = results.get("profile")
    if not profile:
        return []
    cpu = results.get("burst", {}).get("operator_cpu_ms_per_run", 0.0)
    lines = [f"where the operator's CPU goes in the burst ({profile['samples']} samples):"]
    for group, share in sorted(profile["groups"].items(), key=lambda item: -item[1]):
        lines.append(f"  {share * 100:5.1f} %  {share * cpu:6.2f} ms/run  {group}")
    lines.append("  hottest frames (self):")
    lines += [f"  {share * 100:5.1f} %  {frame}" for frame, share in profile["top"]]
    return lines


def phase_list(value: str) -> tuple[str, ...]:
    phases = tuple(p.strip() for p in value.split(",") if p.strip())
    unknown = set(phases) - set(PHASES)
    if unknown or not phases:
        raise argparse.ArgumentTypeError(f"phases are among {', '.join(PHASES)}")
    return phases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phases", type=phase_list, default=PHASES, help="default: all")
    parser.add_argument("--runs", type=int, default=1000, help="bare creates and burst runs")
    parser.add_argument("--rate", type=float, default=40.0, help="paced runs per second")
    parser.add_argument("--paced-seconds", type=float, default=30.0)
    parser.add_argument("--in-flight", type=int, default=TARGET_IN_FLIGHT)
    parser.add_argument("--window", type=float, default=20.0, help="seconds of quiet load")
    parser.add_argument("--profile", action="store_true", help="py-spy on the operator (burst)")
    parser.add_argument(
        "--profile-out",
        type=Path,
        default=Path(tempfile.gettempdir()) / "taskrun-bench-operator.pyspy.txt",
        help="py-spy's raw stacks (flamegraph.pl's input)",
    )
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "benchmarks.json")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "benchmarks.png")
    parser.add_argument(
        "--dir", type=Path, help="a new stack state directory (default: a temporary one)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 10_000 or not 1 <= args.in_flight <= 10_000:
        parser.error("--runs and --in-flight are between 1 and 10,000")
    if not 0 < args.rate <= 1000 or not 0 < args.paced_seconds <= 600:
        parser.error("--rate is in (0, 1000], --paced-seconds in (0, 600]")
    if args.dir and args.dir.exists():
        parser.error(f"--dir {args.dir} exists: the suite wants a fresh stack")

    def say(line: str) -> None:
        print(f"bench: {line}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="taskrun-bench-") as tmp:
        profile = args.profile_out if args.profile else None
        options = Options(
            args.phases,
            args.runs,
            args.rate,
            args.paced_seconds,
            args.in_flight,
            args.window,
            profile,
            args.dir or Path(tmp) / "stack",
        )
        meta = describe(options)
        results = {"meta": meta, **run(options, say)}
    rows = table_rows(results)
    results["table"] = [row.__dict__ for row in rows]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    from plot import draw  # matplotlib loads only once there are figures to draw

    draw(results, args.png)
    print(render_table(rows))
    print(contention(results))
    for phase in ("paced", "burst"):
        if phase in results:
            dropped = results[phase]["echoes_dropped_per_run"]
            print(
                f"watch echoes of the operator's writes dropped unhandled, {phase}: {dropped}/run"
            )
    print("\n".join(profile_lines(results)))
    print(f"figures: {args.json}\nchart:   {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
