"""The limits a run gets (pure): spec + config -> each effective limit and its source.

Every limit follows one precedence: the TaskRun's spec, then its `sizeBasedLimits`
(time limits only), then the per-task-name default, then the global default.
`status.limits` records each value and where it came from.
"""

from __future__ import annotations

from celery_taskrun.api.config import LimitDefaults, OperatorConfig
from celery_taskrun.api.model import EffectiveLimit, EffectiveLimits, LimitSource, TaskRunSpec

MIB = 1024 * 1024


def size_based_time_limits(spec: TaskRunSpec) -> tuple[float, float] | None:
    """The seed's dynamic timeout: 1 minute per MiB, at least 60 s, at most 3600 s."""
    sized = spec.sizeBasedLimits
    if sized is None:
        return None
    hard = sized.inputBytes / MIB * sized.secondsPerMiB
    hard = max(sized.minSeconds, min(hard, sized.maxSeconds))
    return hard, round(hard * sized.softLimitRatio, 3)


def effective_limits(spec: TaskRunSpec, config: OperatorConfig) -> EffectiveLimits:
    sized = size_based_time_limits(spec)
    layers: list[tuple[LimitSource, LimitDefaults | None]] = [
        ("taskDefault", config.task_defaults(spec.task)),
        ("globalDefault", config.defaults),
    ]

    def pick(name: str, own: float | None, from_size: float | None) -> EffectiveLimit | None:
        if own is not None:
            return EffectiveLimit(seconds=own, source="spec")
        if from_size is not None:
            return EffectiveLimit(seconds=from_size, source="sizeBasedLimits")
        for source, layer in layers:
            value = getattr(layer, name) if layer is not None else None
            if value is not None:
                return EffectiveLimit(seconds=value, source=source)
        return None

    return EffectiveLimits(
        timeLimit=pick("timeLimit", spec.timeLimit, sized[0] if sized else None),
        softTimeLimit=pick("softTimeLimit", spec.softTimeLimit, sized[1] if sized else None),
        timeout=pick("timeout", spec.timeout, None),
        expires=pick("expires", spec.expires, None),
    )
