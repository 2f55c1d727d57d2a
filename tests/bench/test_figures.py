"""The suite's functional core (benchmarks/figures.py), table by table."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from figures import (
    OPERATOR_USER,
    Group,
    Row,
    WriteKind,
    bin_width,
    by_label,
    contention,
    cores,
    epoch,
    frame_group,
    lag_summary,
    machine_busy_ticks,
    offsets,
    process_ticks,
    profile_breakdown,
    prometheus_samples,
    quantile,
    render_table,
    stack_group,
    table_rows,
    throughput,
    watched_writes_per_run,
    write_kind,
    writes_per_run,
)

from taskrun_dev.audit import Write


def write(
    verb: str,
    resource: str,
    sub: str = "",
    ns: str = "ns",
    user: str = OPERATOR_USER,
    code: int = 200,
) -> Write:
    return Write(user, verb, resource, sub, ns, "r1", code)


@pytest.mark.parametrize(
    ("w", "kind"),
    [
        (write("patch", "taskruns"), WriteKind.METADATA),
        (write("update", "taskruns"), WriteKind.METADATA),
        (write("patch", "taskruns", "status"), WriteKind.STATUS),
        (write("update", "taskruns", "status"), WriteKind.STATUS),
        (write("delete", "taskruns"), WriteKind.DELETE),
        (write("deletecollection", "taskruns"), WriteKind.DELETE),
        (write("create", "events"), WriteKind.EVENT),
        (write("patch", "events"), WriteKind.EVENT),
        (write("update", "leases"), WriteKind.OTHER),
        (write("patch", "taskruns", "scale"), WriteKind.OTHER),
    ],
)
def test_write_kind(w: Write, kind: WriteKind) -> None:
    assert write_kind(w) == kind


def test_writes_per_run_counts_the_operator_in_its_namespace() -> None:
    writes = [
        write("patch", "taskruns"),
        write("patch", "taskruns", "status"),
        write("patch", "taskruns", "status", code=409),
        write("create", "events"),
        write("create", "taskruns", user="admin"),  # the benchmark's own creates
        write("patch", "taskruns", "status", ns="other"),
        write("update", "leases", ns="ns"),
    ]
    counted = writes_per_run(writes, "ns", runs=2)
    assert counted["writes"] == 5 and counted["failed"] == 1
    assert counted["failed_by_kind_and_code"] == {"status 409": 1}
    assert counted["per_run"] == 2.5 and counted["own_per_run"] == 2.5
    deleted = writes_per_run([write("delete", "taskruns"), write("patch", "taskruns")], "ns", 2)
    assert (deleted["per_run"], deleted["own_per_run"]) == (1.0, 0.5)
    assert counted["by_kind"] == {
        "metadata": 0.5,
        "status": 1.0,
        "event": 0.5,
        "delete": 0.0,
        "other": 0.5,
    }
    assert writes_per_run([], "ns", runs=0)["per_run"] == 0.0


def test_watched_writes_per_run() -> None:
    assert watched_writes_per_run({"a": 3, "b": 4}, deleted=1, events=4, runs=2) == {
        "runs": 2,
        "per_run": 6.0,
        "taskrun_changes": 3.5,
        "deletes": 0.5,
        "events": 2.0,
    }


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2026-01-01T00:00:01.500000+00:00", 1767225601.5),
        ("2026-01-01T00:00:01.500000", 1767225601.5),  # Celery's date_done: naive is UTC
        ("2026-01-01T00:00:01Z", 1767225601.0),  # status.completedAt
        ("2026-01-01T01:00:01+01:00", 1767225601.0),
        (datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC), 1767225601.0),
        (datetime(2026, 1, 1, 0, 0, 1), 1767225601.0),
    ],
)
def test_epoch(value: str | datetime, seconds: float) -> None:
    assert epoch(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("q", "expected"), [(0.0, 1), (0.5, 50), (0.95, 95), (0.99, 99), (1.0, 100)]
)
def test_quantile_nearest_rank(q: float, expected: int) -> None:
    assert quantile(list(range(1, 101)), q) == expected


def test_lag_summary() -> None:
    assert lag_summary([0.010, 0.020, 0.030, 2.0]) == {
        "n": 4,
        "p50_ms": 20.0,
        "p95_ms": 2000.0,
        "p99_ms": 2000.0,
        "max_ms": 2000.0,
    }
    assert lag_summary([]) == {"n": 0}


@pytest.mark.parametrize(("seconds", "width"), [(0.5, 0.05), (1, 0.25), (4.9, 0.25), (5, 1.0)])
def test_bin_width(seconds: float, width: float) -> None:
    assert bin_width(seconds) == width


def test_offsets() -> None:
    assert offsets([10.5004, 10.0, 12.25], start=10.0) == [0.0, 0.5, 2.25]


def test_throughput() -> None:
    assert throughput([10.0, 10.2, 11.5, 12.9, 9.0], start=10.0, width=1.0) == [3.0, 1.0, 1.0]
    assert throughput([10.0, 10.3], start=10.0, width=0.25) == [4.0, 4.0]
    assert throughput([], start=0.0, width=1.0) == []


PROMETHEUS = """\
# HELP taskrun_api_writes_total Writes to the Kubernetes API
# TYPE taskrun_api_writes_total counter
taskrun_api_writes_total{kind="metadata"} 20.0
taskrun_api_writes_total{kind="status"} 30.0
taskrun_api_writes_created{kind="status"} 1.7e+09
taskrun_api_writes_total_other 5.0
taskrun_in_flight 3.0
"""


def test_prometheus_samples_by_label() -> None:
    samples = prometheus_samples(PROMETHEUS, "taskrun_api_writes_total")
    assert samples == {'kind="metadata"': 20.0, 'kind="status"': 30.0}
    assert by_label(samples, "kind") == {"metadata": 20.0, "status": 30.0}
    assert prometheus_samples(PROMETHEUS, "taskrun_in_flight") == {"": 3.0}


SITE = "/venv/lib/python3.11/site-packages"
STDLIB = "/usr/lib/python3.11"


@pytest.mark.parametrize(
    ("frame", "group"),
    [
        (f"raw_decode ({STDLIB}/json/decoder.py:356)", Group.JSON),
        (f"validate_python ({SITE}/pydantic/main.py:10)", Group.PYDANTIC),
        (f"process ({SITE}/kopf/_core/reactor/processing.py:5)", Group.KOPF),
        (f"read ({SITE}/aiohttp/streams.py:1)", Group.HTTP),
        (f"call_api ({SITE}/kubernetes_asyncio/client/api_client.py:1)", Group.HTTP),
        (f"execute ({SITE}/redis/asyncio/client.py:1)", Group.REDIS),
        (f"send_task ({SITE}/celery/app/base.py:1)", Group.CELERY),
        (f"publish ({SITE}/kombu/messaging.py:1)", Group.CELERY),
        ("step (/work/main/operator/celery_taskrun/engine/tracker.py:1)", Group.OURS),
        (f"inc ({SITE}/prometheus_client/metrics.py:1)", Group.OTHER),
        # Transparent: they count for their caller.
        (f"_run_once ({STDLIB}/asyncio/base_events.py:1)", None),
        (f"recv ({STDLIB}/ssl.py:1)", None),
        ("<module> (<stdin>:4)", None),
        ("garbage", None),
    ],
)
def test_frame_group(frame: str, group: Group | None) -> None:
    assert frame_group(frame) == group


def test_a_sample_counts_for_its_innermost_grouped_frame() -> None:
    loop = f"_run_once ({STDLIB}/asyncio/base_events.py:1)"
    kopf = f"watch ({SITE}/kopf/_cogs/clients/watching.py:1)"
    json_ = f"loads ({STDLIB}/json/__init__.py:346)"
    ssl = f"recv ({STDLIB}/ssl.py:1)"
    assert stack_group([loop, kopf, json_]) == Group.JSON
    assert stack_group([loop, kopf, ssl]) == Group.KOPF
    assert stack_group([loop, ssl]) == Group.OTHER


def test_profile_breakdown() -> None:
    lines = [
        f"a ({STDLIB}/asyncio/events.py:1);b ({SITE}/kopf/x.py:2) 30",
        f"a ({STDLIB}/asyncio/events.py:1);c (/src/celery_taskrun/engine/tracker.py:3) 60",
        f"a ({STDLIB}/asyncio/events.py:1);c (/src/celery_taskrun/engine/tracker.py:3) 10",
        "not a sample line",
        "",
    ]
    breakdown = profile_breakdown(lines, top=1)
    assert breakdown.samples == 100
    assert breakdown.groups[Group.OURS.value] == pytest.approx(0.7)
    assert breakdown.groups[Group.KOPF.value] == pytest.approx(0.3)
    assert breakdown.groups[Group.JSON.value] == 0
    assert breakdown.top == [("c (celery_taskrun/engine/tracker.py)", pytest.approx(0.7))]
    assert profile_breakdown([]).samples == 0


def lag(p99: float) -> dict[str, float]:
    return {"n": 100, "p50_ms": 10.0, "p95_ms": 50.0, "p99_ms": p99, "max_ms": p99}


def writes(per_run: float) -> dict[str, object]:
    return {
        "audit": {
            "per_run": per_run,
            "failed": 0,
            "by_kind": {"metadata": 1.0, "status": per_run - 1},
        },
        "watch": {"per_run": per_run},
        "metric": {"per_run": per_run},
    }


RESULTS = {
    "writes": {"paced": writes(3.0), "burst": writes(4.5)},
    "bare": {"rate": 300.0},
    "burst": {"runs": 1000, "rate": 100.0, "lag": lag(900.0), "operator_cpu_ms_per_run": 4.0},
    "paced": {"arrival_rate": 40.0, "lag": lag(99.0)},
    "scale": {
        "runs": 10_000,
        "operator_rss_mib": 190.0,
        "operator_idle_rss_mib": 85.0,
        "redis_commands_per_s": 12.0,
    },
    "seed": {"paced": {"lag": lag(500.0)}, "scale": {"redis_commands_per_s": 4000.0}},
}


def test_table_judges_each_target() -> None:
    rows = {row.figure: row for row in table_rows(RESULTS)}
    writes_row = rows["API writes per trivial run (audit log)"]
    assert writes_row.met is False  # the worse phase (burst, 4.5) is judged
    assert writes_row.ours.startswith("paced 3 / burst 4.5 (1 metadata, 3.5 status")
    # 100/s against 300/s bare, for 5.5 calls a run (a create, 4.5 writes): 1.83 of what
    # those calls allow
    burst = rows["burst of 1,000 runs, end to end"]
    assert burst.met is True and burst.target == ">= 0.8 x bare / 5.5 calls"
    assert "0.33 x bare, 1.83 of what its calls allow" in burst.ours
    assert rows["status lag, paced 40 runs/s"].met is True
    assert rows["operator CPU per run (burst)"].met is True
    assert rows["operator RSS, 10,000 in flight"].met is True  # 190 <= 200 MiB
    assert rows["operator RSS idle (before the runs)"].met is False  # 85 > 80 MiB
    assert rows["Redis commands/s, 10,000 in flight, tracking only"].met is True
    assert rows["Redis commands/s, 10,000 in flight, tracking only"].seed == "4000/s"


def test_deletions_by_the_history_limit_are_shown_not_judged() -> None:
    paced = writes(4.17)
    paced["audit"].update(
        own_per_run=4.0, by_kind={"metadata": 2.0, "status": 1.0, "event": 1.0, "delete": 0.17}
    )
    rows = {row.figure: row for row in table_rows({"writes": {"paced": paced}})}
    row = rows["API writes per trivial run (audit log)"]
    assert row.met is True
    assert (
        row.ours
        == "paced 4 (+0.17 deletions in paced: the history limit) (2 metadata, 1 status, 1 event)"
    )


def test_table_judges_nothing_below_the_targets_scale() -> None:
    small = {**RESULTS, "scale": {**RESULTS["scale"], "runs": 20}}
    rows = {row.figure: row for row in table_rows(small)}
    assert rows["operator RSS, 20 in flight"].met is None


def test_table_has_rows_only_for_phases_run() -> None:
    assert table_rows({"seed": {}, "writes": {}}) == []
    rows = table_rows({"bare": {"rate": 250.0}})
    assert [row.figure for row in rows] == ["bare creates, one client, operator stopped"]


def test_render_table_is_markdown() -> None:
    text = render_table([Row("f", "t", "o", "s", "p", True), Row("g", "", "", "", "", None)])
    lines = text.splitlines()
    assert lines[0].startswith("| figure") and lines[0].endswith("| met |")
    assert set(lines[1]) <= {"|", "-"}
    assert lines[2].endswith("| yes |") and lines[3].endswith("|     |")
    assert len({len(line) for line in lines}) == 1


PROC_STAT = """\
cpu  100 5 50 1000 20 3 2 1 0 0
cpu0 50 2 25 500 10 1 1 0 0 0
intr 12345
"""


def test_machine_busy_ticks_leave_out_idle_and_iowait() -> None:
    assert machine_busy_ticks(PROC_STAT) == 100 + 5 + 50 + 3 + 2 + 1
    with pytest.raises(ValueError):
        machine_busy_ticks("intr 1\n")


def test_process_ticks_with_a_name_holding_parentheses() -> None:
    stat = "4242 (python (x) y) S 1 4200 4200 0 -1 4194560 1 0 0 0 70 30 0 0 20 0 3 0 99 0 0"
    assert process_ticks(stat) == (4200, 100)


def test_cores_and_contention() -> None:
    assert cores(300, seconds=1.5, ticks_per_second=100) == 2.0
    assert cores(1, seconds=0, ticks_per_second=100) == 0.0
    results = {
        "paced": {"cores": {"stack": 1.2, "outside": 0.5}},
        "burst": {"cores": {"stack": 2, "outside": 0, "ms_per_run": {"api": 6.5, "op": 3}}},
        "scale": {},
    }
    assert contention(results).splitlines() == [
        "cores used by the stack + by other processes on the machine: paced 1.2 + 0.5, burst 2 + 0",
        "CPU per run, burst: 9.5 ms: api 6.5, op 3",
    ]
    assert contention({}) == ""
