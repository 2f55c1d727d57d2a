"""The guard in real prefork workers: cancelled runs never execute, none executes twice.

These also pin the Celery internals the guard relies on (the consumer's task
strategies, their handler signature and ack callback, the worker's revoked set): a
Celery upgrade that changes them fails here.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from taskrun_workers.app import create_app
from taskrun_workers.guard import claim_key
from taskrun_workers.ledger import executions

pytestmark = pytest.mark.e2e


def unacked_holds(broker: redis.Redis, task_id: str) -> bool:
    """Whether kombu's Redis transport still holds a message of ``task_id`` unacked."""
    return any(task_id.encode() in value for value in broker.hvals("unacked"))


@pytest.mark.parametrize(
    ("first", "resend_at"),
    [
        # The first run is over: SUCCESS must stay as it is.
        (("calculate_sum", [1, 2, 3, 4, 5]), "SUCCESS"),
        (("fail", "boom"), "FAILURE"),
        # The first run is under way.
        (("sleep", 1.5), "STARTED"),
        (("progress", 6, 0.25), "PROGRESS"),
    ],
    ids=["after-success", "after-failure", "while-started", "while-progress"],
)
def test_the_same_task_id_sent_again_is_dropped(
    worker: Any,
    redis_server: Any,
    record_states: Callable[[str], Any],
    first: tuple[Any, ...],
    resend_at: str,
) -> None:
    name, *args = first
    task_id = worker.send(name, *args)
    worker.wait_state(task_id, resend_at)
    before = worker.meta(task_id)
    recorder = record_states(task_id)

    worker.send(name, *args, task_id=task_id)
    worker.wait_ledger(task_id, "skipped-duplicate")

    final = worker.wait_state(task_id, "SUCCESS", "FAILURE")
    broker_url = worker.env["CELERY_BROKER_URL"]
    assert executions(broker_url, task_id) == 1
    if resend_at in ("SUCCESS", "FAILURE"):
        # Nothing was stored for the duplicate: the first outcome is untouched.
        assert recorder.records == []
        assert final["date_done"] == before["date_done"]
    assert "REVOKED" not in recorder.states
    broker = redis_server.client(0)
    assert not unacked_holds(broker, task_id)
    broker.close()


def test_two_deliveries_held_for_a_countdown_run_once(worker: Any) -> None:
    # Both copies are received and held until their countdown ends, so neither finds a
    # record in the backend: the claim alone decides.
    task_id = str(uuid.uuid4())
    for _ in range(2):
        worker.send("sleep", 0.2, task_id=task_id, countdown=1)
    worker.wait_ledger(task_id, "skipped-duplicate")
    meta = worker.wait_state(task_id, "SUCCESS", "FAILURE")
    assert (meta["status"], meta["result"]) == ("SUCCESS", 0.2)
    assert executions(worker.env["CELERY_BROKER_URL"], task_id) == 1


def test_a_claim_is_renewed_while_its_message_waits(
    worker: Any, redis_server: Any, wait: Callable[..., Any]
) -> None:
    lease = int(worker.env["TASKRUN_CLAIM_LEASE_SECONDS"])
    claims = redis_server.client(1)  # the backend's Redis
    task_id = str(uuid.uuid4())
    worker.send("sleep", 0.1, task_id=task_id, countdown=2 * lease)
    wait(lambda: claims.exists(claim_key(task_id, 0)), what="the claim")
    taken = time.monotonic()
    # Once the first lease is over, only its renewals keep the claim.
    wait(lambda: time.monotonic() > taken + lease + 0.5, what="the first lease to end")
    assert claims.get(claim_key(task_id, 0)) is not None

    worker.send("sleep", 0.1, task_id=task_id)
    worker.wait_ledger(task_id, "skipped-duplicate")
    worker.wait_state(task_id, "SUCCESS", "FAILURE")
    assert executions(worker.env["CELERY_BROKER_URL"], task_id) == 1
    claims.close()


def test_a_message_held_by_a_worker_that_stops_runs_on_the_next_one(
    env_for: Callable[..., dict[str, str]],
    launch_worker: Callable[..., Any],
    worker: Any,
    redis_server: Any,
    wait: Callable[..., Any],
) -> None:
    # A rolling restart: the message a stopping worker held goes back to the queue, and
    # the claim on it must go too, or the next worker would drop it as a duplicate.
    queue = f"handover-{uuid.uuid4().hex[:8]}"
    claims = redis_server.client(1)
    first = launch_worker(env_for(), queue)
    task_id = worker.send("calculate_sum", [2, 2], queue=queue, countdown=3)
    wait(lambda: claims.exists(claim_key(task_id, 0)), what="the claim")
    assert first.stop() == 0
    assert not claims.exists(claim_key(task_id, 0))

    second = launch_worker(env_for(), queue)
    assert second.wait_state(task_id, "SUCCESS", "FAILURE")["result"] == 4
    assert [(e["event"], e["hostname"]) for e in second.ledger(task_id)] == [
        ("start", second.hostname),
        ("end", second.hostname),
    ]
    claims.close()


def unacked_score(broker: redis.Redis, task_id: str) -> tuple[bytes, float] | None:
    """(delivery tag, time it was delivered) of the message of ``task_id`` kombu holds unacked."""
    for tag, value in broker.hgetall("unacked").items():
        if task_id.encode() in value:
            score = broker.zscore("unacked_index", tag)
            if score is not None:
                return tag, score
    return None


@pytest.mark.parametrize(
    ("hand_on", "lease"),
    # Handed on: the worker holding the copy stops while the dead holder's claim is still
    # live (a longer lease leaves it the time to), and a third worker runs the copy.
    [(False, 3), (True, 6)],
    ids=["taken-over", "handed-on"],
)
def test_a_copy_redelivered_while_another_worker_holds_the_message_is_not_lost(
    env_for: Callable[..., dict[str, str]],
    launch_worker: Callable[..., Any],
    redis_server: Any,
    wait: Callable[..., Any],
    hand_on: bool,
    lease: int,
) -> None:
    # A countdown longer than the broker's visibility timeout: Redis gives a copy of the
    # message to another worker while the first still holds it, and takes the first out
    # of its unacked set. If the copy were acknowledged as a duplicate and the holder then
    # died, nothing would be left to bring the run back.
    visibility, countdown = 2, 6
    queue = f"restored-{uuid.uuid4().hex[:8]}"
    # The timeout applies to the whole broker database: every message this Redis holds
    # unacked longer is redelivered while these workers sweep.
    env = env_for(
        TASKRUN_VISIBILITY_TIMEOUT=str(visibility), TASKRUN_CLAIM_LEASE_SECONDS=str(lease)
    )
    holder = launch_worker(env, queue, concurrency=1)
    taker = launch_worker(env, f"{queue}-idle", concurrency=1)
    claims, broker = redis_server.client(1), redis_server.client(0)
    key = claim_key(task_id := str(uuid.uuid4()), 0)

    def claimed_by(worker: Any) -> bool:
        value = claims.get(key)
        return value is not None and value.decode().startswith(f"{worker.hostname}/")

    eta = time.time() + countdown
    holder.send("calculate_sum", [4, 5], task_id=task_id, queue=queue, countdown=countdown)
    wait(lambda: claimed_by(holder), what="the holder's claim")
    tag, delivered = wait(lambda: unacked_score(broker, task_id), what="the message unacked")
    # The holder takes nothing more from the queue (a worker at capacity would not
    # either), so that the copy goes to the other worker.
    control = holder.client.control
    for change, worker in ((control.cancel_consumer, holder), (control.add_consumer, taker)):
        assert change(queue, destination=[worker.hostname], reply=True, timeout=5)
    wait(
        lambda: broker.zscore("unacked_index", tag) != delivered and broker.llen(queue) == 0,
        timeout=visibility + 10,
        what="the copy to reach the other worker",
    )
    assert claimed_by(holder)
    assert time.time() < eta - 0.5, "too slow to kill the holder before the countdown ends"
    os.killpg(holder.process.pid, signal.SIGKILL)
    killed = time.time()
    holder.process.wait(5)

    runner = taker
    if hand_on:
        assert taker.stop() == 0
        assert claimed_by(holder), "the copy was taken over, not handed on"
        runner = launch_worker(env, queue, concurrency=1)
    meta = runner.wait_state(task_id, "SUCCESS", "FAILURE", timeout=countdown + 3 * lease)
    assert (meta["status"], meta["result"]) == ("SUCCESS", 9)
    starts = [e for e in runner.ledger(task_id) if e["event"] == "start"]
    assert [e["hostname"] for e in starts] == [runner.hostname]
    # Not before its countdown, nor before the holder was gone; and at the latest once
    # the holder's lease has lapsed and the runner has looked again (a third of the
    # lease later), with a second to spare.
    assert max(eta, killed) <= starts[0]["time"] < max(eta, killed + lease * 4 / 3) + 1
    # Every other copy was dropped once the run had started: none is left in the broker.
    wait(
        lambda: not unacked_holds(broker, task_id) and broker.llen(queue) == 0,
        what="every copy to be dropped",
    )
    assert executions(env["CELERY_BROKER_URL"], task_id) == 1
    claims.close()
    broker.close()


def test_a_celery_retry_of_the_same_id_is_not_a_duplicate(worker: Any) -> None:
    task_id = worker.send("flaky", 1, kwargs={"countdown": 0})
    meta = worker.wait_state(task_id, "SUCCESS", "FAILURE")
    assert (meta["status"], meta["result"]) == ("SUCCESS", {"attempts": 2})
    events = [e["event"] for e in worker.ledger(task_id)]
    assert "skipped-duplicate" not in events
    assert events.count("start") == 2


def test_a_run_revoked_before_any_worker_starts_never_executes(
    env_for: Callable[..., dict[str, str]],
    launch_worker: Callable[..., Any],
    worker: Any,
) -> None:
    queue = f"late-{uuid.uuid4().hex[:8]}"
    client = worker.client
    # The operator cancels while no worker is up: its revoke broadcast reaches nobody,
    # and the REVOKED it stores in the backend is all that is left.
    revoked = client.send_task("taskrun_workers.tasks.calculate_sum", args=[[1, 2]], queue=queue).id
    client.control.revoke(revoked)
    client.backend.mark_as_revoked(revoked, "Cancelled")
    after = client.send_task("taskrun_workers.tasks.calculate_sum", args=[[3]], queue=queue).id

    late = launch_worker(env_for(), queue)
    late.wait_ledger(revoked, "skipped-revoked")
    assert late.wait_state(after, "SUCCESS", "FAILURE")["result"] == 3
    assert late.meta(revoked)["status"] == "REVOKED"
    assert executions(late.env["CELERY_BROKER_URL"], revoked) == 0


def test_a_database_backend_gets_the_same_guarantees(
    env_for: Callable[..., dict[str, str]],
    launch_worker: Callable[..., Any],
    worker: Any,
    tmp_path: Path,
) -> None:
    queue = f"db-{uuid.uuid4().hex[:8]}"
    late = env_for(backend=f"db+sqlite:///{tmp_path / 'results.sqlite'}")
    client = create_app(late)
    revoked = client.send_task("taskrun_workers.tasks.calculate_sum", args=[[1, 2]], queue=queue).id
    client.backend.mark_as_revoked(revoked, "Cancelled")
    summed = client.send_task(
        "taskrun_workers.tasks.calculate_sum", args=[[1, 2, 3, 4, 5]], queue=queue
    ).id

    db_worker = launch_worker(late, queue)
    assert db_worker.wait_state(summed, "SUCCESS", "FAILURE")["result"] == 15
    db_worker.wait_ledger(revoked, "skipped-revoked")
    assert db_worker.meta(revoked)["status"] == "REVOKED"

    db_worker.send("calculate_sum", [100], task_id=summed, queue=queue)
    db_worker.wait_ledger(summed, "skipped-duplicate")
    assert db_worker.meta(summed)["result"] == 15
    broker_url = late["CELERY_BROKER_URL"]
    assert executions(broker_url, summed) == 1
    assert executions(broker_url, revoked) == 0


def test_an_unreachable_backend_lets_tasks_run(
    env_for: Callable[..., dict[str, str]],
    launch_worker: Callable[..., Any],
    worker: Any,
    closed_port: int,
) -> None:
    # Fail open: the guard cannot read the backend, logs, and lets the task through.
    queue = f"blind-{uuid.uuid4().hex[:8]}"
    blind = launch_worker(env_for(backend=f"redis://127.0.0.1:{closed_port}/1"), queue)
    task_id = worker.send("calculate_sum", [1], queue=queue)
    blind.wait_ledger(task_id, "end")
    assert executions(blind.env["CELERY_BROKER_URL"], task_id) == 1
    assert "cannot read" in blind.log.read_text()
    assert blind.alive()
