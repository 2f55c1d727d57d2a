"""Prometheus metrics, served on the operator's metrics port."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

TRANSITIONS = Counter(
    "taskrun_transitions_total", "Phase changes written to TaskRun status", ["phase", "reason"]
)
SUBMISSIONS = Counter("taskrun_submissions_total", "Tasks sent to the broker", ["outcome"])
IN_FLIGHT = Gauge("taskrun_in_flight", "TaskRuns the tracker follows")
FINISHED_KEPT = Gauge(
    "taskrun_finished_kept", "Finished TaskRuns kept, known to TTLs and history limits"
)
BACKEND_READS = Counter("taskrun_backend_reads_total", "Batched reads of the result backend")
BACKEND_ERRORS = Counter("taskrun_backend_errors_total", "Failed reads of the result backend")
WAKEUPS = Counter("taskrun_wakeups_total", "State changes heard from the backend's publish")
API_WRITES = Counter("taskrun_api_writes_total", "Writes to the Kubernetes API", ["kind"])
ECHOES = Counter("taskrun_watch_echoes_total", "Watch events of our own writes, dropped unhandled")
STEP_ERRORS = Counter(
    "taskrun_step_errors_total", "Unexpected errors while handling one run (operator bugs)"
)
STATUS_LATENCY = Histogram(
    "taskrun_status_latency_seconds",
    "From the task's end (the backend's date_done) to its terminal status written",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


# -- for the dashboard, the alerts and KEDA (deploy/observability, deploy/keda) ------------
# Label values come from specs (queue) or from our own enums (phase, kind, backend).  A
# queue label is a tenant's free text: the code that sets it bounds how many distinct
# values it reports.
QUEUE_WAIT = Histogram(
    "taskrun_queue_wait_seconds",
    "From a task's submission to the operator first seeing it started, by queue",
    ["queue"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
RUN_DURATION = Histogram(
    "taskrun_run_duration_seconds",
    "From a run's first submission to its end (status.duration), by terminal phase",
    ["phase"],
    buckets=(0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 21600, 86400),
)
QUEUE_RUNS = Gauge(
    "taskrun_queue_runs",
    "TaskRuns in flight by queue and phase (Pending, Queued, Running, Retrying)",
    ["queue", "phase"],
)
PAST_DEADLINE = Gauge(
    "taskrun_runs_past_deadline",
    "TaskRuns in flight whose spec.timeout has passed: each should end TimedOut at once",
)
BACKEND_UP = Gauge(
    "taskrun_backend_up",
    "1 if the last call to this backend (broker or result_backend) succeeded, else 0",
    ["backend"],
)
LEADER = Gauge(
    "taskrun_leader",
    "1 while this operator process holds the leader Lease and acts, 0 on standby",
)
API_WRITE_ERRORS = Counter(
    "taskrun_api_write_errors_total",
    "Writes to the Kubernetes API that failed, by kind (as taskrun_api_writes_total)",
    ["kind"],
)


# Queue names come from tenants' specs: the first MAX_QUEUE_LABELS seen get series of
# their own, the rest share "other", so a spec cannot blow up the metrics.
MAX_QUEUE_LABELS = 50
_queues: set[str] = set()


def queue_label(queue: str) -> str:
    if queue in _queues or len(_queues) < MAX_QUEUE_LABELS:
        _queues.add(queue)
        return queue
    return "other"


def serve(host: str, port: int) -> None:
    start_http_server(port, addr=host)


# Schedules (CronTaskRuns).
CRON_SLOTS = Counter(
    "taskrun_cron_slots_total",
    "Slots of CronTaskRuns by outcome: fired (a TaskRun made), or why none was",
    ["outcome"],
)
CRON_LATENESS = Histogram(
    "taskrun_cron_lateness_seconds",
    "From a slot's due time to its TaskRun's creation",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
CRON_SCHEDULES = Gauge("taskrun_cron_schedules", "CronTaskRuns the operator follows")


# Concurrency limits, by group name (the operator's config: a bounded set).
CONCURRENCY_LIMIT = Gauge(
    "taskrun_concurrency_limit",
    "A concurrency group's limit, per slot (cluster, namespace or key)",
    ["group"],
)
CONCURRENCY_IN_USE = Gauge(
    "taskrun_concurrency_in_use",
    "Places taken in a concurrency group (all its namespaces or keys): runs sent, not ended",
    ["group"],
)
CONCURRENCY_WAITING = Gauge(
    "taskrun_concurrency_waiting",
    "Runs waiting for room in a concurrency group (Pending / Throttled)",
    ["group"],
)
CONCURRENCY_WAIT = Histogram(
    "taskrun_concurrency_wait_seconds",
    "From a run joining a concurrency group's line to its admission (0 when there was room)",
    ["group"],
    buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600),
)
