"""What to keep of finished runs (pure): a TTL, and history limits as CronJob's.

A finished TaskRun costs etcd its size until it is deleted: the operator config can
give every run a default `ttlSecondsAfterFinished`, and keep only the newest N
succeeded and M failed runs of each namespace (or of each task).  Neither ever deletes
a TaskRun that Argo CD or Flux manages: they apply what the repository says again, and
a deleted run would be created, and so run, once more.
"""

from __future__ import annotations

from collections.abc import Mapping

from celery_taskrun.api.model import Phase

# Labels and annotations by which Argo CD and Flux mark what they apply.
GITOPS_LABELS = {
    "app.kubernetes.io/instance": "Argo CD (or Helm)",  # Argo CD's default tracking label
    "argocd.argoproj.io/instance": "Argo CD",
    "kustomize.toolkit.fluxcd.io/name": "Flux",
    "helm.toolkit.fluxcd.io/name": "Flux",
}
GITOPS_ANNOTATIONS = {"argocd.argoproj.io/tracking-id": "Argo CD"}


def gitops_owner(labels: Mapping[str, str], annotations: Mapping[str, str]) -> str | None:
    """Who re-applies this object from a repository, if anyone does."""
    for key, owner in GITOPS_LABELS.items():
        if key in labels:
            return owner
    for key, owner in GITOPS_ANNOTATIONS.items():
        if key in annotations:
            return owner
    return None


def ttl_for(own: int | None, default: int | None, owner: str | None) -> int | None:
    """The run's own TTL, or the default one unless a GitOps tool owns the run."""
    if own is not None:
        return own
    return None if owner else default


History = tuple[str, str, bool]  # (namespace, task or "", succeeded)


def history_key(per: str, namespace: str, task: str, phase: Phase) -> History:
    """The history a finished run counts in: its namespace's, or its task's within its
    namespace (one namespace's runs never delete another's), and whether it is the
    succeeded or the failed list."""
    return namespace, (task if per == "task" else ""), phase is Phase.SUCCEEDED


def history_limit(succeeded: int | None, failed: int | None, phase: Phase) -> int | None:
    """How many runs of a finished run's outcome its history keeps (None: all)."""
    return succeeded if phase is Phase.SUCCEEDED else failed
