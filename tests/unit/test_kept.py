"""The index of finished runs kept: history limits, TTLs, and entries taken from raw
bodies without decoding them whole."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from celery_taskrun.api.cron import CRON_LABEL
from celery_taskrun.api.model import FINALIZER, FINISHED_LABEL, Phase
from celery_taskrun.clients.kube import release_ops
from celery_taskrun.core.kept import Kept, KeptRun, finished_label, kept_of

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
NOW = T0 + 3600


def run(
    i: int,
    *,
    phase: Phase = Phase.SUCCEEDED,
    ttl: int | None = None,
    counted: bool = True,
    namespace: str = "ns",
    task: str = "t.a",
) -> KeptRun:
    return KeptRun(f"u{i}", namespace, f"r{i}", task, phase, T0 + i, ttl, counted)


def test_the_oldest_beyond_the_limit_go_whatever_order_they_come_in() -> None:
    kept = Kept("namespace", succeeded=2, failed=1)
    assert kept.keep(run(3)) == []
    assert kept.keep(run(1)) == []
    assert kept.keep(run(4)) == ["u1"]
    assert kept.keep(run(2)) == ["u2"]  # itself older than the two kept
    assert kept.keep(run(5)) == ["u3"]
    assert kept.where("u1") == ("ns", "r1")  # known until gone: a failed delete is retried
    kept.gone("u1")
    assert kept.where("u1") is None and len(kept) == 4


@pytest.mark.parametrize(
    ("per", "second", "beyond"),
    [
        ("namespace", run(2, phase=Phase.FAILED), []),  # the failed list is another history
        ("namespace", run(2, phase=Phase.TIMED_OUT), []),
        ("namespace", run(2, task="t.b"), ["u1"]),
        ("task", run(2, task="t.b"), []),
        ("namespace", run(2, namespace="other"), []),  # one namespace never deletes another's
        ("namespace", run(2, counted=False), []),  # GitOps applies it: never counted
        ("namespace", run(1), []),  # the same run again: nothing changes
    ],
)
def test_histories(per: str, second: KeptRun, beyond: list[str]) -> None:
    kept = Kept(per, succeeded=1, failed=1)
    assert kept.keep(run(1)) == []
    assert kept.keep(second) == beyond


def test_runs_finished_in_the_same_second_go_by_name_not_by_uid() -> None:
    """completedAt has whole seconds: a tie is broken by name (a uid is random)."""
    kept = Kept("namespace", succeeded=1, failed=1)
    later = KeptRun("u-a", "ns", "run-2", "t.a", Phase.SUCCEEDED, T0, None, True)
    earlier = KeptRun("u-z", "ns", "run-1", "t.a", Phase.SUCCEEDED, T0, None, True)
    assert kept.keep(later) == []
    assert kept.keep(earlier) == ["u-z"]


def test_no_limit_keeps_everything() -> None:
    kept = Kept("namespace", succeeded=None, failed=0)
    assert [kept.keep(run(i)) for i in range(3)] == [[], [], []]
    assert kept.keep(run(9, phase=Phase.REVOKED)) == ["u9"]  # a limit of 0 keeps none


def test_a_run_gone_leaves_its_place_in_the_history() -> None:
    kept = Kept("namespace", succeeded=2, failed=1)
    kept.keep(run(1))
    kept.keep(run(2))
    kept.gone("u1")  # deleted by someone else
    assert kept.keep(run(3)) == []
    assert kept.keep(run(4)) == ["u2"]


def test_ttls_one_heap_for_all() -> None:
    kept = Kept("namespace", succeeded=None, failed=None)
    assert kept.next_due() is None
    kept.keep(run(5, ttl=100))
    kept.keep(run(1, ttl=10))
    kept.keep(run(2))  # no TTL
    kept.keep(run(3, ttl=50))
    assert kept.next_due() == T0 + 11
    assert kept.due(T0 + 10.9) == []
    assert kept.due(T0 + 53) == ["u1", "u3"]
    assert kept.due(T0 + 53) == []  # each once
    assert kept.where("u3") == ("ns", "r3")  # still known until gone
    kept.gone("u5")
    assert kept.next_due() is None  # a run gone takes its TTL with it
    assert kept.due(T0 + 1000) == []


def test_runs_gone_before_their_ttl_do_not_pile_up() -> None:
    kept = Kept("namespace", succeeded=1, failed=1)
    for i in range(1000):
        for uid in kept.keep(run(i, ttl=86400)):
            kept.gone(uid)
    assert len(kept) == 1
    assert len(kept._ttls) <= 2 * len(kept) + 65


def test_clear() -> None:
    kept = Kept("namespace", succeeded=1, failed=1)
    kept.keep(run(1, ttl=5))
    kept.clear()
    assert len(kept) == 0 and kept.next_due() is None and kept.keep(run(2)) == []


def body(**changes: Any) -> dict[str, Any]:
    """A finished TaskRun as the API server lists it; `changes` by dotted path (None:
    removed)."""
    obj: dict[str, Any] = {
        "metadata": {"uid": "u1", "namespace": "ns", "name": "r1", "finalizers": ["x/y"]},
        "spec": {"task": "t.a", "args": [1]},
        "status": {"phase": "Succeeded", "completedAt": "2026-01-01T00:00:07Z", "result": 2},
    }
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        target = obj
        for key in parents:
            target = target[key]
        if value is None:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return obj


PLAIN = KeptRun("u1", "ns", "r1", "t.a", Phase.SUCCEEDED, T0 + 7, 60, True)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, PLAIN),
        ({"status__phase": "TimedOut"}, replace(PLAIN, phase=Phase.TIMED_OUT)),
        ({"spec__ttlSecondsAfterFinished": 5}, replace(PLAIN, ttl=5)),
        ({"status__completedAt": None}, replace(PLAIN, completed=NOW)),
        ({"status__completedAt": "yesterday"}, replace(PLAIN, completed=NOW)),
        (
            {"metadata__labels": {"kustomize.toolkit.fluxcd.io/name": "apps"}},
            replace(PLAIN, ttl=None, counted=False),
        ),
        # Not plainly finished, or not well-formed where read: the full path decides.
        ({"status__phase": "Running"}, None),
        ({"status__phase": ["Succeeded"]}, None),
        ({"status": None}, None),
        ({"status": "Succeeded"}, None),
        ({"metadata__finalizers": [FINALIZER]}, None),  # ours still to remove
        ({"metadata__finalizers": "x"}, None),
        ({"metadata__deletionTimestamp": "2026-01-01T00:00:09Z"}, None),
        ({"spec__task": 7}, None),
        ({"spec__task": ""}, None),
        ({"spec__ttlSecondsAfterFinished": "60"}, None),
        ({"spec__ttlSecondsAfterFinished": True}, None),
        ({"metadata__uid": None}, None),
        ({"metadata__labels": ["a"]}, None),
        ({"spec": []}, None),
    ],
)
def test_kept_of_a_raw_body(changes: dict[str, Any], expected: KeptRun | None) -> None:
    assert kept_of(body(**changes), 60, NOW) == expected


@pytest.mark.parametrize(
    ("labels", "phase", "wanted"),
    [
        ({}, Phase.SUCCEEDED, (FINISHED_LABEL, "Succeeded")),
        ({"team": "a"}, Phase.FAILED, (FINISHED_LABEL, "Failed")),
        ({FINISHED_LABEL: "Succeeded"}, Phase.SUCCEEDED, None),  # has it
        ({FINISHED_LABEL: "Failed"}, Phase.SUCCEEDED, (FINISHED_LABEL, "Succeeded")),
        ({CRON_LABEL: "nightly"}, Phase.SUCCEEDED, None),  # its schedule follows it
    ],
)
def test_the_label_a_finished_run_is_to_carry(
    labels: dict[str, str], phase: Phase, wanted: tuple[str, str] | None
) -> None:
    assert finished_label(labels, phase) == wanted


LABEL = (FINISHED_LABEL, "Succeeded")
UID = {"op": "test", "path": "/metadata/uid", "value": "u"}
OFF = [
    {"op": "test", "path": "/metadata/finalizers/1", "value": FINALIZER},
    {"op": "remove", "path": "/metadata/finalizers/1"},
]
KEY = "/metadata/labels/" + FINISHED_LABEL.replace("/", "~1")


@pytest.mark.parametrize(
    ("meta", "label", "wanted"),
    [
        # finalizer off, label added to the labels there are
        (
            {"uid": "u", "finalizers": ["x", FINALIZER], "labels": {"a": "b"}},
            LABEL,
            [UID, *OFF, {"op": "add", "path": KEY, "value": "Succeeded"}],
        ),
        # no labels seen: the map is tested absent, then made
        (
            {"uid": "u", "finalizers": ["x", FINALIZER]},
            LABEL,
            [
                UID,
                *OFF,
                {"op": "test", "path": "/metadata/labels", "value": None},
                {"op": "add", "path": "/metadata/labels", "value": {LABEL[0]: LABEL[1]}},
            ],
        ),
        ({"uid": "u", "finalizers": ["x", FINALIZER]}, None, [UID, *OFF]),  # no label
        ({"uid": "u", "labels": {LABEL[0]: LABEL[1]}}, LABEL, []),  # nothing to change
        ({"uid": "u", "finalizers": ["x"]}, None, []),
    ],
)
def test_release_ops(meta: dict[str, Any], label: tuple[str, str] | None, wanted: Any) -> None:
    assert release_ops(meta, FINALIZER, label) == wanted
