"""Conditions from phase and reason (pure).

`Succeeded` and `Finished` serve `kubectl wait`; `Reconciling`, `Ready` and `Stalled`
follow kstatus, which Flux and Argo CD read: without `Stalled`, kstatus would take a
failed run for a healthy one.
"""

from __future__ import annotations

from typing import Literal

from celery_taskrun.api.model import Condition, Phase

ConditionStatus = Literal["True", "False", "Unknown"]
ALL_FIELDS = set(Condition.model_fields)


def desired(phase: Phase, reason: str) -> dict[str, tuple[ConditionStatus, str]]:
    """Each condition type -> (status, reason) for a run in `phase`."""
    if not phase.terminal:
        return {
            "Succeeded": ("Unknown", reason),
            "Finished": ("False", reason),
            "Reconciling": ("True", reason),
            "Ready": ("False", reason),
            "Stalled": ("False", reason),
        }
    succeeded = phase is Phase.SUCCEEDED
    return {
        "Succeeded": ("True" if succeeded else "False", reason),
        "Finished": ("True", reason),
        "Reconciling": ("False", reason),
        "Ready": ("True" if succeeded else "False", reason),
        "Stalled": ("False" if succeeded else "True", reason),
    }


def conditions_for(
    phase: Phase,
    reason: str,
    message: str,
    generation: int | None,
    previous: list[Condition] | None,
    now: str,
) -> list[Condition]:
    """The full condition list; a transition time moves only when a status flips."""
    before = {c.type: c for c in previous or []}
    out = []
    for kind, (status, why) in desired(phase, reason).items():
        old = before.get(kind)
        moved = old is None or old.status != status
        out.append(
            # Built, not validated: every value is ours.  Thousands of runs in flight
            # hold five each, so they share one set of field names (pydantic keeps one
            # per model, 728 bytes, most of a condition's memory); every field is set.
            Condition.model_construct(
                ALL_FIELDS,
                type=kind,
                status=status,
                reason=why,
                message=message,
                lastTransitionTime=now if moved or old is None else old.lastTransitionTime,
                observedGeneration=generation,
            )
        )
    return out
