"""An earlier revision's files, read from git for a baseline measured beside this tree
(nothing checked out is touched)."""

from __future__ import annotations

import subprocess
import tarfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def shown(revision: str, path: str) -> str:
    """The file `path` as of `revision`."""
    return subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{revision}:{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def operator_package(revision: str, into: Path) -> Path:
    """The operator's package as of `revision`, unpacked under `into`; the directory to
    put first on PYTHONPATH."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "operator/celery_taskrun"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "operator"
