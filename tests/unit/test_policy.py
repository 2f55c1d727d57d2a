"""Who may run what: allowedTasks, policies per namespace, Celery's built-ins."""

from typing import Any

import pytest

from celery_taskrun.api.config import OperatorConfig
from celery_taskrun.core.policy import refusal

TEAMS = OperatorConfig.model_validate(
    {
        "policies": [
            {"namespaces": ["team-a", "team-a-*"], "tasks": ["a.*"], "queues": ["a", "celery"]},
            {"namespaces": ["ops"], "tasks": ["*", "celery.chord_unlock"]},
        ]
    }
)


@pytest.mark.parametrize(
    ("config", "namespace", "task", "queue", "words"),
    [
        # No policies: anything but the built-ins.
        (OperatorConfig(), "any", "x.y", None, None),
        (OperatorConfig(), "any", "celery.chain", None, "built-ins"),
        (OperatorConfig(), "any", "celery.group", "q", "built-ins"),
        # allowedTasks: a global shorthand.
        (OperatorConfig(allowedTasks=["ok.*"]), "any", "ok.a", None, None),
        (OperatorConfig(allowedTasks=["ok.*"]), "any", "no.a", None, "allowedTasks"),
        # Per namespace: task and queue both, the default queue when none is set.
        (TEAMS, "team-a", "a.run", None, None),
        (TEAMS, "team-a-dev", "a.run", "a", None),
        (TEAMS, "team-a", "b.run", None, "policies[0]"),
        (TEAMS, "team-a", "a.run", "b", "not allowed in namespace 'team-a'"),
        (TEAMS, "team-b", "a.run", None, "no policy covers namespace 'team-b'"),
        # `*` does not name the built-ins; a `celery.` pattern does.
        (TEAMS, "ops", "anything", "any-queue", None),
        (TEAMS, "ops", "celery.chain", None, "policies[1]"),
        (TEAMS, "ops", "celery.chord_unlock", None, None),
    ],
)
def test_refusal(
    config: OperatorConfig, namespace: str, task: str, queue: str | None, words: str | None
) -> None:
    why = refusal(config, namespace, task, queue)
    if words is None:
        assert why is None
    else:
        assert why is not None and words in why, why


def test_a_refusal_names_the_rule() -> None:
    why = refusal(TEAMS, "team-a", "a.run", "gpu")
    assert why == (
        "task 'a.run' on queue 'gpu' is not allowed in namespace 'team-a': policies[0] "
        "(namespaces ['team-a', 'team-a-*']) allows tasks ['a.*'] on queues ['a', 'celery']"
    )


@pytest.mark.parametrize(
    "policy",
    [
        {"namespaces": [], "tasks": ["*"]},
        {"namespaces": ["*"]},
        {"namespaces": ["*"], "tasks": ["*"], "x": 1},
    ],
)
def test_malformed_policies_are_refused(policy: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        OperatorConfig.model_validate({"policies": [policy]})
