"""Which status changes post an Event (the writer's policy, pure)."""

from __future__ import annotations

import pytest

from celery_taskrun.api.config import EventPolicy
from celery_taskrun.api.model import Phase
from celery_taskrun.engine.writer import posts_event

OUT, ALL = EventPolicy.OUTCOMES, EventPolicy.TRANSITIONS


@pytest.mark.parametrize(
    ("policy", "phase", "warning", "posted"),
    [
        (OUT, Phase.QUEUED, False, False),
        (OUT, Phase.RUNNING, False, False),
        (OUT, Phase.PENDING, True, True),  # e.g. the backend unavailable
        (OUT, Phase.SUCCEEDED, False, True),
        (OUT, Phase.FAILED, True, True),
        (ALL, Phase.QUEUED, False, True),
        (ALL, Phase.RUNNING, False, True),
        (ALL, Phase.SUCCEEDED, False, True),
    ],
)
def test_posts_event(policy: EventPolicy, phase: Phase, warning: bool, posted: bool) -> None:
    assert posts_event(policy, phase, warning) is posted
