"""The watchdog asks about tasks, not hosts."""

from celery_taskrun.engine.watchdog import misses


def test_a_task_its_worker_does_not_report_is_missed() -> None:
    running = {"t1": "w1@h", "t2": "w1@h", "t3": "w2@h"}
    # w1 answers with t1 only (restarted in place: t2 died with the old process);
    # w2 does not answer at all.
    held = {"w1@h": {"t1"}}
    assert misses({}, running, held) == {"t2": 1, "t3": 1}
    assert misses({"t2": 2, "t1": 5}, running, held) == {"t2": 3, "t3": 1}


def test_reported_again_resets_the_count() -> None:
    assert misses({"t1": 2}, {"t1": "w"}, {"w": {"t1"}}) == {}
