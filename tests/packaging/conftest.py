"""Fixtures of the packaging tests: the helm binary (skipped when not built)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging_helpers import CHART, Manifest, Render, find_helm, load_all, run_helm


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
