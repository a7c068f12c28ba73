"""FM15 across two routers on one Redis: overflow applies exactly on the receiving side.

Subject: a router class (``make(backend=..., queue_size=..., overflow=...,
publish_timeout=...)``); runs only when the report is given ``--redis URL``.
Scenario, for every :class:`~isolation.events.Overflow` policy: routers A and
B on one Redis namespace (:func:`.._support.redis.two_routers`), capacity 10; the three
principals of the in-memory check hold two connections each on B, with no
consumer running; a burst of 50 events to each principal goes through A, which
holds no connection of theirs. Once B has handled every envelope (a marker
through A reached B; under ``BLOCK``, every receive-side wait ended),
everything is drained.

The property, per connection on B: the ``seq`` values of the messages are
exactly those the pure model (:func:`isolation.events._queue.burst`) keeps
(drop-oldest the last 10, drop-newest and block the first 10, disconnect none,
and the consumer learns it was closed with reason ``OVERFLOW``), the dropped
count and the last ``seq`` are exact, 0 events reach another principal, B
refuses none, and A's ``PublishResult`` counts 0 delivered and 0 dropped (it
counts A's connections only). ``BLOCK`` ends as the backend makes it: each of
the 40 events that found no room waited ``publish_timeout`` (0.1 s here) in a
task of B's backend and was dropped, and each connection holds one ``"gap"``
event (reason ``"overflow"``) after its 10 messages; B's backend counts 120
overflow drops and 6 gaps. The gap takes the next ``seq``: 51 when all 50
events had reached B before the first wait timed out (it then queues behind
them), else the one after the last event that had arrived. With ``BLOCK``
and a consumer on B, all 50 arrive in order, and no gap.

The mutant is the in-memory mutant on a Redis backend: B's connections keep 10
events each and spill the rest into one queue of the router, which any
connection drains once its own are read. It is caught every run: it drops
nothing (every policy expects drops), and the spill hands events to other
principals.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Final

import anyio

from isolation._errors import ConnectionClosedError
from isolation.context._model import Principal, UserContext
from isolation.events._connection import Connection
from isolation.events._model import GAP, CloseReason, ConnectionStats, Event, Overflow
from isolation.events._queue import burst
from isolation.events._router import EventRouter
from isolation.report._modes._support.events import drain_all, principal_of
from isolation.report._modes._support.redis import (
    HANG_GUARD,
    RouterPair,
    WrappedRouter,
    two_routers,
)
from isolation.report._modes._support.registration import add_check
from isolation.report._modes.fm15_overflow.memory import BURST, CAPACITY, CONNECTIONS, PRINCIPALS
from isolation.report._registry import Backend, ModeRegistry, Settings

__all__ = ["check_overflow_across_routers", "register"]

BLOCK_TIMEOUT: Final = 0.1
"""B's ``publish_timeout`` in the burst: how long a receive-side ``BLOCK`` wait lasts."""
_LAST_SEQ: Final = {
    Overflow.DROP_OLDEST: BURST,
    Overflow.DROP_NEWEST: BURST,
    Overflow.DISCONNECT: CAPACITY + 1,  # closed by the 11th; no later event is offered
    Overflow.BLOCK: BURST + 1,  # the gap takes a seq too
}


async def check_overflow_across_routers(make: Callable[..., Any], settings: Settings) -> list[str]:
    """Burst of 50 through router A to connections on router B: exact counts on B, 0 misrouted."""
    violations: list[str] = []
    for policy in Overflow:
        async with two_routers(
            make,
            settings,
            queue_size=CAPACITY,
            overflow=policy,
            publish_timeout=BLOCK_TIMEOUT,
        ) as pair:
            await _burst_across(pair, policy, violations)
    async with two_routers(
        make, settings, queue_size=CAPACITY, overflow=Overflow.BLOCK, publish_timeout=HANG_GUARD
    ) as pair:
        await _block_with_consumer(pair, violations)
    return violations


async def _burst_across(pair: RouterPair, policy: Overflow, violations: list[str]) -> None:
    conns = [
        await pair.b.connect(UserContext.new(user, tenant_id=tenant))
        for tenant, user in PRINCIPALS
        for _ in range(CONNECTIONS)
    ]
    totals = dict.fromkeys(PRINCIPALS, (0, 0))
    for n in range(1, BURST + 1):
        for principal in PRINCIPALS:
            result = await pair.a.publish(principal, [*principal, n])
            delivered, dropped = totals[principal]
            totals[principal] = (delivered + result.delivered, dropped + result.dropped)
    for (tenant, user), counted in totals.items():
        if counted != (0, 0):
            violations.append(
                f"{policy.value}: router A, with no connection of {user} ({tenant}), reported "
                f"delivered={counted[0]} dropped={counted[1]}, expected (0, 0)"
            )
    if not await pair.caught_up(violations):
        return
    # Whether every event had reached B before the first BLOCK wait timed out (then
    # each connection holds 10 and waits on 40): the gap's seq is then exactly 51.
    all_arrived = [s.dropped == 0 and s.waiting == BURST - CAPACITY for s in _stats(conns)]
    if policy is Overflow.BLOCK:
        with anyio.move_on_after(HANG_GUARD) as guard:
            await pair.waits_b.settled()
        if guard.cancelled_caught:
            violations.append(f"B's BLOCK waits did not end within {HANG_GUARD:.0f} s")
    model = burst(policy, CAPACITY, range(1, BURST + 1))
    expected_dropped = model.dropped + len(model.waiting)
    before = _stats(conns)
    drained = await drain_all(conns)
    for result, stats, arrived in zip(drained, before, all_arrived, strict=True):
        owner = result.conn.principal
        where = f"{policy.value}: a connection of {owner[1]} ({owner[0]}) on B"
        for event in result.events:
            if principal_of(event) != owner or (
                event.kind != GAP and _payload_principal(event) != owner
            ):
                violations.append(f"{where} was handed an event for {_payload_principal(event)}")
        messages = [e for e in result.events if e.kind != GAP]
        gaps = [e for e in result.events if e.kind == GAP]
        seqs = tuple(e.seq for e in messages)
        if seqs != model.kept:
            violations.append(f"{where} got seq {_short(seqs)}, expected {_short(model.kept)}")
        if any(_payload_number(e) != e.seq for e in messages):
            violations.append(f"{where}: seq does not match the publish order")
        if stats.dropped != expected_dropped:
            violations.append(f"{where} dropped {stats.dropped}, expected {expected_dropped}")
        if stats.seq != _LAST_SEQ[policy]:
            violations.append(f"{where} reached seq {stats.seq}, expected {_LAST_SEQ[policy]}")
        closed_by_overflow = (
            isinstance(result.error, ConnectionClosedError)
            and result.error.reason is CloseReason.OVERFLOW
        )
        if closed_by_overflow != model.disconnected:
            violations.append(
                f"{where}: disconnected={closed_by_overflow}, expected {model.disconnected}"
            )
        if policy is Overflow.BLOCK:
            _check_gap(where, result.events, gaps, exact=arrived, violations=violations)
        elif gaps:
            violations.append(f"{where} got {len(gaps)} gap events, expected none")
    _check_counters(pair, policy, violations)


def _check_gap(
    where: str, events: list[Any], gaps: list[Any], *, exact: bool, violations: list[str]
) -> None:
    """Under BLOCK: one gap (reason "overflow"), last, after the 10 kept, at seq 51 if ``exact``."""
    if len(gaps) != 1:
        violations.append(f"{where} got {len(gaps)} gap events, expected 1")
        return
    gap = gaps[0]
    if gap.payload != {"reason": "overflow"}:
        violations.append(f"{where} got a gap with payload {gap.payload!r}")
    if events[-1] is not gap:
        violations.append(f"{where}: the gap is not the last event handed over")
    lowest = BURST + 1 if exact else CAPACITY + 2
    if not lowest <= gap.seq <= BURST + 1:
        violations.append(f"{where}: the gap has seq {gap.seq}, expected {lowest}..{BURST + 1}")


def _check_counters(pair: RouterPair, policy: Overflow, violations: list[str]) -> None:
    """B's router refused nothing; B's backend counted exactly the BLOCK drops and gaps."""
    refused = pair.b.stats().refused
    if refused:
        violations.append(f"{policy.value}: router B refused {refused} events at the last step")
    stats = pair.backend_b.stats()
    overflow = (BURST - CAPACITY) * len(PRINCIPALS) if policy is Overflow.BLOCK else 0
    gaps = CONNECTIONS * len(PRINCIPALS) if policy is Overflow.BLOCK else 0
    if stats.dropped.get("overflow", 0) != overflow or stats.gaps != gaps:
        violations.append(
            f"{policy.value}: B's backend counted {stats.dropped.get('overflow', 0)} overflow "
            f"drops and {stats.gaps} gaps, expected {overflow} and {gaps}"
        )


async def _block_with_consumer(pair: RouterPair, violations: list[str]) -> None:
    principal = PRINCIPALS[0]
    conn = await pair.b.connect(UserContext.new(principal.user_id, tenant_id=principal.tenant_id))
    seen: list[Any] = []
    closed: list[ConnectionClosedError] = []

    async def consume() -> None:
        try:
            while len(seen) < BURST:
                seen.append(await conn.receive())
        except ConnectionClosedError as exc:
            closed.append(exc)

    with anyio.move_on_after(HANG_GUARD) as guard:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            for n in range(1, BURST + 1):
                await pair.a.publish(principal, [*principal, n])
    where = "block with a consumer on B"
    if guard.cancelled_caught or closed:
        violations.append(f"{where}: {len(seen)} of {BURST} events arrived before it stopped")
    got = [(e.kind, e.seq, _payload_number(e)) for e in seen]
    if got != [("message", n, n) for n in range(1, BURST + 1)]:
        violations.append(
            f"{where}: got seq {_short(tuple(e.seq for e in seen))}, expected 1..50, no gap"
        )
    await conn.aclose()


def _stats(conns: list[Any]) -> list[ConnectionStats]:
    return [conn.stats() for conn in conns]


def _payload_principal(event: Any) -> tuple[Any, Any] | None:
    payload = event.payload
    if isinstance(payload, list) and len(payload) == 3:
        return (payload[0], payload[1])
    return None


def _payload_number(event: Any) -> Any:
    payload = event.payload
    return payload[2] if isinstance(payload, list) and len(payload) == 3 else None


def _short(seqs: tuple[int, ...]) -> str:
    if len(seqs) <= 6:
        return str(list(seqs))
    return f"[{seqs[0]}, {seqs[1]}, ..., {seqs[-1]}] ({len(seqs)})"


# -- the mutant: overflow spills into one queue of the router --


class _SpillConnection:
    """Mutant connection: 10 events of its own, then whatever the router's spill holds."""

    def __init__(self, router: _SpillingRouter, inner: Connection) -> None:
        self._router = router
        self.inner = inner
        self.own: deque[Event] = deque()

    @property
    def principal(self) -> Principal:
        return self.inner.principal

    def stats(self) -> ConnectionStats:
        return self.inner.stats()

    async def receive(self) -> Event:
        await self._router.rebalance()
        if self.own:
            return self.own.popleft()
        spill = self._router.spill
        if spill and not self.inner.closed:
            return spill.popleft()  # "any consumer with room helps drain the overflow"
        return await self.inner.receive()

    async def aclose(self) -> None:
        await self.inner.aclose()


class _SpillingRouter(WrappedRouter):
    """Mutant: the library's router on the backend, unbounded underneath; overflow shared."""

    def __init__(self, *, queue_size: int = 100, **options: Any) -> None:
        options.pop("overflow", None)
        self.capacity = queue_size
        self.inner = EventRouter(queue_size=BURST * 10, overflow=Overflow.BLOCK, **options)
        self.spill: deque[Event] = deque()
        self.conns: list[_SpillConnection] = []

    async def connect(self, ctx: UserContext) -> _SpillConnection:
        conn = _SpillConnection(self, await self.inner.connect(ctx))
        self.conns.append(conn)
        return conn

    async def rebalance(self) -> None:
        """Move what arrived into each connection's 10 places, the rest into the spill."""
        for conn in self.conns:
            while conn.inner.stats().queued:
                event = await conn.inner.receive()  # ready: returns without waiting
                if len(conn.own) < self.capacity:
                    conn.own.append(event)
                else:
                    self.spill.append(event)  # nothing is lost, it is only "delayed"


def register(registry: ModeRegistry) -> None:
    """Register FM15's check across two routers on Redis."""
    add_check(
        registry,
        15,
        "overflow-exact-redis",
        check_overflow_across_routers,
        library=lambda: EventRouter,
        mutant=lambda: _SpillingRouter,
        backend=Backend.REDIS,
        requires=("redis",),
        description=(
            "capacity 10, burst 50 through router A to connections on router B, every "
            "policy: exact kept seq, drops and gaps on B, 0 misrouted"
        ),
    )
