"""FM13 across two routers on one Redis: connections bound for life, cross-router.

Runs only when the report is given ``--redis URL``. Routers A and B are built on
one fresh Redis namespace (:func:`.._support.redis.two_routers`), as two processes
would, and B catches up with A's publishes through a marker (no sleeping).

``bound-for-life-redis``: 8 users x 3 connections on B, two shifts, every event
published through A. Besides the in-memory property (no connection object handed
out twice, none rebound, each gets exactly its own events, a live one refused in
another user's scope), shift 1's users are published to again through A after
their connections on B closed: a closed connection raises at once and is not
revived. Mutant: the in-memory pool that rebinds closed connection objects to the
next user, on the library's router and backend.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import anyio

from isolation._errors import ConnectionClosedError, CrossContextAccessError
from isolation.context._model import Principal, UserContext
from isolation.context._scope import Scope
from isolation.events._connection import Connection
from isolation.events._model import Event
from isolation.events._router import EventRouter
from isolation.report._modes._support.events import drain_all, principal_of
from isolation.report._modes._support.redis import (
    RouterPair,
    WrappedRouter,
    register_redis_twin,
    two_routers,
)
from isolation.report._modes.fm13_binding import memory as fm13_binding
from isolation.report._registry import ModeRegistry, Settings

__all__ = ["check_bound_across_routers", "register"]

Live = dict[Principal, list[Any]]


async def check_bound_across_routers(make: Callable[..., Any], settings: Settings) -> list[str]:
    """8 users x 3 connections on B, two shifts, events through A: no reuse, no revival."""
    violations: list[str] = []
    tenant = fm13_binding.TENANT
    users = fm13_binding.USERS
    first = [UserContext.new(f"user-{i}", tenant_id=tenant) for i in range(users)]
    second = [UserContext.new(f"user-{i + users}", tenant_id=tenant) for i in range(users)]
    async with two_routers(make, settings) as pair:
        seen: list[Any] = []  # every connection object handed out, to detect reuse
        shift1 = await fm13_binding._connect_all(pair.b, first, seen, violations)
        await _publish_to(pair, first)
        if not await pair.caught_up(violations):
            return violations
        await _each_gets_its_own(shift1, violations)  # drained, then closed

        shift2 = await fm13_binding._connect_all(pair.b, second, seen, violations)
        # Shift 1's users are published to again: their closed connections stay closed.
        await _publish_to(pair, second)
        await _publish_to(pair, first)
        if not await pair.caught_up(violations):
            return violations
        for principal, conns in shift1.items():
            for conn in conns:
                await _stays_closed(conn, principal, violations)
        await _each_gets_its_own(shift2, violations)

        # A live connection on B, its event from A, read in another user's scope: refused.
        victim = await pair.b.connect(second[0])
        await pair.a.publish(second[0], "private")
        if await pair.caught_up(violations):
            await _refused_in_foreign_scope(victim, second[0], second[1], violations)
        await victim.aclose()
    return violations


async def _publish_to(pair: RouterPair, users: list[UserContext]) -> None:
    for ctx in users:
        for n in range(fm13_binding.EVENTS):
            await pair.a.publish(ctx, [ctx.user_id, n])


async def _each_gets_its_own(live: Live, violations: list[str]) -> None:
    """Drain (and close) ``live``: each connection got exactly its own events from A."""
    owners = {id(conn): principal for principal, conns in live.items() for conn in conns}
    for result in await drain_all([conn for conns in live.values() for conn in conns]):
        principal = owners[id(result.conn)]
        for event in result.events:
            if principal_of(event) != principal or event.payload[0] != principal[1]:
                violations.append(
                    f"a connection of {principal[1]} on B received an event for {event.payload[0]}"
                )
        if len(result.events) != fm13_binding.EVENTS:
            violations.append(
                f"a connection of {principal[1]} on B received {len(result.events)} events "
                f"from A, not {fm13_binding.EVENTS}"
            )


async def _stays_closed(conn: Any, principal: Principal, violations: list[str]) -> None:
    """A closed connection keeps its principal and raises at once: no event, no waiting."""
    if conn.principal != principal:
        violations.append(
            f"a closed connection of {principal[1]} now belongs to {conn.principal[1]}"
        )
    outcome: list[str] = []

    async def take() -> None:
        try:
            event = await conn.receive()
        except ConnectionClosedError:
            outcome.append("closed")
        else:
            outcome.append(f"handed over an event for {principal_of(event)[1]}")

    async with anyio.create_task_group() as tg:
        tg.start_soon(take)
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    if outcome != ["closed"]:
        what = outcome[0] if outcome else "waits for events instead of raising"
        violations.append(f"a closed connection of {principal[1]}, published to from A, {what}")


async def _refused_in_foreign_scope(
    victim: Any, owner: UserContext, intruder: UserContext, violations: list[str]
) -> None:
    async with Scope(intruder):
        try:
            await victim.receive()
        except CrossContextAccessError:
            return
        except ConnectionClosedError:
            violations.append("a live connection on B was closed when used in a foreign scope")
            return
    violations.append(
        f"a connection of {owner.user_id} on B was read inside the scope of {intruder.user_id}"
    )


class _RebindingConnection:
    """Mutant connection: put back in the pool when closed, rebound to the next user."""

    def __init__(self, router: _PoolingRouter, inner: Connection) -> None:
        self._router = router
        self.inner = inner
        self.closed = False

    @property
    def principal(self) -> Principal:
        return self.inner.principal

    async def receive(self) -> Event:
        return await self.inner.receive()

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            await self.inner.aclose()
            self._router.pool.append(self)


class _PoolingRouter(WrappedRouter):
    """Mutant: the library's router on the backend, its connection objects pooled and reused."""

    def __init__(self, **options: Any) -> None:
        self.inner = EventRouter(**options)
        self.pool: deque[_RebindingConnection] = deque()

    async def connect(self, ctx: UserContext) -> _RebindingConnection:
        inner = await self.inner.connect(ctx)
        if self.pool:
            conn = self.pool.popleft()
            conn.inner, conn.closed = inner, False  # "reopened" for the next user
            return conn
        return _RebindingConnection(self, inner)


def register(registry: ModeRegistry) -> None:
    """Register ``bound-for-life-redis``, after the memory ``bound-for-life``."""
    register_redis_twin(
        registry,
        13,
        "bound-for-life",
        check_bound_across_routers,
        "8 users x 3 connections on router B, two shifts, events through router A: "
        "no connection reused, rebound or revived",
        library=lambda: EventRouter,
        mutant=lambda: _PoolingRouter,
    )
