"""FM15, queue overflow drops or misroutes messages: per-connection bounds, explicit policy.

Subject: a router class (``make(queue_size=..., overflow=..., publish_timeout=...)``).
Scenario, for every :class:`~isolation.events.Overflow` policy: capacity 10,
three principals (two share a user id across tenants) with two connections
each, a burst of 50 events to each principal with no consumer running, then
everything drained. The property, per connection: the ``seq`` values handed
over are exactly those the pure model (:func:`isolation.events._queue.burst`)
keeps (drop-oldest the last 10, drop-newest and block the first 10,
disconnect none, and the consumer learns it was disconnected), the dropped
count is exact, and 0 events reach another principal. With ``BLOCK`` and a
consumer running, all 50 arrive in order. The mutant spills overflow into one
shared queue that any connection with room then drains.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import anyio

from isolation._errors import ConnectionClosedError, QueueFullError
from isolation.context._model import Principal, UserContext
from isolation.events._model import (
    CloseReason,
    ConnectionStats,
    Event,
    Overflow,
    PublishResult,
    make_event,
    next_event_number,
)
from isolation.events._queue import burst
from isolation.events._router import EventRouter
from isolation.report._modes._support.events import drain_all, principal_of
from isolation.report._modes._support.registration import add_check
from isolation.report._registry import ModeRegistry, Settings

__all__ = ["check_overflow_exact", "register"]

CAPACITY = 10
BURST = 50
CONNECTIONS = 2
PRINCIPALS: tuple[Principal, ...] = (
    Principal("fm15-a", "user-0"),
    Principal("fm15-b", "user-0"),
    Principal("fm15-a", "user-1"),
)


async def check_overflow_exact(make: Callable[..., Any], settings: Settings) -> list[str]:
    """Capacity 10, burst 50, every policy: exact delivered and dropped counts, 0 misrouted."""
    violations: list[str] = []
    for policy in Overflow:
        await _burst_without_consumer(make, policy, violations)
    await _block_with_consumer(make, violations)
    return violations


async def _burst_without_consumer(
    make: Callable[..., Any], policy: Overflow, violations: list[str]
) -> None:
    router = make(queue_size=CAPACITY, overflow=policy, publish_timeout=0.001)
    try:
        conns = [
            await router.connect(UserContext.new(user, tenant_id=tenant))
            for tenant, user in PRINCIPALS
            for _ in range(CONNECTIONS)
        ]
        totals = {principal: [0, 0] for principal in PRINCIPALS}
        for n in range(1, BURST + 1):
            for principal in PRINCIPALS:
                try:
                    result = await router.publish(principal, (*principal, n))
                except QueueFullError as exc:
                    result = exc.result
                totals[principal][0] += result.delivered
                totals[principal][1] += result.dropped
        model = burst(policy, CAPACITY, range(1, BURST + 1))
        # Under BLOCK the waiting publishers time out (no consumer): their events drop.
        expected_dropped = model.dropped + len(model.waiting)
        stats = [conn.stats() for conn in conns]
        drained = await drain_all(conns)
        for result, before in zip(drained, stats, strict=True):
            owner = result.conn.principal
            where = f"{policy.value}: a connection of {owner[1]} ({owner[0]})"
            for event in result.events:
                if principal_of(event) != owner or tuple(event.payload[:2]) != owner:
                    violations.append(f"{where} was handed an event for {event.payload[:2]}")
            seqs = tuple(e.seq for e in result.events)
            if seqs != model.kept:
                violations.append(f"{where} got seq {_short(seqs)}, expected {_short(model.kept)}")
            if any(e.payload[2] != e.seq for e in result.events):
                violations.append(f"{where}: seq does not match the publish order")
            if before.dropped != expected_dropped:
                violations.append(f"{where} dropped {before.dropped}, expected {expected_dropped}")
            disconnected = (
                isinstance(result.error, ConnectionClosedError)
                and result.error.reason is CloseReason.OVERFLOW
            )
            if disconnected != model.disconnected:
                violations.append(
                    f"{where}: disconnected={disconnected}, expected {model.disconnected}"
                )
        for principal, (delivered, dropped) in totals.items():
            expected = _expected_totals(policy)
            if (delivered, dropped) != expected:
                violations.append(
                    f"{policy.value}: publishes to {principal[1]} ({principal[0]}) reported "
                    f"delivered={delivered} dropped={dropped}, expected {expected}"
                )
    finally:
        await router.aclose()


def _expected_totals(policy: Overflow) -> tuple[int, int]:
    """Summed PublishResults for one principal of two connections over the burst."""
    overflow = BURST - CAPACITY
    if policy is Overflow.DROP_OLDEST:
        return (BURST * CONNECTIONS, overflow * CONNECTIONS)
    if policy is Overflow.DISCONNECT:
        return (CAPACITY * CONNECTIONS, (CAPACITY + 1) * CONNECTIONS)
    return (CAPACITY * CONNECTIONS, overflow * CONNECTIONS)


async def _block_with_consumer(make: Callable[..., Any], violations: list[str]) -> None:
    router = make(queue_size=CAPACITY, overflow=Overflow.BLOCK, publish_timeout=30)
    try:
        principal = PRINCIPALS[0]
        conn = await router.connect(
            UserContext.new(principal.user_id, tenant_id=principal.tenant_id)
        )
        seen: list[int] = []
        async with anyio.create_task_group() as tg:

            async def consume() -> None:
                try:
                    while True:
                        seen.append((await conn.receive()).seq)
                except ConnectionClosedError:
                    pass

            tg.start_soon(consume)
            for n in range(1, BURST + 1):
                await router.publish(principal, (*principal, n))
            await anyio.wait_all_tasks_blocked()
            await conn.aclose()
        if seen != list(range(1, BURST + 1)):
            violations.append(
                f"block with a consumer: got seq {_short(tuple(seen))}, expected 1..50"
            )
    finally:
        await router.aclose()


def _short(seqs: tuple[int, ...]) -> str:
    if len(seqs) <= 6:
        return str(list(seqs))
    return f"[{seqs[0]}, {seqs[1]}, ..., {seqs[-1]}] ({len(seqs)})"


# -- the mutant: overflow spills into one shared queue --


class _SpillConnection:
    def __init__(self, router: _SpillingRouter, ctx: UserContext) -> None:
        self._router = router
        self.principal = ctx.principal
        self.queue: deque[Event] = deque()
        self.seq = 0
        self.dropped = 0
        self.closed = False

    async def receive(self) -> Event:
        if self.queue:
            return self.queue.popleft()
        spill = self._router.spill
        if spill and not self.closed:
            return spill.popleft()  # "any consumer with room helps drain the overflow"
        raise ConnectionClosedError("nothing more", reason=CloseReason.CLOSED)

    def stats(self) -> ConnectionStats:
        return ConnectionStats(
            seq=self.seq,
            delivered=0,
            dropped=self.dropped,
            refused=0,
            queued=len(self.queue),
            waiting=0,
        )

    async def aclose(self) -> None:
        self.closed = True


class _SpillingRouter:
    """Mutant: bounded per-connection queues whose overflow goes to one shared queue."""

    def __init__(self, *, queue_size: int = 100, **options: Any) -> None:
        self.capacity = queue_size
        self.spill: deque[Event] = deque()
        self.conns: list[_SpillConnection] = []

    async def connect(self, ctx: UserContext) -> _SpillConnection:
        conn = _SpillConnection(self, ctx)
        self.conns.append(conn)
        return conn

    async def publish(self, to: Principal, payload: Any) -> PublishResult:
        tenant_id, user_id = to
        number = next_event_number()
        delivered = 0
        for conn in self.conns:
            if conn.principal != to:
                continue
            conn.seq += 1
            event = make_event((number, user_id, tenant_id, "message", 0.0), payload, conn.seq)
            if len(conn.queue) < self.capacity:
                conn.queue.append(event)
            else:
                self.spill.append(event)  # nothing is lost, it is only "delayed"
            delivered += 1
        return PublishResult(delivered=delivered, dropped=0)

    async def aclose(self) -> None:
        self.conns.clear()


def register(registry: ModeRegistry) -> None:
    """Register FM15's check."""
    add_check(
        registry,
        15,
        "overflow-exact",
        check_overflow_exact,
        library=lambda: EventRouter,
        mutant=lambda: _SpillingRouter,
        description=(
            "capacity 10, burst 50, every policy: exact delivered and dropped counts, "
            "seq gaps visible, 0 misrouted"
        ),
    )
