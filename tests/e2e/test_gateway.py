"""The gateway end to end: a real API server (RBAC, TokenReview, SubjectAccessReview),
the operator, a prefork worker, and the gateway as a process with its own
ServiceAccount; callers are two ServiceAccounts of different rights."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from taskrun_dev.stack import Stack

from accounts import Account
from support import TASKS

pytestmark = pytest.mark.e2e

TERMINAL = {"Succeeded", "Failed", "TimedOut", "Revoked"}


@pytest.fixture
def http(gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway, timeout=60) as client:
        yield client


def runs_path(namespace: str, *parts: str) -> str:
    return "/".join([f"/api/v1/namespaces/{namespace}/taskruns", *parts])


def submit(http: httpx.Client, who: Account, **body: Any) -> httpx.Response:
    return http.post(runs_path(who.namespace), json=body, headers=who.headers)


def ws_url(gateway: str, path: str) -> str:
    return gateway.replace("http://", "ws://", 1) + path


def messages(ws: ClientConnection, timeout: float = 30) -> Iterator[dict[str, Any]]:
    """Each message until the gateway closes the stream; fails if one takes too long."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            raw = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        except ConnectionClosed:
            return
        yield json.loads(raw)


def test_submit_then_status_and_wait(http: httpx.Client, accounts: dict[str, Account]) -> None:
    submitter, reader = accounts["submitter"], accounts["reader"]
    created = submit(http, submitter, task=f"{TASKS}.calculate_sum", args=[[1, 2, 3, 4, 5]])
    assert created.status_code == 201, created.text
    body = created.json()
    name = body["name"]
    assert name.startswith("calculate-sum-")
    assert body["statusUrl"] == runs_path(submitter.namespace, name)
    assert created.headers["location"] == body["statusUrl"]

    # A reader may follow what a submitter started.
    waited = http.get(f"{body['statusUrl']}/wait", params={"timeout": 30}, headers=reader.headers)
    assert waited.status_code == 200, waited.text
    run = waited.json()
    assert run["finished"] is True
    assert (run["phase"], run["result"]) == ("Succeeded", 15)
    assert run["status"]["result"] == 15
    assert run["spec"]["args"] == [[1, 2, 3, 4, 5]]

    status = http.get(body["statusUrl"], headers=reader.headers).json()
    assert (status["name"], status["phase"], status["finished"]) == (name, "Succeeded", True)
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["Succeeded"] == conditions["Finished"] == "True"

    named = submit(http, submitter, task=f"{TASKS}.calculate_sum", args=[[1]], name="mine")
    assert (named.status_code, named.json()["name"]) == (201, "mine")
    again = submit(http, submitter, task=f"{TASKS}.calculate_sum", args=[[1]], name="mine")
    assert again.status_code == 409, again.text


def test_wait_runs_out_with_the_current_state_then_cancel(
    http: httpx.Client, accounts: dict[str, Account]
) -> None:
    submitter, reader = accounts["submitter"], accounts["reader"]
    created = submit(http, submitter, task=f"{TASKS}.sleep", args=[30], timeout=60, name="slow")
    assert created.status_code == 201, created.text
    path = runs_path(submitter.namespace, "slow")

    started = time.monotonic()
    waited = http.get(f"{path}/wait", params={"timeout": 1}, headers=reader.headers)
    elapsed = time.monotonic() - started
    assert waited.status_code == 200, waited.text
    run = waited.json()
    assert run["finished"] is False
    assert run["phase"] in ("Pending", "Queued", "Running")
    assert 1 <= elapsed < 3, elapsed

    refused = http.post(f"{path}/cancel", headers=reader.headers)
    assert refused.status_code == 403
    assert "may not patch" in refused.json()["detail"]

    cancelled = http.post(f"{path}/cancel", headers=submitter.headers)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["spec"]["cancel"] is True

    started = time.monotonic()
    waited = http.get(f"{path}/wait", params={"timeout": 30}, headers=reader.headers)
    run = waited.json()
    assert (run["finished"], run["phase"], run["reason"]) == (True, "Revoked", "Cancelled")
    assert time.monotonic() - started < 30


def test_a_failure_is_reported_with_its_error(
    http: httpx.Client, accounts: dict[str, Account]
) -> None:
    submitter = accounts["submitter"]
    name = submit(http, submitter, task=f"{TASKS}.fail", args=["boom"]).json()["name"]
    run = http.get(
        f"{runs_path(submitter.namespace, name)}/wait",
        params={"timeout": 30},
        headers=submitter.headers,
    ).json()
    assert (run["finished"], run["phase"], run["reason"]) == (True, "Failed", "TaskError")
    assert (run["error"]["type"], run["error"]["message"]) == ("ValueError", "boom")
    assert "ValueError: boom" in run["error"]["traceback"]


def test_identity_and_rights_are_kubernetes(
    http: httpx.Client, accounts: dict[str, Account], stack: Stack
) -> None:
    submitter, reader = accounts["submitter"], accounts["reader"]
    namespace = submitter.namespace
    spec = {"task": f"{TASKS}.calculate_sum", "args": [[1]]}

    anonymous = http.get(runs_path(namespace))
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    forged = http.get(runs_path(namespace), headers={"Authorization": "Bearer not-a-token"})
    assert forged.status_code == 401

    refused = http.post(runs_path(namespace), json=spec, headers=reader.headers)
    assert refused.status_code == 403
    assert reader.name in refused.json()["detail"]
    # Rights end at the namespace the Role is in.
    elsewhere = http.get(runs_path("celery-taskrun-system"), headers=submitter.headers)
    assert elsewhere.status_code == 403

    missing = http.get(runs_path(namespace, "nothing-here"), headers=reader.headers)
    assert missing.status_code == 404
    missing_wait = http.get(runs_path(namespace, "nothing-here", "wait"), headers=reader.headers)
    assert missing_wait.status_code == 404
    assert stack.kubectl("get", "taskruns", "-n", namespace, "-o", "name").stdout == ""


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ({}, "task"),
        ({"task": ""}, "task"),
        ({"task": "t", "priority": 300}, "priority"),
        ({"task": "t", "timeLimit": -1}, "timeLimit"),
        ({"task": "t", "timelimit": 5}, "timelimit"),
        ({"task": "t", "args": "1,2"}, "args"),
        ({"task": "t", "name": "Not_A_Name"}, "name"),
        # Refused by the CRD's rules in the API server, with the same status.
        ({"task": "t", "timeLimit": 5, "softTimeLimit": 10}, "softTimeLimit must be below"),
    ],
    ids=["no-task", "empty-task", "priority", "negative", "unknown", "args", "name", "soft>hard"],
)
def test_invalid_specs_are_422(
    http: httpx.Client,
    accounts: dict[str, Account],
    stack: Stack,
    body: dict[str, Any],
    complaint: str,
) -> None:
    submitter = accounts["submitter"]
    response = http.post(runs_path(submitter.namespace), json=body, headers=submitter.headers)
    assert response.status_code == 422, response.text
    assert complaint in response.text
    assert stack.kubectl("get", "taskruns", "-n", submitter.namespace, "-o", "name").stdout == ""


def test_stream_sends_each_change_in_order_and_closes(
    gateway: str, http: httpx.Client, accounts: dict[str, Account]
) -> None:
    submitter, reader = accounts["submitter"], accounts["reader"]
    # `countdown` keeps it Queued for a second: the stream opens before it starts.
    spec = {"task": f"{TASKS}.progress", "args": [4, 0.3], "countdown": 1}
    name = submit(http, submitter, **spec).json()["name"]
    url = ws_url(gateway, runs_path(submitter.namespace, name, "stream"))

    with connect(url, additional_headers=reader.headers) as ws:
        seen = list(messages(ws))
        assert ws.close_code == 1000
    # Before the operator's first status write a run has no phase (null), then it may be
    # Pending (accepted, not sent yet) for a moment.
    phases = [m["phase"] for m in seen if m["phase"] not in (None, "Pending")]
    assert [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p] == [
        "Queued",
        "Running",
        "Succeeded",
    ], phases
    percents = [m["progress"]["percent"] for m in seen if m["phase"] == "Running" and m["progress"]]
    assert percents == sorted(set(percents)) and any(0 < p < 100 for p in percents), percents
    assert seen[-1]["finished"] is True and seen[-1]["result"] == {"steps": 4}
    assert not any(m["finished"] for m in seen[:-1])

    # A finished run: its state, then the close.
    with connect(url, additional_headers=reader.headers) as ws:
        assert [m["phase"] for m in messages(ws)] == ["Succeeded"]
        assert ws.close_code == 1000

    # Refused at the handshake with the HTTP status the routes would answer.
    elsewhere = ws_url(gateway, runs_path("celery-taskrun-system", name, "stream"))
    missing = ws_url(gateway, runs_path(submitter.namespace, "no-such-run", "stream"))
    for target, headers, status in [
        (url, {}, 401),
        (url, {"Authorization": "Bearer forged"}, 401),
        (elsewhere, reader.headers, 403),
        (missing, reader.headers, 404),
    ]:
        with pytest.raises(InvalidStatus) as refused:
            connect(target, additional_headers=headers)
        assert refused.value.response.status_code == status


def test_namespace_stream_and_filtered_list(
    gateway: str, http: httpx.Client, accounts: dict[str, Account]
) -> None:
    submitter, reader = accounts["submitter"], accounts["reader"]
    namespace = submitter.namespace
    ok = submit(http, submitter, task=f"{TASKS}.calculate_sum", args=[[2, 2]]).json()["name"]
    http.get(runs_path(namespace, ok, "wait"), headers=reader.headers)

    url = ws_url(gateway, runs_path(namespace, "stream"))
    with connect(url, additional_headers=reader.headers) as ws:
        stream = messages(ws)
        snapshot = next(stream)
        assert snapshot["type"] == "SNAPSHOT"
        assert [run["name"] for run in snapshot["items"]] == [ok]
        failing = submit(http, submitter, task=f"{TASKS}.fail", args=["no"]).json()["name"]
        for message in stream:
            run = message["run"]
            # (The operator may still write to the first run: metadata, a last status.)
            if run["name"] == failing and run["finished"]:
                break
    assert (run["phase"], run["error"]["type"]) == ("Failed", "ValueError")
    assert "result" not in run and "traceback" not in run["error"]

    def names(**params: Any) -> list[str]:
        listed = http.get(runs_path(namespace), params=params, headers=reader.headers)
        assert listed.status_code == 200, listed.text
        return sorted(run["name"] for run in listed.json()["items"])

    assert names() == sorted([ok, failing])
    assert names(phase="Failed") == [failing]
    assert names(phase=["Failed", "Succeeded"]) == sorted([ok, failing])
    assert names(task="*.calculate_sum") == [ok]
    # An unknown phase: refused as such once the caller is known, and before that for
    # the missing credentials.
    unknown = {"phase": "Done"}
    assert http.get(runs_path(namespace), params=unknown, headers=reader.headers).status_code == 422
    assert http.get(runs_path(namespace), params=unknown).status_code == 401


def test_taskrun_dev_up_gateway_writes_its_url(stack: Stack, gateway: str) -> None:
    """`taskrun-dev up --gateway` on a running stack keeps what runs and exports the URL."""
    result = subprocess.run(
        [
            sys.executable, "-m", "taskrun_dev.cli", "up", "--dir", str(stack.dir),
            "--gateway", "--no-operator", "--no-worker",
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    env_file = Path(result.stdout.strip().splitlines()[-1])
    assert f"export TASKRUN_GATEWAY_URL={gateway}\n" in env_file.read_text()
    assert httpx.get(f"{gateway}/healthz").json() == {"ok": True}
    page = httpx.get(f"{gateway}/")
    assert page.status_code == 200 and "<title>TaskRuns</title>" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
