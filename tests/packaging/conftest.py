"""Fixtures of the packaging tests: the helm binary (skipped when not built)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging_helpers import (
    CHART,
    CRDS_FETCH,
    PROMTOOL_BUILD,
    REPO,
    Manifest,
    Render,
    build_wheel,
    find_helm,
    image_python,
    load_all,
    make_venv,
    run_helm,
)


@pytest.fixture(scope="session")
def helm() -> Path:
    path, why_not = find_helm()
    if path is None:
        pytest.skip(why_not)
    return path


@pytest.fixture(scope="session")
def render(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> Render:
    """`helm template` of the chart with `values`, parsed into manifests."""

    def _render(
        values: dict[str, Any] | None = None,
        *,
        namespace: str = "celery-taskrun-system",
        release: str = "taskrun",
        include_crds: bool = False,
        extra: Sequence[str] = (),
    ) -> list[Manifest]:
        args = ["template", release, str(CHART), "--namespace", namespace, *extra]
        if include_crds:
            args.append("--include-crds")
        if values:
            path = tmp_path_factory.mktemp("values") / "values.yaml"
            path.write_text(yaml.safe_dump(values))
            args += ["--values", str(path)]
        return load_all(run_helm(helm, *args).stdout)

    return _render


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `pip install .` makes in the image's build stage."""
    return build_wheel(tmp_path_factory.mktemp("wheels"), tmp_path_factory.mktemp("context"))


@pytest.fixture(scope="session")
def image_venv(wheel: Path) -> Iterator[Path]:
    """The image's /opt/celery-taskrun: a fresh virtualenv with the wheel and its runtime
    dependencies from PyPI.  World-readable (outside pytest's private tmp), so the
    image's uid 10001 can run it."""
    root = Path(tempfile.mkdtemp(prefix="celery-taskrun-image-"))
    root.chmod(0o755)
    try:
        yield make_venv(image_python(), root / "venv", wheel)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def tool_paths(script: Path, timeout: float) -> list[Path]:
    """What a devstack/tools script prints: it builds or fetches once with Go, then reads
    its cache.  Skipped only when Go is missing for a first run."""
    result = subprocess.run([str(script)], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        if shutil.which("go") is None:
            pytest.skip(f"{script.relative_to(REPO)} needs Go (1.26+) on PATH the first time")
        pytest.fail(f"{script.relative_to(REPO)} failed:\n{result.stderr[-3000:]}")
    return [Path(line) for line in result.stdout.split()]


@pytest.fixture(scope="session")
def promtool() -> tuple[Path, Path]:
    """(promtool, promql-names), built by devstack/tools/promtool/build.sh."""
    tool, names = tool_paths(PROMTOOL_BUILD, timeout=1800)
    return tool, names


@pytest.fixture(scope="session")
def foreign_crds() -> Path:
    """The folder of KEDA's, Flux's and prometheus-operator's CRDs (crds/fetch.sh)."""
    (folder,) = tool_paths(CRDS_FETCH, timeout=600)
    return folder
