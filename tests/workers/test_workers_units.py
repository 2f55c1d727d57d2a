"""The workers' pure parts, table by table."""

from __future__ import annotations

from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from kombu.exceptions import EncodeError
from kombu.message import Message

from taskrun_workers import tasks
from taskrun_workers.app import DEFAULT_RESULT_EXPIRES, settings_from_env
from taskrun_workers.guard import (
    DEFAULT_LEASE_SECONDS,
    Claim,
    Verdict,
    claim_key,
    lease_seconds,
    message_identity,
    settle,
    verdict,
)
from taskrun_workers.helpers import on_soft_timeout, progress_meta, report_progress
from taskrun_workers.ledger import ledger_url

# -- app settings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {},
            {
                "broker_url": "redis://localhost:6379/0",
                "result_backend": "redis://localhost:6379/0",
                "result_expires": DEFAULT_RESULT_EXPIRES,
                "imports": ["taskrun_workers.tasks"],
            },
        ),
        (
            {
                "CELERY_BROKER_URL": "redis://broker:6379/2",
                "CELERY_RESULT_BACKEND": "db+sqlite:///results.sqlite",
                "TASKRUN_RESULT_EXPIRES": "3600",
                "TASKRUN_WORKER_IMPORTS": " acme.tasks, ,acme.more ",
            },
            {
                "broker_url": "redis://broker:6379/2",
                "result_backend": "db+sqlite:///results.sqlite",
                "result_expires": 3600,
                "imports": ["taskrun_workers.tasks", "acme.tasks", "acme.more"],
            },
        ),
        # 0 keeps results forever, which Celery spells None.
        ({"TASKRUN_RESULT_EXPIRES": "0"}, {"result_expires": None}),
        # Empty variables count as unset.
        (
            {
                "CELERY_BROKER_URL": "",
                "TASKRUN_RESULT_EXPIRES": "",
                "TASKRUN_VISIBILITY_TIMEOUT": "",
            },
            {
                "broker_url": "redis://localhost:6379/0",
                "result_expires": DEFAULT_RESULT_EXPIRES,
                "broker_transport_options": {},
            },
        ),
        # The sweep for messages past their visibility timeout: a tenth of it, 1-100 s.
        (
            {"TASKRUN_VISIBILITY_TIMEOUT": "7200"},
            {
                "broker_transport_options": {
                    "visibility_timeout": 7200,
                    "unacked_restore_interval": 100,
                    "unacked_restore_throttle": 1,
                }
            },
        ),
        (
            {"TASKRUN_VISIBILITY_TIMEOUT": "300"},
            {
                "broker_transport_options": {
                    "visibility_timeout": 300,
                    "unacked_restore_interval": 30,
                    "unacked_restore_throttle": 1,
                }
            },
        ),
        (
            {"TASKRUN_VISIBILITY_TIMEOUT": "2"},
            {
                "broker_transport_options": {
                    "visibility_timeout": 2,
                    "unacked_restore_interval": 1,
                    "unacked_restore_throttle": 1,
                }
            },
        ),
    ],
)
def test_settings_from_env(env: dict[str, str], expected: dict[str, Any]) -> None:
    settings = settings_from_env(env)
    assert {key: settings[key] for key in expected} == expected


def test_settings_fixed_whatever_the_env() -> None:
    settings = settings_from_env({})
    assert settings["accept_content"] == settings["result_accept_content"] == ["json"]
    assert settings["task_serializer"] == settings["result_serializer"] == "json"
    assert settings["task_track_started"] is True
    assert settings["result_extended"] is True
    assert settings["worker_prefetch_multiplier"] == 1
    assert settings["task_acks_late"] is False


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CELERY_RESULT_BACKEND": "rpc://"}, "rpc:// is not supported"),
        ({"CELERY_RESULT_BACKEND": "RPC://guest@rabbit//"}, "rpc:// is not supported"),
        ({"TASKRUN_RESULT_EXPIRES": "1d"}, "whole number of seconds, got '1d'"),
        ({"TASKRUN_RESULT_EXPIRES": "-5"}, "must not be negative"),
        ({"TASKRUN_VISIBILITY_TIMEOUT": "1h"}, "whole number of seconds, got '1h'"),
        ({"TASKRUN_VISIBILITY_TIMEOUT": "-1"}, "must not be negative"),
        ({"TASKRUN_VISIBILITY_TIMEOUT": "0"}, "at least 1 second"),
    ],
)
def test_settings_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings_from_env(env)


# -- guard decisions -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("meta", "retries", "expected"),
    [
        ({"status": "PENDING", "result": None}, 0, Verdict.RUN),
        ({}, 0, Verdict.RUN),
        # Revoked stays revoked, whatever the attempt.
        ({"status": "REVOKED"}, 0, Verdict.REVOKED),
        ({"status": "REVOKED", "retries": 0}, 3, Verdict.REVOKED),
        # A record of the same attempt: a redelivery or a resend.
        ({"status": "STARTED", "retries": 0}, 0, Verdict.DUPLICATE),
        ({"status": "SUCCESS", "retries": 0}, 0, Verdict.DUPLICATE),
        ({"status": "FAILURE", "retries": 2}, 2, Verdict.DUPLICATE),
        ({"status": "PROGRESS", "retries": 0}, 0, Verdict.DUPLICATE),
        ({"status": "RETRY", "retries": 0}, 0, Verdict.DUPLICATE),
        # A record of an earlier attempt: this is the retry Celery sent.
        ({"status": "RETRY", "retries": 0}, 1, Verdict.RUN),
        # The retry message can arrive before the RETRY record is written.
        ({"status": "STARTED", "retries": 0}, 1, Verdict.RUN),
        ({"status": "PROGRESS", "retries": 1}, 2, Verdict.RUN),
        # A later attempt's record: an old message resurfacing.
        ({"status": "STARTED", "retries": 2}, 1, Verdict.DUPLICATE),
        # No attempt number stored (result_extended off): only RETRY lets it through.
        ({"status": "RETRY"}, 1, Verdict.RUN),
        ({"status": "STARTED"}, 1, Verdict.DUPLICATE),
        ({"status": "SUCCESS", "retries": None}, 0, Verdict.DUPLICATE),
        ({"status": "SUCCESS", "retries": True}, 2, Verdict.DUPLICATE),
    ],
)
def test_verdict(meta: dict[str, Any], retries: int, expected: Verdict) -> None:
    assert verdict(meta, retries) is expected


LEASE = 30


@pytest.mark.parametrize(
    ("record", "claim", "unseen_for", "expected"),
    [
        # The record settles it, whatever the claim.
        (Verdict.DUPLICATE, Claim.UNKNOWN, None, Verdict.DUPLICATE),
        (Verdict.REVOKED, Claim.UNKNOWN, None, Verdict.REVOKED),
        # A held copy whose run has started or ended meanwhile, or was cancelled.
        (Verdict.DUPLICATE, Claim.UNKNOWN, 1.0, Verdict.DUPLICATE),
        (Verdict.REVOKED, Claim.UNKNOWN, 1.0, Verdict.REVOKED),
        # The claim decides between two deliveries that both find no record.
        (Verdict.RUN, Claim.TAKEN, None, Verdict.RUN),
        (Verdict.RUN, Claim.HELD, None, Verdict.WAIT),
        # Held: while the claim is another's it waits; once free it runs.
        (Verdict.RUN, Claim.HELD, 10.0, Verdict.WAIT),
        (Verdict.RUN, Claim.TAKEN, 10.0, Verdict.RUN),
        # The backend unreadable: the claim still decides.
        (None, Claim.TAKEN, None, Verdict.RUN),
        (None, Claim.HELD, None, Verdict.WAIT),
        (None, Claim.HELD, 10.0, Verdict.WAIT),
        # Blind (or no claim store) on arrival: fail open.
        (None, Claim.UNKNOWN, None, Verdict.RUN),
        (Verdict.RUN, Claim.UNKNOWN, None, Verdict.RUN),
        # Blind while held: wait until the holder's lease would have lapsed.
        (Verdict.RUN, Claim.UNKNOWN, LEASE - 0.1, Verdict.WAIT),
        (None, Claim.UNKNOWN, 0.0, Verdict.WAIT),
        (Verdict.RUN, Claim.UNKNOWN, LEASE, Verdict.RUN),
        (None, Claim.UNKNOWN, LEASE + 5, Verdict.RUN),
    ],
)
def test_settle(
    record: Verdict | None, claim: Claim, unseen_for: float | None, expected: Verdict
) -> None:
    assert settle(record, claim, unseen_for, LEASE) is expected


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({"id": "a", "task": "t", "retries": 2}, None, ("a", "t", 2)),
        ({"id": "a", "task": "t"}, None, ("a", "t", 0)),
        ({"id": "a", "task": "t", "retries": None}, None, ("a", "t", 0)),
        # Protocol 1: everything is in the (decoded) body.
        ({}, {"id": "b", "task": "u", "retries": 1}, ("b", "u", 1)),
        ({}, None, None),
        ({"id": None}, None, None),
        ({"task": "t"}, {"args": []}, None),
        # Malformed messages are Celery's to reject, not the guard's to crash on.
        ({"id": 7}, None, None),
        ({"id": "a", "retries": "2"}, None, ("a", None, 0)),
    ],
)
def test_message_identity(
    headers: dict[str, Any], body: Any, expected: tuple[str, str | None, int] | None
) -> None:
    message = Message(body=b"{}", headers=headers, content_type="application/json")
    assert message_identity(message, body) == expected


def test_claims_are_per_attempt() -> None:
    assert claim_key("abc", 0) == "taskrun:claim:abc:0"
    assert claim_key("abc", 1) != claim_key("abc", 0)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, DEFAULT_LEASE_SECONDS),
        ("", DEFAULT_LEASE_SECONDS),
        ("3", 3),
        ("600", 600),
        ("2", DEFAULT_LEASE_SECONDS),
        ("-1", DEFAULT_LEASE_SECONDS),
        ("soon", DEFAULT_LEASE_SECONDS),
    ],
)
def test_lease_seconds(monkeypatch: pytest.MonkeyPatch, raw: str | None, expected: int) -> None:
    if raw is None:
        monkeypatch.delenv("TASKRUN_CLAIM_LEASE_SECONDS", raising=False)
    else:
        monkeypatch.setenv("TASKRUN_CLAIM_LEASE_SECONDS", raw)
    assert lease_seconds() == expected


# -- helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "total", "extra", "expected"),
    [
        (0, 4, {}, {"current": 0, "total": 4, "percent": 0.0}),
        (1, 3, {}, {"current": 1, "total": 3, "percent": 33.3}),
        (2, 3, {"stage": "x"}, {"current": 2, "total": 3, "percent": 66.7, "stage": "x"}),
        (3, 3, {}, {"current": 3, "total": 3, "percent": 100.0}),
        # Over the total (a task that underestimated) stays at 100 %.
        (5, 3, {}, {"current": 5, "total": 3, "percent": 100.0}),
        # Nothing to do is done.
        (0, 0, {}, {"current": 0, "total": 0, "percent": 100.0}),
        (0.5, 2.0, {}, {"current": 0.5, "total": 2.0, "percent": 25.0}),
    ],
)
def test_progress_meta(
    current: float, total: float, extra: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert progress_meta(current, total, **extra) == expected


@pytest.mark.parametrize(
    ("current", "total", "extra", "message"),
    [
        (-1, 3, {}, "must not be negative"),
        (1, -3, {}, "must not be negative"),
        (1, 3, {"percent": 50}, r"may not be named \['percent'\]"),
    ],
)
def test_progress_meta_refused(
    current: float, total: float, extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        progress_meta(current, total, **extra)


def test_on_soft_timeout_cleans_up_and_reraises() -> None:
    cleaned: list[str] = []
    with pytest.raises(SoftTimeLimitExceeded), on_soft_timeout(lambda: cleaned.append("x")):
        raise SoftTimeLimitExceeded()
    assert cleaned == ["x"]


def _encode_error_around(soft: SoftTimeLimitExceeded) -> Exception:
    """What kombu raises when the signal lands while it encodes: EncodeError(exc)."""
    try:
        try:
            raise soft
        except SoftTimeLimitExceeded as exc:
            raise EncodeError(exc) from None
    except EncodeError as wrapped:
        return wrapped


def test_on_soft_timeout_sees_the_signal_inside_a_librarys_own_error() -> None:
    cleaned: list[str] = []
    soft = SoftTimeLimitExceeded()
    with (
        pytest.raises(SoftTimeLimitExceeded) as raised,
        on_soft_timeout(lambda: cleaned.append("x")),
    ):
        raise _encode_error_around(soft)
    assert raised.value is soft
    assert cleaned == ["x"]


class _Request:
    called_directly = False


class _TaskWhoseStoreIsInterrupted:
    """A bound task whose update_state meets the soft limit mid-encode."""

    request = _Request()

    def update_state(self, state: str, meta: dict[str, Any]) -> None:
        raise _encode_error_around(SoftTimeLimitExceeded())


def test_a_progress_report_interrupted_by_the_soft_limit_raises_the_soft_limit() -> None:
    cleaned: list[str] = []
    with pytest.raises(SoftTimeLimitExceeded), on_soft_timeout(lambda: cleaned.append("x")):
        report_progress(_TaskWhoseStoreIsInterrupted(), 1, 2)
    assert cleaned == ["x"]


def test_on_soft_timeout_leaves_other_outcomes_alone() -> None:
    cleaned: list[str] = []
    guard = on_soft_timeout(lambda: cleaned.append("x"))
    with guard:
        pass
    with pytest.raises(KeyError), guard:
        raise KeyError("not a timeout")
    assert cleaned == []


def test_on_soft_timeout_as_a_decorator() -> None:
    cleaned: list[str] = []

    @on_soft_timeout(lambda: cleaned.append("x"))
    def work(fail: bool) -> str:
        if fail:
            raise SoftTimeLimitExceeded()
        return "done"

    assert work(False) == "done"
    with pytest.raises(SoftTimeLimitExceeded):
        work(True)
    assert cleaned == ["x"]


# -- ledger location -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "broker", "expected"),
    [
        ({}, "redis://b:6379/0", None),  # opt-in: a test aid, off in production
        ({"TASKRUN_LEDGER_URL": "broker"}, "redis://b:6379/0", "redis://b:6379/0"),
        ({"TASKRUN_LEDGER_URL": "broker"}, "rediss://b:6380/0", "rediss://b:6380/0"),
        ({"TASKRUN_LEDGER_URL": "redis://l:1/3"}, "redis://b:6379/0", "redis://l:1/3"),
        ({"TASKRUN_LEDGER_URL": "redis://l:1/3"}, "amqp://rabbit//", "redis://l:1/3"),
        ({"TASKRUN_LEDGER_URL": "broker"}, "amqp://rabbit//", None),
        ({"TASKRUN_LEDGER_URL": "broker"}, None, None),
        ({"TASKRUN_LEDGER_MAX_ENTRIES": "0", "TASKRUN_LEDGER_URL": "broker"}, "redis://b/0", None),
        ({"TASKRUN_LEDGER_MAX_ENTRIES": "0", "TASKRUN_LEDGER_URL": "redis://l:1/3"}, None, None),
    ],
)
def test_ledger_url(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], broker: str | None, expected: str | None
) -> None:
    monkeypatch.delenv("TASKRUN_LEDGER_URL", raising=False)
    monkeypatch.delenv("TASKRUN_LEDGER_MAX_ENTRIES", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert ledger_url(broker) == expected


# -- tasks called directly (no worker, no backend) -------------------------------------


@pytest.mark.parametrize(
    ("name", "args", "kwargs", "expected"),
    [
        ("calculate_sum", [[1, 2, 3, 4, 5]], {}, 15),
        ("calculate_sum", [[0.5, 0.25]], {}, 0.75),
        ("echo", [1, [2]], {"x": None}, {"args": [1, [2]], "kwargs": {"x": None}}),
        ("big_result", [5], {}, "xxxxx"),
        ("big_result", [0], {}, ""),
        ("sleep", [0], {}, 0),
        ("flaky", [0], {}, {"attempts": 1}),
        # Progress reporting is skipped outside a run, not an error.
        ("progress", [2, 0], {}, {"steps": 2}),
        ("process_file", [0, 1.0], {}, {"bytes": 0}),
        ("process_file", [2 * 1024 * 1024, 0], {}, {"bytes": 2 * 1024 * 1024}),
        ("cleanup_on_soft_timeout", [0], {"reraise": False}, {"completed": True, "elapsed": 0.0}),
    ],
)
def test_tasks_called_directly(
    name: str, args: list[Any], kwargs: dict[str, Any], expected: Any
) -> None:
    assert getattr(tasks, name)(*args, **kwargs) == expected


@pytest.mark.parametrize(
    ("name", "args", "error"),
    [
        ("fail", ["boom"], "boom"),
        ("big_result", [-1], "must not be negative"),
        ("process_file", [-1, 1.0], "must not be negative"),
    ],
)
def test_tasks_called_directly_fail(name: str, args: list[Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        getattr(tasks, name)(*args)
