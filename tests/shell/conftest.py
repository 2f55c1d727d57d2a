"""The engine on the loop's fake time, and a tracker wired to fakes of its clients,
started and stopped around each test.

looptime patches every event loop pytest-asyncio makes; `fake_time` switches the
test's loop to fake time for the whole test, its fixtures' set-up and tear-down
included (the plugin's marker would switch it on for the test body alone, and the
tracker, started in a fixture, would see its clocks jump).  On fake time a sleep,
a timeout or a poll interval passes at once and exactly: a test asserts when
something happened, to the millisecond, and a test that fails waits for nothing.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import looptime
import pytest
import pytest_asyncio

from taskrun_dev.processes import free_port

import fakes
from fakes import Harness, MakeHarness


@pytest_asyncio.fixture(loop_scope="function")
async def fake_time() -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, looptime.LoopTimeEventLoop), "looptime did not patch the loop"
    with loop.looptime_enabled():
        yield


# The tracker's tasks live on the test's own loop.
@pytest_asyncio.fixture(loop_scope="function")
async def make_harness(fake_time: None) -> AsyncIterator[MakeHarness]:
    started: list[Harness] = []

    async def make(**config: Any) -> Harness:
        harness = fakes.make_harness(**config)
        harness.led_at = fakes.loop_time()
        await harness.tracker.lead()
        started.append(harness)
        return harness

    yield make
    for harness in started:
        await harness.tracker.stop()


@pytest_asyncio.fixture(loop_scope="function")
async def harness(make_harness: MakeHarness) -> Harness:
    return await make_harness()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on loopback (the wall clock: real sockets)."""
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server")
    port, data = free_port(), tmp_path_factory.mktemp("redis")
    argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data)]
    argv += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    for line in server.stdout:  # its own word that it is ready, not a timer
        if "Ready to accept connections" in line:
            break
    else:
        pytest.fail("redis-server exited before it was ready")
    threading.Thread(target=server.stdout.read, daemon=True).start()  # never a full pipe
    yield f"redis://127.0.0.1:{port}/0"
    server.terminate()
    server.wait(10)
