"""Helpers of the packaging tests: the repo's paths, the helm binary, manifests."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.metrics import MetricWrapperBase

from celery_taskrun.engine import metrics
from taskrun_dev.stack import Stack

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHART = REPO / "charts" / "celery-taskrun"
HELM_MODULE = REPO / "devstack" / "tools" / "helm"
PROMTOOL_BUILD = REPO / "devstack" / "tools" / "promtool" / "build.sh"
# Other projects' CRDs (KEDA, Flux, prometheus-operator), from their Go modules.
CRDS_FETCH = REPO / "devstack" / "tools" / "crds" / "fetch.sh"
KUSTOMIZE = DEPLOY / "kustomize"
README = REPO / "README.md"
OBSERVABILITY = DEPLOY / "observability"
DOCKERFILE = REPO / "Dockerfile"
# Building helm is opt-in: a cold build takes about 6 minutes on 2 cores.
BUILD_ENV = "TASKRUN_BUILD_HELM"

Manifest = dict[str, Any]
Completed = subprocess.CompletedProcess[str]
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
# render(values=None, *, namespace=..., release=..., include_crds=False) -> manifests
Render = Callable[..., list[Manifest]]


def helm_version() -> str:
    go_mod = (HELM_MODULE / "go.mod").read_text()
    match = re.search(r"^require\s+helm\.sh/helm/v\d+\s+(v\S+)", go_mod, re.M)
    assert match, f"{HELM_MODULE}/go.mod requires no helm"
    return match.group(1)


def cached_helm() -> Path:
    """Where devstack/tools/helm/build.sh puts the binary."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "celery-taskrun" / "tools" / f"helm-{helm_version()}" / "helm"


def find_helm() -> tuple[Path | None, str]:
    """(the helm binary, or None and why not).  $HELM wins, then the build cache."""
    explicit = os.environ.get("HELM")
    if explicit:
        path = Path(explicit)
        if os.access(path, os.X_OK):
            return path, ""
        return None, f"HELM={explicit} is not an executable"
    cached = cached_helm()
    if os.access(cached, os.X_OK):
        return cached, ""
    if os.environ.get(BUILD_ENV) == "1":
        built = subprocess.run(
            [str(HELM_MODULE / "build.sh")], capture_output=True, text=True, timeout=3600
        )
        if built.returncode == 0:
            return Path(built.stdout.strip().splitlines()[-1]), ""
        return None, f"devstack/tools/helm/build.sh failed:\n{built.stderr[-3000:]}"
    return None, (
        f"helm {helm_version()} is not built: run devstack/tools/helm/build.sh (about 6 "
        f"minutes cold on 2 cores, cached in {cached.parent}), set {BUILD_ENV}=1 to build "
        "it from the tests, or point HELM at a helm binary"
    )


def load_all(text: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def dump_all(docs: Iterable[Manifest]) -> str:
    return yaml.safe_dump_all(list(docs), sort_keys=False)


def by_kind(docs: Iterable[Manifest], kind: str) -> list[Manifest]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: Iterable[Manifest], kind: str, name_suffix: str = "") -> Manifest:
    found = [d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} *{name_suffix}, got {len(found)}"
    return found[0]


AGGREGATE_TO = "rbac.authorization.k8s.io/aggregate-to-"


def aggregated(docs: Iterable[Manifest]) -> list[Manifest]:
    """People's ClusterRoles: those Kubernetes' view, edit and admin roles aggregate."""
    return [
        doc
        for doc in by_kind(docs, "ClusterRole")
        if any(label.startswith(AGGREGATE_TO) for label in doc["metadata"].get("labels", {}))
    ]


def operator_role(docs: Iterable[Manifest]) -> Manifest:
    """The one ClusterRole of the operator's (not a person's)."""
    docs = list(docs)
    people = aggregated(docs)
    (role,) = [doc for doc in by_kind(docs, "ClusterRole") if doc not in people]
    return role


def rule_set(rules: Iterable[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """RBAC rules flattened to (apiGroup, resource, verb) for comparison."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


def pod_from(workload: Manifest, namespace: str) -> Manifest:
    """A bare Pod of a workload's template: Pod Security admission enforces on Pods."""
    template = workload["spec"]["template"]
    name = f"{workload['metadata']['name']}-pod"[:63]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": template["metadata"].get("labels", {}),
        },
        "spec": template["spec"],
    }


def run_helm(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result


def serve_crds(stack: Stack, files: Iterable[Path]) -> None:
    """Install CRDs into the stack's API server and wait until each is served."""
    files = list(files)
    args = [a for f in files for a in ("-f", str(f))]
    stack.kubectl("apply", "--server-side", *args, check=True)
    names = [f"crd/{load_all(f.read_text())[0]['metadata']['name']}" for f in files]
    stack.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names, check=True)


def server_side_apply(stack: Stack, docs: list[Manifest]) -> Completed:
    """`kubectl apply --server-side --dry-run=server`: the API server decodes, defaults
    and validates each object (against its CRD's schema, for custom resources) and runs
    admission, persisting nothing.  Fails with kubectl's message and the manifests."""
    args = ["apply", "--server-side", "--dry-run=server", "-f", "-"]
    result = stack.kubectl(*args, input=dump_all(docs))
    assert result.returncode == 0, f"{result.stderr}\n---\n{dump_all(docs)}"
    return result


def readme_yaml(section: str, index: int = 0) -> Manifest:
    """The YAML block `index` (the first by default) of a section (`## section`) of the
    README, parsed."""
    body = README.read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    block = body.split("```yaml\n")[1 + index].split("```", 1)[0]
    loaded: Manifest = yaml.safe_load(block)
    return loaded


def build_beside_repo(
    stack: Stack, folder: Path, kustomization: Manifest, files: Mapping[str, str] = {}
) -> list[Manifest]:
    """`kubectl kustomize` of a user's kustomization whose paths start with
    ../celery-taskrun/, as the README's do: laid out in `folder`, that name linking here,
    with `files` (name: text) beside it."""
    (folder / "celery-taskrun").symlink_to(REPO)
    (folder / "mine").mkdir()
    (folder / "mine" / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    for name, text in files.items():
        (folder / "mine" / name).write_text(text)
    return load_all(stack.kubectl("kustomize", str(folder / "mine"), check=True).stdout)


# -- metrics and PromQL ------------------------------------------------------------------


def defined_metrics() -> set[str]:
    """Series names the operator exports: a counter's _total, a histogram's three."""
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
    return names


def run(*args: str | Path, cwd: Path | None = None, input: str | None = None) -> Completed:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, input=input, capture_output=True, text=True, timeout=120
    )


def selected(promql_names: Path, exprs: list[str]) -> list[list[str]]:
    result = run(promql_names, input=json.dumps(exprs))
    assert result.returncode == 0, result.stderr
    names: list[list[str]] = json.loads(result.stdout)
    return names


# -- the Dockerfile ----------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for word, rest in instructions():
        if word == "FROM":
            result.append([])
        result[-1].append((word, rest))
    return result


def build_copies() -> list[str]:
    """Sources of the build stage's COPY lines (globs kept)."""
    sources = []
    for word, rest in stages()[0]:
        if word == "COPY":
            sources += rest.split()[:-1]
    return sources


def build_wheel(out: Path, context: Path) -> Path:
    """`pip wheel` of exactly what the Dockerfile's build stage copies."""
    for source in build_copies():
        for match in REPO.glob(source.rstrip("/")):
            relative = match.relative_to(REPO)
            if match.is_file():
                (context / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(match, context / relative)
            else:
                shutil.copytree(
                    match,
                    context / relative,
                    ignore=lambda d, names: [n for n in names if n == "__pycache__"],
                )
    # Build isolation, as in the image: pip fetches the build backend from the index.
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(context)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = out.glob("celery_taskrun-*.whl")
    return path


def image_python() -> str:
    """Python 3.11 for the image-like virtualenv: the system's, which any uid can run."""
    system = Path("/usr/bin/python3.11")
    return str(system) if os.access(system, os.X_OK) else sys.executable


def make_venv(python: str, venv: Path, wheel: Path) -> Path:
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(wheel)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv


def cluster_wide_operator(stack: Stack) -> str | None:
    """The name of a live operator of the stack that watches every namespace, if any."""
    for proc in stack.processes().values():
        namespaced = any(a == "-n" or a.startswith("--namespace") for a in proc.argv)
        if proc.kind == "operator" and proc.alive and not namespaced:
            return proc.name
    return None


def image_env() -> dict[str, str]:
    """The final stage's ENV, as the image's processes see it (PATH unexpanded)."""
    env: dict[str, str] = {}
    for word, rest in stages()[-1]:
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env
