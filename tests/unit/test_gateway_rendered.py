"""A run's version is rendered once for all the waits it answers, as JSONResponse would."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from celery_taskrun.gateway import views
from celery_taskrun.gateway.state import Rendered


def run(version: str, result: Any = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": "r", "namespace": "ns", "resourceVersion": version},
        "spec": {"task": "t", "args": ["é"]},
        "status": {"phase": "Succeeded", "result": result},
    }


def test_the_same_bytes_and_headers_as_a_json_response() -> None:
    obj = run("1")
    wanted = JSONResponse(views.run_view(obj))
    answer = Rendered().answer(obj)
    assert answer.body == wanted.body
    assert answer.headers.items() == wanted.headers.items()


def test_one_rendering_per_object_and_a_bounded_memory() -> None:
    rendered = Rendered(size=2)
    first = run("1")
    assert rendered.answer(first).body == rendered.answer(first).body
    assert len(rendered._items) == 1
    later = run("2", result=2)
    assert b'"result":2' in rendered.answer(later).body
    rendered.answer(run("3"))
    assert len(rendered._items) == 2
    # An equal object that is not the same one is rendered anew, never mistaken.
    assert rendered.answer(run("1", result=3)).body != rendered.answer(first).body
