"""Fuzzing the operator on the real stack (hypothesis), each case against its exact end.

Generated TaskRun manifests go to the real API server, and generated backend records
(any status, any shape, compressed, pickled, truncated, huge, garbage) to the real
operator through Redis.  Every case has one expected outcome, derived before it runs:

- a manifest is refused with 422 exactly when the model (`TaskRunSpec`, the CRD's
  source) or the CRD's cross-field rules refuse it; an accepted one ends as the pure
  core says (`core.sending.plan_send`: Cancelled, TaskNotAllowed, InvalidSpec), or, once
  sent, by its own clock (Expired, DeadlineExceeded) when that falls within
  CLOCK_LEAD seconds, else by the cancel the test then sends (Cancelled);
- a record ends the run as `core.records.parse` reads the same bytes: a SUCCESS with
  its result (bounded as status bounds it: `resultTruncated`, `resultBytes`), a FAILURE
  or REVOKED with the reason and error Celery's exception maps to
  (`transitions.TIME_LIMITS`, `WORKER_LOST_ERROR`), an unreadable record `Failed` / `ResultLost`; a
  record that leaves the task in flight shows its phase and state, then the test's
  cancel ends it.

`InternalError` is never an expected end.  The operator's log must show no traceback
and no supervised restart during each example, the operator process stays the same,
and a TaskRun created after each batch still succeeds.  Manifests go to queues no
worker reads (`celery`, the worker's queue, is replaced), so the operator alone
decides their end: task execution is covered by the records and the other e2e tests.
A run may delete itself once finished (`ttlSecondsAfterFinished`, 0 included): a
watch sees its every state, so its last one before the deletion counts.

The module prints one summary line (manifests accepted and refused, ends by phase and
reason, records by expected end).  `make test` runs 40 cases of each; the full suite:

    TASKRUN_FUZZ_CASES=2000 python -m pytest -q tests/e2e/test_fuzz.py
"""

from __future__ import annotations

import bz2
import contextlib
import json
import lzma
import math
import os
import pickle
import re
import sys
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import Phase as HypothesisPhase
from hypothesis import strategies as st
from kombu.utils import json as kombu_json
from kubernetes import watch
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from celery_taskrun.api import bounded
from celery_taskrun.api.config import OperatorConfig
from celery_taskrun.api.model import MAX_SECONDS, Phase, Reason, TaskRunSpec, TaskRunStatus
from celery_taskrun.clients.backend import HEAD_BYTES, TAIL_BYTES
from celery_taskrun.core import records
from celery_taskrun.core.content import Bounds, error_of, truncate_result
from celery_taskrun.core.records import Stored, TaskRecord, Unreadable
from celery_taskrun.core.sending import plan_send
from celery_taskrun.core.transitions import TIME_LIMITS, WORKER_LOST_ERROR
from celery_taskrun.engine import config_file
from celery_taskrun.engine.main import RECURSION_LIMIT
from celery_taskrun.engine.runs import validation_message
from taskrun_dev.processes import ManagedProcess
from taskrun_dev.stack import Stack

from support import GROUP, PLURAL, TASKS, VERSION, TaskRuns, wait_for

pytestmark = pytest.mark.e2e

CASES = int(os.environ.get("TASKRUN_FUZZ_CASES", "40"))
BATCH = 20
EXAMPLES = max(1, math.ceil(CASES / BATCH))
TERMINAL = {p.value for p in Phase if p.terminal}
COMPRESSED = b"\x00celery-compressed\x00"
NOBODY = "fuzz-nobody"  # a queue no worker reads
WORKER_QUEUE = "celery"  # the shared worker's (the default queue)
# A sent run whose own clock (expires, timeout) ends within this many seconds of the
# moment the test would cancel it is left to its clock; any other is cancelled.
CLOCK_LEAD = 15.0
# Two clocks closer than this have no single exact end (the operator checks both at
# one moment, so which one it sees passed first depends on its scheduling): the
# strategies keep `expires` and `timeout` this far apart.
CLOCK_SLACK = 3.0
SETTLE = 90.0
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=False,
    # A failing example names its exact input (manifest or record bytes) in its
    # message; shrinking a batch would re-run the real stack hundreds of times.
    phases=[HypothesisPhase.explicit, HypothesisPhase.generate],
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
Body = dict[str, Any]
TALLY: Counter[str] = Counter()


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


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
known_tasks = st.sampled_from(
    [f"{TASKS}.{t}" for t in ("calculate_sum", "fail", "sleep", "progress")]
    + ["celery.chord_unlock", "celery.backend_cleanup"]  # built-ins: refused by policy
)
names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.:@/+-]{0,60}", fullmatch=True)
task_names = st.one_of(
    known_tasks,
    st.from_regex(r"[a-z_][a-z0-9_.]{0,30}", fullmatch=True),
    st.text(max_size=300),
)
specs = st.fixed_dictionaries(
    {"task": task_names},
    optional={
        "args": st.one_of(st.lists(json_values, max_size=5), st.lists(deep, max_size=1)),
        "kwargs": st.one_of(st.dictionaries(st.text(max_size=10), json_values, max_size=4)),
        "queue": st.one_of(st.just(NOBODY), st.text(max_size=260)),
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

# Specs the model accepts (the API server must too): the clocks often short, so that
# runs end by them within the test.
seconds = st.one_of(
    st.sampled_from([0.001, 0.5, 1, 2, 3, 5, 8, 12]),
    st.floats(min_value=0.001, max_value=MAX_SECONDS),
    st.integers(min_value=1, max_value=MAX_SECONDS),
)
positive = st.floats(min_value=0.001, max_value=3600)
valid_specs = st.fixed_dictionaries(
    {"task": st.one_of(known_tasks, names)},
    optional={
        "args": st.lists(json_values, max_size=5),
        "kwargs": st.dictionaries(st.text(max_size=10), json_values, max_size=4),
        "queue": st.one_of(st.just(NOBODY), names),
        "priority": st.one_of(st.integers(0, 9), st.integers(0, 255)),
        "countdown": st.one_of(st.integers(0, 100), st.floats(0, MAX_SECONDS)),
        "expires": seconds,
        "timeLimit": seconds,
        "softTimeLimit": seconds,
        "timeout": seconds,
        "retries": st.integers(0, 100),
        "cancel": st.booleans(),
        "ttlSecondsAfterFinished": st.one_of(st.just(0), st.integers(0, 5), st.integers(0, 10**6)),
        "poll": st.fixed_dictionaries(
            {},
            optional={
                "initialInterval": positive,
                "factor": st.floats(1, 10),
                "maxInterval": positive,
            },
        ),
        "sizeBasedLimits": st.fixed_dictionaries(
            {"inputBytes": st.integers(0, 2**50)},
            optional={
                "secondsPerMiB": st.floats(0.001, 86400),
                "minSeconds": seconds,
                "maxSeconds": seconds,
                "softLimitRatio": st.floats(0.01, 0.99),
            },
        ),
        "unknownField": json_values,
    },
)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def ordered(spec: Body, low: str, high: str, strict: bool) -> Body:
    """`spec` with `spec[low]` below (or, not strict, at most) `spec[high]`, swapped or
    dropped when not."""
    a, b = spec.get(low), spec.get(high)
    if not (is_number(a) and is_number(b)) or (a < b if strict else a <= b):
        return spec
    if a != b:
        return {**spec, low: b, high: a}
    return {k: v for k, v in spec.items() if k != low}


def admissible_shape(spec: Body) -> Body:
    """A valid spec meeting the CRD's cross-field rules too."""
    spec = ordered(spec, "softTimeLimit", "timeLimit", strict=True)
    for part, low, high in (
        ("poll", "initialInterval", "maxInterval"),
        ("sizeBasedLimits", "minSeconds", "maxSeconds"),
    ):
        if isinstance(spec.get(part), dict):
            spec = {**spec, part: ordered(spec[part], low, high, strict=False)}
    return spec


def off_the_worker(spec: Body) -> Body:
    """On a queue no worker reads (see the module's docstring), with clocks that are
    either apart or one (CLOCK_SLACK)."""
    if spec.get("queue", WORKER_QUEUE) == WORKER_QUEUE:
        spec = {**spec, "queue": NOBODY}
    expires, timeout = spec.get("expires"), spec.get("timeout")
    if is_number(expires) and is_number(timeout) and abs(expires - timeout) < CLOCK_SLACK:
        spec = {k: v for k, v in spec.items() if k != "expires"}
    return spec


manifests = st.tuples(
    st.lists(
        valid_specs.map(admissible_shape).map(off_the_worker),
        min_size=BATCH // 2,
        max_size=BATCH // 2,
        unique_by=canonical,
    ),
    st.lists(
        specs.map(off_the_worker),
        min_size=BATCH - BATCH // 2,
        max_size=BATCH - BATCH // 2,
        unique_by=canonical,
    ),
)

# -- what a worker may store ------------------------------------------------------------------

dates = st.one_of(st.none(), st.text(max_size=40), st.datetimes().map(lambda d: d.isoformat()))
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
        "date_done": dates,
        "worker": st.one_of(st.text(max_size=300), json_values),
        "retries": st.one_of(st.integers(min_value=-10, max_value=2**70), json_values),
    },
)  # fmt: skip
# What Celery itself stores (the shapes of celery.backends.base), with hostile content.
exc_types = st.one_of(
    st.sampled_from(
        [
            *TIME_LIMITS,
            WORKER_LOST_ERROR,
            "ValueError",
            "NotRegistered",
            "TaskRevokedError",
            "Retry",
        ]
    ),
    st.text(max_size=300),
)
exceptions = st.fixed_dictionaries(
    {
        "exc_type": exc_types,
        "exc_message": st.one_of(st.lists(st.text(max_size=2000), max_size=3), st.text()),
        "exc_module": st.sampled_from(["builtins", "celery.exceptions", "billiard.exceptions"]),
    }
)
big_text = st.integers(min_value=4_000, max_value=400_000).map(lambda n: "r" * n)
tracebacks = st.one_of(st.none(), st.text(max_size=3000), big_text)


NO_TRACEBACK = st.none()


def celery_meta(status: Any, result: Any, traceback: Any = NO_TRACEBACK) -> Any:
    return st.fixed_dictionaries(
        {
            "status": status,
            "result": result,
            "traceback": traceback,
            "children": st.just([]),
            "date_done": dates,
            "task_id": st.text(max_size=40),
        },
        optional={
            "worker": st.one_of(names, st.text(max_size=300)),
            "retries": st.integers(min_value=0, max_value=2**70),
        },
    )


successes = celery_meta(st.just("SUCCESS"), st.one_of(json_values, json_values, deep, big_text))
failures = celery_meta(st.just("FAILURE"), exceptions, tracebacks)
celery_metas = st.one_of(
    successes,
    successes,
    successes,
    failures,
    failures,
    failures,
    celery_meta(
        st.just("REVOKED"),
        exceptions.map(lambda e: {**e, "exc_type": "TaskRevokedError"}).flatmap(
            lambda e: (
                st.sampled_from(["expired", "revoked", "terminated"]).map(
                    lambda m: {**e, "exc_message": [m]}
                )
                | st.just(e)
            )
        ),
    ),
    celery_meta(
        st.just("STARTED"),
        st.fixed_dictionaries({"pid": st.integers(1, 2**22), "hostname": st.text(max_size=80)}),
    ),
    celery_meta(st.just("RETRY"), exceptions, tracebacks),
    celery_meta(
        st.one_of(st.just("PROGRESS"), st.text(min_size=1, max_size=100)),
        st.one_of(
            st.fixed_dictionaries(
                {}, optional={"current": leaves, "total": leaves, "x": json_values}
            ),
            json_values,
        ),
    ),
    celery_meta(st.just("PENDING"), st.none()),
)
any_meta = st.one_of(celery_metas, celery_metas, celery_metas, metas)


def huge(meta: Body) -> bytes:
    return json.dumps({**meta, "result": "h" * 3_000_000}).encode()


def deep_json(depth: int) -> bytes:
    return b'{"status": "SUCCESS", "result": ' + b"[" * depth + b"1" + b"]" * depth + b"}"


def compressed(content_type: bytes, compress: Callable[[bytes], bytes]) -> Any:
    return any_meta.map(
        lambda m: COMPRESSED + content_type + b"\x00" + compress(json.dumps(m).encode())
    )


backend_records = st.one_of(
    any_meta.map(lambda m: json.dumps(m).encode()),
    any_meta.map(lambda m: json.dumps(m).encode()),
    any_meta.map(lambda m: json.dumps(m).encode()),
    compressed(b"application/x-gzip", zlib.compress),
    compressed(b"application/x-bz2", bz2.compress),
    compressed(b"application/x-lzma", lzma.compress),
    compressed(b"application/x-zstd", bytes),  # a codec the operator does not read
    any_meta.map(lambda m: pickle.dumps(m)),
    any_meta.map(lambda m: json.dumps(m).encode()[: len(json.dumps(m)) // 2]),
    st.integers(min_value=500, max_value=9000).map(deep_json),
    any_meta.map(huge),
    st.binary(max_size=300),
)

# -- the expected ends ------------------------------------------------------------------------


@dataclass
class Expected:
    """A run's expected end (or, `in_flight`, the state it must show before the cancel)."""

    phase: str
    reason: str
    why: str  # what the expectation was derived from, for the summary
    message: str | None = None  # exact, when known
    fields: Body = field(default_factory=dict)  # status fields, exact (None: absent)
    in_flight: bool = False

    def misses(self, status: Body) -> list[str]:
        wrong = []
        if (status.get("phase"), status.get("reason")) != (self.phase, self.reason):
            wrong.append(f"phase/reason {status.get('phase')}/{status.get('reason')}")
        if self.message is not None and status.get("message") != self.message:
            wrong.append(f"message {status.get('message')!r:.600}, expected {self.message!r:.600}")
        for key, value in self.fields.items():
            actual, want = status.get(key), as_stored(value)
            if actual != want:
                shown = canonical(actual)[:600]
                wrong.append(f"{key} {shown}, expected {canonical(want)[:600]}")
        if not self.in_flight:
            conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
            if conditions.get("Finished") != "True" or not status.get("message"):
                wrong.append(
                    f"Finished {conditions.get('Finished')}, message {status.get('message')!r}"
                )
        return wrong

    def __str__(self) -> str:
        return f"{self.phase}/{self.reason}"


def as_stored(value: Any) -> Any:
    """`value` as the API server gives it back (Go's JSON): integers beyond int64 become
    floats, and a float that is a whole number below 1e21 is printed as an integer (of
    its shortest digits)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        return as_stored(float(value))
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(Decimal(repr(value)))
    if isinstance(value, list):
        return [as_stored(v) for v in value]
    if isinstance(value, dict):
        return {k: as_stored(v) for k, v in value.items()}
    return value


def admissible(spec: Body) -> bool:
    """Whether the API server must accept `spec`: the model's checks (strictly typed, as
    JSON Schema types are) and the CRD's cross-field rules."""
    try:
        TaskRunSpec.model_validate(spec, strict=True)
    except ValidationError:
        return False
    return spec == admissible_shape(spec)


def expect_manifest(
    stored: Body, config: OperatorConfig, uid: str, namespace: str
) -> Expected | TaskRunStatus:
    """The end the operator must give an accepted spec before sending it, or (a status)
    the limits it is sent with."""
    try:
        spec = TaskRunSpec.model_validate(stored)
    except ValidationError as exc:
        return Expected("Failed", "InvalidSpec", "model", validation_message(exc))
    decided = plan_send(
        spec,
        TaskRunStatus(),
        config,
        uid=uid,
        namespace=namespace,
        number=1,
        created=None,
        generation=1,
        now=datetime.now(UTC),
    )
    if isinstance(decided, TaskRunStatus):
        assert decided.phase is not None and decided.reason is not None
        return Expected(decided.phase.value, decided.reason, "plan_send", decided.message)
    try:  # what a send that cannot be encoded would be refused for
        kombu_json.dumps([decided.message.args, decided.message.kwargs])
    except (TypeError, ValueError, OverflowError):
        return Expected("Failed", "InvalidSpec", "encoding")
    return decided.after


def clock_end(limits: Body, submitted: datetime) -> tuple[float, Expected] | None:
    """(when, end) of a sent run's own clock: its expiry while queued, its deadline."""
    expires = (limits.get("expires") or {}).get("seconds")
    timeout = (limits.get("timeout") or {}).get("seconds")
    if timeout is not None and (expires is None or timeout <= expires):
        ends = Expected("TimedOut", "DeadlineExceeded", "clock")
        return submitted.timestamp() + timeout, ends
    if expires is not None:
        return submitted.timestamp() + expires, Expected("Revoked", "Expired", "clock")
    return None


def read_as_operator(raw: bytes, limit: int) -> records.Reading:
    """What the operator's Redis backend hands `parse` for a stored value (whole, or its
    head and tail when over the bound)."""
    stored = Stored(raw, len(raw))
    if len(raw) > limit:
        stored = Stored(raw[:HEAD_BYTES], len(raw), raw[-TAIL_BYTES:])
    return records.parse(stored, limit)


@contextlib.contextmanager
def operator_recursion() -> Iterator[None]:
    """The operator's recursion limit (engine/main.py): how deep its JSON codecs go."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(max(before, RECURSION_LIMIT))
    try:
        yield
    finally:
        sys.setrecursionlimit(before)


IN_FLIGHT = {
    records.PENDING: ("Queued", "Queued"),
    records.STARTED: ("Running", "Started"),
    records.RETRY: ("Retrying", "Retry"),
}


def expect_record(raw: bytes, config: OperatorConfig) -> Expected:
    """The end (or in-flight state) the operator must give a queued run whose backend
    record holds `raw`, from `records.parse` on the same bytes."""
    with operator_recursion():
        return expect_reading(raw, config)


def expect_reading(raw: bytes, config: OperatorConfig) -> Expected:
    reading = read_as_operator(raw, config.maxRecordBytes)
    if isinstance(reading, Unreadable):
        message = bounded.text(reading.message, bounded.MESSAGE_BYTES)
        return Expected("Failed", "ResultLost", "unreadable", message)
    record: TaskRecord = reading
    bounds = Bounds(config.maxResultBytes, config.maxTracebackBytes)
    if record.state == records.SUCCESS:
        if record.partial_size is None:
            result, truncated, size = truncate_result(record.result, bounds.max_result_bytes)
        else:
            result = bounded.preview(str(record.result), bounds.max_result_bytes)
            truncated, size = True, record.partial_size
        fields = {
            "state": record.state,
            "result": result,
            "resultTruncated": truncated,
            "resultBytes": size,
        }
        why = "success, truncated" if truncated else "success"
        return Expected("Succeeded", "Succeeded", why, fields=fields)
    if record.state in (records.FAILURE, records.REVOKED):
        error = error_of(record, bounds.max_traceback_bytes)
        fields = {
            "state": record.state,
            "error": error.model_dump(exclude_none=True),
            "result": None,
        }
        if record.state == records.REVOKED:
            # Neither cancelled nor past a clock of its own: the record's word decides.
            expired = record.exception_message == "expired"
            reason = "Expired" if expired else "Cancelled"
            return Expected("Revoked", reason, "revoked", fields=fields)
        if error.type in TIME_LIMITS:
            phase, reason = Phase.TIMED_OUT, Reason(TIME_LIMITS[error.type])
        elif error.type == WORKER_LOST_ERROR:
            phase, reason = Phase.FAILED, Reason.WORKER_LOST
        else:
            phase, reason = Phase.FAILED, Reason.TASK_ERROR
        message = f"{error.type}: {error.message}" if error.message else error.type
        message = bounded.text(message, bounded.MESSAGE_BYTES)
        return Expected(phase.value, reason.value, "failure", message, fields)
    phase, reason = IN_FLIGHT.get(record.state, ("Running", "Progress"))
    state = bounded.text(record.state, bounded.STATE_BYTES)
    return Expected(phase, reason, "in flight", fields={"state": state}, in_flight=True)


# -- driving the real stack ---------------------------------------------------------------------


class Watcher:
    """Every TaskRun of a namespace as a watch last showed it, deleted ones included
    (a finished run may delete itself at once: `ttlSecondsAfterFinished: 0`)."""

    def __init__(self, runs: TaskRuns) -> None:
        self.runs = runs
        self.last: dict[str, Body] = {}
        self.gone: set[str] = set()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.failure: BaseException | None = None
        listed = runs.api.list_namespaced_custom_object(GROUP, VERSION, runs.namespace, PLURAL)
        for item in listed["items"]:
            self.last[item["metadata"]["name"]] = item
        version = listed["metadata"]["resourceVersion"]
        self.thread = threading.Thread(target=self._follow, args=(version,), daemon=True)
        self.thread.start()

    def _follow(self, version: str) -> None:
        try:
            while not self.stopping.is_set():
                stream = watch.Watch().stream(
                    self.runs.api.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.runs.namespace,
                    PLURAL,
                    resource_version=version,
                    timeout_seconds=5,
                )
                for event in stream:
                    body = event["object"]
                    if event["type"] == "ERROR":
                        raise AssertionError(f"watch error: {body}")
                    version = body["metadata"]["resourceVersion"]
                    with self.lock:
                        self.last[body["metadata"]["name"]] = body
                        if event["type"] == "DELETED":
                            self.gone.add(body["metadata"]["name"])
                    if self.stopping.is_set():
                        break
        except BaseException as exc:  # reported by the next look
            self.failure = exc

    def status(self, name: str) -> Body:
        if self.failure is not None:
            raise AssertionError(f"the watch failed: {self.failure!r}")
        with self.lock:
            body = self.last.get(name) or {}
        return body.get("status") or {}

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)


def ended(status: Body) -> bool:
    return status.get("phase") in TERMINAL


def settle(
    watcher: Watcher, names: list[str], ready: Callable[[str, Body], bool], what: str, inputs: Body
) -> None:
    """Wait until `ready` holds for every run; fail naming those it does not hold for."""

    def done() -> bool:
        return all(ready(name, watcher.status(name)) for name in names)

    try:
        wait_for(done, timeout=SETTLE, what=what, interval=0.2)
    except AssertionError:
        stuck = {
            name: {"status": watcher.status(name), "input": repr(inputs.get(name))[:2000]}
            for name in names
            if not ready(name, watcher.status(name))
        }
        detail = json.dumps(stuck, default=str)[:20000]
        raise AssertionError(f"{what}: not so for {detail}") from None


def check_ends(watcher: Watcher, expected: dict[str, Expected], inputs: Body, kind: str) -> None:
    """Every run ended as expected (InternalError never is)."""
    settle(watcher, list(expected), lambda _, s: ended(s), "every run ended", inputs)
    wrong = {}
    for name, expect in expected.items():
        assert expect.reason != Reason.INTERNAL_ERROR
        status = watcher.status(name)
        if misses := expect.misses(status):
            wrong[name] = {
                "expected": str(expect),
                "wrong": misses,
                "input": repr(inputs[name])[:3000],
            }
        TALLY[f"{kind} ending {expect} ({expect.why})"] += 1
        if name in watcher.gone:
            TALLY[f"{kind} deleted once finished (ttlSecondsAfterFinished)"] += 1
    assert not wrong, json.dumps(wrong, indent=1, default=str)[:30000]


def cancel(runs: TaskRuns, name: str) -> None:
    runs.api.patch_namespaced_custom_object(
        GROUP, VERSION, runs.namespace, PLURAL, name, {"spec": {"cancel": True}}
    )


def still_serving(runs: TaskRuns, stack: Stack, pid: int) -> None:
    operator = stack.process("operator")
    assert operator is not None and operator.alive and operator.pid == pid
    name = f"ok-{uuid.uuid4().hex[:8]}"
    runs.apply(name, "calculate_sum", args=[[1, 2, 3]])
    finished = runs.finished(name)
    assert (finished["phase"], finished["result"]) == ("Succeeded", 6), finished


@dataclass
class OperatorLog:
    """The operator's log from a point on: no traceback, no supervised restart."""

    path: Path
    start: int = 0
    BAD = re.compile(r"Traceback \(most recent call last\)|failed; restarting in ")

    def mark(self) -> None:
        self.start = self.path.stat().st_size

    def check(self) -> None:
        with self.path.open("rb") as log:
            log.seek(self.start)
            text = log.read().decode(errors="replace")
        self.mark()
        found = self.BAD.search(text)
        if found is not None:
            around = text[max(found.start() - 2000, 0) : found.start() + 6000]
            raise AssertionError(f"the operator's log ({self.path}):\n{around}")


@pytest.fixture
def operator_log(operator: ManagedProcess) -> OperatorLog:
    log = OperatorLog(operator.log_path)
    log.mark()
    return log


@pytest.fixture
def operator_pid(stack: Stack, runs: TaskRuns) -> int:
    operator = stack.process("operator")
    assert operator is not None
    return operator.pid


@pytest.fixture(scope="module")
def config(stack: Stack) -> OperatorConfig:
    """The shared operator's configuration (no file: its environment's URLs)."""
    environ = {"CELERY_BROKER_URL": stack.broker_url, "CELERY_RESULT_BACKEND": stack.result_backend}
    return config_file.load(None, environ)


@pytest.fixture(scope="module", autouse=True)
def summary(request: pytest.FixtureRequest) -> Iterator[None]:
    """One line of figures for the module: what was generated and how each case ended."""
    TALLY.clear()
    yield
    parts = ", ".join(f"{key}: {count}" for key, count in sorted(TALLY.items()))
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\nfuzz cases (TASKRUN_FUZZ_CASES={CASES}): {parts}", flush=True)


@FUZZ_SETTINGS
@given(batch=manifests)
def test_generated_manifests(
    runs: TaskRuns,
    stack: Stack,
    operator_pid: int,
    operator_log: OperatorLog,
    config: OperatorConfig,
    batch: tuple[list[Body], list[Body]],
) -> None:
    valid, hostile = batch
    watcher = Watcher(runs)
    try:
        inputs: Body = {}
        expected: dict[str, Expected] = {}
        sent: dict[str, TaskRunStatus] = {}
        for spec in valid + hostile:
            TALLY["manifests generated"] += 1
            name = f"f-{uuid.uuid4().hex[:10]}"
            must_accept = admissible(spec)
            try:
                created = runs.api.create_namespaced_custom_object(
                    GROUP, VERSION, runs.namespace, PLURAL, runs.manifest(name, spec)
                )
            except ApiException as exc:
                answer = f"{exc.status} {str(exc.body)[:1500]}; spec {spec!r:.3000}"
                assert not must_accept, f"refused a spec the model allows: {answer}"
                assert exc.status == 422, f"refused otherwise than Invalid: {answer}"
                TALLY["manifests refused (422)"] += 1
                continue
            assert must_accept, f"accepted a spec the model refuses: {spec!r:.3000}"
            TALLY["manifests accepted"] += 1
            inputs[name] = spec
            outcome = expect_manifest(
                created["spec"], config, created["metadata"]["uid"], runs.namespace
            )
            if isinstance(outcome, Expected):
                expected[name] = outcome
            else:
                sent[name] = outcome
        names = list(inputs)

        def first_status(name: str, status: Body) -> bool:
            written = bool(status.get("phase")) and status.get("observedGeneration") == 1
            if name in sent:  # its first status once sent, or its end
                written = written and (bool(status.get("submittedAt")) or ended(status))
            return written or (name in watcher.gone and ended(status))

        settle(watcher, names, first_status, "the operator's first status on every run", inputs)
        for name, after in sent.items():
            status = watcher.status(name)
            assert status.get("submittedAt"), f"{name} ended unsent: {status}; {inputs[name]!r}"
            submitted = datetime.fromisoformat(status["submittedAt"].replace("Z", "+00:00"))
            limits = after.limits.model_dump(exclude_none=True) if after.limits else {}
            assert status.get("limits", {}) == limits, (status, limits)
            clock = clock_end(limits, submitted)
            if clock is not None and clock[0] - time.time() <= CLOCK_LEAD:
                expected[name] = clock[1]
            else:
                assert not ended(status), f"{name} ended before its clock: {status}"
                cancel(runs, name)
                expected[name] = Expected("Revoked", "Cancelled", "cancelled by the test")
        check_ends(watcher, expected, inputs, "manifests")
    finally:
        watcher.stop()
    operator_log.check()
    still_serving(runs, stack, operator_pid)


@FUZZ_SETTINGS
@given(batch=st.lists(backend_records, min_size=BATCH, max_size=BATCH, unique_by=bytes))
def test_generated_backend_records(
    runs: TaskRuns,
    stack: Stack,
    operator_pid: int,
    operator_log: OperatorLog,
    config: OperatorConfig,
    batch: list[bytes],
) -> None:
    names = [f"r-{uuid.uuid4().hex[:10]}" for _ in batch]
    inputs: Body = dict(zip(names, batch, strict=True))
    watcher = Watcher(runs)
    try:
        for name in names:
            # On a queue no worker reads, with no clock of its own: the record alone
            # (and the test's cancel, for a record that leaves it in flight) ends it.
            spec = {"task": f"{TASKS}.calculate_sum", "args": [[1]], "queue": NOBODY}
            runs.api.create_namespaced_custom_object(
                GROUP, VERSION, runs.namespace, PLURAL, runs.manifest(name, spec)
            )
        queued = lambda _, s: s.get("phase") == "Queued" and bool(s.get("taskId"))  # noqa: E731
        settle(watcher, names, queued, "every run Queued", inputs)
        expected = {name: expect_record(raw, config) for name, raw in inputs.items()}
        backend = redis.Redis.from_url(stack.result_backend)
        for name, raw in inputs.items():
            key = f"celery-task-meta-{watcher.status(name)['taskId']}"
            backend.set(key, raw)
            backend.publish(key, raw)
        # A record that leaves its task in flight: its state shows, then a cancel ends it.
        waiting = {name for name, e in expected.items() if e.in_flight}

        def cancel_those_in_flight() -> bool:
            for name in sorted(waiting):
                status = watcher.status(name)
                if ended(status) or not expected[name].misses(status):
                    waiting.discard(name)
                    if not ended(status):
                        TALLY[f"records in flight as {expected[name]} before the cancel"] += 1
                        cancel(runs, name)
                        expected[name] = Expected("Revoked", "Cancelled", "in flight, cancelled")
            return not waiting

        settle(watcher, names, lambda *_: cancel_those_in_flight(), "in-flight states", inputs)
        check_ends(watcher, expected, inputs, "records")
    finally:
        watcher.stop()
    operator_log.check()
    still_serving(runs, stack, operator_pid)


def test_result_keeps_nulls(runs: TaskRuns, stack: Stack) -> None:
    """A task's result with null members reads back whole from status."""
    result = {"found": None, "items": [None, {"next": None}]}
    name = "nulls"
    runs.api.create_namespaced_custom_object(
        GROUP,
        VERSION,
        runs.namespace,
        PLURAL,
        runs.manifest(name, {"task": "x.y", "queue": NOBODY}),
    )
    task_id = runs.wait(name, lambda s: s.get("taskId"), "sent")["taskId"]
    raw = json.dumps({"status": "SUCCESS", "result": result}).encode()
    redis.Redis.from_url(stack.result_backend).set(f"celery-task-meta-{task_id}", raw)
    finished = runs.finished(name)
    assert (finished["phase"], finished.get("result")) == ("Succeeded", result), finished
