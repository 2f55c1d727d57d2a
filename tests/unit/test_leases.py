"""Leader election, decided: Kubernetes' rules for a Lease."""

from datetime import UTC, datetime

import pytest

from celery_taskrun.core.leases import Act, LeaseView, held, leading, next_act

THEIRS = LeaseView(holder="other", duration=15, transitions=3, version="7")


@pytest.mark.parametrize(
    ("lease", "unchanged_for", "act"),
    [
        (None, 0, Act.CREATE),
        (LeaseView(holder="me", duration=15, transitions=0, version="1"), 0, Act.RENEW),
        (THEIRS, 0, Act.WAIT),
        (THEIRS, 14.9, Act.WAIT),  # renewed, as far as our clock can tell
        (THEIRS, 15, Act.TAKE),  # not renewed for a whole duration: expired
        (LeaseView(holder=None, duration=1, transitions=3, version="8"), 0, Act.TAKE),
    ],
)
def test_next_act(lease: LeaseView | None, unchanged_for: float, act: Act) -> None:
    assert next_act(lease, "me", unchanged_for) is act


@pytest.mark.parametrize(
    ("renewed_ago", "still"), [(None, False), (0.0, True), (9.9, True), (10.0, False)]
)
def test_a_leader_stops_at_its_renew_deadline(renewed_ago: float | None, still: bool) -> None:
    assert leading(renewed_ago, 10) is still


def test_taking_over_counts_a_transition() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    spec = held("me", 15, now, THEIRS, Act.TAKE)
    assert spec == {
        "holderIdentity": "me",
        "leaseDurationSeconds": 15,
        "renewTime": "2026-01-01T00:00:00.000000Z",
        "acquireTime": "2026-01-01T00:00:00.000000Z",
        "leaseTransitions": 4,
    }
    assert "acquireTime" not in held("me", 15, now, THEIRS, Act.RENEW)


def test_a_released_lease_reads_as_free() -> None:
    body = {"metadata": {"resourceVersion": "9"}, "spec": {"holderIdentity": ""}}
    assert LeaseView.of(body).holder is None
