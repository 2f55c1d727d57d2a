"""No URL with a password in any committed manifest, nor in what the chart and the
kustomize overlays render from them: connection URLs live in Secrets users create.

A URL's password may only be the documented placeholder `PASSWORD` (in comments that
show how to create the Secret).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from packaging_helpers import KUSTOMIZE, REPO, Render, by_kind, dump_all, load_all

from taskrun_dev.stack import Stack

# scheme://user:password@ (Celery's schemes: redis, rediss, amqp, amqps, pyamqp,
# db+postgresql, sqla+..., and any other).
CREDENTIAL = re.compile(r"\b[A-Za-z][\w+.-]*://[^\s:/@'\"]*:(?P<password>[^\s/@'\"]+)@")
PLACEHOLDER = "PASSWORD"
MANIFESTS = (".yaml", ".yml", ".json", ".tpl", ".txt", ".env", ".lua")


def credentials(text: str) -> list[str]:
    """The URLs with a real password in `text`."""
    return [m.group(0) for m in CREDENTIAL.finditer(text) if m["password"] != PLACEHOLDER]


def committed_manifests() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    ).stdout.split("\0")
    return [REPO / name for name in listed if name.endswith(MANIFESTS)]


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("CELERY_BROKER_URL: amqp://guest:guest@rabbitmq//", ["amqp://guest:guest@"]),
        ("url: 'db+postgresql://app:hunter2@db/results'", ["db+postgresql://app:hunter2@"]),
        ('"redis://:s3cr%40t@redis:6379/0"', ["redis://:s3cr%40t@"]),
        ("CELERY_BROKER_URL=rediss://default:x@cache:6380/0", ["rediss://default:x@"]),
        ("# amqp://app:PASSWORD@rabbitmq:5672//", []),
        ("redis://redis.celery-taskrun-system.svc:6379/0", []),
        ("db+postgresql://taskrun@127.0.0.1:5432/taskrun", []),
        ("http://prometheus-operated.monitoring.svc:9090", []),
    ],
)
def test_what_counts_as_a_credential(text: str, found: list[str]) -> None:
    assert credentials(text) == found


def test_no_committed_manifest_holds_a_password() -> None:
    files = committed_manifests()
    assert any(f.parts[-2:] == ("deploy", "operator.yaml") for f in files), "git ls-files failed"
    leaks = {
        str(f.relative_to(REPO)): found for f in files if (found := credentials(f.read_text()))
    }
    assert leaks == {}


def test_the_charts_defaults_render_no_url(render: Render) -> None:
    docs = render(
        include_crds=True, extra=["--set", "worker.enabled=true", "--set", "gateway.enabled=true"]
    )
    assert by_kind(docs, "Secret") == []
    assert credentials(dump_all(docs)) == []


@pytest.mark.e2e
@pytest.mark.parametrize("directory", ["base", "overlays/with-worker", "overlays/namespaced"])
def test_overlays_render_no_password(stack: Stack, directory: str) -> None:
    built = stack.kubectl("kustomize", str(KUSTOMIZE / directory), check=True).stdout
    assert load_all(built)
    assert credentials(built) == []
