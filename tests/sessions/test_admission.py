"""Admission: the pure bookkeeping (a model-checked state machine) and its async face."""

from __future__ import annotations

from collections import deque

import anyio
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

import isolation
from _support.databases import Note, checked_out
from isolation import PoolExhaustedError, UserContext
from isolation.sessions import SessionManager
from isolation.sessions._admission import Admission, Waiter, sync_wait

PRINCIPALS = [("t1", "alice"), ("t2", "alice"), ("t1", "bob")]


class AdmissionMachine(RuleBasedStateMachine):
    """Admission never exceeds either bound, never strands a waiter that fits, stays FIFO."""

    def __init__(self) -> None:
        super().__init__()
        self.adm = Admission(capacity=3, per_principal=2)
        self.holding: list[tuple[str | None, str]] = []
        self.queue: deque[Waiter] = deque()

    @rule(principal=st.sampled_from(PRINCIPALS))
    def arrive(self, principal: tuple[str | None, str]) -> None:
        if self.adm.try_admit(principal):
            self.holding.append(principal)
        else:
            waiter = Waiter(principal)
            self.adm.enqueue(waiter)
            self.queue.append(waiter)

    @precondition(lambda self: bool(self.holding))
    @rule(index=st.integers(min_value=0, max_value=10))
    def leave(self, index: int) -> None:
        principal = self.holding.pop(index % len(self.holding))
        granted = self.adm.release(principal)
        order = [w for w in self.queue if w in granted]
        assert granted == order  # granted in queue order
        for waiter in granted:
            assert waiter.granted
            self.queue.remove(waiter)
            self.holding.append(waiter.principal)

    @precondition(lambda self: bool(self.queue))
    @rule(index=st.integers(min_value=0, max_value=10))
    def give_up(self, index: int) -> None:
        waiter = self.queue[index % len(self.queue)]
        assert self.adm.withdraw(waiter)
        self.queue.remove(waiter)

    @invariant()
    def bounds_hold(self) -> None:
        assert self.adm.in_use == len(self.holding) <= 3
        for principal in PRINCIPALS:
            assert self.adm.held_by(principal) == self.holding.count(principal) <= 2

    @invariant()
    def no_waiter_left_that_fits(self) -> None:
        for waiter in self.queue:
            fits = self.adm.in_use < 3 and self.adm.held_by(waiter.principal) < 2
            assert not fits


TestAdmissionMachine = AdmissionMachine.TestCase


def test_granted_waiter_that_gives_up_must_release() -> None:
    """withdraw() tells a waiter granted meanwhile that it holds a slot."""
    adm = Admission(capacity=1, per_principal=1)
    assert adm.try_admit(("t", "a"))
    waiter = Waiter(("t", "b"))
    adm.enqueue(waiter)
    assert adm.release(("t", "a")) == [waiter]
    assert adm.withdraw(waiter) is False
    assert adm.in_use == 1


class TestAsyncAdmission:
    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.mark.anyio
    async def test_greedy_user_is_held_at_its_limit(self, engine: AsyncEngine) -> None:
        """A greedy user holds at most its limit while other users' requests proceed."""
        manager = SessionManager(engine, per_user_limit=2, acquire_timeout=30)
        release = anyio.Event()
        greedy_inside = 0
        greedy_peak = 0
        others_done = 0

        async def greedy() -> None:
            nonlocal greedy_inside, greedy_peak
            async with (
                isolation.scope(UserContext.new("greedy", tenant_id="t")),
                manager.session() as s,
            ):
                await s.execute(select(Note))
                greedy_inside += 1
                greedy_peak = max(greedy_peak, greedy_inside)
                await release.wait()
                greedy_inside -= 1

        async def other(i: int) -> None:
            nonlocal others_done
            async with (
                isolation.scope(UserContext.new(f"u{i}", tenant_id="t")),
                manager.session() as s,
            ):
                await s.execute(select(Note))
            others_done += 1

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(greedy)
                await anyio.wait_all_tasks_blocked()
                assert manager.stats().checked_out == 2
                async with anyio.create_task_group() as others:
                    for i in range(12):
                        others.start_soon(other, i)
                assert others_done == 12
                assert greedy_peak == 2
                release.set()
        assert greedy_peak == 2
        assert manager.stats().checked_out == 0
        assert checked_out(engine) == 0

    @pytest.mark.anyio
    async def test_cancelled_waiter_leaves_no_slot_behind(self, engine: AsyncEngine) -> None:
        """A request cancelled while waiting for admission holds nothing afterwards."""
        manager = SessionManager(engine, per_user_limit=1, acquire_timeout=30)
        release = anyio.Event()

        async def holder() -> None:
            async with isolation.scope(UserContext.new("a")), manager.session():
                await release.wait()

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder)
                await anyio.wait_all_tasks_blocked()
                async with anyio.create_task_group() as waiting:
                    waiting.start_soon(holder)
                    await anyio.wait_all_tasks_blocked()
                    assert len(manager._admission.waiters) == 1
                    waiting.cancel_scope.cancel()
                assert not manager._admission.waiters
                assert manager.stats().checked_out == 1
                release.set()
        assert manager.stats().checked_out == 0

    @pytest.mark.anyio
    async def test_global_bound_exhaustion(self, engine: AsyncEngine) -> None:
        """With every connection held by other users, a request fails within its bound."""
        manager = SessionManager(engine, per_user_limit=1, acquire_timeout=0.05)
        release = anyio.Event()
        errors: list[PoolExhaustedError] = []

        async def holder(i: int) -> None:
            async with isolation.scope(UserContext.new(f"u{i}")), manager.session():
                await release.wait()

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for i in range(5):
                    tg.start_soon(holder, i)
                await anyio.wait_all_tasks_blocked()
                try:
                    async with isolation.scope(UserContext.new("late")), manager.session():
                        pass
                except PoolExhaustedError as exc:
                    errors.append(exc)
                release.set()
        assert len(errors) == 1
        assert "all 5 connections of the pool are in use" in str(errors[0])
        error = errors[0]
        assert (error.limit, error.held, error.capacity, error.timeout) == ("pool", 0, 5, 0.05)
        assert error.waited > 0


@pytest.mark.parametrize(
    ("timeout", "deadline", "now", "limit", "expires"),
    [
        (10.0, None, 100.0, 10.0, False),  # no deadline: acquire_timeout bounds the wait
        (10.0, 120.0, 100.0, 10.0, False),  # the deadline is further than the timeout
        (10.0, 110.0, 100.0, 10.0, False),  # both at once: an exhausted pool, not expiry
        (10.0, 105.0, 100.0, 5.0, True),  # the deadline comes first: the wait is cut to it
        (10.0, 99.0, 100.0, 0.0, True),  # already past: no wait, never a negative one
    ],
)
def test_a_sync_wait_is_bounded_by_the_deadline(
    timeout: float, deadline: float | None, now: float, limit: float, expires: bool
) -> None:
    """A thread is not cancelled at the deadline: its wait for a slot is cut to it instead."""
    assert sync_wait(timeout, deadline, now) == (limit, expires)
