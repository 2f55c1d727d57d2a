"""The gateway's waits at scale: many concurrent waits on one namespace.

DESIGN.md's target: 10,000 concurrent waits in one namespace over one API-server watch,
the gateway's RSS <= 300 MiB, each answered within 100 ms p99 of its run's terminal
status. Beside it, the baseline in the same run: the gateway of `--before` (default
0c19fa4, the last on the generated client, each wait a FastAPI route) with
`--baseline-waits` waits on `--baseline-runs` runs (as many as this tree's). A gateway
older than the shared watch (6d253de) holds a watch per wait, and 1,000 at most.

On a fresh local stack of its own (API server and etcd; no operator, no worker: the
benchmark writes each run's terminal status itself, so the figure is the gateway's
alone), for each gateway in turn (this tree's, then `--before`'s, checked out of git
into a temporary directory), in a namespace of its own:

1. `--runs` TaskRuns are created, and the gateway started as a process;
2. the waits (`GET .../taskruns/{name}/wait?timeout=...`, spread evenly over the runs,
   one caller's token) are opened in batches, each batch once the previous is held
   (the gateway's metric `taskrun_gateway_followers`; a gateway without it: the API
   server's watchers on taskruns, one per wait);
3. once all are held: the gateway's RSS, and the API server's watches on taskruns
   (`apiserver_longrunning_requests{verb="WATCH",resource="taskruns"}`);
4. each run's status is written terminal (Succeeded), paced at `--rate` runs a second;
   latency = from the moment the write is sent to the moment a waiter has its answer
   (the whole body read, `finished: true`). Peak RSS is sampled meanwhile.

    python benchmarks/gateway_waits.py                  # 10,000 waits, each gateway (~5 min)
    python benchmarks/gateway_waits.py --waits 40 --runs 4 --baseline-waits 20 \\
        --baseline-runs 2 --json                        # the smoke run the tests use

The client (aiohttp, one process) shares the machine's cores with the stack and the
gateway: its own delay is in the figures, the same for both gateways.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import importlib.metadata
import json
import os
import re
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from figures import quantile
from revisions import operator_package, shown

from taskrun_dev.stack import Stack

ROOT = Path(__file__).resolve().parents[1]
GROUP, VERSION, PLURAL = "celery.taskrun.dev", "v1alpha1", "taskruns"
BEFORE = "0c19fa4"
TARGET_WAITS = 10_000
TARGET_RSS_MIB = 300.0
TARGET_P99_MS = 100.0
TARGET_WATCHES = 1
WAITER = "waiter"
WAITER_NAMESPACE = "bench-gw"
# Waits opened at once; the next batch once these are held (the listen backlog is 2,048).
BATCH = 500
HELD_TIMEOUT = 30.0
WAIT_SECONDS = 600
RETRIES = 3


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels` (Prometheus text)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name) : len(name) + 1] not in ("{", " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{key}="{wanted}"' in head for key, wanted in labels.items()):
            total += float(value)
    return total


def old_tree(revision: str, where: Path) -> str:
    """The operator's package as of `revision`, and the dependencies it had that this
    tree no longer has (installed beside it, at the versions its lock pinned), for
    PYTHONPATH."""
    package = operator_package(revision, where)
    deps = where / "deps"
    deps.mkdir()
    missing = old_dependencies(revision)
    if missing:
        _say(f"the baseline's dependencies missing here: {' '.join(missing)}")
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
        subprocess.run([*pip, "--target", str(deps), *missing], check=True, timeout=300)
    # What this tree locks and `revision` did not (httptools, which uvicorn takes when
    # it is there) is hidden from the baseline, which runs as it was shipped.
    modules = importlib.metadata.packages_distributions()
    added = set(locked(ROOT.joinpath("requirements.lock").read_text())) - set(
        locked(shown(revision, "requirements.lock"))
    )
    for module, distributions in modules.items():
        if {canonical(d) for d in distributions} & added:
            (deps / f"{module}.py").write_text("raise ImportError('not in the baseline')\n")
    return os.pathsep.join([str(package), str(deps)])


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(lock: str) -> list[str]:
    """The distributions a requirements.lock pins."""
    return [canonical(name) for name in re.findall(r"^([A-Za-z0-9_.-]+)==", lock, re.M)]


def old_dependencies(revision: str) -> list[str]:
    """`revision`'s own dependencies that are not installed here, pinned as its lock was."""
    wanted = tomllib.loads(shown(revision, "pyproject.toml"))["project"]["dependencies"]
    lock = shown(revision, "requirements.lock")
    missing = []
    for requirement in wanted:
        name = re.split(r"[\s\[<>=~!;]", requirement, maxsplit=1)[0]
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            normal = re.sub(r"[-_.]+", "[-_.]", name)
            pin = re.search(rf"^({normal}==\S+)", lock, re.M | re.I)
            missing.append(pin.group(1) if pin else requirement)
    return missing


@dataclass
class Design:
    label: str
    waits: int
    runs: int
    pythonpath: str | None  # None: this tree
    figures: dict[str, Any] = field(default_factory=dict)


class Admin:
    """The stack's API server as its admin (client certificate), over aiohttp."""

    def __init__(self, stack: Stack, session: aiohttp.ClientSession) -> None:
        context = ssl.create_default_context(cafile=str(stack.pki.ca_cert))
        context.load_cert_chain(str(stack.pki.admin_cert), str(stack.pki.admin_key))
        self.ssl = context
        self.url = stack.apiserver_url
        self.session = session

    async def call(self, method: str, path: str, body: Any = None, *, merge: bool = False) -> Any:
        headers = {"Content-Type": "application/merge-patch+json"} if merge else {}
        async with self.session.request(
            method, self.url + path, json=body, headers=headers, ssl=self.ssl
        ) as answer:
            text = await answer.text()
            if answer.status >= 300:
                raise RuntimeError(f"{method} {path}: {answer.status} {text[:300]}")
            return json.loads(text) if text.startswith("{") else text

    def runs(self, namespace: str, *parts: str) -> str:
        return "/".join([f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}", *parts])


def waiter_objects(namespace: str) -> list[dict[str, Any]]:
    """The namespace, a Role to follow its TaskRuns, bound to the waiter."""
    meta = {"name": WAITER, "namespace": namespace}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta,
            "rules": [{"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "watch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": WAITER},
            "subjects": [{"kind": "ServiceAccount", "name": WAITER, "namespace": WAITER_NAMESPACE}],
        },
    ]


async def until(check: Callable[[], Awaitable[bool]], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not so after {seconds:g} s")
        await asyncio.sleep(0.2)  # polling a figure, not synchronising a test


def measure(
    stack: Stack, design: Design, token: str, kubeconfig: Path, rate: float
) -> dict[str, Any]:
    """One gateway's figures, in a namespace of its own."""
    namespace = f"bench-{design.label}"
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": waiter_objects(namespace)})
    stack.kubectl("apply", "-f", "-", input=body, check=True)
    port = free_port()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    if design.pythonpath:
        env["PYTHONPATH"] = str(design.pythonpath)
    argv = [sys.executable, "-m", "celery_taskrun.gateway.main", "--port", str(port)]
    argv += ["--max-followers", str(design.waits), "--max-followers-per-caller", str(design.waits)]
    gateway = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return asyncio.run(_measure(stack, design, namespace, token, gateway, port, rate))
    finally:
        gateway.terminate()
        try:
            gateway.wait(timeout=15)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait()
        stack.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


async def _measure(
    stack: Stack,
    design: Design,
    namespace: str,
    token: str,
    gateway: subprocess.Popen[bytes],
    port: int,
    rate: float,
) -> dict[str, Any]:
    base = f"http://127.0.0.1:{port}"
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=WAIT_SECONDS + 60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        admin = Admin(stack, session)
        names = [f"run-{i}" for i in range(design.runs)]
        creating = asyncio.Semaphore(20)

        async def create(name: str) -> None:
            manifest = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "TaskRun",
                "metadata": {"name": name},
                "spec": {"task": "bench.nothing", "args": [name]},
            }
            async with creating:
                await admin.call("POST", admin.runs(namespace), manifest)

        await asyncio.gather(*(create(name) for name in names))

        async def answers() -> bool:
            try:
                async with session.get(f"{base}/healthz") as answer:
                    return answer.status == 200
            except aiohttp.ClientError:
                return gateway.poll() is not None

        await until(answers, 60)
        if gateway.poll() is not None:
            raise SystemExit(f"{design.label}: the gateway exited ({gateway.returncode})")

        async def watches() -> float:
            text = await admin.call("GET", "/metrics")
            return metric(text, "apiserver_longrunning_requests", verb="WATCH", resource=PLURAL)

        async def held() -> float:
            async with session.get(f"{base}/metrics") as answer:
                text = await answer.text()
            if "taskrun_gateway_followers" in text:
                return metric(text, "taskrun_gateway_followers")
            return await watches() - others

        # Watches on taskruns that are not the gateway's (the stack's own), before any wait.
        others = await watches()
        headers = {"Authorization": f"Bearer {token}"}
        answered: list[tuple[int, float, bool]] = []
        failures: list[str] = []

        retries: list[int] = []

        async def wait(i: int) -> None:
            run = i % design.runs
            url = f"{base}/api/v1/namespaces/{namespace}/taskruns/{names[run]}/wait"
            try:
                for _ in range(RETRIES):
                    async with session.get(
                        url, params={"timeout": str(WAIT_SECONDS)}, headers=headers
                    ) as answer:
                        got = await answer.json()
                        status = answer.status
                    if status != 503:
                        break
                    # The API server could not answer a review in time (a loaded
                    # machine): what a client does with Retry-After.
                    retries.append(i)
                    await asyncio.sleep(1)
                if status != 200:
                    failures.append(f"{status} {str(got)[:200]}")
                    return
                answered.append((run, time.monotonic(), bool(got.get("finished"))))
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures.append(repr(exc)[:200])

        started = time.monotonic()
        waiters: list[asyncio.Task[None]] = []
        for first in range(0, design.waits, BATCH):
            batch = range(first, min(first + BATCH, design.waits))
            waiters += [asyncio.create_task(wait(i)) for i in batch]
            # A gateway before the shared watch holds at most its client's connection
            # pool (100) of watches at once: the other waits queue for one. Go on after
            # HELD_TIMEOUT, and say how many were held.
            with contextlib.suppress(TimeoutError):
                await until(
                    functools.partial(_at_least, held, len(waiters), failures), HELD_TIMEOUT
                )
        opening_s = time.monotonic() - started
        held_at_once = await held()
        rss_held = rss_mib(gateway.pid)
        watches_held = await watches() - others
        _say(
            f"{design.label}: {held_at_once:g} of {design.waits} waits held after {opening_s:.1f} s"
        )

        peak = rss_held
        # The client's 10,000 requests live until answered: out of its collector's full
        # passes, whose pauses would be counted as the gateway's lateness.
        gc.freeze()
        written: dict[int, float] = {}
        acknowledged: dict[int, float] = {}

        async def write_all() -> None:
            for run, name in enumerate(names):
                due = started_writes + run / rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                written[run] = time.monotonic()
                status = {"status": {"phase": "Succeeded", "state": "SUCCESS", "result": run}}
                await admin.call("PATCH", admin.runs(namespace, name, "status"), status, merge=True)
                acknowledged[run] = time.monotonic()

        started_writes = time.monotonic()
        writing = asyncio.create_task(write_all())
        ending = asyncio.gather(*waiters)
        while not ending.done():
            peak = max(peak, rss_mib(gateway.pid))
            await asyncio.wait([ending], timeout=0.2)
        await writing
        lags = sorted((at - written[run]) * 1000 for run, at, _ in answered)
        # From the write's answer instead: the API server had stored it by then.
        after_ack = sorted((at - acknowledged[run]) * 1000 for run, at, _ in answered)
        writes = sorted((acknowledged[run] - written[run]) * 1000 for run in written)
        unfinished = sum(1 for *_, done in answered if not done)
        return {
            "waits": design.waits,
            "runs": design.runs,
            "answered": len(answered),
            "unfinished": unfinished,
            "failures": len(failures),
            "retried_503": len(retries),
            "failure_sample": failures[:3],
            "opening_s": round(opening_s, 1),
            "held_at_once": held_at_once,
            "rss_held_mib": round(rss_held, 1),
            "rss_peak_mib": round(peak, 1),
            "apiserver_watches": watches_held,
            "apiserver_watches_others": others,
            "write_p50_ms": round(quantile(writes, 0.5), 1) if writes else None,
            "ack_p99_ms": round(quantile(after_ack, 0.99), 1) if after_ack else None,
            "p50_ms": round(quantile(lags, 0.5), 1) if lags else None,
            "p99_ms": round(quantile(lags, 0.99), 1) if lags else None,
            "max_ms": round(lags[-1], 1) if lags else None,
        }


async def _at_least(held: Callable[[], Awaitable[float]], n: int, failures: list[str]) -> bool:
    """Whether the n waits opened so far are held, but those refused (counted apart)."""
    return await held() >= n - len(failures)


def run(args: argparse.Namespace) -> dict[str, Any]:
    # Each wait is a socket on both sides: the soft limit up to the hard one.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    needed = max(args.waits, args.baseline_waits) + 500
    if hard < needed:
        raise SystemExit(f"ulimit -n is {hard}: {needed} descriptors are needed")
    results: dict[str, Any] = {"rate": args.rate, "before": args.before}
    with tempfile.TemporaryDirectory(prefix="taskrun-bench-") as tmp:
        designs = [Design("shared", args.waits, args.runs, None)]
        if args.before:
            tree = old_tree(args.before, Path(tmp) / "before")
            designs.append(Design("baseline", args.baseline_waits, args.baseline_runs, tree))
        stack = Stack(Path(tmp) / "stack", say=lambda _: None)
        try:
            stack.up(operator=False, worker=False)
            kubeconfig = stack.install_gateway()
            stack.kubectl("create", "namespace", WAITER_NAMESPACE, check=True)
            stack.kubectl("create", "serviceaccount", WAITER, "-n", WAITER_NAMESPACE, check=True)
            token = stack.mint_token(WAITER, WAITER_NAMESPACE, duration="1h")
            for design in designs:
                _say(f"{design.label}: {design.waits} waits on {design.runs} runs")
                results[design.label] = measure(stack, design, token, kubeconfig, args.rate)
        finally:
            stack.down()
    results["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    return results


def verdict(row: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(figure, target, ours, met) for this tree's gateway."""
    return [
        (
            "concurrent waits",
            f">= {TARGET_WAITS:,}",
            f"{row['waits']:,}",
            row["waits"] >= TARGET_WAITS,
        ),
        (
            "answered, finished",
            "all",
            f"{row['answered'] - row['unfinished']:,}",
            row["answered"] - row["unfinished"] == row["waits"],
        ),
        (
            "gateway RSS (peak)",
            f"<= {TARGET_RSS_MIB:g} MiB",
            f"{row['rss_peak_mib']:g} MiB",
            row["rss_peak_mib"] <= TARGET_RSS_MIB,
        ),
        (
            "terminal write -> answer, p99",
            f"<= {TARGET_P99_MS:g} ms",
            f"{row['p99_ms']} ms",
            row["p99_ms"] is not None and row["p99_ms"] <= TARGET_P99_MS,
        ),
        (
            "API-server watches",
            f"{TARGET_WATCHES}",
            f"{row['apiserver_watches']:g}",
            row["apiserver_watches"] == TARGET_WATCHES,
        ),
    ]


def table(results: dict[str, Any]) -> str:
    labels = [label for label in ("shared", "baseline") if label in results]
    keys = [
        ("waits", "concurrent waits"),
        ("runs", "runs (waits spread over them)"),
        ("answered", "answered"),
        ("failures", "refused or failed"),
        ("retried_503", "503s retried (a review timed out)"),
        ("opening_s", "seconds to open them all"),
        ("held_at_once", "waits held at once before the writes"),
        ("rss_held_mib", "gateway RSS, all held (MiB)"),
        ("rss_peak_mib", "gateway RSS, peak (MiB)"),
        ("apiserver_watches", "API-server watches on taskruns (the gateway's)"),
        ("p50_ms", "terminal write -> answer p50 (ms)"),
        ("p99_ms", "terminal write -> answer p99 (ms)"),
        ("max_ms", "terminal write -> answer max (ms)"),
        ("write_p50_ms", "the status write itself, p50 (ms)"),
        ("ack_p99_ms", "write's answer -> wait's answer p99 (ms)"),
    ]
    names = {
        "shared": "this tree",
        "baseline": f"{results['before']} (baseline)",
    }
    lines = [
        "| figure | " + " | ".join(names[label] for label in labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for key, text in keys:
        cells = [str(results[label][key]) for label in labels]
        lines.append(f"| {text} | " + " | ".join(cells) + " |")
    lines += ["", "| target | wanted | this tree | |", "|---|---|---|---|"]
    for figure, wanted, ours, met in verdict(results["shared"]):
        lines.append(f"| {figure} | {wanted} | {ours} | {'met' if met else 'NOT met'} |")
    lines.append(
        f"\nstatus writes paced at {results['rate']:g} runs/s; load average "
        f"{' '.join(str(x) for x in results['loadavg'])} after the run"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waits", type=int, default=TARGET_WAITS, help="this tree's waits")
    parser.add_argument("--runs", type=int, default=500, help="runs they wait on")
    parser.add_argument("--baseline-waits", type=int, default=TARGET_WAITS)
    parser.add_argument("--baseline-runs", type=int, default=500)
    parser.add_argument("--rate", type=float, default=50.0, help="terminal writes a second")
    parser.add_argument(
        "--before", default=BEFORE, help="the baseline gateway's revision ('' for none)"
    )
    parser.add_argument("--json", action="store_true", help="the figures as JSON, last")
    args = parser.parse_args(argv)
    results = run(args)
    print(table(results))
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
