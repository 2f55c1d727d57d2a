"""One classification of the API server's refusals, for the operator, gateway and CLI."""

from __future__ import annotations

import json

import pytest

from celery_taskrun.clients.errors import (
    ApiUnavailable,
    Conflict,
    Forbidden,
    Gone,
    Invalid,
    KubeError,
    TooLarge,
    refused,
    unreachable,
)


def status(reason: str, message: str) -> str:
    return json.dumps({"kind": "Status", "reason": reason, "message": message})


@pytest.mark.parametrize(
    ("code", "body", "kind"),
    [
        (404, status("NotFound", "gone"), Gone),
        (410, status("Expired", "too old"), Gone),
        (409, status("Conflict", "modified"), Conflict),
        (413, "", TooLarge),
        (500, status("InternalError", "etcdserver: request is too large"), TooLarge),
        (422, status("Invalid", "bad"), Invalid),
        (400, status("BadRequest", "bad"), ApiUnavailable),
        (403, status("Forbidden", "no"), Forbidden),
        (500, status("InternalError", "etcd leader changed"), ApiUnavailable),
    ],
)
def test_refusals_are_typed_by_what_the_caller_can_do(
    code: int, body: str, kind: type[KubeError]
) -> None:
    error = refused(code, "HTTP reason", body)
    assert type(error) is kind
    assert error.status == code


def test_a_status_body_gives_reason_and_message_bounded() -> None:
    error = refused(422, "Unprocessable Entity", status("Invalid", "m" * 5000).encode())
    assert (error.reason, len(error.message), str(error)) == ("Invalid", 1000, "m" * 1000)
    # Not a Status: the HTTP reason alone.
    plain = refused(502, "Bad Gateway", b"<html>")
    assert (plain.reason, plain.message, str(plain)) == ("Bad Gateway", "", "Bad Gateway")


def test_unreachable_names_the_failure_only() -> None:
    error = unreachable(ConnectionRefusedError("10.0.0.1:443"))
    assert isinstance(error, ApiUnavailable) and error.status == 0
    assert str(error) == "the API server could not be reached (ConnectionRefusedError)"
