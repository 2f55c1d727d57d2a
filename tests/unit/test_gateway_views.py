"""The gateway's pure parts (views, errors, tokens, caches, reviews), and the app
in-process against an API server that is not there: a 5xx never says more than that."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from celery_taskrun.api.model import Phase
from celery_taskrun.clients.apiserver import ApiServer, Bearer, Endpoint
from celery_taskrun.clients.errors import KubeError
from celery_taskrun.gateway import views
from celery_taskrun.gateway.admission import MAX_BODY_BYTES
from celery_taskrun.gateway.app import create_app
from celery_taskrun.gateway.auth import (
    Caller,
    TtlCache,
    Verb,
    access_review,
    bearer_token,
    caller_from_review,
    protocol_token,
)
from celery_taskrun.gateway.followers import Followers, TooBusy, TooMany
from taskrun_dev.processes import free_port

CREATED = "2026-01-01T00:00:00Z"
OBJ = {
    "metadata": {"name": "r", "namespace": "ns", "uid": "u", "creationTimestamp": CREATED},
    "spec": {"task": "t.add", "args": [1]},
    "status": {
        "phase": "Failed",
        "reason": "TaskError",
        "message": "m" * 1000,
        "error": {"type": "E", "message": "boom" * 100, "traceback": "T" * 5000},
        "result": None,
        # A status claiming identity keys must not override the object's own.
        "name": "forged",
        "finished": False,
    },
}  # fmt: skip


def test_run_view_has_the_status_flat_and_nested() -> None:
    view = views.run_view(OBJ)
    assert (view["name"], view["namespace"], view["task"], view["uid"]) == ("r", "ns", "t.add", "u")
    assert view["finished"] is True
    assert view["phase"] == view["status"]["phase"] == "Failed"
    assert view["error"]["traceback"] == "T" * 5000
    assert view["spec"] == {"task": "t.add", "args": [1]}
    assert views.RunView.model_validate(view).finished is True


def test_a_run_without_status_has_every_field() -> None:
    view = views.run_view({"metadata": {"name": "r", "namespace": "ns"}, "spec": "junk"})
    assert view["phase"] is None and view["result"] is None and view["status"] == {}
    assert view["finished"] is False and view["spec"] == {}


def test_summaries_are_small() -> None:
    summary = views.summary(OBJ)
    assert (summary["name"], summary["phase"], summary["finished"]) == ("r", "Failed", True)
    assert "result" not in summary and "traceback" not in summary["error"]
    assert len(summary["message"]) == len(summary["error"]["message"]) == views.SUMMARY_TEXT
    assert len(json.dumps(summary)) < 2000


@pytest.mark.parametrize(
    ("phases", "task", "match"),
    [
        ((), None, True),
        ((Phase.FAILED,), None, True),
        ((Phase.SUCCEEDED, Phase.RUNNING), None, False),
        ((), "t.add", True),
        ((), "t.*", True),
        ((), "*.sub", False),
        ((Phase.FAILED,), "x", False),
    ],
)
def test_list_filters(phases: tuple[Phase, ...], task: str | None, match: bool) -> None:
    assert views.matches(OBJ, phases, task) is match


@pytest.mark.parametrize(
    ("status", "http", "leaks"),
    [
        (404, 404, True),
        (409, 409, True),
        (422, 422, True),
        (400, 422, True),
        (410, 410, False),
        (413, 413, False),
        (0, 503, False),
        (429, 503, False),
        (500, 503, False),
        (503, 503, False),
        (401, 502, False),
        (403, 502, False),
    ],
)
def test_api_server_refusals_as_http(status: int, http: int, leaks: bool) -> None:
    code, detail = views.http_error(KubeError(status, "Reason", "secret internals"))
    assert code == http
    # What the caller sent may be explained; the gateway's own trouble is not.
    assert ("secret internals" in json.dumps(detail)) is leaks


def test_submit_request_is_the_spec_plus_a_name() -> None:
    request = views.SubmitRequest.model_validate({"task": "t", "args": [1], "name": "a.b-c"})
    assert request.spec() == {"task": "t", "args": [1]}
    assert request.name == "a.b-c"
    assert views.SubmitRequest.model_validate({"task": "t", "queue": None}).spec() == {"task": "t"}
    nested = {"task": "t", "poll": {"initialInterval": 1}, "sizeBasedLimits": {"inputBytes": 1}}
    assert views.SubmitRequest.model_validate(nested).spec() == nested


@pytest.mark.parametrize(
    "body",
    [
        {"task": "t", "timelimit": 1},
        {"task": "t", "name": "Upper"},
        {"task": "t", "name": "-x"},
        {"task": "t", "name": "x" * 254},
        {"task": "t", "softTimeLimit": 0},
        {"args": []},
        # Nested fields are checked as the top level's: a misspelt one must not vanish.
        {"task": "t", "poll": {"initalInterval": 1}},
        {"task": "t", "sizeBasedLimits": {"inputBytes": 1, "secondsPerMb": 60}},
    ],
)
def test_submit_request_refuses(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        views.SubmitRequest.model_validate(body)


def _protocol(token: str) -> str:
    encoded = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
    return f"base64url.bearer.authorization.k8s.io.{encoded}"


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc.def", "abc.def"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("", None),
        (None, None),
        ("Bearer " + "x" * 20000, None),
    ],
)
def test_bearer_tokens(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    ("protocols", "token"),
    [
        (["taskrun.v1", _protocol("abc.def-g_h")], "abc.def-g_h"),
        (["taskrun.v1"], None),
        ([], None),
        (["base64url.bearer.authorization.k8s.io.!!!"], None),
        (["base64url.bearer.authorization.k8s.io." + "A" * 40000], None),
        ([_protocol("")], None),
    ],
)
def test_websocket_tokens(protocols: list[str], token: str | None) -> None:
    assert protocol_token(protocols) == token


def test_ttl_cache_expires_and_is_bounded() -> None:
    cache: TtlCache[str, int] = TtlCache(ttl=5, size=2)
    cache.put("a", 1, now=0)
    assert cache.get("a", now=4.9) == 1
    assert cache.get("a", now=5) is None
    cache.put("a", 1, now=10)
    cache.put("b", 2, now=10)
    cache.get("a", now=11)  # a is now the most recent
    cache.put("c", 3, now=11)
    assert (cache.get("a", 11), cache.get("b", 11), cache.get("c", 11)) == (1, None, 3)


def test_access_review_asks_about_taskruns_in_the_namespace() -> None:
    caller = Caller("system:serviceaccount:ns:app", "uid-1", ("g1",), (("k", ("v",)),))
    review = access_review(caller, Verb.PATCH, "ns", "r")
    assert review["spec"] == {
        "user": "system:serviceaccount:ns:app",
        "uid": "uid-1",
        "groups": ["g1"],
        "extra": {"k": ["v"]},
        "resourceAttributes": {
            "namespace": "ns",
            "verb": "patch",
            "group": "celery.taskrun.dev",
            "resource": "taskruns",
            "name": "r",
        },
    }
    assert (
        "name"
        not in access_review(Caller("u"), Verb.LIST, "ns", None)["spec"]["resourceAttributes"]
    )


def test_caller_from_review() -> None:
    user = {"username": "u", "uid": None, "groups": ["a"], "extra": {"x": ["1", "2"]}}
    status = {"authenticated": True, "user": user}
    assert caller_from_review(status) == Caller("u", "", ("a",), (("x", ("1", "2")),))
    assert caller_from_review({"authenticated": False, "user": user}) is None
    assert caller_from_review(None) is None


@pytest.mark.parametrize(
    "status",
    [
        [],
        "yes",
        {"authenticated": "true", "user": {"username": "u"}},
        {"authenticated": True, "user": "u"},
        {"authenticated": True},
    ],
)
def test_a_review_status_out_of_shape_authenticates_no_one(status: Any) -> None:
    assert caller_from_review(status) is None


def test_a_review_status_with_odd_fields_keeps_only_strings() -> None:
    user = {"username": "u", "groups": "a,b", "extra": ["x"]}
    assert caller_from_review({"authenticated": True, "user": user}) == Caller("u")


@pytest.mark.parametrize(
    ("granted", "asked", "accepted"),
    [
        (None, [], True),
        (["gw"], ["gw", "api"], True),
        (["other"], ["gw"], False),
        # An authenticator blind to audiences grants none: the API server's token.
        (None, ["gw"], False),
        ([], ["gw"], False),
    ],
)
def test_callers_token_must_be_for_an_audience_asked(
    granted: list[str] | None, asked: list[str], accepted: bool
) -> None:
    user = {"username": "u", "uid": None, "groups": None, "extra": None}
    status = {"authenticated": True, "user": user, "audiences": granted}
    assert (caller_from_review(status, asked) is not None) is accepted


def test_followers_are_bounded_in_all_and_per_caller() -> None:
    followers = Followers(limit=3, per_caller=2)
    alice, bob, carol = Caller("alice"), Caller("bob"), Caller("carol")
    with contextlib.ExitStack() as held:
        for who in (alice, alice, bob):
            held.enter_context(followers.hold(who))
        with pytest.raises(TooMany, match="alice has 2 waits and streams open"):
            held.enter_context(followers.hold(alice))
        with pytest.raises(TooBusy):
            held.enter_context(followers.hold(carol))
        assert (TooMany.status, TooBusy.status) == (429, 503)
    assert (followers.open, dict(followers.by_caller)) == (0, {})
    with followers.hold(alice):
        assert followers.by_caller == {"alice": 1}


# -- the app, with an API server that does not answer -------------------------------


@pytest.fixture
def app_without_api() -> Iterator[TestClient]:
    async def connector() -> ApiServer:
        nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens
        return ApiServer(Endpoint(nowhere, None, Bearer("the-gateways-own-token"), "default"))

    with TestClient(create_app(connector)) as test_client:
        yield test_client


def test_unavailable_api_is_a_bare_503(app_without_api: TestClient) -> None:
    runs = "/api/v1/namespaces/ns/taskruns"
    headers = {"Authorization": "Bearer someone"}
    for method, path in [("GET", runs), ("GET", f"{runs}/r/wait"), ("POST", f"{runs}/r/cancel")]:
        response = app_without_api.request(method, path, headers=headers)
        assert response.status_code == 503
        assert response.json() == {"detail": "credentials cannot be checked now; try again"}
        assert "127.0.0.1" not in response.text and "the-gateways-own-token" not in response.text


def test_refusals_before_any_api_call(app_without_api: TestClient) -> None:
    runs = "/api/v1/namespaces/ns/taskruns"
    assert app_without_api.get(runs).status_code == 401
    # No token: refused before the body, whatever its size (413 is for callers).
    too_big = app_without_api.post(runs, content=b"x" * (MAX_BODY_BYTES + 1))
    assert (too_big.status_code, too_big.headers["connection"]) == (401, "close")
    # Without a token, a malformed namespace is refused for the token first.
    assert app_without_api.get("/api/v1/namespaces/Not_Valid/taskruns").status_code == 401
    assert app_without_api.get("/healthz").json() == {"ok": True}


def test_page_and_schema_are_served(app_without_api: TestClient) -> None:
    page = app_without_api.get("/")
    assert page.status_code == 200
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert app_without_api.get("/static/app.js").headers["x-content-type-options"] == "nosniff"
    schema = app_without_api.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    paths = set(schema["paths"])
    assert paths == {
        "/api/v1/namespaces/{namespace}/taskruns",
        "/api/v1/namespaces/{namespace}/taskruns/{name}",
        "/api/v1/namespaces/{namespace}/taskruns/{name}/wait",
        "/api/v1/namespaces/{namespace}/taskruns/{name}/cancel",
        "/api/v1/namespaces/{namespace}/crontaskruns",
    }


@pytest.mark.parametrize(
    ("obj", "shown"),
    [
        (
            {
                "metadata": {"name": "nightly", "namespace": "a"},
                "spec": {"schedule": "0 2 * * *", "timeZone": "Europe/Berlin",
                         "taskRunTemplate": {"spec": {"task": "reports.build"}}},
                "status": {"nextScheduleTime": "2026-12-07T01:00:00Z", "active": [{"name": "x"}],
                           "conditions": [{"type": "Ready", "status": "True"}]},
            },
            {"task": "reports.build", "schedule": "0 2 * * *", "timeZone": "Europe/Berlin",
             "active": 1, "ready": "True", "nextScheduleTime": "2026-12-07T01:00:00Z"},
        ),
        (  # whatever anyone wrote into its status
            {"metadata": {"name": "odd"}, "spec": {"schedule": "s" * 10_000, "taskRunTemplate": 7},
             "status": {"active": "many", "conditions": {"Ready": True}}},
            {"task": None, "timeZone": "UTC", "active": 0, "ready": None, "suspend": False},
        ),
        ({"metadata": {"name": "bare"}, "spec": None, "status": []}, {"active": 0, "task": None}),
    ],
)  # fmt: skip
def test_a_schedules_summary_is_small_whatever_it_holds(
    obj: dict[str, Any], shown: dict[str, Any]
) -> None:
    summary = views.schedule_summary(obj)
    assert {key: summary[key] for key in shown} == shown
    assert len(json.dumps(summary)) < 2000
