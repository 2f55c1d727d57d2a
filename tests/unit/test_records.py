"""Backend records as hostile input: every serializer, compression, size and garbage."""

import bz2
import json
import lzma
import pickle
import zlib
from datetime import UTC, datetime
from typing import Any

import pytest

from celery_taskrun.core import records
from celery_taskrun.core.records import COMPRESSED_MAGIC, Row, Stored, TaskRecord, Unreadable

LIMIT = 64 * 1024
META = {
    "status": "SUCCESS",
    "result": {"rows": 3},
    "traceback": None,
    "children": [],
    "date_done": "2026-01-01T12:00:04.500000+00:00",
    "task_id": "tr-u-1",
    "worker": "w1@h",
    "retries": 0,
}


def whole(raw: bytes) -> Stored:
    return Stored(raw, len(raw))


def compressed(content_type: str, body: bytes) -> bytes:
    return COMPRESSED_MAGIC + content_type.encode() + b"\x00" + body


def parse(raw: bytes) -> records.Reading:
    return records.parse(whole(raw), LIMIT)


def test_celery_json_record() -> None:
    record = parse(json.dumps(META).encode())
    assert record == TaskRecord(
        "SUCCESS", {"rows": 3}, None, META["date_done"], worker="w1@h", retries=0
    )


def test_no_record_is_pending() -> None:
    assert records.parse(None, LIMIT) is records.NO_RECORD


@pytest.mark.parametrize(
    ("content_type", "compress"),
    [
        ("application/x-gzip", zlib.compress),
        ("application/x-bz2", bz2.compress),
        ("application/x-lzma", lzma.compress),
    ],
)
def test_result_compression_is_read(content_type: str, compress: Any) -> None:
    record = parse(compressed(content_type, compress(json.dumps(META).encode())))
    assert isinstance(record, TaskRecord) and record.result == {"rows": 3}


@pytest.mark.parametrize(
    ("raw", "seen"),
    [
        (pickle.dumps(META, protocol=4), "pickle"),
        (b"\x87\xa6status\xa7SUCCESS", "msgpack"),
        (b"status: SUCCESS\nresult: 1\n", "not JSON"),
        (b"\xff\xfe garbage", "not JSON"),
        (b"[1, 2, 3]", "without a Celery status"),
        (b'{"status": 7}', "without a Celery status"),
        (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
        (b'{"status": "SUCCESS", "result": ' + b"9" * 5000 + b"}", "not JSON"),
        (compressed("application/x-brotli", b"x"), "compressed as 'application/x-brotli'"),
        (compressed("application/x-gzip", b"not zlib at all"), "corrupt application/x-gzip"),
        (b"", "empty"),
    ],
)
def test_what_cannot_be_read_says_what_it_saw(raw: bytes, seen: str) -> None:
    reading = records.parse(Stored(raw, len(raw) or 1), LIMIT)
    assert isinstance(reading, Unreadable)
    assert seen in reading.seen
    assert "result_serializer='json'" in reading.message


def test_nan_and_infinity_become_strings() -> None:
    record = parse(b'{"status": "SUCCESS", "result": [NaN, Infinity, -Infinity]}')
    assert isinstance(record, TaskRecord)
    assert record.result == ["NaN", "Infinity", "-Infinity"]


@pytest.mark.parametrize(
    ("decoded", "shown"),
    [
        ([float("nan"), float("inf"), -float("inf")], ["NaN", "Infinity", "-Infinity"]),
        ({"a": {"b": (float("nan"), 1.5)}}, {"a": {"b": ["NaN", 1.5]}}),
        (float("inf"), "Infinity"),
        ([1, "x", None, True], [1, "x", None, True]),
    ],
)
def test_nan_and_infinity_a_database_decoded_become_strings_too(decoded: Any, shown: Any) -> None:
    """A database backend's client decodes the record itself (floats, not strings)."""
    record = records.from_meta({"status": "SUCCESS", "result": decoded})
    assert record.result == shown


def test_values_deeper_than_shown_are_left_as_they_are() -> None:
    deep: Any = float("nan")
    for _ in range(10_000):
        deep = [deep]
    assert records.from_meta({"status": "SUCCESS", "result": deep}).result is not None


def test_a_record_read_in_part_still_gives_the_outcome() -> None:
    big = json.dumps({**META, "result": "x" * 100_000}).encode()
    stored = Stored(big[:1000], len(big), big[-300:])
    record = records.parse(stored, LIMIT)
    assert isinstance(record, TaskRecord)
    assert (record.state, record.partial_size, record.worker, record.retries) == (
        "SUCCESS",
        len(big),
        "w1@h",
        0,
    )
    assert record.date_done == META["date_done"]
    assert record.result.startswith('"xxxx')


def test_a_failure_read_in_part_keeps_its_exception_type() -> None:
    big = json.dumps(
        {"status": "FAILURE", "result": {"exc_type": "ValueError", "exc_message": ["m" * 99_999]}}
    ).encode()
    record = records.parse(Stored(big[:2000], len(big)), LIMIT)
    assert isinstance(record, TaskRecord)
    assert (record.state, record.exception_type) == ("FAILURE", "ValueError")


def test_a_compressed_record_larger_than_the_bound_is_read_in_part() -> None:
    raw = json.dumps({**META, "result": "y" * 500_000}).encode()
    record = parse(compressed("application/x-gzip", zlib.compress(raw)))
    assert isinstance(record, TaskRecord)
    assert record.state == "SUCCESS" and record.partial_size is not None


def test_hostile_fields_are_bounded() -> None:
    raw = json.dumps(
        {
            "status": "FAILURE",
            "result": {"exc_type": "E" * 10_000, "exc_message": ["m" * 500_000] * 3},
            "worker": "w" * 10_000,
            "retries": 10**30,
        }
    ).encode()
    record = records.parse(whole(raw), 4 * 1024 * 1024)
    assert isinstance(record, TaskRecord)
    assert len((record.exception_type or "").encode()) <= 256
    assert len(record.exception_message.encode()) <= 4096
    assert len((record.worker or "").encode()) <= 256
    assert record.retries is None


# -- rows of a database backend ------------------------------------------------

DONE = datetime(2026, 1, 1, 12, 0, 4, tzinfo=UTC)
EXC = json.dumps({"exc_type": "ValueError", "exc_message": ["no"], "exc_module": "builtins"})
BIG = json.dumps("z" * 100_000).encode()
BIG_EXC = json.dumps({"exc_type": "KeyError", "exc_message": ["k" * 99_999]}).encode()


def row(status: object = "SUCCESS", result: bytes | None = b"3", **columns: object) -> Row:
    return Row(status, None if result is None else whole(result), **columns)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, records.NO_RECORD),
        (
            row(result=b'{"rows": 3}', date_done=DONE, worker="w1@h", retries=2),
            TaskRecord("SUCCESS", {"rows": 3}, date_done=DONE, worker="w1@h", retries=2),
        ),
        # SQLite returns a DateTime column's text as stored.
        (
            row(date_done="2026-01-01 12:00:04"),
            TaskRecord("SUCCESS", 3, date_done="2026-01-01 12:00:04"),
        ),
        (
            row("STARTED", b'{"pid": 7, "hostname": "w2@h"}'),
            TaskRecord("STARTED", {"pid": 7, "hostname": "w2@h"}),
        ),
        (row("PENDING", None), TaskRecord("PENDING")),
        # An exception stays what was stored, never rebuilt from the module it names.
        (
            row("FAILURE", EXC.encode(), traceback=b"Traceback...\nValueError: no"),
            TaskRecord(
                "FAILURE",
                json.loads(EXC),
                traceback="Traceback...\nValueError: no",
            ),
        ),
        # Columns of the wrong type (SQLite keeps whatever a writer put there).
        (row(retries="three", worker=7), TaskRecord("SUCCESS", 3)),
        (row(retries=10**30), TaskRecord("SUCCESS", 3)),
        (row(traceback=b"\xff\xfeend"), TaskRecord("SUCCESS", 3, traceback="\ufffd\ufffdend")),
        (
            row(result=compressed("application/x-gzip", zlib.compress(b'"packed"'))),
            TaskRecord("SUCCESS", "packed"),
        ),
        (
            Row("SUCCESS", Stored(BIG[:1000], len(BIG)), worker="w1@h"),
            TaskRecord("SUCCESS", BIG[:1000].decode(), worker="w1@h", partial_size=len(BIG)),
        ),
        (
            Row("FAILURE", Stored(BIG_EXC[:500], len(BIG_EXC))),
            TaskRecord(
                "FAILURE",
                {"exc_type": "KeyError", "exc_message": BIG_EXC[:500].decode()},
                partial_size=len(BIG_EXC),
            ),
        ),
    ],
)
def test_a_row_is_read_as_celery_stores_it(given: Row | None, expected: records.Reading) -> None:
    assert records.parse_row(given, LIMIT) == expected


@pytest.mark.parametrize(
    ("given", "seen"),
    [
        (row(None), "without a Celery status"),
        (row(b"SUCCESS"), "without a Celery status"),
        (row("S" * 65), "without a Celery status"),
        (row("SUCC ESS"), "without a Celery status"),
        (row(result=b"\xff\xfe{}"), "not JSON"),
        (row(result=b"{"), "not JSON"),
        (row(result=b""), "an empty value"),
        (row(result=b"[" * 100_000 + b"]" * 100_000), "nested too deeply"),
        (row(result=pickle.dumps({"a": 1})), "pickle"),
        (Row("SUCCESS", Stored(pickle.dumps("p" * 200_000)[:900], 200_020)), "pickle"),
        (row(result=compressed("application/x-zstd", b"...")), "compressed as"),
        (row(result=compressed("application/x-bz2", b"not bz2")), "corrupt"),
    ],
)
def test_a_row_that_cannot_be_read_is_unreadable(given: Row, seen: str) -> None:
    reading = records.parse_row(given, LIMIT)
    assert isinstance(reading, Unreadable) and seen in reading.seen


def test_a_compressed_result_larger_than_the_bound_is_read_in_part() -> None:
    packed = compressed("application/x-gzip", zlib.compress(json.dumps("q" * 500_000).encode()))
    reading = records.parse_row(row(result=packed), LIMIT)
    assert isinstance(reading, TaskRecord)
    assert reading.partial_size == len(packed) and reading.result.startswith('"qqq')
    assert len(reading.result) <= LIMIT
