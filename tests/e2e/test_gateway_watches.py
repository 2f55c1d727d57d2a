"""The gateway's shared watch, end to end: the waits and streams of a namespace share one
API-server watch (its metric says how many it holds), each gets only the run it asked
for and only what its own token may read, and the watch stops once nobody follows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from taskrun_dev.processes import ManagedProcess
from taskrun_dev.stack import Stack

from accounts import Account
from support import TASKS, wait_for

pytestmark = pytest.mark.e2e

WAITS = 24
RUNS = 3


@pytest.fixture(scope="module")
def shared(stack: Stack) -> Iterator[str]:
    """A gateway of its own (its metrics are its alone), whose watches stop 1 s after
    their last follower leaves."""
    proc: ManagedProcess = stack.start_gateway(
        "gateway-watches", extra_args=["--watch-linger-seconds=1"]
    )
    assert proc.url
    yield proc.url
    proc.stop()


def gauge(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics/", timeout=10).text
    samples = [line for line in text.splitlines() if line.startswith(f"{name} ")]
    assert len(samples) == 1, text
    return float(samples[0].split()[1])


def runs_path(namespace: str, *parts: str) -> str:
    return "/".join([f"/api/v1/namespaces/{namespace}/taskruns", *parts])


def test_waits_on_a_namespace_share_one_watch(
    shared: str, accounts: dict[str, Account], stack: Stack
) -> None:
    submitter, reader = accounts["submitter"], accounts["reader"]
    path = runs_path(submitter.namespace)
    with httpx.Client(base_url=shared, timeout=60) as http:
        names = []
        for i in range(RUNS):
            body = {"task": f"{TASKS}.sleep", "args": [3 + i * 0.5]}
            created = http.post(path, json=body, headers=submitter.headers)
            assert created.status_code == 201, created.text
            names.append(created.json()["name"])

        def wait(i: int) -> dict[str, Any]:
            answer = http.get(
                f"{path}/{names[i % RUNS]}/wait", params={"timeout": 60}, headers=reader.headers
            )
            assert answer.status_code == 200, answer.text
            body: dict[str, Any] = answer.json()
            return body

        with ThreadPoolExecutor(WAITS) as pool:
            waits = [pool.submit(wait, i) for i in range(WAITS)]
            wait_for(
                lambda: gauge(shared, "taskrun_gateway_followers") == WAITS,
                timeout=30,
                what=f"{WAITS} waits held",
            )
            assert gauge(shared, "taskrun_gateway_watches") == 1
            answers = [w.result(timeout=90) for w in waits]

        # Each wait got its own run, finished, whole (the spec's args included).
        for i, run in enumerate(answers):
            assert run["name"] == names[i % RUNS]
            assert (run["finished"], run["phase"]) == (True, "Succeeded")
            assert run["spec"]["args"] == [3 + (i % RUNS) * 0.5]

        # A token that may not read the namespace gets nothing from its open watch.
        stack.kubectl("create", "serviceaccount", "stranger", "-n", submitter.namespace, check=True)
        stranger = stack.mint_token("stranger", submitter.namespace, duration="10m")
        refused = http.get(
            f"{path}/{names[0]}/wait",
            params={"timeout": 1},
            headers={"Authorization": f"Bearer {stranger}"},
        )
        assert refused.status_code == 403, refused.text

    wait_for(
        lambda: gauge(shared, "taskrun_gateway_watches") == 0,
        timeout=30,
        what="the namespace's watch to stop after its last wait",
    )
    assert gauge(shared, "taskrun_gateway_followers") == 0


def test_a_stream_gets_only_its_run(shared: str, accounts: dict[str, Account]) -> None:
    submitter = accounts["submitter"]
    path = runs_path(submitter.namespace)
    ws_base = shared.replace("http://", "ws://", 1)
    with httpx.Client(base_url=shared, timeout=60) as http:
        mine, other = (
            http.post(
                path, json={"task": f"{TASKS}.sleep", "args": [s]}, headers=submitter.headers
            ).json()["name"]
            for s in (2, 1)
        )
        seen = []
        with connect(f"{ws_base}{path}/{mine}/stream", additional_headers=submitter.headers) as ws:
            while True:
                try:
                    seen.append(json.loads(ws.recv(timeout=60)))
                except ConnectionClosed:
                    break
        # The other run ended first, on the same watch: none of its versions came here.
        assert {m["name"] for m in seen} == {mine}
        assert seen[-1]["phase"] == "Succeeded"
        assert http.get(f"{path}/{other}", headers=submitter.headers).json()["finished"]
