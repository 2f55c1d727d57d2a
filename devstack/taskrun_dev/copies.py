"""Copies of deploy/ files that other install paths must hold, kept in sync by a test.

kustomize loads no file from outside a kustomization's own directory (its load
restrictor: `resources: [../../crd.yaml]` and a symlink out are both refused), and Helm
reads none from outside the chart.  So the kustomize base and components, and the chart's
monitoring files, hold copies of what deploy/ has, made here:

    python -m taskrun_dev.copies           # write every copy
    python -m taskrun_dev.copies --check   # exit 1, naming the copies that differ

A copy is a source file whole, or the documents of it whose (kind, name) it lists, in
the source's order with their comments.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SEPARATOR = re.compile(r"^---[ \t]*$", re.M)
BY = "python -m taskrun_dev.copies"


@dataclass(frozen=True)
class Copy:
    target: str
    source: str
    # (kind, metadata.name) of the documents to keep; empty keeps the whole file.
    documents: tuple[tuple[str, str], ...] = ()


# The demo Redis, and the Secret with its URLs.
REDIS = (
    ("Secret", "celery-taskrun-connection"),
    ("Deployment", "redis"),
    ("Service", "redis"),
)
WORKER = (("Deployment", "celery-taskrun-worker"),)
KUSTOMIZE = "deploy/kustomize"
CHART_FILES = "charts/celery-taskrun/files"
COPIES = (
    Copy(f"{KUSTOMIZE}/base/crd.yaml", "deploy/crd.yaml"),
    Copy(f"{KUSTOMIZE}/base/crontaskrun-crd.yaml", "deploy/crontaskrun-crd.yaml"),
    Copy(f"{KUSTOMIZE}/base/rbac.yaml", "deploy/rbac.yaml"),
    Copy(f"{KUSTOMIZE}/base/operator.yaml", "deploy/operator.yaml"),
    Copy(f"{KUSTOMIZE}/components/redis/redis.yaml", "deploy/worker.yaml", REDIS),
    Copy(f"{KUSTOMIZE}/components/worker/worker.yaml", "deploy/worker.yaml", WORKER),
    Copy(f"{CHART_FILES}/prometheusrule.yaml", "deploy/observability/prometheusrule.yaml"),
    Copy(f"{CHART_FILES}/grafana-dashboard.json", "deploy/observability/grafana-dashboard.json"),
)


class CopyError(Exception):
    """A source no longer has what a copy takes from it."""


def split(text: str) -> tuple[str, list[str]]:
    """(the comments before the first document, the documents' texts)."""
    parts = SEPARATOR.split(text)
    head = ""
    docs: list[str] = []
    for part in parts:
        loaded = yaml.safe_load(part)
        if loaded is None and not docs:
            head += part
        elif loaded is not None:
            docs.append(part.strip("\n") + "\n")
    return head, docs


def identity(doc: str) -> tuple[str, str]:
    loaded = yaml.safe_load(doc)
    return str(loaded.get("kind")), str(loaded.get("metadata", {}).get("name"))


def render(copy: Copy, repo: Path = REPO) -> str:
    text = (repo / copy.source).read_text()
    if copy.target.endswith(".json"):
        return text  # JSON has no comments to say where it came from
    banner = f"# Copied from {copy.source} by `{BY}`: do not edit.\n"
    if not copy.documents:
        return banner + text
    head, docs = split(text)
    kept = [doc for doc in docs if identity(doc) in copy.documents]
    missing = set(copy.documents) - {identity(doc) for doc in kept}
    if missing:
        raise CopyError(f"{copy.source} has no {sorted(missing)} for {copy.target}")
    return banner + head.rstrip("\n") + "\n---\n" + "---\n".join(kept)


def stale(repo: Path = REPO) -> list[str]:
    """Targets whose content differs from what `render` makes."""
    out = []
    for copy in COPIES:
        path = repo / copy.target
        if not path.is_file() or path.read_text() != render(copy, repo):
            out.append(copy.target)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=BY, description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report copies that differ")
    args = parser.parse_args(argv)
    if args.check:
        differ = stale()
        for target in differ:
            print(f"{target} differs from its source: run {BY}", file=sys.stderr)
        return 1 if differ else 0
    for copy in COPIES:
        path = REPO / copy.target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(copy))
    return 0


if __name__ == "__main__":
    sys.exit(main())
