"""The poll schedule: the seed's 0.5 s, x1.5, capped at 5 s, and per-run overrides."""

import pytest

from celery_taskrun.api.config import PollDefaults
from celery_taskrun.api.model import PollSpec
from celery_taskrun.core.backoff import Backoff, backoff_for


@pytest.mark.parametrize(
    ("polls", "seconds"),
    [
        (0, 0.5),
        (1, 0.75),
        (2, 1.125),
        (3, 1.6875),
        (5, 3.796875),
        (6, 5.0),
        (50, 5.0),
        (10**6, 5.0),
    ],
)
def test_seed_schedule(polls: int, seconds: float) -> None:
    assert Backoff().interval(polls) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, Backoff(0.5, 1.5, 5.0)),
        (PollSpec(initialInterval=0.1), Backoff(0.1, 1.5, 5.0)),
        (PollSpec(factor=2, maxInterval=30), Backoff(0.5, 2, 30)),
        (PollSpec(initialInterval=2, factor=1, maxInterval=2), Backoff(2, 1, 2)),
    ],
)
def test_spec_overrides_defaults(spec: PollSpec | None, expected: Backoff) -> None:
    assert backoff_for(spec, PollDefaults()) == expected


def test_initial_above_cap_is_capped() -> None:
    assert Backoff(initial=10, factor=2, maximum=3).interval(0) == 3
