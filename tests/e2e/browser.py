"""Headless Chromium (Debian's `chromium`) driven by the DevTools protocol, for page tests.

Small on purpose: launch, open a page, evaluate JavaScript, and receive the page's
own reports through a binding (`Runtime.addBinding`), so a test sees every change
the page makes as it makes it, in order, without polling the DOM.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from support import wait_for

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class BrowserError(AssertionError):
    pass


class Page:
    """One tab over its DevTools WebSocket; events are kept until asked for."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: collections.deque[dict[str, Any]] = collections.deque()

    def _receive(self, timeout: float) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(self.ws.recv(timeout=timeout))
        return message

    def call(self, method: str, timeout: float = 30, **params: Any) -> dict[str, Any]:
        ident = next(self.ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = self._receive(max(0.01, deadline - time.monotonic()))
            if message.get("id") == ident:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self.events.append(message)

    def evaluate(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, *, timeout: float, what: str) -> Any:
        """Evaluate until truthy (a DOM condition), within `timeout`."""
        return wait_for(lambda: self.evaluate(expression), timeout=timeout, what=what)

    def bindings(self, name: str, timeout: float) -> Iterator[str]:
        """The payloads the page passes to binding `name`, in order, as they come."""
        deadline = time.monotonic() + timeout
        while True:
            while self.events:
                event = self.events.popleft()
                params = event.get("params", {})
                if event.get("method") == "Runtime.bindingCalled" and params.get("name") == name:
                    yield str(params["payload"])
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"no more reports through {name} within {timeout}s")
            self.events.append(self._receive(left))


@contextlib.contextmanager
def chromium(executable: str, profile: Path) -> Iterator[Page]:
    """A headless Chromium with one blank tab; stopped (and its profile left) at exit."""
    process = subprocess.Popen(
        [executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"

        def written() -> list[str]:
            # "PORT\n/devtools/browser/ID": both lines once the file is complete.
            lines = port_file.read_text().split() if port_file.is_file() else []
            return lines if len(lines) >= 2 else []

        port = int(wait_for(written, timeout=30, what="Chromium's DevTools port")[0])
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/json/new?about:blank", method="PUT"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            target = json.load(response)
        with connect(target["webSocketDebuggerUrl"], max_size=16 * 1024 * 1024) as ws:
            yield Page(ws)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
