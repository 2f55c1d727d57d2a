"""Reading the API server's audit log: what a line says, and following the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from taskrun_dev.audit import MAX_LINE_BYTES, AuditLog, Write, parse

OPERATOR = "system:serviceaccount:celery-taskrun-system:celery-taskrun-operator"


def line(**overrides: Any) -> str:
    event: dict[str, Any] = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "stage": "ResponseComplete",
        "verb": "patch",
        "user": {"username": OPERATOR, "groups": ["system:serviceaccounts"]},
        "objectRef": {
            "resource": "taskruns",
            "namespace": "ns",
            "name": "r1",
            "apiGroup": "celery.taskrun.dev",
            "subresource": "status",
        },
        "responseStatus": {"metadata": {}, "code": 200},
    }
    event.update(overrides)
    return json.dumps(event)


STATUS_PATCH = Write(OPERATOR, "patch", "taskruns", "status", "ns", "r1", 200)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (line(), STATUS_PATCH),
        (line(stage="ResponseStarted"), None),
        (
            line(responseStatus={"code": 409}),
            Write(OPERATOR, "patch", "taskruns", "status", "ns", "r1", 409),
        ),
        (
            line(
                verb="create", objectRef={"resource": "events", "namespace": "ns", "name": "r1.ab"}
            ),
            Write(OPERATOR, "create", "events", "", "ns", "r1.ab", 200),
        ),
        # Whatever the file holds, a bad line is skipped, never fatal.
        (
            line(user="nobody", objectRef=[1], responseStatus=None),
            Write("", "patch", "", "", "", "", 0),
        ),
        ("{not json", None),
        ("[1, 2]", None),
        ("", None),
        (" " * (MAX_LINE_BYTES + 1), None),
    ],
)
def test_parse(text: str, expected: Write | None) -> None:
    assert parse(text) == expected


def test_follows_appends_partial_lines_and_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    assert log.read_new() == []  # no file yet
    first, second, third = line(), line(verb="update"), line(verb="delete")
    path.write_text(first + "\n" + second[:10])
    assert log.read_new() == [STATUS_PATCH]
    with path.open("a") as fh:  # the rest of a line written in two goes
        fh.write(second[10:] + "\n")
    assert [w.verb for w in log.read_new()] == ["update"]
    # Rotation as the API server does it: rename, then a new file; the last lines of the
    # old one, written before the rename, are still read.
    with path.open("a") as fh:
        fh.write(first + "\n")
    path.rename(tmp_path / "audit-2026-01-01T00-00-00.000.log")
    path.write_text(third + "\n")
    assert [w.verb for w in log.read_new()] == ["patch", "delete"]
    assert log.read_new() == []
    log.close()
