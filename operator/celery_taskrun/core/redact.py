"""Secrets out of everything the operator says (pure).

Broker and backend URLs carry passwords, and the errors of the clients that use them
may quote them.  Whatever goes into status, events or logs passes through `redact`:
the password of any URL becomes `***`, and so does any known secret (the passwords
of the configured URLs) wherever it appears.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, unquote, urlsplit

from celery_taskrun.api.model import TaskRunStatus

MASK = "***"
URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^:/@\s]*):(?P<password>[^@\s]+)@")


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
    text = URL_PASSWORD.sub(lambda m: f"{m['head']}:{MASK}@", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text


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
