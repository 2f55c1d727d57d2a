"""The CLI's pure parts: arguments, durations, the spec they make, and what it prints."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from celery_taskrun.cli import render
from celery_taskrun.cli.main import parse
from celery_taskrun.cli.parsing import (
    UsageError,
    build_spec,
    parse_duration,
    parse_kwargs,
    parse_value,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("5", 5),
        ("-1.5", -1.5),
        ("[1, 2]", [1, 2]),
        ('{"a": null}', {"a": None}),
        ("true", True),
        ("null", None),
        ('"5"', "5"),
        ("hello", "hello"),
        ("", ""),
        ("[1, 2", "[1, 2"),
        ("NaN", "NaN"),
        ("Infinity", "Infinity"),
        ("-Infinity", "-Infinity"),
        ("01", "01"),
        (" 7 ", 7),
    ],
)
def test_each_value_is_json_when_it_parses_else_a_string(text: str, value: Any) -> None:
    assert parse_value(text) == value


def test_kwargs() -> None:
    assert parse_kwargs(["a=1", "b=x=y", "c=", 'd=["z"]']) == {
        "a": 1,
        "b": "x=y",
        "c": "",
        "d": ["z"],
    }


@pytest.mark.parametrize("items", [["novalue"], ["=1"], ["a=1", "a=2"]])
def test_bad_kwargs(items: list[str]) -> None:
    with pytest.raises(UsageError):
        parse_kwargs(items)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 30),
        ("2.5", 2.5),
        (".5", 0.5),
        ("0", 0),
        ("30s", 30),
        ("2m", 120),
        ("1h", 3600),
        ("1m30s", 90),
        ("500ms", 0.5),
        (" 5s ", 5),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "-5", "5x", "s", "1 m", "1e3", "nan", "inf", "5s5", "m5"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(UsageError):
        parse_duration(text)


@pytest.mark.parametrize("text", ["9" * 400, "9" * 400 + "h"])
def test_an_infinite_duration_is_refused(text: str) -> None:
    with pytest.raises(UsageError):
        parse_duration(text)


def test_build_spec_validates_with_the_operators_model() -> None:
    spec = build_spec(
        "tasks.add",
        ["1", "[2]"],
        ["x=y"],
        {"queue": "q", "timeout": 60.0, "timeLimit": 10.0, "softTimeLimit": None},
    )
    assert spec == {
        "task": "tasks.add",
        "args": [1, [2]],
        "kwargs": {"x": "y"},
        "queue": "q",
        "timeout": 60.0,
        "timeLimit": 10.0,
    }
    assert build_spec("t", [], [], {}) == {"task": "t"}


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"priority": 300}, "priority: Input should be less than or equal to 255"),
        ({"timeLimit": 0.0}, "timeLimit: Input should be greater than 0"),
        ({"retries": -1}, "retries"),
    ],
)
def test_build_spec_refuses_what_the_model_refuses(options: dict[str, Any], complaint: str) -> None:
    with pytest.raises(UsageError, match=complaint):
        build_spec("t", [], [], options)


def test_build_spec_refuses_an_empty_task() -> None:
    with pytest.raises(UsageError, match="task"):
        build_spec("", [], [], {})


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["run", "t", "1", "--wait", "x", "-n", "ns", "--for", "2m"],
            {"task": "t", "args": ["1", "x"], "wait": True, "wait_for": 120, "namespace": "ns"},
        ),
        (["-n", "ns", "wait", "r", "--for", "5"], {"name": "r", "wait_for": 5, "namespace": "ns"}),
        (["run", "t", "-5", "-1.5"], {"args": ["-5", "-1.5"], "namespace": None}),
        (["run", "t", "--", "--x", "-y"], {"args": ["--x", "-y"]}),
        (["--kubeconfig", "/k", "get"], {"name": None, "kubeconfig": "/k", "output": "table"}),
        (["get", "r", "-o", "json", "--context", "c"], {"name": "r", "context": "c"}),
        (["run", "t", "--time-limit", "1m", "--retries", "2"], {"time_limit": 60, "retries": 2}),
    ],
)
def test_command_lines(argv: list[str], expected: dict[str, Any]) -> None:
    options = vars(parse(argv))
    assert {key: options[key] for key in expected} == expected


@pytest.mark.parametrize(
    "argv", [[], ["run"], ["nope"], ["wait"], ["run", "t", "--for", "5x"], ["get", "-o", "xml"]]
)
def test_usage_errors_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2


@pytest.mark.parametrize(
    ("status", "line"),
    [
        (
            {"phase": "Failed", "reason": "TaskError", "error": {"type": "E", "message": "m"}},
            "taskrun/r Failed (TaskError): E: m",
        ),
        (
            {"phase": "TimedOut", "reason": "DeadlineExceeded", "message": "too slow"},
            "taskrun/r TimedOut (DeadlineExceeded): too slow",
        ),
        ({"phase": "Revoked", "reason": "Cancelled"}, "taskrun/r Revoked (Cancelled)"),
        ({"phase": "Failed", "error": {"type": "E", "message": ""}}, "taskrun/r Failed: E"),
    ],
)
def test_outcome_lines(status: dict[str, Any], line: str) -> None:
    assert render.outcome_line("r", status) == line


def test_error_text_adds_the_traceback_only_when_asked() -> None:
    status = {"phase": "Failed", "error": {"type": "E", "message": "m", "traceback": "T\n"}}
    assert render.error_text("r", status, traceback=False) == "taskrun/r Failed: E: m"
    assert render.error_text("r", status, traceback=True) == "taskrun/r Failed: E: m\nT"


def test_ran_out_and_result() -> None:
    status = {"phase": "Running", "progress": {"percent": 40}}
    text = render.ran_out_text("r", status, 2)
    assert text == "taskrun/r is still Running (40%) after 2s; the run goes on"
    assert render.result_json({"result": {"a": [1, "é"]}}) == '{"a": [1, "é"]}'
    assert render.result_json({"phase": "Succeeded"}) == "null"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (59, "59s"),
        (119, "119s"),
        (125, "2m5s"),
        (900, "15m"),
        (3700, "1h1m"),
        (36000, "10h"),
        (90000, "1d1h"),
        (10**7, "115d"),
    ],
)
def test_ages_like_kubectl(seconds: int, text: str) -> None:
    since = datetime.fromtimestamp(NOW.timestamp() - seconds, UTC).isoformat()
    assert render.age(since, NOW) == text


def test_age_of_garbage() -> None:
    assert render.age("yesterday", NOW) == render.age(None, NOW) == "-"


def test_table_and_describe() -> None:
    obj = {
        "metadata": {"name": "r", "namespace": "ns", "creationTimestamp": "2026-01-02T03:04:00Z"},
        "spec": {"task": "t.fail", "args": ["x"], "retries": 1},
        "status": {
            "phase": "Failed",
            "reason": "TaskError",
            "error": {"type": "ValueError", "message": "x" * 200, "traceback": "Traceback\n  at"},
            "conditions": [{"type": "Finished", "status": "True", "reason": "TaskError"}],
        },
    }
    lines = render.table([obj], NOW).splitlines()
    assert lines[0].split() == [
        "NAME", "TASK", "PHASE", "REASON", "PROGRESS", "AGE", "DURATION", "DETAIL",
    ]  # fmt: skip
    assert lines[1].split()[:5] == ["r", "t.fail", "Failed", "TaskError", "5s"]
    assert lines[1].endswith("…") and len(lines[1]) < 200
    described = render.describe(obj, NOW)
    assert 'Options:      {"retries": 1}' in described
    assert "Error:        ValueError: " + "x" * 200 in described
    assert "Traceback:\n  Traceback\n    at" in described
    assert "Result:" not in described


def test_a_waiting_run_says_why_in_the_table_and_describe() -> None:
    why = "concurrency group reports: 2 of 2 in use"
    obj = {
        "metadata": {"name": "r", "namespace": "ns", "creationTimestamp": "2026-01-02T03:04:00Z"},
        "spec": {"task": "reports.monthly"},
        "status": {"phase": "Pending", "reason": "Throttled", "message": why},
    }
    assert render.table([obj], NOW).splitlines()[1].endswith(why)
    assert f"Waiting:      for room, {why}; nothing sent yet" in render.describe(obj, NOW)
