"""Reading the API server's audit log (`taskrun-dev up --audit-log`): who wrote what.

Each line is one audit.k8s.io/v1 Event at Metadata level (see controlplane.AUDIT_POLICY):
the user, the verb, the object's resource, namespace and name, and the answer's code.
`AuditLog.read_new()` follows the file as the API server appends and rotates it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

# A line is a few hundred bytes at Metadata level; anything far longer is not ours.
MAX_LINE_BYTES = 64 * 1024
_MAX_FIELD = 512


@dataclass(frozen=True)
class Write:
    """One write request as the API server recorded it."""

    user: str
    verb: str
    resource: str
    subresource: str
    namespace: str
    name: str
    code: int
    user_agent: str = ""  # which client of the user (the operator names its process)
    at: str = ""  # when the API server received it (RFC 3339, microseconds)


def _text(value: Any) -> str:
    return value[:_MAX_FIELD] if isinstance(value, str) else ""


def parse(line: bytes | str) -> Write | None:
    """The write a line records, or None for anything else (other stages, bad JSON)."""
    if len(line) > MAX_LINE_BYTES:
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("stage") != "ResponseComplete":
        return None
    user, ref, status = (event.get(key) for key in ("user", "objectRef", "responseStatus"))
    user = user if isinstance(user, dict) else {}
    ref = ref if isinstance(ref, dict) else {}
    code = status.get("code") if isinstance(status, dict) else None
    return Write(
        user=_text(user.get("username")),
        verb=_text(event.get("verb")),
        resource=_text(ref.get("resource")),
        subresource=_text(ref.get("subresource")),
        namespace=_text(ref.get("namespace")),
        name=_text(ref.get("name")),
        code=code if isinstance(code, int) else 0,
        user_agent=_text(event.get("userAgent")),
        at=_text(event.get("requestReceivedTimestamp")),
    )


class AuditLog:
    """Follows one audit log file across the API server's rotations.

    Rotation renames the file and starts a new one: the open handle reads the renamed
    file to its end before the reader moves to the new one, so no line is lost.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None
        self._partial = b""

    def _open(self) -> IO[bytes] | None:
        try:
            return self.path.open("rb")
        except FileNotFoundError:
            return None

    def _rotated(self) -> bool:
        assert self._file is not None
        try:
            return os.stat(self.path).st_ino != os.fstat(self._file.fileno()).st_ino
        except FileNotFoundError:
            return False

    def read_new(self) -> list[Write]:
        """The writes appended since the last call (from the start on the first)."""
        found: list[Write] = []
        while True:
            if self._file is None:
                self._file = self._open()
                if self._file is None:
                    return found
            rotated = self._rotated()
            chunk = self._partial + self._file.read()
            lines = chunk.split(b"\n")
            self._partial = lines.pop()
            found += [write for line in lines if (write := parse(line)) is not None]
            if not rotated:
                return found
            self._file.close()
            self._file, self._partial = None, b""

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
