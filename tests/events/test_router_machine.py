"""State machines on the async runner (asyncio and trio): FM10's routing, and overflow.

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
from isolation import ConnectionClosedError, Principal, UserContext
from isolation.events import EventRouter, Overflow
from isolation.events._queue import Action, decide
from isolation.report._modes.fm10_routing.routing import PRINCIPALS, _UserKeyedRouter
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
        result = await self.router.publish(Principal(tenant, user), self.published)
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
        settings=settings(max_examples=60, stateful_step_count=40, deadline=None),
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


# -- overflow: the router against the pure decision, per connection ------------------


class OverflowMachine(AsyncRuleBasedStateMachine):
    """Publishes and receives under a drop or disconnect policy, against decide()."""

    policy: ClassVar[Overflow] = Overflow.DROP_OLDEST
    CAPACITY = 3
    PRINCIPALS: ClassVar[list[tuple[str | None, str]]] = [("a", "u"), ("b", "u"), (None, "v")]

    def __init__(self) -> None:
        super().__init__()
        self.router = EventRouter(queue_size=self.CAPACITY, overflow=self.policy)
        self.models: list[OverflowModel] = []
        self.published = 0

    connections = Bundle("connections")

    @rule(target=connections, index=st.integers(0, 2))
    async def connect(self, index: int) -> OverflowModel:
        tenant, user = self.PRINCIPALS[index]
        conn = await self.router.connect(UserContext.new(user, tenant_id=tenant))
        model = OverflowModel(conn, (tenant, user))
        self.models.append(model)
        return model

    @rule(index=st.integers(0, 2))
    async def publish(self, index: int) -> None:
        tenant, user = self.PRINCIPALS[index]
        self.published += 1
        for m in self.models:
            if m.principal == (tenant, user) and not m.closed:
                m.offer(self.published, self.policy, self.CAPACITY)
        await self.router.publish(Principal(tenant, user), self.published)

    @rule(m=connections)
    async def receive(self, m: OverflowModel) -> None:
        if m.closed:
            with pytest.raises(ConnectionClosedError):
                await m.conn.receive()
        elif m.queue:
            seq, payload = m.queue.popleft()
            event = await m.conn.receive()
            assert (event.seq, event.payload) == (seq, payload)
            assert (event.tenant_id, event.recipient) == m.principal

    @rule(m=connections)
    async def counts_agree(self, m: OverflowModel) -> None:
        stats = m.conn.stats()
        assert (stats.seq, stats.dropped, stats.queued) == (m.seq, m.dropped, len(m.queue))
        assert m.conn.closed == m.closed

    async def ateardown(self) -> None:
        await self.router.aclose()


class OverflowModel:
    def __init__(self, conn: Any, principal: tuple[str | None, str]) -> None:
        self.conn = conn
        self.principal = principal
        self.queue: deque[tuple[int, int]] = deque()
        self.seq = 0
        self.dropped = 0
        self.closed = False

    def offer(self, payload: int, policy: Overflow, capacity: int) -> None:
        self.seq += 1
        action = decide(policy, queued=len(self.queue), capacity=capacity)
        if action is Action.ACCEPT:
            self.queue.append((self.seq, payload))
        elif action is Action.EVICT_OLDEST:
            self.queue.popleft()
            self.queue.append((self.seq, payload))
            self.dropped += 1
        elif action is Action.DROP_NEW:
            self.dropped += 1
        else:
            self.dropped += len(self.queue) + 1
            self.queue.clear()
            self.closed = True


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize(
    "policy", [Overflow.DROP_OLDEST, Overflow.DROP_NEWEST, Overflow.DISCONNECT]
)
def test_overflow_agrees_with_decide(backend: str, policy: Overflow) -> None:
    """Each connection keeps, drops and numbers events exactly as the pure decision says."""
    machine = type(f"Overflow{policy.name.title()}", (OverflowMachine,), {"policy": policy})
    run_state_machine_as_test(
        machine.on_backend(backend),
        settings=settings(max_examples=30, stateful_step_count=30, deadline=None),
    )
