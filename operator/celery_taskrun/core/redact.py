"""Secrets out of everything the operator and the gateway say (pure).

Broker and backend URLs carry passwords, and the errors of the clients that use them
may quote them; the gateway's callers send bearer tokens, which libraries logging at
debug level quote too (request headers, a TokenReview's body).  Whatever goes into
status, events or logs passes through `redact`: the password of any URL becomes `***`,
and so does any bearer credential and any known secret (the passwords of the
configured URLs) wherever it appears.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import quote, unquote, urlsplit

from celery_taskrun.api.model import TaskRunStatus

MASK = "***"
# The password runs to the authority's last `@` (as urlsplit reads it): one written with
# a raw `@` (`amqp://app:p@ss@host//`, which kombu accepts) is masked whole.
URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^:/@\s]*):(?P<password>[^\s/?#]+)@")
# Where a bearer token shows: after `Bearer`, in the WebSocket subprotocol that carries
# it (base64url), as a `token` field (a TokenReview's spec), and as a JWT anywhere (a
# ServiceAccount's token, whatever quotes it).  (Tokens are long: "bearer token" stays.)
CREDENTIAL = re.compile(
    r"(?P<head>\bbearer\s+|base64url\.bearer\.authorization\.k8s\.io\.)[\w.~+/-]{8,}=*"
    r"|(?P<field>[\"']token[\"']\s*:\s*[\"'])[^\"']*"
    r"|\beyJ[\w-]*\.[\w-]+\.[\w-]*",
    re.IGNORECASE,
)


def secrets_of(urls: Iterable[str]) -> list[str]:
    """The passwords in these URLs, as written and decoded, longest first."""
    found: set[str] = set()
    for url in urls:
        try:
            password = urlsplit(url).password
        except ValueError:
            continue
        if password:
            found |= {password, unquote(password), quote(unquote(password), safe="")}
    return sorted(found, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    # Known secrets first: masking a URL's password could split one (its tail after a
    # raw `@`) so that it no longer matches.
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    text = URL_PASSWORD.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return CREDENTIAL.sub(lambda m: (m["head"] or m["field"] or "") + MASK, text)


class RedactingFormatter(logging.Formatter):
    """Every log line, from any library, with its secrets masked (`redact`)."""

    def __init__(self, fmt: str, secrets: Iterable[str] = ()) -> None:
        super().__init__(fmt)
        self.secrets = list(secrets)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self.secrets)


def scrubbed(status: TaskRunStatus, secrets: Iterable[str]) -> TaskRunStatus:
    """`status` with every message the operator wrote redacted (the same object when
    there was nothing to hide)."""
    secrets = list(secrets)

    def clean(text: str | None) -> str | None:
        return None if text is None else redact(text, secrets)

    update: dict[str, object] = {}
    if clean(status.message) != status.message:
        update["message"] = clean(status.message)
    conditions = status.conditions or []
    if any(clean(c.message) != c.message for c in conditions):
        update["conditions"] = [
            c.model_copy(update={"message": clean(c.message)}) for c in conditions
        ]
    if status.error is not None and clean(status.error.message) != status.error.message:
        update["error"] = status.error.model_copy(update={"message": clean(status.error.message)})
    attempts = status.attempts or []
    if any(clean(a.message) != a.message for a in attempts):
        update["attempts"] = [a.model_copy(update={"message": clean(a.message)}) for a in attempts]
    return status.model_copy(update=update) if update else status
