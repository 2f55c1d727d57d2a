"""Backend records as hostile input: every serializer, compression, size and garbage."""

import bz2
import json
import lzma
import pickle
import zlib
from typing import Any

import pytest

from celery_taskrun.core import records
from celery_taskrun.core.records import COMPRESSED_MAGIC, Stored, TaskRecord, Unreadable

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
