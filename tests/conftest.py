"""Shared fixtures: a real local stack (kube-apiserver + etcd, kube-controller-manager,
the broker and result backend) for e2e tests.

- `stack` (session): control plane + broker + backend, started once (once per xdist
  worker under `make test`) under a pytest tmp dir, with deploy/crd.yaml and
  deploy/rbac.yaml installed. The broker and backend are TASKRUN_E2E_BROKER (redis,
  rabbitmq) and TASKRUN_E2E_BACKEND (redis, postgresql, sqlite), Redis and Redis by
  default; where neither is Redis, a Redis of the stack's
  own keeps the workers' execution ledger (`stack.ledger_url`). No worker, no operator: take the
  fixtures below, or start your own (`stack.start_worker("w2", queues=[...])`,
  `stack.start_operator("op2", env_overrides={...}, config_path=...)`).
- `worker` (session): the default Celery worker `worker1` (taskrun_workers.app).
- `operator` (session): the default operator, running with its ServiceAccount's RBAC.
- `namespace` (function): a fresh namespace per test.

Tests that kill or stop a process should start their own rather than the shared ones.
When a test that uses the stack fails, the report gets every process's log path and
tail. Teardown stops every process the stack recorded, also on failures, on
Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import uuid
from collections.abc import Callable, Generator, Iterator
from types import FrameType
from typing import Any

import pytest

from taskrun_dev.processes import ManagedProcess, tail
from taskrun_dev.services import REDIS
from taskrun_dev.stack import Stack
from taskrun_workers.ledger import read_ledger

STACK_KEY = pytest.StashKey[Stack]()
LEDGER_SUMMARY = "taskrun-ledger-summary"
LOG_TAIL_LINES = 25


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "e2e: runs against the real local stack (kube-apiserver, etcd, redis, Celery, "
        "operator); the first run builds the control plane with Go",
    )


def _logs_report(stack: Stack) -> str:
    procs = stack.processes()
    lines = [f"state dir: {stack.dir}"]
    for log in sorted(stack.logs_dir.glob("*.log")):
        name = log.name.removesuffix(".log")
        proc = procs.get(name)
        state = "not recorded" if proc is None else f"pid {proc.pid}, alive={proc.alive}"
        lines += [f"--- {name} ({state}): {log}", tail(log, LOG_TAIL_LINES), ""]
    return "\n".join(lines)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    stack = item.config.stash.get(STACK_KEY, None)
    uses_stack = "stack" in getattr(item, "fixturenames", ())
    if report.failed and stack is not None and uses_stack:
        report.sections.append(("taskrun-dev process logs", _logs_report(stack)))
    return report


def _install_emergency_down(stack: Stack) -> None:
    """Stop the stack if pytest dies by SIGTERM or exits without running teardown."""
    atexit.register(stack.down, 5.0)
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        stack.down(timeout=5.0)
        signal.signal(signal.SIGTERM, previous)
        signal.raise_signal(signum)

    if previous in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, on_sigterm)


@pytest.fixture(scope="session")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Control plane, broker and backend, once per session; everything it recorded stops
    at the end."""
    the_stack = Stack(tmp_path_factory.mktemp("taskrun-dev"))
    request.config.stash[STACK_KEY] = the_stack
    _install_emergency_down(the_stack)
    # The first run builds the control plane with Go (minutes): show its progress live.
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        the_stack.binaries  # noqa: B018 (builds or finds the binaries)
    try:
        the_stack.up(
            operator=False,
            worker=False,
            broker=os.environ.get("TASKRUN_E2E_BROKER", REDIS),
            backend=os.environ.get("TASKRUN_E2E_BACKEND", REDIS),
            ledger_redis=True,
        )
        yield the_stack
        summary = f"{the_stack.broker}/{the_stack.backend}: {ledger_summary(the_stack)}"
        # An xdist worker's output is not shown: the controller prints it (below).
        worker_output = getattr(request.config, "workeroutput", None)
        if worker_output is not None:
            worker_output[LEDGER_SUMMARY] = summary
        else:
            with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
                print(f"\n{summary}")
    finally:
        the_stack.down()


# Files whose costly session fixture one xdist worker builds once for both (the image's
# virtualenv: a pip install from the index): the first runs on the second's worker.
SAME_WORKER = {"tests/packaging/test_pod_sandbox.py": "tests/packaging/test_dockerfile.py"}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile` (make test), with the files of SAME_WORKER on one worker."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling  # type: ignore[import-untyped]

    class Scheduling(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            scope: str = super()._split_scope(nodeid)
            return SAME_WORKER.get(scope, scope)

    return Scheduling(config, log)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object | None) -> None:
    """On the xdist controller: a worker's session stack's ledger summary."""
    summary = node.workeroutput.get(LEDGER_SUMMARY)
    reporter = node.config.pluginmanager.getplugin("terminalreporter")
    if summary and reporter is not None:
        reporter.write_line(f"\n{node.gateway.id} {summary}")  # after a line of dots


def ledger_summary(stack: Stack) -> str:
    """What the session's workers executed, per the ledger: the figures of the README's
    table of promises by broker and backend (a duplicate: an attempt started twice)."""
    url = stack.ledger_url
    if url is None:
        return "no execution ledger"
    entries = read_ledger(url)
    starts = [(e["task_id"], e.get("retries")) for e in entries if e["event"] == "start"]
    refused = sum(1 for e in entries if e["event"].startswith("skipped-"))
    return (
        f"{len(starts)} executions of {len({tid for tid, _ in starts})} task ids, "
        f"{len(starts) - len(set(starts))} duplicates; {refused} deliveries refused by the guard"
    )


@pytest.fixture(scope="session")
def worker(stack: Stack) -> Iterator[ManagedProcess]:
    """The default worker `worker1` (prefork, concurrency 2) on the stack's broker."""
    proc = stack.start_worker()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def operator(stack: Stack) -> Iterator[ManagedProcess]:
    """The default operator, as a process with operator.kubeconfig (RBAC, not admin)."""
    proc = stack.start_operator()
    yield proc
    proc.stop()


def _namespace_prefix(test_name: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"t-{slug}"


MakeNamespace = Callable[[str], str]


@pytest.fixture
def make_namespace(stack: Stack) -> Iterator[MakeNamespace]:
    """Fresh namespaces for this test: `make(prefix)` creates `<prefix>-<hex>`.

    Teardown deletes their TaskRuns and the namespaces without waiting: the
    namespace controller removes each once its content is gone.
    """
    made: list[str] = []

    def make(prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        stack.kubectl("create", "namespace", name, check=True)
        made.append(name)
        return name

    yield make
    for name in made:
        stack.kubectl("delete", "taskruns", "--all", "-n", name, "--wait=false")
        stack.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture
def namespace(make_namespace: MakeNamespace, request: pytest.FixtureRequest) -> str:
    """A fresh namespace for this test, named after it (`t-...`: the shared operator's)."""
    return make_namespace(_namespace_prefix(request.node.name))
