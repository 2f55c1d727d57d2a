"""The gateway's guards against its callers, end to end (the real API server, RBAC,
TokenReview): a request is authenticated before its body is read; tokens never reach
the log, even at debug level; a stream closes once its caller's token or rights lapse;
waits and streams are bounded per caller; tokens can be required to be issued for the
gateway (TokenReview audiences)."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

from taskrun_dev import controlplane as cp
from taskrun_dev.processes import ManagedProcess
from taskrun_dev.stack import Stack

from accounts import Account
from support import TASKS, wait_for

pytestmark = pytest.mark.e2e

AUDIENCE = "celery-taskrun-gateway-e2e"
PER_CALLER = 2
# The browser's way to send a token (auth.py), beside the page's own subprotocol.
TOKEN_PROTOCOL = "base64url.bearer.authorization.k8s.io."


@pytest.fixture(scope="module")
def guarded(stack: Stack) -> Iterator[ManagedProcess]:
    """A gateway of its own: logging at debug level, streams checked again every second,
    PER_CALLER waits and streams per caller, and tokens for AUDIENCE or the API server."""
    proc = stack.start_gateway(
        "gateway-guarded",
        extra_args=[
            "--verbose",
            "--recheck-seconds=1",
            f"--max-followers-per-caller={PER_CALLER}",
            f"--token-audience={AUDIENCE}",
            f"--token-audience={cp.SA_ISSUER}",  # the API server's own (its default)
        ],
    )
    yield proc
    proc.stop()


@pytest.fixture
def url(guarded: ManagedProcess) -> str:
    assert guarded.url
    return guarded.url


def runs_path(namespace: str, *parts: str) -> str:
    return "/".join([f"/api/v1/namespaces/{namespace}/taskruns", *parts])


def ws_url(base: str, path: str) -> str:
    return base.replace("http://", "ws://", 1) + path


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def to_the_end(ws: ClientConnection, timeout: float) -> list[dict[str, Any]]:
    """Every message until the gateway closes the stream; fails if it stays open."""
    seen = []
    while True:
        try:
            seen.append(json.loads(ws.recv(timeout=timeout)))
        except ConnectionClosed:
            return seen


def answer_to_a_large_upload(base: str, path: str, headers: str) -> bytes:
    """POST a declared 20 MiB body, send one byte of it, and read whatever the gateway
    answers until it closes the connection (a timeout if it waits for the body)."""
    address = urlsplit(base)
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {address.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {20 * 1024 * 1024}\r\n"
            f"{headers}\r\n"
        )
        sock.sendall(head.encode() + b"{")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_a_request_is_authenticated_before_its_body_is_read(
    url: str, accounts: dict[str, Account]
) -> None:
    path = runs_path(accounts["submitter"].namespace)
    for headers in ("", "Authorization: Bearer forged\r\n"):
        answer = answer_to_a_large_upload(url, path, headers)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401 "), answer
        assert b"connection: close" in head.lower()
        assert b"www-authenticate: Bearer" in head
        assert json.loads(body)["detail"]
    # Authenticated, the body is read and bounded.
    too_big = httpx.post(
        f"{url}{path}", content=b"x" * (1024 * 1024 + 1), headers=accounts["submitter"].headers
    )
    assert too_big.status_code == 413, too_big.text


def test_tokens_never_reach_the_log(
    url: str, guarded: ManagedProcess, accounts: dict[str, Account]
) -> None:
    submitter, reader = accounts["submitter"], accounts["reader"]
    runs = runs_path(submitter.namespace)
    with httpx.Client(base_url=url, timeout=60) as http:
        created = http.post(
            runs, json={"task": f"{TASKS}.calculate_sum", "args": [[1]]}, headers=submitter.headers
        )
        assert created.status_code == 201, created.text
        name = created.json()["name"]
        waited = http.get(f"{runs}/{name}/wait", headers=reader.headers)
        assert waited.json()["finished"] is True
    # A stream with the token in a header, one with it in a subprotocol (browsers).
    with connect(ws_url(url, f"{runs}/{name}/stream"), additional_headers=reader.headers) as ws:
        assert [m["phase"] for m in to_the_end(ws, timeout=30)] == ["Succeeded"]
    encoded = base64.urlsafe_b64encode(reader.token.encode()).decode().rstrip("=")
    protocols = [Subprotocol("taskrun.v1"), Subprotocol(f"{TOKEN_PROTOCOL}{encoded}")]
    with connect(ws_url(url, f"{runs}/stream"), subprotocols=protocols) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "SNAPSHOT"

    log = guarded.log_text()
    assert " DEBUG " in log  # (what was said, was said at debug level)
    for secret in (submitter.token, reader.token, encoded):
        assert secret not in log
        # Nor any long piece of it (a JWT's signature alone is a credential's worth).
        assert secret[-40:] not in log
    assert "Bearer ***" in log  # masked where the libraries quoted it


def test_a_stream_closes_when_its_rights_are_revoked(
    url: str, accounts: dict[str, Account], stack: Stack
) -> None:
    reader = accounts["reader"]
    namespace = reader.namespace
    with connect(
        ws_url(url, runs_path(namespace, "stream")), additional_headers=reader.headers
    ) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "SNAPSHOT"
        stack.kubectl("delete", "rolebinding", reader.name, "-n", namespace, check=True)
        last = to_the_end(ws, timeout=60)[-1]
        assert (ws.close_code, last["type"], last["status"]) == (4403, "ERROR", 403)
        assert last["detail"].endswith(f"may not watch taskruns in namespace {namespace}")
        # The reason says the same, within a close frame's 123 bytes.
        assert last["detail"].startswith(ws.close_reason) and "may not" in ws.close_reason


def test_a_stream_closes_when_its_token_is_revoked(
    url: str, accounts: dict[str, Account], stack: Stack
) -> None:
    submitter = accounts["submitter"]
    namespace = submitter.namespace
    # `countdown` keeps it Queued long after the test.
    spec = {"task": f"{TASKS}.calculate_sum", "args": [[1]], "countdown": 600, "name": "later"}
    created = httpx.post(f"{url}{runs_path(namespace)}", json=spec, headers=submitter.headers)
    assert created.status_code == 201, created.text
    stream = ws_url(url, runs_path(namespace, "later", "stream"))
    with connect(stream, additional_headers=submitter.headers) as ws:
        assert json.loads(ws.recv(timeout=30))["name"] == "later"
        # Deleting its ServiceAccount invalidates every token of it.
        stack.kubectl("delete", "serviceaccount", submitter.name, "-n", namespace, check=True)
        last = to_the_end(ws, timeout=60)[-1]
        assert (ws.close_code, last["type"], last["status"]) == (4401, "ERROR", 401)
        assert ws.close_reason == "the token is not valid"


def test_waits_and_streams_are_bounded_per_caller(url: str, accounts: dict[str, Account]) -> None:
    submitter, reader = accounts["submitter"], accounts["reader"]
    stream = ws_url(url, runs_path(reader.namespace, "stream"))

    @contextlib.contextmanager
    def opened(who: Account) -> Iterator[None]:
        with connect(stream, additional_headers=who.headers) as ws:
            assert json.loads(ws.recv(timeout=30))["type"] == "SNAPSHOT"  # counted from here
            yield

    with contextlib.ExitStack() as first, opened(reader):  # PER_CALLER streams
        first.enter_context(opened(reader))
        with pytest.raises(InvalidStatus) as refused, opened(reader):
            pass
        assert refused.value.response.status_code == 429
        assert f"{PER_CALLER} waits and streams open" in refused.value.response.body.decode()
        waited = httpx.get(
            f"{url}{runs_path(reader.namespace, 'any', 'wait')}", headers=reader.headers
        )
        assert waited.status_code == 429
        assert "end one first" in waited.json()["detail"]
        # Another caller is not held back by this one.
        with opened(submitter):
            pass

        first.close()

        def another() -> bool:
            try:
                with opened(reader):
                    return True
            except InvalidStatus as exc:
                assert exc.response.status_code == 429
                return False

        wait_for(another, timeout=30, what="the gateway to count a closed stream out")


def test_tokens_may_be_required_to_name_the_gateway(
    url: str, gateway: str, accounts: dict[str, Account], stack: Stack
) -> None:
    reader = accounts["reader"]

    def token(audience: str) -> str:
        minted = stack.kubectl(
            "create", "token", reader.name, "-n", reader.namespace,
            f"--audience={audience}", "--duration=10m", check=True,
        )  # fmt: skip
        return minted.stdout.strip()

    runs = runs_path(reader.namespace)
    for_the_gateway, for_another = token(AUDIENCE), token("someone-else")
    assert httpx.get(f"{url}{runs}", headers=bearer(for_the_gateway)).status_code == 200
    assert httpx.get(f"{url}{runs}", headers=bearer(for_another)).status_code == 401
    # The API server's own tokens, when its audience is one of those configured.
    assert httpx.get(f"{url}{runs}", headers=reader.headers).status_code == 200
    # A gateway with no audiences asks for the API server's: a token for the gateway
    # alone is refused there, as it would be by the API server itself.
    assert httpx.get(f"{gateway}{runs}", headers=bearer(for_the_gateway)).status_code == 401
