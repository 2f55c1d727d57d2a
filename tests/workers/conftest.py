"""Real components for the workers' tests: a redis-server and Celery prefork workers.

Everything listens on 127.0.0.1 ports picked free at start; every process started here
is stopped here, by its own id.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from taskrun_workers.app import create_app
from taskrun_workers.ledger import read_ledger

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
START_TIMEOUT = 30.0
WAIT_TIMEOUT = 20.0
CLAIM_LEASE_SECONDS = 3


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: end-to-end test against real components")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    condition: Callable[[], Any], timeout: float = WAIT_TIMEOUT, what: str = "condition"
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def stop_process(process: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM ``process``, then SIGKILL the process group started for it after ``grace``.

    SIGTERM goes to the process alone: a Celery worker's warm shutdown stops its pool
    processes itself.
    """
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    workdir = tmp_path_factory.mktemp("redis")
    port = free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=(workdir / "redis.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = RedisServer(port, process)
    probe = server.client()

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"redis-server exited: {(workdir / 'redis.log').read_text()}")
        try:
            return bool(probe.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_until(ready, START_TIMEOUT, "redis-server")
        yield server
    finally:
        probe.close()
        stop_process(process)


def worker_env(
    redis_server: RedisServer, backend: str | None = None, **extra: str
) -> dict[str, str]:
    """Settings shared by the workers and the test clients (broker db 0, results db 1)."""
    return {
        "CELERY_BROKER_URL": redis_server.url(0),
        "CELERY_RESULT_BACKEND": backend or redis_server.url(1),
        "TASKRUN_WORKER_IMPORTS": "taskrun_user_tasks",
        "TASKRUN_LEDGER_URL": "broker",
        # Short leases, so that the tests can see them renewed and released.
        "TASKRUN_CLAIM_LEASE_SECONDS": str(CLAIM_LEASE_SECONDS),
        **extra,
    }


@dataclass
class Worker:
    """A ``celery -A taskrun_workers.app worker --pool=prefork`` subprocess."""

    hostname: str
    env: dict[str, str]
    client: Any
    log: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int:
        """Warm shutdown; the exit code."""
        stop_process(self.process)
        return int(self.process.returncode)

    def send(self, name: str, *args: Any, task_id: str | None = None, **options: Any) -> str:
        """Send ``taskrun_workers.tasks.<name>`` (or a dotted name) as the operator does."""
        full_name = name if "." in name else f"taskrun_workers.tasks.{name}"
        kwargs = options.pop("kwargs", None)
        result = self.client.send_task(
            full_name, args=list(args), kwargs=kwargs, task_id=task_id, **options
        )
        return str(result.id)

    def meta(self, task_id: str) -> dict[str, Any]:
        return dict(self.client.backend.get_task_meta(task_id, cache=False))

    def wait_state(
        self, task_id: str, *states: str, timeout: float = WAIT_TIMEOUT
    ) -> dict[str, Any]:
        """The backend record of ``task_id`` once its state is one of ``states``."""

        def reached() -> dict[str, Any] | None:
            meta = self.meta(task_id)
            return meta if meta["status"] in states else None

        try:
            return dict(wait_until(reached, timeout, f"{task_id} to reach {states}"))
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; last record {self.meta(task_id)}\n{self.log_tail()}"
            ) from None

    def ledger(self, task_id: str) -> list[dict[str, Any]]:
        return [e for e in read_ledger(self.env["CELERY_BROKER_URL"]) if e["task_id"] == task_id]

    def wait_ledger(self, task_id: str, event: str, timeout: float = WAIT_TIMEOUT) -> None:
        def seen() -> bool:
            return any(e["event"] == event for e in self.ledger(task_id))

        try:
            wait_until(seen, timeout, f"ledger event {event} of {task_id}")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; ledger {self.ledger(task_id)}\n{self.log_tail()}"
            ) from None


def start_worker(
    env: Mapping[str, str], logdir: Path, queues: str = "celery", concurrency: int = 3
) -> Worker:
    name = f"tr-{uuid.uuid4().hex[:8]}"
    hostname = f"{name}@taskrun-tests"
    log = logdir / f"{name}.log"
    full_env = {
        **os.environ,
        **env,
        # The user-tasks module of these tests lives beside them.
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        ),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "taskrun_workers.app",
            "worker",
            "--pool=prefork",
            f"--concurrency={concurrency}",
            "-n",
            hostname,
            "-Q",
            queues,
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        env=full_env,
        cwd=REPO,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    client = create_app(env)
    worker = Worker(hostname, dict(env), client, log, process)

    def answers() -> bool:
        if not worker.alive():
            raise AssertionError(f"worker exited at start:\n{worker.log_tail()}")
        return bool(client.control.ping(destination=[hostname], timeout=0.3))

    try:
        wait_until(answers, START_TIMEOUT, f"worker {hostname} to answer a ping")
    except BaseException:
        stop_process(process)
        raise
    return worker


@pytest.fixture(scope="session")
def worker_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("workers")


@pytest.fixture(scope="session")
def worker(redis_server: RedisServer, worker_logs: Path) -> Iterator[Worker]:
    """The worker most tests share: Redis broker and backend, default queue."""
    started = start_worker(worker_env(redis_server), worker_logs)
    try:
        yield started
    finally:
        stop_process(started.process)
        assert started.process.returncode == 0, started.log_tail()


@pytest.fixture
def env_for(redis_server: RedisServer) -> Callable[..., dict[str, str]]:
    """``env_for(backend=None, **extra)``: worker settings against the test Redis."""
    return lambda backend=None, **extra: worker_env(redis_server, backend, **extra)


@pytest.fixture
def launch_worker(worker_logs: Path) -> Iterator[Callable[..., Worker]]:
    """Start extra workers inside a test (stopped when it ends)."""
    started: list[Worker] = []

    def launch(env: Mapping[str, str], queues: str, concurrency: int = 2) -> Worker:
        started.append(start_worker(env, worker_logs, queues, concurrency))
        return started[-1]

    yield launch
    for each in started:
        stop_process(each.process)


class StateRecorder:
    """Every state the result backend publishes for one task id, in order.

    The Redis backend publishes each record it stores on a channel named after its key,
    so transient states (RETRY, PROGRESS) are seen without racing a poll.
    """

    def __init__(self, client: redis.Redis, task_id: str) -> None:
        self.records: list[dict[str, Any]] = []
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(**{f"celery-task-meta-{task_id}": self._on_message})
        self._thread = self._pubsub.run_in_thread(sleep_time=0.01, daemon=True)

    def _on_message(self, message: dict[str, Any]) -> None:
        self.records.append(json.loads(message["data"]))

    @property
    def states(self) -> list[str]:
        return [record["status"] for record in self.records]

    def close(self) -> None:
        self._thread.stop()
        self._thread.join(5)
        self._pubsub.close()


@pytest.fixture
def record_states(redis_server: RedisServer) -> Iterator[Callable[[str], StateRecorder]]:
    recorders: list[StateRecorder] = []
    backend = redis_server.client(1)

    def record(task_id: str) -> StateRecorder:
        recorders.append(StateRecorder(backend, task_id))
        return recorders[-1]

    yield record
    for recorder in recorders:
        recorder.close()
    backend.close()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    return free_port()


@pytest.fixture
def wait() -> Callable[..., Any]:
    return wait_until
