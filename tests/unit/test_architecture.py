"""docs/architecture.md stays true: every module it names exists, and every folder of
the package is described there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "celery_taskrun"
DOC = ROOT / "docs" / "architecture.md"
# `layer/module.py`, as the page names modules.
NAMED = re.compile(r"`((?:api|core|clients|engine|gateway|cli)/[a-z_]+\.py)`")


def test_every_module_the_page_names_exists() -> None:
    named = set(NAMED.findall(DOC.read_text()))
    assert len(named) >= 20, "the page names the modules of one run's path"
    missing = sorted(path for path in named if not (PACKAGE / path).is_file())
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"


def test_every_folder_of_the_package_is_on_the_page() -> None:
    text = DOC.read_text()
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert not [f for f in folders if f"`{f}/`" not in text], folders


def test_every_engine_module_is_on_the_page() -> None:
    text = DOC.read_text()
    modules = sorted(p.name for p in (PACKAGE / "engine").glob("*.py") if p.stem != "__init__")
    unnamed = [m for m in modules if f"`engine/{m}`" not in text]
    assert not unnamed, f"engine modules missing from docs/architecture.md: {unnamed}"
