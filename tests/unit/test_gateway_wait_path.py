"""Which requests the wait's short path takes (wait_path.py): only those the FastAPI
route would take as they are, with the same namespace, name and seconds; the rest go
on to the route, which refuses them in its own words."""

from __future__ import annotations

import pytest

from celery_taskrun.gateway.wait_path import (
    DEFAULT_WAIT_SECONDS,
    MAX_WAIT_SECONDS,
    WaitRequest,
    wait_request,
)

WAIT = "/api/v1/namespaces/ns/taskruns/r/wait"


@pytest.mark.parametrize(
    ("method", "path", "query", "taken"),
    [
        ("GET", WAIT, b"", WaitRequest("ns", "r", DEFAULT_WAIT_SECONDS)),
        ("GET", WAIT, b"timeout=600", WaitRequest("ns", "r", 600.0)),
        ("GET", WAIT, b"timeout=0", WaitRequest("ns", "r", 0.0)),
        ("GET", WAIT, b"timeout=2.5&other=x", WaitRequest("ns", "r", 2.5)),
        ("GET", WAIT, b"timeout=3600", WaitRequest("ns", "r", MAX_WAIT_SECONDS)),
        (
            "GET",
            "/api/v1/namespaces/a-b/taskruns/x.y-z/wait",
            b"%74imeout=1",
            WaitRequest("a-b", "x.y-z", 1.0),
        ),
        # Not a wait.
        ("POST", WAIT, b"", None),
        ("HEAD", WAIT, b"", None),
        ("GET", "/api/v1/namespaces/ns/taskruns/r", b"", None),
        ("GET", WAIT + "/", b"", None),
        ("GET", "/api/v1/namespaces/ns/taskruns/r/wait/x/wait", b"", None),
        # The route's 422s (or its own reading of the number): the route answers.
        ("GET", "/api/v1/namespaces/NS/taskruns/r/wait", b"", None),
        ("GET", "/api/v1/namespaces/ns/taskruns/-r/wait", b"", None),
        ("GET", "/api/v1/namespaces/ns/taskruns/r\n/wait", b"", None),
        ("GET", f"/api/v1/namespaces/{'n' * 64}/taskruns/r/wait", b"", None),
        ("GET", f"/api/v1/namespaces/ns/taskruns/{'r' * 254}/wait", b"", None),
        ("GET", WAIT, b"timeout=3600.5", None),
        ("GET", WAIT, b"timeout=-1", None),
        ("GET", WAIT, b"timeout=", None),
        ("GET", WAIT, b"timeout=1e2", None),
        ("GET", WAIT, b"timeout=inf", None),
        ("GET", WAIT, b"timeout=nan", None),
        ("GET", WAIT, b"timeout=+5", None),
        ("GET", WAIT, b"timeout=%205", None),
        ("GET", WAIT, b"timeout=1&timeout=2", None),
        ("GET", WAIT, b"timeout=" + b"9" * 11, None),
    ],
)
def test_the_short_path_takes_only_what_the_route_takes_as_is(
    method: str, path: str, query: bytes, taken: WaitRequest | None
) -> None:
    assert wait_request(method, path, query) == taken
