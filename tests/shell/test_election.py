"""Two operators, one Lease: one acts; a leader that cannot renew stops before the
other may take over; a leader shutting down hands the Lease over; a standby writes
nothing and adopts everything when it leads.  Whole campaigns, on the loop's fake
time: when each operator starts and stops acting is asserted to the millisecond."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from celery_taskrun.api.config import OperatorConfig
from celery_taskrun.core.records import TaskRecord
from celery_taskrun.engine.elector import Elector
from celery_taskrun.engine.fence import Fence

from fakes import FakeLeases, Harness, loop_time, pass_time

DURATION, DEADLINE, PERIOD = 15.0, 10.0, 2.0
MS = 1e-3

pytestmark = pytest.mark.usefixtures("fake_time")


class Operators:
    """Operators sharing one Lease; what each did, with the loop time."""

    def __init__(self, monotonic: Callable[[], float] = loop_time) -> None:
        self.leases = FakeLeases()
        self.monotonic = monotonic  # the electors' clock
        self.log: list[tuple[float, str]] = []
        self.campaigns: dict[str, asyncio.Task[None]] = {}
        self.fences: dict[str, Fence] = {}

    def elector(self, name: str) -> Elector:
        """An operator's election, not campaigning yet (see `start`)."""
        client = self.leases.client()

        async def on_lead() -> None:
            self.said(f"{name} leads")

        async def on_lose() -> None:
            self.said(f"{name} stops")

        config = OperatorConfig(
            leaseDurationSeconds=DURATION,
            leaseRenewDeadlineSeconds=DEADLINE,
            leaseRetryPeriodSeconds=PERIOD,
        )
        fence = self.fences[name] = Fence(until=-math.inf, monotonic=self.monotonic)
        elector = Elector(
            client, config, on_lead=on_lead, on_lose=on_lose, fence=fence, monotonic=self.monotonic
        )
        client.who = elector.me
        return elector

    def start(self, name: str) -> Elector:
        elector = self.elector(name)
        self.campaigns[name] = asyncio.create_task(elector.campaign())
        return elector

    def said(self, what: str) -> None:
        self.log.append((loop_time(), what))
        self.leases.seen.note()

    def when(self, what: str) -> float:
        return next(t for t, said in self.log if said == what)

    async def until(self, what: str, within: float = 120.0) -> float:
        await self.leases.seen.until(lambda: any(s == what for _, s in self.log), within, what)
        return self.when(what)

    def renewals(self, elector: Elector) -> list[float]:
        return [t for t, who, spec in self.leases.writes if who == elector.me]

    async def shut_down(self, name: str) -> None:
        task = self.campaigns.pop(name)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest_asyncio.fixture(loop_scope="function")
async def operators(fake_time: None) -> AsyncIterator[Operators]:
    made = Operators()
    yield made
    for name in list(made.campaigns):
        await made.shut_down(name)


async def test_one_leads_and_the_other_takes_over_only_after_it_stopped(
    operators: Operators,
) -> None:
    a = operators.start("a")
    await operators.until("a leads")
    operators.start("b")
    await pass_time(60)
    assert [said for _, said in operators.log] == ["a leads"]
    renewals = operators.renewals(a)
    assert {round(t2 - t1, 3) for t1, t2 in itertools.pairwise(renewals)} == {PERIOD}

    operators.leases.down.add(a.me)  # a is cut off from the API server
    last = operators.renewals(a)[-1]
    stopped, took = await operators.until("a stops"), await operators.until("b leads")
    assert stopped == pytest.approx(last + DEADLINE, abs=MS)  # not renewed for the deadline
    assert took >= last + DURATION > stopped  # the Lease expired first: never both acting
    assert [said for _, said in operators.log] == ["a leads", "a stops", "b leads"]
    # a's effects were fenced off from the renew deadline on, before b's could pass.
    fences = operators.fences
    assert fences["a"].until == -math.inf and fences["b"].until > took
    assert not fences["a"].open() and fences["b"].open()


async def test_a_leader_paused_past_its_lease_does_nothing_until_it_reads_the_lease() -> None:
    """A frozen process (SIGSTOP, a long GC) wakes with its work queued: its fence is
    closed from its renew deadline on, whatever it has not noticed yet, and it stops on
    its first look at the Lease."""
    clock = [100.0]
    operators = Operators(monotonic=lambda: clock[0])

    async def turn(*electors: Elector) -> None:
        for e in electors:
            await e._try()
            await e._check()

    a, b = operators.elector("a"), operators.elector("b")
    await turn(a, b)
    assert a.fence.open() and not b.fence.open()
    clock[0] += DURATION + 5  # a is frozen past its lease; b takes over meanwhile
    await turn(b)
    assert b.leading and b.fence.open()
    assert a.leading and not a.fence.open()  # a has not looked yet, and must not act
    await turn(a)  # a wakes: it reads the Lease, finds b holding it and stops
    assert not a.leading and not a.fence.open()
    assert [said for _, said in operators.log] == ["a leads", "b leads", "a stops"]


async def test_a_hung_lease_call_never_keeps_a_leader_acting_past_its_deadline(
    operators: Operators,
) -> None:
    a = operators.start("a")
    await operators.until("a leads")
    operators.start("b")
    await pass_time(11)
    operators.leases.hung.add(a.me)  # its calls never answer (each cut at its timeout)
    last = operators.renewals(a)[-1]
    stopped, took = await operators.until("a stops"), await operators.until("b leads")
    # Each try is cut to the time left to renew: the last is the shortest (0.05 s).
    assert last + DEADLINE <= stopped <= last + DEADLINE + 0.05 + MS
    assert took >= last + DURATION > stopped


async def test_a_leader_shutting_down_hands_the_lease_over_at_once(operators: Operators) -> None:
    a = operators.start("a")
    await operators.until("a leads")
    operators.start("b")
    await pass_time(31)
    shut = loop_time()
    await operators.shut_down("a")
    assert operators.when("a stops") == shut
    # Released (no holder) rather than left to expire: b takes it at its next try.
    released = {"holderIdentity": "", "leaseDurationSeconds": 1}
    assert operators.leases.writes[-1] == (shut, a.me, released)
    took = await operators.until("b leads")
    assert took <= shut + PERIOD


async def test_a_standby_writes_nothing_then_adopts_everything(harness: Harness) -> None:
    await harness.tracker.step_down()
    run = await harness.apply({"task": "t.a"})  # seen while standing by: ignored
    await pass_time(60)
    assert not harness.kube.writes and not harness.kube.metadata_writes
    assert not harness.celery.sent and not harness.backend.reads
    await harness.tracker.lead()  # takes over: lists what the API server has
    await harness.until_phase(run, "Queued")


async def test_stepping_down_stops_every_step(harness: Harness) -> None:
    run = await harness.apply({"task": "t.a"})
    await harness.until_phase(run, "Queued")
    await harness.tracker.step_down()
    seen = (len(harness.kube.writes), len(harness.backend.reads), len(harness.kube.events))
    await harness.backend.publish(harness.task_id(run), TaskRecord("SUCCESS", 1))
    await pass_time(600)  # no poll, no write, no event: nothing runs any more
    assert (len(harness.kube.writes), len(harness.backend.reads), len(harness.kube.events)) == seen


async def test_stepping_down_outlasts_a_lost_cancellation(harness: Harness) -> None:
    # What a task does with its cancellation cannot be seen from outside: one is spawned
    # among the tracker's tasks, as a step whose `wait_for` lost the cancellation.
    stopped = []

    async def stubborn() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.append(loop_time())

    harness.tracker.tasks.spawn(stubborn())
    await asyncio.sleep(0)
    began = loop_time()
    await harness.tracker.step_down()
    assert stopped == [pytest.approx(began + 0.5, abs=MS)]  # asked again after 0.5 s
    assert not list(harness.tracker.tasks)
