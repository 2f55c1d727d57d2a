"""The live page in headless Chromium: a run seen live, in order, and its detail."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from taskrun_dev.stack import Stack

from accounts import Account
from browser import chromium, find_chromium
from support import TASKS

pytestmark = pytest.mark.e2e

# Installed by the test before the page loads: reports each row's (name, phase, progress)
# whenever the page changes it, through the `report` binding.
OBSERVER = """
(() => {
  const last = new Map();
  const scan = () => {
    for (const row of document.querySelectorAll("#runs tbody tr[data-run]")) {
      const phase = row.querySelector("td.phase");
      const bar = row.querySelector("td.progress progress");
      const seen = JSON.stringify([row.dataset.run, phase ? phase.dataset.phase : null,
                                   bar ? bar.value : null]);
      if (last.get(row.dataset.run) !== seen) {
        last.set(row.dataset.run, seen);
        report(seen);
      }
    }
  };
  new MutationObserver(scan).observe(document, {
    subtree: true, childList: true, characterData: true, attributes: true,
  });
})();
"""


def test_page_shows_a_run_live_and_its_detail(
    gateway: str, accounts: dict[str, Account], tmp_path: Path, stack: Stack
) -> None:
    executable = find_chromium()
    if executable is None:
        pytest.skip("Debian's chromium is not installed (./devstack/setup.sh installs it)")
    submitter, reader = accounts["submitter"], accounts["reader"]
    runs = f"{gateway}/api/v1/namespaces/{submitter.namespace}/taskruns"

    with chromium(executable, tmp_path / "profile") as page:
        page.call("Runtime.enable")
        page.call("Page.enable")
        page.call("Runtime.addBinding", name="report")
        page.call("Page.addScriptToEvaluateOnNewDocument", source=OBSERVER)
        # A reader's token is enough to watch; the page keeps it out of the address bar.
        page.call(
            "Page.navigate", url=f"{gateway}/#namespace={reader.namespace}&token={reader.token}"
        )
        page.wait(
            # (Null-safe: the document may still be loading.)
            "document.getElementById('connection')?.dataset.state === 'live'"
            " && document.getElementById('empty')?.hidden === false",
            timeout=20,
            what="the page to show the (empty) namespace live",
        )
        assert "token" not in page.evaluate("location.href")

        # `countdown` keeps the run Queued for a second; then four steps of progress.
        spec = {"task": f"{TASKS}.progress", "args": [4, 0.3], "countdown": 1}
        name = httpx.post(runs, json=spec, headers=submitter.headers).json()["name"]
        seen: list[tuple[str, float | None]] = []
        for payload in page.bindings("report", timeout=30):
            row, phase, progress = json.loads(payload)
            if row == name:
                seen.append((phase, progress))
                if phase == "Succeeded":
                    break
        phases = [p for p, _ in seen if p != "Pending"]
        in_order = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]
        assert in_order == ["Queued", "Running", "Succeeded"], seen
        running = [v for p, v in seen if p == "Running" and v is not None]
        assert any(0 < v < 100 for v in running), seen
        assert running == sorted(running), seen

        # Its detail: the result and a timeline.
        page.evaluate(f"document.querySelector('tr[data-run=\"{name}\"]').click()")
        page.wait(
            "document.getElementById('detail-result').textContent"
            f" === {json.dumps(json.dumps({'steps': 4}, indent=2))}",
            timeout=10,
            what="the run's result in its detail",
        )
        timeline = page.evaluate("document.getElementById('detail-timeline').textContent")
        for step in ("created", "submitted", "started", "Succeeded"):
            assert step in timeline, timeline

        # A failure: its error in the list, its traceback in the detail.
        spec = {"task": f"{TASKS}.fail", "args": ["<b>kaput</b>"]}
        failed = httpx.post(runs, json=spec, headers=submitter.headers).json()["name"]
        row = f"document.querySelector('tr[data-run=\"{failed}\"]')"
        page.wait(
            f"{row} && {row}.querySelector('td.error').textContent === 'ValueError: <b>kaput</b>'",
            timeout=20,
            what="the failed run's error in the list",
        )
        page.evaluate(f"{row}.click()")
        page.wait(
            "document.getElementById('detail-traceback').textContent"
            ".includes('ValueError: <b>kaput</b>')",
            timeout=10,
            what="the traceback in the failed run's detail",
        )
        # Task output is shown as text, never as markup.
        assert page.evaluate("document.querySelectorAll('#runs b, #detail b').length") == 0

        # The namespace's schedules, with their next run (read again every 10 s).
        cron = {
            "apiVersion": "celery.taskrun.dev/v1alpha1",
            "kind": "CronTaskRun",
            "metadata": {"name": "yearly", "namespace": reader.namespace},
            "spec": {"schedule": "@yearly", "taskRunTemplate": {"spec": {"task": TASKS + ".echo"}}},
        }
        stack.kubectl("apply", "-f", "-", input=json.dumps(cron), check=True)
        row = "document.querySelector('#schedules tr[data-name=\"yearly\"]')"
        page.wait(
            f"{row} && {row}.textContent.includes('@yearly')"
            f" && {row}.textContent.includes('-01-01T00:00:00')",
            timeout=40,
            what="the schedule and its next run on the page",
        )
