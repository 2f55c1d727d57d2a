"""requirements.lock agrees with pyproject.toml: every dependency (the dev extra's too, and
the build back end) is pinned, with hashes, at a version its range allows.  `make lock`
refreshes the lock when this fails."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def pins(text: str) -> dict[str, tuple[str, bool]]:
    """name -> (version, hashed) for every `name==version` entry of a pip lock."""
    found: dict[str, tuple[str, bool]] = {}
    entries = re.split(r"\n(?=\S)", text)
    for entry in entries:
        match = PIN.match(entry)
        if match:
            found[canonicalize_name(match[1])] = (match[2], "--hash=sha256:" in entry)
    return found


def wanted() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lines = [
        *project["project"]["dependencies"],
        *project["project"]["optional-dependencies"]["dev"],
        *project["build-system"]["requires"],
    ]
    return [Requirement(line) for line in lines]


def test_every_requirement_is_pinned_with_hashes_within_its_range() -> None:
    locked = pins((ROOT / "requirements.lock").read_text())
    problems = []
    for requirement in wanted():
        name = canonicalize_name(requirement.name)
        if name not in locked:
            problems.append(f"{requirement}: not in requirements.lock")
            continue
        version, hashed = locked[name]
        if not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement}: the lock pins {version}")
        if not hashed:
            problems.append(f"{requirement}: pinned without a hash")
    assert not problems, "run `make lock`:\n" + "\n".join(problems)


def test_the_lock_reader_sees_a_disagreement() -> None:
    locked = pins("redis==5.0.0 \\\n    --hash=sha256:ab\ncelery==5.7.0\n")
    assert locked == {"redis": ("5.0.0", True), "celery": ("5.7.0", False)}
    assert not Requirement("redis>=6").specifier.contains(locked["redis"][0])
