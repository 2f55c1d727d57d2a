"""What to keep of finished runs: TTLs, history limits, never a GitOps-managed run."""

import pytest

from celery_taskrun.api.model import Phase
from celery_taskrun.core.retention import gitops_owner, history_key, ttl_for


@pytest.mark.parametrize(
    ("labels", "annotations", "owner"),
    [
        ({}, {}, None),
        ({"app.kubernetes.io/instance": "shop"}, {}, "Argo CD (or Helm)"),
        ({"kustomize.toolkit.fluxcd.io/name": "apps"}, {}, "Flux"),
        ({"helm.toolkit.fluxcd.io/name": "shop"}, {}, "Flux"),
        ({}, {"argocd.argoproj.io/tracking-id": "shop:celery.taskrun.dev/TaskRun:ns/x"}, "Argo CD"),
        ({"team": "a"}, {"note": "x"}, None),
    ],
)
def test_gitops_owner(
    labels: dict[str, str], annotations: dict[str, str], owner: str | None
) -> None:
    assert gitops_owner(labels, annotations) == owner


@pytest.mark.parametrize(
    ("own", "default", "owner", "ttl"),
    [
        (None, None, None, None),
        (None, 3600, None, 3600),
        (60, 3600, None, 60),
        (None, 3600, "Flux", None),  # deleting it would make Flux apply it, and run it, again
        (60, 3600, "Argo CD", 60),  # asked for explicitly
    ],
)
def test_ttl_for(own: int | None, default: int | None, owner: str | None, ttl: int | None) -> None:
    assert ttl_for(own, default, owner) == ttl


def test_history_counts_per_namespace_or_task_and_outcome() -> None:
    assert history_key("namespace", "ns", "t.a", Phase.SUCCEEDED) == ("ns", "", True)
    assert history_key("task", "ns", "t.a", Phase.TIMED_OUT) == ("ns", "t.a", False)
    # Per task, one namespace's runs never count in (so never delete) another's.
    assert history_key("task", "a", "t.a", Phase.SUCCEEDED) != history_key(
        "task", "b", "t.a", Phase.SUCCEEDED
    )
