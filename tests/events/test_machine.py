"""FM10 as a state machine on the async runner: 200 principals, asyncio and trio.

Rules: connect, disconnect, publish, receive, start a background receive,
cancel it, and let contexts expire. A model says what each connection must
receive; the property is that no event reaches another principal's connection
and, under ``BLOCK``, none is lost or duplicated. The same machine over the
failure-mode registry's mutant (routing by user id alone) must fail.
"""

from __future__ import annotations

from collections import deque
from typing import Any, ClassVar

import anyio
import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, precondition, rule, run_state_machine_as_test

import isolation._clock
from isolation import ConnectionClosedError, UserContext
from isolation.events import EventRouter
from isolation.report.modes.fm10_routing import PRINCIPALS, _UserKeyedRouter
from isolation.testing import AsyncRuleBasedStateMachine, FakeClock

# Hypothesis favours the first branch: the first two user ids (both tenants)
# come up often enough that "same user id, two tenants" is always exercised.
principals = st.one_of(st.sampled_from(PRINCIPALS[:4]), st.sampled_from(PRINCIPALS))
ttls = st.sampled_from([None, 5.0, 20.0])


class Model:
    """What one connection must still hand over, and whether it is closed."""

    def __init__(self, conn: Any, principal: tuple[str | None, str], expires_at: float | None):
        self.conn = conn
        self.principal = principal
        self.expires_at = expires_at
        self.expected: deque[int] = deque()
        self.closed = False
        self.receiver: anyio.CancelScope | None = None


class RouterMachine(AsyncRuleBasedStateMachine):
    """The router against a model, one event loop per run."""

    make: ClassVar[Any] = EventRouter

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.previous = isolation._clock.set_clock(self.clock)
        self.router = type(self).make(queue_size=10_000, max_connections_per_user=10_000)
        self.models: list[Model] = []
        self.published = 0
        self.violations: list[str] = []

    connections = Bundle("connections")

    def _check(self, m: Model, event: Any) -> None:
        if (event.tenant_id, event.recipient) != m.principal:
            self.violations.append(
                f"{m.principal} was handed an event for {(event.tenant_id, event.recipient)}"
            )
            return
        want = m.expected.popleft() if m.expected else None
        if event.payload != want:
            self.violations.append(f"{m.principal} got {event.payload}, expected {want}")

    def _expire_models(self) -> None:
        for m in self.models:
            if not m.closed and m.expires_at is not None and self.clock.time() >= m.expires_at:
                m.closed = True
                m.expected.clear()

    @rule(target=connections, principal=principals, ttl=ttls)
    async def connect(self, principal: tuple[str, str], ttl: float | None) -> Model:
        tenant, user = principal
        ctx = UserContext.new(user, tenant_id=tenant, ttl=ttl)
        m = Model(await self.router.connect(ctx), principal, ctx.expires_at)
        self.models.append(m)
        return m

    @rule(m=connections)
    async def disconnect(self, m: Model) -> None:
        await m.conn.aclose()
        m.closed = True
        m.expected.clear()

    @rule(m=connections)
    async def publish_to_connected(self, m: Model) -> None:
        """Publish to the principal of a connection (which may be closed by now)."""
        await self.publish(m.principal)

    @rule(principal=principals)
    async def publish_to_any(self, principal: tuple[str, str]) -> None:
        await self.publish(principal)

    async def publish(self, principal: tuple[str | None, str]) -> None:
        tenant, user = principal
        self.published += 1
        # The model first: a background receiver may take the event at once.
        targets = [m for m in self.models if not m.closed and m.principal == principal]
        for m in targets:
            m.expected.append(self.published)
        result = await self.router.publish(user, self.published, tenant_id=tenant)
        if result.delivered != len(targets):
            self.violations.append(f"publish to {principal}: {result}, expected {len(targets)}")

    @precondition(lambda self: any(m.receiver is None for m in self.models))
    @rule(m=connections)
    async def receive(self, m: Model) -> None:
        if m.receiver is not None:
            return
        if m.closed:
            with pytest.raises(ConnectionClosedError):
                await m.conn.receive()
        elif m.expected:
            self._check(m, await m.conn.receive())

    @rule(m=connections)
    async def start_receiving(self, m: Model) -> None:
        """A consumer task that keeps receiving across later steps."""
        if m.receiver is not None or m.closed:
            return
        scope = anyio.CancelScope()
        m.receiver = scope

        async def consume() -> None:
            with scope:
                try:
                    while True:
                        self._check(m, await m.conn.receive())
                except ConnectionClosedError:
                    if not m.closed:
                        self.violations.append(f"a live connection of {m.principal} refused")
            m.receiver = None

        self.task_group.start_soon(consume)

    @rule(m=connections)
    async def cancel_receiving(self, m: Model) -> None:
        """Cancel the consumer task wherever it is: nothing may be lost."""
        if m.receiver is not None:
            m.receiver.cancel()
            await anyio.wait_all_tasks_blocked()

    @rule(seconds=st.sampled_from([1.0, 5.0, 15.0]))
    async def expire(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self._expire_models()
        await anyio.wait_all_tasks_blocked()

    async def ateardown(self) -> None:
        try:
            for m in self.models:
                if m.receiver is not None:
                    m.receiver.cancel()
            await anyio.wait_all_tasks_blocked()
            self._expire_models()
            for m in self.models:
                if m.closed:
                    continue
                while m.expected:
                    self._check(m, await m.conn.receive())
                with anyio.move_on_after(0.001):
                    event = await m.conn.receive()
                    self.violations.append(f"{m.principal} had an extra event {event.payload}")
            await self.router.aclose()
        finally:
            isolation._clock.set_clock(self.previous)
        assert self.violations == []

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            isolation._clock.set_clock(self.previous)
        assert self.violations == [], self.violations[:5]


class MutantMachine(RouterMachine):
    make = _UserKeyedRouter


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_router_agrees_with_model(backend: str) -> None:
    """0 events to another principal; with BLOCK, 0 lost and 0 duplicated."""
    run_state_machine_as_test(
        RouterMachine.on_backend(backend),
        settings=settings(max_examples=25, stateful_step_count=30, deadline=None),
    )


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_mutant_fails(backend: str) -> None:
    """The machine catches routing by user id alone."""
    with pytest.raises(AssertionError) as info:
        run_state_machine_as_test(
            MutantMachine.on_backend(backend),
            settings=settings(
                max_examples=100,
                stateful_step_count=30,
                deadline=None,
                phases=[Phase.explicit, Phase.generate],  # found is enough: no shrinking
            ),
        )
    assert "was handed an event for" in str(info.value) or "expected" in str(info.value)


def test_principals() -> None:
    """The machine draws from 200 principals: 100 user ids, each in two tenants."""
    assert len(set(PRINCIPALS)) == 200
    assert len({user for _, user in PRINCIPALS}) == 100
