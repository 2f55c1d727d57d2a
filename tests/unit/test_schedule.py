"""The schedule of looks, on a clock the test moves."""

from celery_taskrun.core.schedule import Schedule


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_due_in_order_and_once() -> None:
    clock = Clock()
    schedule = Schedule(clock)
    schedule.at("b", 2)
    schedule.at("a", 1)
    assert schedule.due() == [] and schedule.wait() == 1
    clock.t += 2
    assert schedule.due() == ["a", "b"]
    assert schedule.due() == [] and schedule.wait() is None


def test_a_later_entry_replaces_an_earlier_one() -> None:
    clock = Clock()
    schedule = Schedule(clock)
    assert schedule.at("a", 5)
    assert not schedule.at("b", 9)
    assert schedule.at("b", 1)  # earliest now
    clock.t += 2
    assert schedule.due() == ["b"]
    clock.t += 10
    assert schedule.due() == ["a"]


def test_dropped_keys_never_come_due() -> None:
    clock = Clock()
    schedule = Schedule(clock)
    schedule.at("a", 0)
    schedule.drop("a")
    assert schedule.due() == [] and len(schedule) == 0


def test_rescheduling_a_key_many_times_keeps_the_heap_small() -> None:
    clock = Clock()
    schedule = Schedule(clock)
    for i in range(10_000):
        schedule.at("flood", i % 7)
    assert len(schedule._heap) < 200
    clock.t += 10
    assert schedule.due() == ["flood"]
