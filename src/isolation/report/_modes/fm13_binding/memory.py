"""FM13, connection pooling mixes events between connections: a connection is bound for life.

Subject: a router class (``make(**options)``, see :mod:`.._support.events`). Scenario: 8
users x 3 connections each receive only their own events; then the first
shift closes its connections and 8 new users connect 3 times each. The
property: no connection object is ever handed out twice, a closed connection
raises ``ConnectionClosedError`` on ``receive()`` and gets nothing of the next
user (not even when that user publishes), its principal never changes, and a
connection used inside another user's scope is refused. The mutant is a
router that pools closed connection objects and rebinds them to the next user
who connects, the "connection pool" that mixed events in the seed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from isolation._errors import ConnectionClosedError, CrossContextAccessError
from isolation.context._model import Principal, UserContext
from isolation.context._scope import Scope
from isolation.events._model import CloseReason, Event, PublishResult, make_event, next_event_number
from isolation.events._router import EventRouter
from isolation.report._modes._support.events import drain_all, principal_of
from isolation.report._modes._support.registration import add_check
from isolation.report._registry import ModeRegistry, Settings

__all__ = ["check_bound_for_life", "register"]

USERS = 8
CONNECTIONS = 3
EVENTS = 5
TENANT = "fm13"


async def check_bound_for_life(make: Callable[..., Any], settings: Settings) -> list[str]:
    """8 users x 3 connections, two shifts: no object reused, no closed connection rebound."""
    violations: list[str] = []
    router = make()
    seen: list[Any] = []  # every connection object handed out, to detect reuse
    try:
        first = [UserContext.new(f"user-{i}", tenant_id=TENANT) for i in range(USERS)]
        second = [UserContext.new(f"user-{i + USERS}", tenant_id=TENANT) for i in range(USERS)]
        shift1 = await _connect_all(router, first, seen, violations)
        await _exchange(router, first, shift1, violations)

        for conns in shift1.values():
            for conn in conns:
                await conn.aclose()
        shift2 = await _connect_all(router, second, seen, violations)
        await _exchange(router, second, shift2, violations, closed=shift1)

        # A live connection handed to another user's request is refused.
        victim = await router.connect(second[0])
        await router.publish(second[0], "private")
        async with Scope(second[1]):
            try:
                await victim.receive()
            except CrossContextAccessError:
                pass
            except ConnectionClosedError:
                violations.append("a live connection was closed when used in a foreign scope")
            else:
                violations.append(
                    f"a connection of {second[0].user_id} was read inside the scope of "
                    f"{second[1].user_id}"
                )
        await victim.aclose()
    finally:
        await router.aclose()
    return violations


async def _connect_all(
    router: Any, users: list[UserContext], seen: list[Any], violations: list[str]
) -> dict[Principal, list[Any]]:
    conns: dict[Principal, list[Any]] = {}
    for ctx in users:
        for _ in range(CONNECTIONS):
            conn = await router.connect(ctx)
            if any(conn is old for old in seen):
                violations.append(
                    f"connect() for {ctx.user_id} returned a connection object handed out before"
                )
            seen.append(conn)
            if conn.principal != ctx.principal:
                violations.append(f"a connection for {ctx.user_id} is bound to {conn.principal}")
            conns.setdefault(ctx.principal, []).append(conn)
    return conns


async def _exchange(
    router: Any,
    users: list[UserContext],
    live: dict[Principal, list[Any]],
    violations: list[str],
    closed: dict[Principal, list[Any]] | None = None,
) -> None:
    """Publish to each user; every live connection gets exactly its own; closed ones nothing."""
    for ctx in users:
        for n in range(EVENTS):
            await router.publish(ctx, (ctx.user_id, n))
    principals = {id(conn): principal for principal, conns in live.items() for conn in conns}
    closed_before = [(p, conn) for p, conns in (closed or {}).items() for conn in conns]
    for principal, conn in closed_before:
        if conn.principal != principal:
            violations.append(
                f"a closed connection of {principal[1]} now belongs to {conn.principal[1]}"
            )
        try:
            event = await conn.receive()
        except ConnectionClosedError:
            continue
        violations.append(
            f"a closed connection of {principal[1]} handed over an event for {principal_of(event)[1]}"
        )
    drained = await drain_all([conn for conns in live.values() for conn in conns])
    for result in drained:
        principal = principals[id(result.conn)]
        for event in result.events:
            if principal_of(event) != principal or event.payload[0] != principal[1]:
                violations.append(
                    f"a connection of {principal[1]} received an event for {event.payload[0]}"
                )
        if len(result.events) != EVENTS:
            violations.append(
                f"a connection of {principal[1]} received {len(result.events)} events, not {EVENTS}"
            )


# -- the mutant: a pool that rebinds closed connection objects to the next user --


class _PooledConnection:
    """Mutant connection: reopened and rebound when the pool hands it out again."""

    def __init__(self, router: _PoolingRouter, ctx: UserContext) -> None:
        self._router = router
        self._queue: deque[Event] = deque()
        self.closed = False
        self.principal = ctx.principal
        self._seq = 0

    def rebind(self, ctx: UserContext) -> None:
        self.principal = ctx.principal
        self.closed = False
        self._queue.clear()

    async def receive(self) -> Event:
        if self._queue:
            return self._queue.popleft()
        raise ConnectionClosedError(
            "no event (the mutant does not wait)", reason=CloseReason.CLOSED
        )

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self._router._release(self)


class _PoolingRouter:
    """Mutant router: closed connections go back to a pool and serve the next user."""

    def __init__(self, **options: Any) -> None:
        self._pool: deque[_PooledConnection] = deque()
        self._live: list[_PooledConnection] = []

    async def connect(self, ctx: UserContext) -> _PooledConnection:
        if self._pool:
            conn = self._pool.popleft()
            conn.rebind(ctx)
        else:
            conn = _PooledConnection(self, ctx)
        self._live.append(conn)
        return conn

    def _release(self, conn: _PooledConnection) -> None:
        self._live.remove(conn)
        self._pool.append(conn)

    async def publish(self, to: UserContext, payload: Any) -> PublishResult:
        tenant_id, user_id = to.principal
        number = next_event_number()
        delivered = 0
        for conn in self._live:
            if conn.principal == (tenant_id, user_id):
                conn._seq += 1
                conn._queue.append(
                    make_event((number, user_id, tenant_id, "message", 0.0), payload, conn._seq)
                )
                delivered += 1
        return PublishResult(delivered=delivered, dropped=0)

    async def aclose(self) -> None:
        self._live.clear()
        self._pool.clear()


def register(registry: ModeRegistry) -> None:
    """Register FM13's check."""
    add_check(
        registry,
        13,
        "bound-for-life",
        check_bound_for_life,
        library=lambda: EventRouter,
        mutant=lambda: _PoolingRouter,
        description=(
            "8 users x 3 connections, two shifts: no connection reused, rebound, "
            "or read in another user's scope"
        ),
    )
