"""Prometheus metrics, served on the operator's metrics port."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

TRANSITIONS = Counter(
    "taskrun_transitions_total", "Phase changes written to TaskRun status", ["phase", "reason"]
)
SUBMISSIONS = Counter("taskrun_submissions_total", "Tasks sent to the broker", ["outcome"])
IN_FLIGHT = Gauge("taskrun_in_flight", "TaskRuns the tracker follows")
BACKEND_READS = Counter("taskrun_backend_reads_total", "Batched reads of the result backend")
BACKEND_ERRORS = Counter("taskrun_backend_errors_total", "Failed reads of the result backend")
WAKEUPS = Counter("taskrun_wakeups_total", "State changes heard from the backend's publish")
API_WRITES = Counter("taskrun_api_writes_total", "Writes to the Kubernetes API", ["kind"])
STATUS_WRITE_FAILURES = Counter(
    "taskrun_status_write_failures_total",
    "Status writes the API server did not take, by error (TooLarge and Invalid are retried "
    "smaller)",
    ["error"],
)
STEP_ERRORS = Counter(
    "taskrun_step_errors_total", "Unexpected errors while handling one run (operator bugs)"
)
STATUS_LATENCY = Histogram(
    "taskrun_status_latency_seconds",
    "From the task's end (the backend's date_done) to its terminal status written",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def serve(host: str, port: int) -> None:
    start_http_server(port, addr=host)
