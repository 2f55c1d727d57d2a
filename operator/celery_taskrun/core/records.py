"""What the result backend says about one task id, parsed (pure).

Celery stores `{"status", "result", "traceback", "date_done", ...}` under
`celery-task-meta-<id>`; with `result_extended` also `worker` and `retries`.  No
record means PENDING: unknown, queued, expired or forgotten alike.

Any worker may have written the record, so it is read as hostile input: JSON
only (a pickle is never loaded: loading one runs code), decompressed within a
bound when a worker sets `result_compression`, and a record too large to read
whole is read in part (its head and tail) and still gives the run its outcome,
with the result as a preview.  Whatever cannot be read becomes `Unreadable`,
which says what was seen and what is supported.
"""

from __future__ import annotations

import bz2
import dataclasses
import json
import lzma
import math
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery_taskrun.api import bounded

# Celery's key of a task's record (Redis and other key-value backends).
KEY_PREFIX = "celery-task-meta-"
PENDING = "PENDING"
STARTED = "STARTED"
RETRY = "RETRY"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
REVOKED = "REVOKED"
READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})

# Celery 5.7 stores a compressed result as MAGIC + content type + NUL + body.
COMPRESSED_MAGIC = b"\x00celery-compressed\x00"
SUPPORTED = "Celery's JSON result serializer, uncompressed or with zlib/gzip, bzip2 or lzma"
# A record's own counters, as stored: anything larger is not a Celery retry count.
MAX_RETRIES = 1_000_000


@dataclass(frozen=True)
class Stored:
    """What the backend holds under a task's key, read with bounded memory: the whole
    value, or (when it is larger than the read bound) its first and last bytes."""

    head: bytes
    size: int
    tail: bytes = b""

    @property
    def whole(self) -> bool:
        return len(self.head) >= self.size


@dataclass(frozen=True)
class TaskRecord:
    state: str
    result: Any = None
    traceback: str | None = None
    date_done: object = None  # an ISO string (Redis) or a datetime (database backends)
    worker: str | None = None
    retries: int | None = None
    # Set when the record was too large to read whole: its size in bytes; `result` is
    # then a preview string of the stored result.
    partial_size: int | None = None

    @property
    def ready(self) -> bool:
        return self.state in READY_STATES

    @property
    def exception_type(self) -> str | None:
        """The exception's class name in a FAILURE, RETRY or REVOKED record."""
        if isinstance(self.result, dict):
            exc_type = self.result.get("exc_type")
            return bounded.text(exc_type, bounded.NAME_BYTES) if exc_type else None
        return None

    @property
    def exception_message(self) -> str:
        if not isinstance(self.result, dict):
            if self.result is None:
                return ""
            return bounded.text(self.result, bounded.ERROR_MESSAGE_BYTES)
        message = self.result.get("exc_message", "")
        if isinstance(message, list | tuple):
            message = ", ".join(
                bounded.text(part, bounded.ERROR_MESSAGE_BYTES) for part in message[:64]
            )
        return bounded.text(message, bounded.ERROR_MESSAGE_BYTES)

    @property
    def meta_worker(self) -> str | None:
        """STARTED stores `{"pid", "hostname"}` as its result; extended results `worker`."""
        if self.worker:
            return self.worker
        if isinstance(self.result, dict) and isinstance(self.result.get("hostname"), str):
            return bounded.text(self.result["hostname"], bounded.NAME_BYTES)
        return None


@dataclass(frozen=True)
class Unreadable:
    """A record the operator cannot read; `seen` says what it looks like."""

    seen: str

    @property
    def message(self) -> str:
        return (
            f"the result backend holds a record for this task that the operator cannot "
            f"read ({self.seen}); it reads {SUPPORTED}: set result_serializer='json' on "
            "the workers"
        )


NO_RECORD = TaskRecord(state=PENDING)
Reading = TaskRecord | Unreadable


def parse(stored: Stored | None, max_bytes: int) -> Reading:
    """A stored record (possibly read in part) -> TaskRecord or Unreadable."""
    if stored is None or stored.size == 0:
        return NO_RECORD
    unpacked = unpack(stored, max_bytes)
    if isinstance(unpacked, Unreadable):
        return unpacked
    head, whole = unpacked
    if not whole:
        # A compressed tail says nothing readable.
        tail = stored.tail if head is stored.head else b""
        return parse_partial(Stored(head, stored.size, tail))
    return parse_json(head)


def unpack(stored: Stored, max_bytes: int) -> tuple[bytes, bool] | Unreadable:
    """The stored bytes, decompressed (at most `max_bytes`) when a worker compressed
    them, and whether they are all of the value."""
    if not stored.head.startswith(COMPRESSED_MAGIC):
        return stored.head, stored.whole
    content_type, _, body = stored.head[len(COMPRESSED_MAGIC) :].partition(b"\x00")
    unpacked = decompress(content_type.decode(errors="replace"), body, max_bytes)
    if isinstance(unpacked, Unreadable):
        return unpacked
    data, complete = unpacked
    return data, stored.whole and complete


@dataclass(frozen=True)
class Decoded:
    value: Any


def load_json(raw: bytes | str) -> Decoded | Unreadable:
    """A whole JSON value, or what it looks like if it is not one."""
    problem = unfamiliar(raw.encode() if isinstance(raw, str) else raw)
    if problem is not None:
        return problem
    try:
        return Decoded(json.loads(raw, parse_constant=str))  # NaN, Infinity: not JSON
    except RecursionError:
        return Unreadable("JSON nested too deeply")
    except ValueError as exc:  # UnicodeDecodeError, digits beyond int's limit included
        return Unreadable(f"not JSON: {bounded.text(exc, 200)}")


def parse_json(raw: bytes | str) -> Reading:
    """A whole JSON record -> TaskRecord; anything else -> Unreadable."""
    loaded = load_json(raw)
    if isinstance(loaded, Unreadable):
        return loaded
    data = loaded.value
    if not isinstance(data, dict) or not isinstance(data.get("status"), str):
        return Unreadable("JSON without a Celery status")
    return from_meta(data)


def unfamiliar(raw: bytes) -> Unreadable | None:
    """Recognise the binary serializers Celery offers, to say which one a worker uses."""
    if not raw:
        return Unreadable("an empty value")
    first = raw[0]
    if first == 0x80 and len(raw) > 1 and 2 <= raw[1] <= 5:
        return Unreadable("pickle data (result_serializer='pickle'), never loaded: unsafe")
    if 0x80 <= first <= 0x8F or first in (0xDE, 0xDF):
        return Unreadable("msgpack data (result_serializer='msgpack')")
    return None


def decompress(content_type: str, body: bytes, max_bytes: int) -> tuple[bytes, bool] | Unreadable:
    """Decompress at most `max_bytes`: (data, whether it is all of it)."""
    makers: dict[str, Callable[[], Any]] = {
        "application/x-gzip": lambda: zlib.decompressobj(zlib.MAX_WBITS | 32),  # zlib or gzip
        "application/x-bz2": bz2.BZ2Decompressor,
        "application/x-lzma": lzma.LZMADecompressor,
    }
    make = makers.get(content_type)
    if make is None:
        seen = bounded.text(content_type, 64)
        return Unreadable(f"compressed as {seen!r} (result_compression)")
    decompressor = make()
    try:
        data: bytes = decompressor.decompress(body, max_bytes)
    except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError) as exc:
        return Unreadable(f"corrupt {content_type} data: {bounded.text(exc, 200)}")
    ended = bool(getattr(decompressor, "eof", True))
    return data, ended and len(data) < max_bytes


_HEAD_STATUS = re.compile(rb'^\s*\{\s*"status"\s*:\s*"([A-Za-z0-9_.:-]{1,64})"')
_EXC_TYPE = re.compile(rb'"exc_type"\s*:\s*"([A-Za-z0-9_.]{1,256})"')
_DATE_DONE = re.compile(rb'"date_done"\s*:\s*"([0-9T:.+Z -]{10,40})"')
_WORKER = re.compile(rb'"worker"\s*:\s*"([^"\\]{1,253})"')
_RETRIES = re.compile(rb'"retries"\s*:\s*([0-9]{1,7})\b')
_RESULT = re.compile(rb'"result"\s*:\s*')


def parse_partial(stored: Stored) -> Reading:
    """A record too large to read whole: its state and small fields from its head and
    tail (Celery writes `status` first, `date_done`, `worker`, `retries` after the
    result), and a preview of the result."""
    status = _HEAD_STATUS.match(stored.head)
    if status is None:
        problem = unfamiliar(stored.head)
        return problem or Unreadable(f"a value of {stored.size} bytes without a Celery status")
    start = _RESULT.search(stored.head)
    result = preview(stored.head[start.end() :] if start else b"")
    done = _DATE_DONE.search(stored.tail)
    worker = _WORKER.search(stored.tail)
    retries = _RETRIES.search(stored.tail)
    return TaskRecord(
        state=status.group(1).decode(),
        result=result,
        date_done=done.group(1).decode() if done else None,
        worker=worker.group(1).decode() if worker else None,
        retries=int(retries.group(1)) if retries else None,
        partial_size=stored.size,
    )


def preview(body: bytes) -> Any:
    """The start of a result too large to read whole: as text, or for an exception
    (a FAILURE's or RETRY's `{"exc_type", "exc_message"}`) its type and that text."""
    text = body.decode(errors="ignore")
    exc_type = _EXC_TYPE.search(body[:4096])
    if exc_type is None:
        return text
    return {"exc_type": exc_type.group(1).decode(), "exc_message": text}


# A Celery state as stored: a short name (its column is 50 characters wide).
_STATE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


@dataclass(frozen=True)
class Row:
    """A task's row in a database result backend (Celery's `celery_taskmeta` table), as
    the driver returned it: any type in any column (SQLite keeps what a writer put
    there).  `result` is the stored bytes, whole or (when larger than the read bound)
    their start; `traceback` its end at most."""

    status: object
    result: Stored | None = None
    traceback: object = None
    date_done: object = None
    worker: object = None
    retries: object = None


def parse_row(row: Row | None, max_bytes: int) -> Reading:
    """A database row (None: no row) -> TaskRecord or Unreadable.

    Decoded as Celery decodes it (the result column holds the serialized result alone;
    the state, traceback, time, worker and retries have columns of their own), except
    that an exception stays the `{"exc_type", "exc_message"}` it was stored as: Celery
    rebuilds it by importing the module the row names, which a reader of hostile rows
    never does."""
    if row is None:
        return NO_RECORD
    if not isinstance(row.status, str) or not _STATE.fullmatch(row.status):
        return Unreadable("a row without a Celery status")
    result: Any = None
    partial_size = None
    if row.result is not None:
        unpacked = unpack(row.result, max_bytes)
        if isinstance(unpacked, Unreadable):
            return unpacked
        raw, whole = unpacked
        if whole:
            loaded = load_json(raw)
            if isinstance(loaded, Unreadable):
                return loaded
            result = loaded.value
        else:
            problem = unfamiliar(raw)
            if problem is not None:
                return problem
            result, partial_size = preview(raw), row.result.size
    traceback = row.traceback
    if isinstance(traceback, bytes):
        traceback = traceback.decode(errors="replace")
    record = from_meta(
        {
            "status": row.status,
            "result": result,
            "traceback": traceback,
            "date_done": row.date_done,
            "worker": row.worker,
            "retries": row.retries,
        }
    )
    return dataclasses.replace(record, partial_size=partial_size)


def constants_as_strings(value: Any, depth: int = 0) -> Any:
    """NaN and the infinities as the strings `parse_json` reads them as (not JSON in
    status), in a value a backend's own client decoded (a database's); past MAX_DEPTH
    levels the value is left as it is (too deep to show anyway)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if depth >= bounded.MAX_DEPTH:
        return value
    if isinstance(value, list | tuple):
        return [constants_as_strings(item, depth + 1) for item in value]
    if isinstance(value, dict):
        return {key: constants_as_strings(item, depth + 1) for key, item in value.items()}
    return value


def from_meta(data: dict[str, Any]) -> TaskRecord:
    """Celery's meta dict -> TaskRecord; backends that decode exceptions are re-encoded."""
    result = constants_as_strings(data.get("result"))
    if isinstance(result, BaseException):
        result = {"exc_type": type(result).__name__, "exc_message": [str(a) for a in result.args]}
    traceback = data.get("traceback")
    worker = data.get("worker")
    return TaskRecord(
        state=str(data["status"]),
        result=result,
        traceback=traceback if isinstance(traceback, str) else None,
        date_done=data.get("date_done"),
        worker=bounded.text(worker, bounded.NAME_BYTES) if isinstance(worker, str) else None,
        retries=bounded.count(data.get("retries"), MAX_RETRIES),
    )
