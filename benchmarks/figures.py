"""The benchmark suite's functional core: from what was recorded to figures and verdicts.

No I/O here: the suite (suite.py) records, these functions count, summarise and judge,
and tests/bench/test_figures.py tables them.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from taskrun_dev.audit import Write

OPERATOR_USER = "system:serviceaccount:celery-taskrun-system:celery-taskrun-operator"

# DESIGN.md, "Targets".
TARGET_WRITES_PER_RUN = 4.0
TARGET_PACED_P99_MS = 100.0
# Issue 19's: the burst at 0.8 of the rate its API calls allow (a create and the
# writes per run, each at the bare-create rate), 4 ms of operator CPU a run, 200 MiB
# with 10,000 in flight and 80 MiB idle.
TARGET_BURST_RATIO = 0.8
TARGET_CPU_MS_PER_RUN = 4.0
TARGET_RSS_MIB = 200.0
TARGET_IDLE_RSS_MIB = 80.0
TARGET_REDIS_PER_S = 20.0
TARGET_IN_FLIGHT = 10_000

# Issue 9's figures, measured on this machine before the work on these targets.
PREVIOUS = {
    "writes": "7.9 (2 metadata, 3 status, 3 Events)",
    "bare": "220-360/s",
    "burst": "27-34/s (0.09-0.15 of bare)",
    "lag_paced": "p99 61/544/628 ms at 18/21/~30 runs/s",
    "lag_burst": "p50 0.8-1.1 s, p99 1.5-1.9 s",
    "cpu": "about 18 ms",
    "rss": "233 MiB at 3,000 in flight",
    "redis": "29/s at 3,000 (seed's polling 1,197/s)",
}


# -- API writes, from the API server's audit log -------------------------------------


class WriteKind(StrEnum):
    METADATA = "metadata"
    STATUS = "status"
    EVENT = "event"
    DELETE = "delete"
    OTHER = "other"


def write_kind(write: Write) -> WriteKind:
    if write.resource == "events":
        return WriteKind.EVENT
    if write.resource != "taskruns":
        return WriteKind.OTHER
    if write.verb in ("delete", "deletecollection"):
        return WriteKind.DELETE
    if write.subresource == "status":
        return WriteKind.STATUS
    return WriteKind.METADATA if write.subresource == "" else WriteKind.OTHER


def writes_per_run(
    writes: Iterable[Write], namespace: str, runs: int, user: str = OPERATOR_USER
) -> dict[str, Any]:
    """`user`'s writes in `namespace` (where only the benchmark's runs live), per run."""
    kinds: Counter[WriteKind] = Counter()
    refused: Counter[str] = Counter()
    for write in writes:
        if write.user == user and write.namespace == namespace:
            kinds[write_kind(write)] += 1
            if write.code >= 400:
                refused[f"{write_kind(write)} {write.code}"] += 1
    total = sum(kinds.values())
    share = (lambda n: round(n / runs, 2)) if runs else (lambda n: 0.0)
    return {
        "runs": runs,
        "writes": total,
        "failed": sum(refused.values()),
        "failed_by_kind_and_code": dict(refused.most_common()),
        "per_run": share(total),
        # The runs' own writes: deletions are the history limits making room (a phase
        # of more runs than a namespace keeps), the cost of other, older runs.
        "own_per_run": share(total - kinds[WriteKind.DELETE]),
        "by_kind": {kind.value: share(kinds[kind]) for kind in WriteKind},
    }


def watched_writes_per_run(
    modified: Mapping[str, int], deleted: int, events: int, runs: int
) -> dict[str, Any]:
    """The same count as a client sees it: each write that changed a TaskRun is one
    MODIFIED (or DELETED) watch event; each Event is an object of its own."""
    changes = sum(modified.values())
    share = (lambda n: round(n / runs, 2)) if runs else (lambda n: 0.0)
    return {
        "runs": runs,
        "per_run": share(changes + deleted + events),
        "taskrun_changes": share(changes),
        "deletes": share(deleted),
        "events": share(events),
    }


# -- time and latency ----------------------------------------------------------------


def epoch(value: str | datetime) -> float:
    """Seconds since the epoch; a time without a zone is UTC (Celery's `date_done`)."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def quantile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of an ascending sequence."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def lag_summary(lags: Iterable[float]) -> dict[str, float]:
    """Seconds in, milliseconds out: n, p50, p95, p99, max."""
    ordered = sorted(lags)
    if not ordered:
        return {"n": 0}
    return {
        "n": len(ordered),
        **{
            f"p{round(q * 100)}_ms": round(quantile(ordered, q) * 1000, 1)
            for q in (0.5, 0.95, 0.99)
        },
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def bin_width(seconds: float) -> float:
    """Bins of a second, finer for a phase too short to show a shape in them."""
    return 1.0 if seconds >= 5 else 0.25 if seconds >= 1 else 0.05


def offsets(times: Iterable[float], start: float) -> list[float]:
    """Seconds from `start`, to the millisecond, in order."""
    return sorted(round(t - start, 3) for t in times)


def throughput(times: Iterable[float], start: float, width: float) -> list[float]:
    """Per second, how many of `times` fall in each bin of `width` seconds from `start`."""
    offsets = [max(0.0, t - start) for t in times]
    bins = [0] * (int(max(offsets) / width) + 1 if offsets else 0)
    for offset in offsets:
        bins[int(offset / width)] += 1
    return [round(n / width, 1) for n in bins]


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


# -- who else used the machine -------------------------------------------------------


def machine_busy_ticks(proc_stat: str) -> int:
    """Clock ticks all CPUs spent busy (not idle nor waiting on I/O), from /proc/stat."""
    for line in proc_stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            ticks = [int(f) for f in fields[1:9]]  # user nice system idle iowait irq softirq steal
            return sum(ticks) - ticks[3] - ticks[4]
    raise ValueError("no cpu line in /proc/stat")


def process_ticks(proc_pid_stat: str) -> tuple[int, int]:
    """(process group, utime + stime in ticks) from /proc/PID/stat."""
    fields = proc_pid_stat.rsplit(")", 1)[1].split()
    return int(fields[2]), int(fields[11]) + int(fields[12])


def cores(ticks: int, seconds: float, ticks_per_second: int) -> float:
    return round(ticks / ticks_per_second / seconds, 2) if seconds > 0 else 0.0


def contention(results: Mapping[str, Any]) -> str:
    """One line: the cores the stack used and those others used, in each phase."""
    parts = [
        f"{phase} {used['stack']:g} + {used['outside']:g}"
        for phase in ("bare", "paced", "burst", "scale")
        if (used := (results.get(phase) or {}).get("cores"))
    ]
    if not parts:
        return ""
    lines = ["cores used by the stack + by other processes on the machine: " + ", ".join(parts)]
    for phase in ("bare", "paced", "burst"):
        per_run = ((results.get(phase) or {}).get("cores") or {}).get("ms_per_run")
        if per_run:
            lines.append(
                f"CPU per run, {phase}: {sum(per_run.values()):.1f} ms: "
                + ", ".join(f"{name} {ms:g}" for name, ms in per_run.items())
            )
    return "\n".join(lines)


# -- Prometheus text -------------------------------------------------------------------


def prometheus_samples(text: str, name: str) -> dict[str, float]:
    """The samples of metric `name`, keyed by their label set (`'kind="status"'`)."""
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$")
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if match := pattern.match(line):
            samples[match.group(1) or ""] = float(match.group(2))
    return samples


def by_label(samples: Mapping[str, float], label: str) -> dict[str, float]:
    pattern = re.compile(rf'(?:^|,){re.escape(label)}="([^"]*)"')
    out: dict[str, float] = {}
    for labels, value in samples.items():
        if match := pattern.search(labels):
            out[match.group(1)] = out.get(match.group(1), 0.0) + value
    return out


# -- where the operator's CPU goes (py-spy's collapsed stacks) --------------------------


class Group(StrEnum):
    JSON = "JSON encode/decode (watch, API bodies)"
    PYDANTIC = "pydantic validation"
    KOPF = "Kopf's own handling"
    HTTP = "aiohttp / kubernetes_asyncio"
    REDIS = "redis client"
    CELERY = "celery / kombu (sending)"
    OURS = "our code (celery_taskrun)"
    OTHER = "event loop, stdlib, other"


# Path segments of each group; a frame of none of them (asyncio, ssl, logging, ...)
# counts for the nearest caller that is in one.
_GROUP_DIRS: tuple[tuple[Group, tuple[str, ...]], ...] = (
    (Group.JSON, ("json", "orjson", "ujson")),
    (Group.PYDANTIC, ("pydantic", "pydantic_core")),
    (Group.KOPF, ("kopf",)),
    (
        Group.HTTP,
        (
            "aiohttp",
            "kubernetes_asyncio",
            "yarl",
            "multidict",
            "aiohappyeyeballs",
            "frozenlist",
            "aiosignal",
            "propcache",
        ),
    ),
    (Group.REDIS, ("redis",)),
    (Group.CELERY, ("celery", "kombu", "billiard", "vine", "amqp")),
    (Group.OURS, ("celery_taskrun",)),
    (Group.OTHER, ("prometheus_client",)),
)
_FRAME = re.compile(r"^(?P<func>.*) \((?P<path>.*?)(?::\d+)?\)$")


def frame_path(frame: str) -> str:
    match = _FRAME.match(frame)
    return match.group("path") if match else ""


def frame_group(frame: str) -> Group | None:
    """The group of one frame (`func (path:line)`), None for a transparent one."""
    dirs = frame_path(frame).split("/")[:-1]
    for group, names in _GROUP_DIRS:
        if any(name in dirs for name in names):
            return group
    return None


def stack_group(frames: Sequence[str]) -> Group:
    """A sample counts for the group of its innermost frame that has one."""
    for frame in reversed(frames):
        if (group := frame_group(frame)) is not None:
            return group
    return Group.OTHER


def short_frame(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match.group("path")
    # Our frames by their module's place in the package; others by folder and file.
    _, ours, module = path.rpartition("/celery_taskrun/")
    short = f"celery_taskrun/{module}" if ours else "/".join(path.split("/")[-2:])
    return f"{match.group('func')} ({short})"


@dataclass(frozen=True)
class Breakdown:
    samples: int
    groups: dict[str, float]  # share of samples, 0..1, by Group value
    top: list[tuple[str, float]]  # innermost frames by share of samples

    def as_json(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "groups": {k: round(v, 3) for k, v in self.groups.items()},
            "top": [[frame, round(share, 3)] for frame, share in self.top],
        }


def profile_breakdown(lines: Iterable[str], top: int = 8) -> Breakdown:
    """Group py-spy's raw output (`frame;frame;...;frame COUNT` per line)."""
    groups: Counter[Group] = Counter()
    leaves: Counter[str] = Counter()
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        groups[stack_group(frames)] += int(count)
        leaves[short_frame(frames[-1])] += int(count)
    total = sum(groups.values())
    if not total:
        return Breakdown(0, {}, [])
    return Breakdown(
        total,
        {group.value: groups[group] / total for group in Group},
        [(frame, n / total) for frame, n in leaves.most_common(top)],
    )


# -- the table -----------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    figure: str
    target: str
    ours: str
    seed: str
    previous: str
    met: bool | None  # None: no target, or not measured at the target's scale


def _lag(summary: Mapping[str, Any] | None) -> str:
    if not summary or not summary.get("n"):
        return "-"
    return (
        f"p50 {summary['p50_ms']:g} / p95 {summary['p95_ms']:g} / p99 {summary['p99_ms']:g}"
        f" / max {summary['max_ms']:g} ms"
    )


def _breakdown(by_kind: Mapping[str, float]) -> str:
    return ", ".join(f"{value:g} {kind}" for kind, value in by_kind.items() if value)


def table_rows(results: Mapping[str, Any]) -> list[Row]:
    """The table's rows from the suite's results; phases not run give no rows."""
    rows: list[Row] = []
    writes = results.get("writes") or {}
    own_writes = TARGET_WRITES_PER_RUN  # judged against when the writes were not counted
    if writes:
        own = lambda w: w["audit"].get("own_per_run", w["audit"]["per_run"])  # noqa: E731
        worst = max(writes.values(), key=own)
        own_writes = float(own(worst))
        audit = worst["audit"]
        deletes = {phase: w["audit"]["by_kind"].get("delete", 0) for phase, w in writes.items()}
        rows.append(
            Row(
                "API writes per trivial run (audit log)",
                f"<= {TARGET_WRITES_PER_RUN:g}",
                " / ".join(f"{phase} {own(w):g}" for phase, w in writes.items())
                + "".join(
                    f" (+{n:g} deletions in {phase}: the history limit)"
                    for phase, n in deletes.items()
                    if n
                )
                + f" ({_breakdown({k: v for k, v in audit['by_kind'].items() if k != 'delete'})}"
                + (f"; {audit['failed']} refused: " if audit["failed"] else "")
                + ", ".join(
                    f"{n} {what}" for what, n in audit.get("failed_by_kind_and_code", {}).items()
                )
                + ")",
                "0 (no Kubernetes)",
                PREVIOUS["writes"],
                own(worst) <= TARGET_WRITES_PER_RUN,
            )
        )
        rows.append(
            Row(
                "  same, seen by watch + Events / operator's metric",
                "",
                " / ".join(
                    f"{phase} {w['watch']['per_run']:g} / {w['metric']['per_run']:g}"
                    for phase, w in writes.items()
                ),
                "",
                "",
                None,
            )
        )
    bare, burst = results.get("bare"), results.get("burst")
    if bare:
        rows.append(
            Row(
                "bare creates, one client, operator stopped",
                "(reference)",
                f"{bare['rate']:g}/s",
                "",
                PREVIOUS["bare"],
                None,
            )
        )
    if burst:
        ratio = burst["rate"] / bare["rate"] if bare and bare["rate"] else None
        # What the run's API calls allow: its create and its writes, each at bare's rate.
        calls = 1 + own_writes
        allowed = ratio * calls if ratio is not None else None
        seed_burst = (results.get("seed") or {}).get("burst")
        rows.append(
            Row(
                f"burst of {burst['runs']:,} runs, end to end",
                f">= {TARGET_BURST_RATIO:g} x bare / {calls:g} calls",
                f"{burst['rate']:g}/s"
                + (
                    f" ({ratio:.2f} x bare, {allowed:.2f} of what its calls allow)" if ratio else ""
                ),
                f"{seed_burst['rate']:g}/s (no Kubernetes)" if seed_burst else "",
                PREVIOUS["burst"],
                allowed >= TARGET_BURST_RATIO if allowed is not None else None,
            )
        )
    seed = results.get("seed") or {}
    paced = results.get("paced")
    if paced:
        rows.append(
            Row(
                f"status lag, paced {paced['arrival_rate']:g} runs/s",
                f"p99 <= {TARGET_PACED_P99_MS:g} ms",
                _lag(paced["lag"]),
                _lag((seed.get("paced") or {}).get("lag")),
                PREVIOUS["lag_paced"],
                paced["lag"].get("p99_ms", math.inf) <= TARGET_PACED_P99_MS,
            )
        )
    if burst:
        rows.append(
            Row(
                "status lag, burst",
                "",
                _lag(burst["lag"]),
                _lag((seed.get("burst") or {}).get("lag")),
                PREVIOUS["lag_burst"],
                None,
            )
        )
        cpu = burst["operator_cpu_ms_per_run"]
        rows.append(
            Row(
                "operator CPU per run (burst)" + (" under py-spy" if burst.get("profiled") else ""),
                f"<= {TARGET_CPU_MS_PER_RUN:g} ms",
                f"{cpu:g} ms",
                "",
                PREVIOUS["cpu"],
                cpu <= TARGET_CPU_MS_PER_RUN,
            )
        )
    scale = results.get("scale")
    if scale:
        at_target = scale["runs"] >= TARGET_IN_FLIGHT
        rss = scale["operator_rss_mib"]
        rows.append(
            Row(
                f"operator RSS, {scale['runs']:,} in flight",
                f"<= {TARGET_RSS_MIB:g} MiB at {TARGET_IN_FLIGHT:,}",
                f"{rss:g} MiB",
                "",
                PREVIOUS["rss"],
                rss <= TARGET_RSS_MIB if at_target else None,
            )
        )
        idle = scale.get("operator_idle_rss_mib")
        if idle is not None:
            rows.append(
                Row(
                    "operator RSS idle (before the runs)",
                    f"<= {TARGET_IDLE_RSS_MIB:g} MiB",
                    f"{idle:g} MiB",
                    "",
                    "",
                    idle <= TARGET_IDLE_RSS_MIB,
                )
            )
        seed_scale = seed.get("scale")
        redis_rate = scale["redis_commands_per_s"]
        busiest = list((scale.get("redis_commands_per_s_by_command") or {}).items())[:3]
        rows.append(
            Row(
                f"Redis commands/s, {scale['runs']:,} in flight, tracking only",
                f"<= {TARGET_REDIS_PER_S:g}",
                f"{redis_rate:g}/s"
                + (f" ({', '.join(f'{n:g} {c}' for c, n in busiest)})" if busiest else ""),
                f"{seed_scale['redis_commands_per_s']:g}/s" if seed_scale else "",
                PREVIOUS["redis"],
                redis_rate <= TARGET_REDIS_PER_S if at_target else None,
            )
        )
    return rows


def render_table(rows: Sequence[Row]) -> str:
    """A Markdown table, padded so that it reads as well in a terminal."""
    header = Row("figure", "target", "ours", "seed's strategy", "previous (issue 9)", None)
    cells = [
        [r.figure, r.target, r.ours, r.seed, r.previous, _verdict(r.met)] for r in [header, *rows]
    ]
    cells[0][-1] = "met"
    widths = [max(3, *(len(row[i]) for row in cells)) for i in range(len(cells[0]))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _verdict(met: bool | None) -> str:
    return "" if met is None else "yes" if met else "NO"
