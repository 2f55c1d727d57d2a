"""What a status means to a waiter: exit codes, and what each watch event means."""

from __future__ import annotations

from typing import Any

import pytest

from celery_taskrun.clients.apiserver import kubeconfig_paths
from celery_taskrun.clients.lines import LineBuffer, LineTooLong
from celery_taskrun.clients.taskruns import name_prefix
from celery_taskrun.core.outcomes import (
    ExitCode,
    Step,
    WatchError,
    exit_code,
    finished,
    interpret,
    phase_of,
    status_of,
)


@pytest.mark.parametrize(
    ("status", "code", "done"),
    [
        ({"phase": "Succeeded"}, 0, True),
        ({"phase": "Failed", "reason": "TaskError"}, 1, True),
        ({"phase": "Failed", "reason": "TaskNotAllowed"}, 1, True),
        ({"phase": "TimedOut", "reason": "DeadlineExceeded"}, 3, True),
        ({"phase": "TimedOut", "reason": "TimeLimitExceeded"}, 3, True),
        ({"phase": "Revoked", "reason": "Cancelled"}, 4, True),
        ({"phase": "Revoked", "reason": "Expired"}, 4, True),
        ({"phase": "Running"}, 124, False),
        ({"phase": "Queued"}, 124, False),
        ({"phase": "Pending"}, 124, False),
        ({"phase": "Retrying"}, 124, False),
        ({}, 124, False),
        ({"phase": "Exploded"}, 124, False),
        ({"phase": None}, 124, False),
        ({"phase": ["Succeeded"]}, 124, False),
    ],
)
def test_exit_code_by_outcome(status: dict[str, Any], code: int, done: bool) -> None:
    assert exit_code(status) == code
    assert finished(status) is done


def test_exit_codes_are_the_contract() -> None:
    assert {c.name: c.value for c in ExitCode} == {
        "SUCCEEDED": 0,
        "FAILED": 1,
        "USAGE": 2,
        "TIMED_OUT": 3,
        "REVOKED": 4,
        "WAIT_RAN_OUT": 124,
    }


@pytest.mark.parametrize(
    ("obj", "status"),
    [({}, {}), ({"status": None}, {}), ({"status": "x"}, {}), ({"status": {"a": 1}}, {"a": 1})],
)
def test_status_of_tolerates_anything(obj: dict[str, Any], status: dict[str, Any]) -> None:
    assert status_of(obj) == status
    assert phase_of(status) is None


def _obj(version: str, phase: str | None = None) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": version}, "status": {"phase": phase}}


@pytest.mark.parametrize(
    ("event", "step", "version"),
    [
        ({"type": "ADDED", "object": _obj("5")}, Step.UPDATE, "5"),
        ({"type": "MODIFIED", "object": _obj("6", "Running")}, Step.UPDATE, "6"),
        ({"type": "DELETED", "object": _obj("7")}, Step.GONE, "7"),
        (
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}},
            Step.PROGRESS,
            "9",
        ),
        ({"type": "BOOKMARK", "object": {}}, Step.PROGRESS, None),
        ({"type": "ERROR", "object": {"code": 410, "reason": "Expired"}}, Step.RESYNC, None),
    ],
)
def test_watch_events(event: dict[str, Any], step: Step, version: str | None) -> None:
    verdict = interpret(event)
    assert (verdict.step, verdict.resource_version) == (step, version)
    if step is Step.UPDATE:
        assert verdict.obj == event["object"]


@pytest.mark.parametrize(
    "event",
    [
        None,
        "text",
        {},
        {"type": "ADDED"},
        {"type": "ADDED", "object": "x"},
        {"type": "ERROR", "object": {"code": 500, "message": "etcd is down"}},
        {"type": "SURPRISE", "object": {}},
    ],
)
def test_what_is_not_an_event_is_an_error(event: Any) -> None:
    with pytest.raises(WatchError):
        interpret(event)


@pytest.mark.parametrize(
    ("chunks", "lines"),
    [
        ([b'{"a":1}\n'], [b'{"a":1}']),
        ([b'{"a"', b':1}\n{"b"', b":2}\n"], [b'{"a":1}', b'{"b":2}']),
        ([b"\n\n", b"x\n"], [b"x"]),
        ([b"partial"], []),
    ],
)
def test_line_buffer_splits_a_stream(chunks: list[bytes], lines: list[bytes]) -> None:
    buffer = LineBuffer(limit=100)
    assert [line for chunk in chunks for line in buffer.feed(chunk)] == lines


def test_line_buffer_refuses_an_endless_line() -> None:
    buffer = LineBuffer(limit=10)
    buffer.feed(b"0123456789")
    with pytest.raises(LineTooLong):
        buffer.feed(b"x")


@pytest.mark.parametrize(
    ("task", "prefix"),
    [
        ("taskrun_workers.tasks.calculate_sum", "calculate-sum-"),
        ("tasks.Process__File", "process-file-"),
        ("x", "x-"),
        ("pkg.", "taskrun-"),
        ("...", "taskrun-"),
        ("pkg.日本", "taskrun-"),
        ("a." + "b" * 100, "b" * 40 + "-"),
        ("pkg.-lead-", "lead-"),
    ],
)
def test_generated_names_follow_the_task(task: str, prefix: str) -> None:
    assert name_prefix(task) == prefix


@pytest.mark.parametrize(
    ("explicit", "env", "paths"),
    [
        ("/k/one", {"KUBECONFIG": "/a:/b"}, ["/k/one"]),
        (None, {"KUBECONFIG": "/a:/b"}, ["/a", "/b"]),
        (None, {"KUBECONFIG": "/a::"}, ["/a"]),
    ],
)
def test_kubeconfig_paths_like_kubectl(
    explicit: str | None, env: dict[str, str], paths: list[str]
) -> None:
    assert [str(p) for p in kubeconfig_paths(explicit, env)] == paths


def test_kubeconfig_default_is_home() -> None:
    assert kubeconfig_paths(None, {})[0].parts[-2:] == (".kube", "config")
