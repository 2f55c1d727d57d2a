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


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("amqp://app:pw1@rabbit:5672//", "amqp://app:***@rabbit:5672//"),
        ("amqps://app:pw1@rabbit:5671/jobs", "amqps://app:***@rabbit:5671/jobs"),
        ("pyamqp://app:pw1@rabbit//", "pyamqp://app:***@rabbit//"),
        ("db+postgresql://app:pw2@db:5432/results", "db+postgresql://app:***@db:5432/results"),
        ("db+postgresql+psycopg://app:p%40ss@db/r", "db+postgresql+psycopg://app:***@db/r"),
        ("sqla+postgresql://app:pw2@db/r", "sqla+postgresql://app:***@db/r"),
        ("rediss://default:pw3@cache:6380/0", "rediss://default:***@cache:6380/0"),
        # A raw `@` in the password: masked to the authority's last one, as urlsplit reads.
        ("amqp://app:p@ss@rabbit//", "amqp://app:***@rabbit//"),
        ("Cannot connect to amqp://app:pw1@rabbit:5672//: timed out.",
         "Cannot connect to amqp://app:***@rabbit:5672//: timed out."),
        ("(psycopg2.OperationalError) for db+postgresql://app:pw2@db/r and redis://:pw3@r/1",
         "(psycopg2.OperationalError) for db+postgresql://app:***@db/r and redis://:***@r/1"),
        # No password: nothing to hide.
        ("db+postgresql://taskrun@127.0.0.1:5432/taskrun",
         "db+postgresql://taskrun@127.0.0.1:5432/taskrun"),
        ("mail admin@example.com about http://host/x", "mail admin@example.com about http://host/x"),
    ],
)  # fmt: skip
def test_any_urls_password_is_masked_known_or_not(text: str, clean: str) -> None:
    """Broker and backend errors quote URLs the operator was not configured with too."""
    assert redact(text) == clean


def test_a_configured_password_with_a_raw_at_sign_leaves_nothing() -> None:
    url = "amqp://app:p@ss:w0rd@rabbit:5672//"
    text = f"Cannot connect to {url}: refused; auth p@ss:w0rd"
    clean = redact(text, secrets_of([url]))
    assert "p@ss" not in clean and "w0rd" not in clean, clean


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
