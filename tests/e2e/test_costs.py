"""What runs at the admission bounds cost the processes that list them (issue 16).

Runs as large as the admission policy lets in (2,048 values, 256 KiB of args as CEL
renders them; half in characters outside the BMP, so that each page's JSON decodes to
a str of 4 bytes a character), listed by a restarted operator (Kopf's list and its
own) and by the gateway's list endpoint: the peak resident memory of each process
(VmHWM) must stay below its limit in the chart's values.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from celery_taskrun.api.model import MAX_ARGS_BYTES, MAX_ARGS_VALUES
from taskrun_dev.procfs import memory_mib
from taskrun_dev.stack import Stack

from accounts import make_accounts
from support import GROUP, PLURAL, VERSION, TaskRuns, wait_for

pytestmark = pytest.mark.e2e

VALUES = Path(__file__).resolve().parents[2] / "charts" / "celery-taskrun" / "values.yaml"
RUNS = 30
# A page of the gateway's list asks for all of them at once: the largest it allows.
LIST_LIMIT = 500
UNITS = {"Mi": 1, "Gi": 1024}


def chart_limit_mib(component: str) -> float:
    """The memory limit of a component in the chart's values, in MiB."""
    limit = yaml.safe_load(VALUES.read_text())[component]["resources"]["limits"]["memory"]
    found = re.fullmatch(r"([0-9.]+)(Mi|Gi)", limit)
    assert found, f"{component}'s memory limit {limit!r} is not in Mi or Gi"
    return float(found.group(1)) * UNITS[found.group(2)]


def at_the_bounds(queue: str, character: str) -> dict[str, object]:
    """A spec with exactly MAX_ARGS_VALUES values and about MAX_ARGS_BYTES of args as CEL
    renders them: empty maps (64 bytes each in Python) and a string of `character`."""
    maps = MAX_ARGS_VALUES - 2  # with their list and the string: MAX_ARGS_VALUES
    # Rendered, each map takes "{}, " and the rest fits in 64 bytes.
    length = (MAX_ARGS_BYTES - 4 * maps - 64) // len(character.encode())
    return {
        "task": "costs.never.runs",
        "queue": queue,
        "timeout": 3600,
        "args": [[{}] * maps, character * length],
    }


# ASCII runs stay in flight (their specs held by the operator); runs of emoji end
# Failed / InvalidSpec at once, since the operator's maxArgsBytes counts their JSON as
# Python escapes it (12 bytes an emoji), but each page holding one decodes to a str of
# 4 bytes a character.
KINDS = {"ascii": ("x", "Queued"), "emoji": ("\U0001f600", "Failed")}


def in_flight(metrics_url: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=5) as answer:
        text = answer.read().decode()
    found = re.search(r"^taskrun_in_flight ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_runs_at_the_bounds_are_listed_within_the_charts_limits(
    stack: Stack, gateway: str, make_namespace: Callable[[str], str], tmp_path: Path
) -> None:
    # A namespace and an operator of this test's own: restarting the session's operator
    # would leave every later test holding a process that is gone.
    runs = TaskRuns(stack, make_namespace("iso-costs"))
    accounts = make_accounts(stack, runs.namespace, tmp_path)
    own = stack.start_operator("op-costs", extra_args=["--namespace", runs.namespace])
    queue = f"held-{runs.namespace}"  # no worker reads it: what is sent stays in flight
    names = {f"{kind}-{n}": kind for kind in KINDS for n in range(RUNS // len(KINDS))}
    held = sum(KINDS[kind][1] == "Queued" for kind in names.values())
    try:
        for name, kind in names.items():
            spec = at_the_bounds(queue, KINDS[kind][0])
            runs.api.create_namespaced_custom_object(
                GROUP, VERSION, runs.namespace, PLURAL, runs.manifest(name, spec)
            )
        for name, kind in names.items():
            runs.wait_phase(name, KINDS[kind][1])
        # A restart lists every run (Kopf's list, then the leader's own) and follows
        # each again: their specs stay in memory while they are in flight.
        operator = stack.restart(own.name)
        assert operator.url is not None
        wait_for(
            lambda: in_flight(operator.url or "") >= held,
            timeout=60,
            what=f"the restarted operator following the {held} runs in flight",
            interval=0.5,
        )
        operator_peak = memory_mib(operator.pid, "VmHWM")

        # A gateway of its own life: its peak is what these lists cost it.
        listed = stack.restart("gateway")
        reader = accounts["reader"]
        with httpx.Client(base_url=gateway, timeout=60) as http:
            for _ in range(3):
                page = http.get(
                    f"/api/v1/namespaces/{runs.namespace}/taskruns",
                    params={"limit": LIST_LIMIT},
                    headers=reader.headers,
                )
                assert page.status_code == 200, page.text
                assert len(page.json()["items"]) == RUNS
        gateway_peak = memory_mib(listed.pid, "VmHWM")

        limits = {part: chart_limit_mib(part) for part in ("operator", "gateway")}
        print(
            f"\n{RUNS} runs at the bounds: operator peak {operator_peak} MiB"
            f" (limit {limits['operator']:.0f}), gateway peak {gateway_peak} MiB"
            f" (limit {limits['gateway']:.0f})"
        )
        assert 0 < operator_peak < limits["operator"]
        assert 0 < gateway_peak < limits["gateway"]
    finally:
        # Deleted while the operator runs: it takes its finalizers off.
        runs.kubectl("delete", "taskruns", "--all", "--timeout=120s", check=True)
        (stack.process(own.name) or own).stop()
