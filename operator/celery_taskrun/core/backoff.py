"""The poll schedule (pure): the seed's exponential backoff, per run overridable."""

from __future__ import annotations

from dataclasses import dataclass

from celery_taskrun.api.config import PollDefaults
from celery_taskrun.api.model import PollSpec


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.5
    factor: float = 1.5
    maximum: float = 5.0

    def interval(self, polls: int) -> float:
        """Seconds to wait after `polls` reads that saw no change."""
        if polls <= 0:
            return min(self.initial, self.maximum)
        # Past the cap the power only grows: stop computing it before it overflows.
        exponent = min(polls, 200)
        return min(self.initial * self.factor**exponent, self.maximum)


def backoff_for(spec: PollSpec | None, defaults: PollDefaults) -> Backoff:
    spec = spec or PollSpec()
    return Backoff(
        initial=spec.initialInterval or defaults.initialInterval,
        factor=spec.factor or defaults.factor,
        maximum=spec.maxInterval or defaults.maxInterval,
    )
