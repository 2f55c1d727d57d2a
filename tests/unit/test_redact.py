"""No secrets in what the operator says."""

from datetime import UTC, datetime

import pytest

from celery_taskrun.api.model import EffectiveLimits, Reason, TaskRunStatus
from celery_taskrun.core.changes import pending
from celery_taskrun.core.redact import redact, scrubbed, secrets_of

URLS = ["redis://:s3cr%40t@redis:6379/0", "db+postgresql://app:hunter2@db/results"]


def test_secrets_are_the_passwords_as_written_and_decoded() -> None:
    assert set(secrets_of(URLS)) == {"s3cr%40t", "s3cr@t", "hunter2"}
    assert secrets_of(["redis://redis:6379/0", "not a url"]) == []


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        (
            "Error connecting to redis://:s3cr%40t@redis:6379/0: refused",
            "Error connecting to redis://:***@redis:6379/0: refused",
        ),
        ("amqp://guest:guest@rabbit//", "amqp://guest:***@rabbit//"),
        ("AUTH s3cr@t failed", "AUTH *** failed"),
        ("nothing to hide", "nothing to hide"),
        # Bearer credentials, as libraries logging at debug level quote them.
        ("< Authorization: Bearer abc.DEF-123_x~+/==", "< Authorization: Bearer ***"),
        ("(b'authorization', b'bearer opaque-token-1')", "(b'authorization', b'bearer ***')"),
        (
            "< Sec-WebSocket-Protocol: base64url.bearer.authorization.k8s.io.ZXlKaGJHY2lPaUpT",
            "< Sec-WebSocket-Protocol: base64url.bearer.authorization.k8s.io.***",
        ),
        ('body: {"spec":{"token":"static:token"}}', 'body: {"spec":{"token":"***"}}'),
        ("quoted eyJhbGciOi.eyJpc3Mi.c2lnbmF0dXJl here", "quoted *** here"),
        ("a bearer token is required", "a bearer token is required"),
    ],
)
def test_redact(text: str, clean: str) -> None:
    assert redact(text, secrets_of(URLS)) == clean


def test_a_status_is_scrubbed_everywhere_the_operator_writes() -> None:
    status = pending(
        TaskRunStatus(),
        Reason.BACKEND_UNAVAILABLE,
        "cannot send the task yet: redis://:hunter2@x failed",
        limits=EffectiveLimits(),
        generation=1,
        now=datetime(2026, 1, 1, tzinfo=UTC),
    )
    clean = scrubbed(status, ["hunter2"])
    assert "hunter2" not in clean.model_dump_json()
    assert scrubbed(clean, ["hunter2"]) is clean  # nothing left to hide: same object
