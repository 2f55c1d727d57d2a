"""A watch's stream of events, split into lines (pure): one JSON event a line."""

from __future__ import annotations

# etcd keeps objects below ~1.5 MB: a longer line is not a TaskRun event.
MAX_EVENT_BYTES = 4 * 1024 * 1024


class LineTooLong(Exception):
    pass


class LineBuffer:
    """Splits a byte stream into lines; refuses a line longer than `limit`."""

    def __init__(self, limit: int = MAX_EVENT_BYTES) -> None:
        self.limit = limit
        self._pending = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        self._pending += chunk
        *lines, rest = bytes(self._pending).split(b"\n")
        if len(rest) > self.limit:
            raise LineTooLong(f"a watch event longer than {self.limit} bytes")
        self._pending = bytearray(rest)
        return [line for line in lines if line.strip()]
