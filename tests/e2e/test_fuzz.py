"""Fuzzing the operator on the real stack (hypothesis).

Generated TaskRun manifests go to the real API server, and generated backend records
(any status, any shape, compressed, pickled, truncated, huge, garbage) to the real
operator through Redis.  Each manifest is refused at apply time or gets a clear status
from the operator; every run then ends, by itself or when cancelled, in a terminal
phase with a known reason.  The operator never restarts, and a TaskRun created after
each batch still succeeds.

The README's test command runs a small number of cases; the full suite:

    TASKRUN_FUZZ_CASES=2000 python -m pytest -q tests/e2e/test_fuzz.py
"""

from __future__ import annotations

import bz2
import json
import os
import pickle
import uuid
import zlib
from collections.abc import Callable
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes.client.exceptions import ApiException

from celery_taskrun.api.model import Phase, Reason
from taskrun_dev.stack import Stack

from support import GROUP, PLURAL, TASKS, VERSION, TaskRuns, wait_for

pytestmark = pytest.mark.e2e

CASES = int(os.environ.get("TASKRUN_FUZZ_CASES", "40"))
BATCH = 20
EXAMPLES = max(1, CASES // BATCH)
TERMINAL = {p.value for p in Phase if p.terminal}
REASONS = {r.value for r in Reason}
COMPRESSED = b"\x00celery-compressed\x00"
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
Body = dict[str, Any]

# -- what a tenant may write ----------------------------------------------------------------

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    leaves,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=25,
)


def nest(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


deep = st.integers(min_value=20, max_value=80).map(nest)
numbers = st.one_of(
    st.floats(min_value=-10, max_value=1e13, allow_nan=False, allow_infinity=False),
    st.integers(min_value=-5, max_value=10**13),
    st.sampled_from([0, 0.001, 1, 3, 31536000, 31536001]),
    st.text(max_size=4),
)
task_names = st.one_of(
    st.sampled_from([f"{TASKS}.{t}" for t in ("calculate_sum", "fail", "sleep", "progress")]),
    st.from_regex(r"[a-z_][a-z0-9_.]{0,30}", fullmatch=True),
    st.text(max_size=300),
)
specs = st.fixed_dictionaries(
    {"task": task_names},
    optional={
        "args": st.one_of(st.lists(json_values, max_size=5), st.lists(deep, max_size=1)),
        "kwargs": st.one_of(st.dictionaries(st.text(max_size=10), json_values, max_size=4)),
        "queue": st.one_of(st.just("fuzz-nobody"), st.text(max_size=260)),
        "priority": st.integers(min_value=-5, max_value=300),
        "countdown": numbers,
        "expires": numbers,
        "timeLimit": numbers,
        "softTimeLimit": numbers,
        "timeout": numbers,
        "retries": st.integers(min_value=-2, max_value=200),
        "cancel": st.booleans(),
        "ttlSecondsAfterFinished": st.integers(min_value=-1, max_value=10**9),
        "poll": st.fixed_dictionaries(
            {}, optional={"initialInterval": numbers, "factor": numbers, "maxInterval": numbers}
        ),
        "sizeBasedLimits": st.fixed_dictionaries(
            {"inputBytes": st.integers(min_value=-1, max_value=2**60)},
            optional={"secondsPerMiB": numbers, "minSeconds": numbers, "maxSeconds": numbers},
        ),
        "unknownField": json_values,
    },
)

# -- what a worker may store ------------------------------------------------------------------

states = st.one_of(
    st.sampled_from(["SUCCESS", "FAILURE", "REVOKED", "STARTED", "RETRY", "PENDING", "PROGRESS"]),
    st.text(max_size=100),
)
metas = st.fixed_dictionaries(
    {"status": st.one_of(states, json_values)},
    optional={
        "result": st.one_of(json_values, deep, st.fixed_dictionaries(
            {"exc_type": st.one_of(st.text(max_size=300), json_values),
             "exc_message": st.one_of(st.lists(st.text(max_size=2000), max_size=3), json_values)}
        )),
        "traceback": st.one_of(st.none(), st.text(max_size=3000), json_values),
        "date_done": st.one_of(
            st.none(), st.text(max_size=40), st.datetimes().map(lambda d: d.isoformat())
        ),
        "worker": st.one_of(st.text(max_size=300), json_values),
        "retries": st.one_of(st.integers(min_value=-10, max_value=2**70), json_values),
    },
)  # fmt: skip


def huge(meta: Body) -> bytes:
    return json.dumps({**meta, "result": "h" * 3_000_000}).encode()


def deep_json(depth: int) -> bytes:
    return b'{"status": "SUCCESS", "result": ' + b"[" * depth + b"1" + b"]" * depth + b"}"


def compressed(content_type: bytes, compress: Callable[[bytes], bytes]) -> Any:
    return metas.map(
        lambda m: COMPRESSED + content_type + b"\x00" + compress(json.dumps(m).encode())
    )


records = st.one_of(
    metas.map(lambda m: json.dumps(m).encode()),
    compressed(b"application/x-gzip", zlib.compress),
    compressed(b"application/x-bz2", bz2.compress),
    compressed(b"application/x-zstd", bytes),  # a codec the operator does not read
    metas.map(lambda m: pickle.dumps(m)),
    metas.map(lambda m: json.dumps(m).encode()[: len(json.dumps(m)) // 2]),
    st.integers(min_value=500, max_value=9000).map(deep_json),
    metas.map(huge),
    st.binary(max_size=300),
)


# -- driving the real stack ---------------------------------------------------------------------


def create(runs: TaskRuns, spec: Body) -> str | None:
    """Create a TaskRun; its name, or None when the API server refuses it."""
    name = f"f-{uuid.uuid4().hex[:10]}"
    try:
        runs.api.create_namespaced_custom_object(
            GROUP, VERSION, runs.namespace, PLURAL, runs.manifest(name, spec)
        )
    except ApiException as exc:
        assert exc.status in (400, 422), exc  # refused, never a server error
        return None
    return name


def statuses(runs: TaskRuns) -> dict[str, Body]:
    items = runs.api.list_namespaced_custom_object(GROUP, VERSION, runs.namespace, PLURAL)
    return {i["metadata"]["name"]: i.get("status") or {} for i in items["items"]}


def settle(
    runs: TaskRuns,
    names: list[str],
    ready: Callable[[Body], bool],
    what: str,
    inputs: dict[str, Any] | None = None,
) -> None:
    def done() -> bool:
        found = statuses(runs)
        return all(ready(found.get(name, {})) for name in names)

    try:
        wait_for(done, timeout=60, what=what, interval=0.2)
    except AssertionError:
        found = statuses(runs)
        stuck = {
            name: {"status": found.get(name), "input": repr((inputs or {}).get(name))[:2000]}
            for name in names
            if not ready(found.get(name, {}))
        }
        detail = json.dumps(stuck, default=str)[:20000]
        raise AssertionError(f"{what}: not so for {detail}") from None


def written(status: Body) -> bool:
    return bool(status.get("phase")) and status.get("observedGeneration") == 1


def ended(status: Body) -> bool:
    return status.get("phase") in TERMINAL


def cancel_in_flight(runs: TaskRuns, names: list[str]) -> None:
    for name, status in statuses(runs).items():
        if name in names and not ended(status):
            runs.patch(name, {"cancel": True})


def assert_clear_ends(runs: TaskRuns, names: list[str], inputs: dict[str, Any]) -> None:
    """Every run ends, in a terminal phase, with a known reason and a message."""
    settle(runs, names, ended, "every run ended", inputs)
    for name, status in statuses(runs).items():
        if name in names:
            assert status["reason"] in REASONS and status.get("message"), status
            finished = {c["type"]: c["status"] for c in status["conditions"]}["Finished"]
            assert finished == "True", status


def still_serving(runs: TaskRuns, stack: Stack, pid: int) -> None:
    operator = stack.process("operator")
    assert operator is not None and operator.alive and operator.pid == pid
    name = f"ok-{uuid.uuid4().hex[:8]}"
    runs.apply(name, "calculate_sum", args=[[1, 2, 3]])
    assert runs.finished(name)["result"] == 6


@pytest.fixture
def operator_pid(stack: Stack, runs: TaskRuns) -> int:
    operator = stack.process("operator")
    assert operator is not None
    return operator.pid


@FUZZ_SETTINGS
@given(batch=st.lists(specs, min_size=BATCH, max_size=BATCH))
def test_generated_manifests(
    runs: TaskRuns, stack: Stack, operator_pid: int, batch: list[Body]
) -> None:
    created = {name: spec for spec in batch if (name := create(runs, spec)) is not None}
    names = list(created)
    settle(runs, names, written, "the operator's first status on every run", created)
    cancel_in_flight(runs, names)
    assert_clear_ends(runs, names, created)
    still_serving(runs, stack, operator_pid)


@FUZZ_SETTINGS
@given(batch=st.lists(records, min_size=BATCH, max_size=BATCH))
def test_generated_backend_records(
    runs: TaskRuns, stack: Stack, operator_pid: int, batch: list[bytes]
) -> None:
    names = [f"r-{uuid.uuid4().hex[:10]}" for _ in batch]
    for name in names:
        # Whatever the record says, the deadline ends a run it leaves in flight.
        runs.apply(name, "calculate_sum", args=[[1]], queue="fuzz-nobody", timeout=5)
    settle(runs, names, lambda s: s.get("phase") == "Queued", "every run Queued")
    found = statuses(runs)
    backend = redis.Redis.from_url(stack.result_backend)
    for name, raw in zip(names, batch, strict=True):
        key = f"celery-task-meta-{found[name]['taskId']}"
        backend.set(key, raw)
        backend.publish(key, raw)
    assert_clear_ends(runs, names, dict(zip(names, batch, strict=True)))
    still_serving(runs, stack, operator_pid)
