"""`taskrun-dev up --examples`: deploy/examples/ applied to the stack, run to their end."""

from __future__ import annotations

import time
from pathlib import Path

from taskrun_dev.binaries import Say
from taskrun_dev.controlplane import Kubectl


def run_examples(kubectl: Kubectl, deploy_dir: Path | None, say: Say, timeout: float) -> str:
    """Apply deploy/examples/*.yaml, wait until their TaskRuns finish, return the table."""
    examples = sorted((deploy_dir / "examples").glob("*.yaml")) if deploy_dir else []
    if not examples:
        say("warning: no deploy/examples/*.yaml to apply")
    runs: list[tuple[str, str]] = []
    for path in examples:
        applied = kubectl.json("apply", "-f", str(path))
        items = applied.get("items", [applied]) if applied.get("kind") == "List" else [applied]
        for item in items:
            if item.get("kind") == "TaskRun":
                meta = item["metadata"]
                runs.append((meta.get("namespace", "default"), meta["name"]))
    say(f"applied {len(runs)} example TaskRuns; waiting up to {timeout:.0f}s")
    deadline = time.monotonic() + timeout
    for namespace, name in runs:
        left = max(1, int(deadline - time.monotonic()))
        result = kubectl.run(
            "wait",
            "--for=condition=Finished",
            f"taskrun/{name}",
            "-n",
            namespace,
            f"--timeout={left}s",
            timeout=left + 30,
        )
        if result.returncode != 0:
            say(f"warning: {namespace}/{name} not finished: {result.stderr.strip()}")
    table: str = kubectl.run("get", "taskruns", "-A", check=True).stdout
    return table
