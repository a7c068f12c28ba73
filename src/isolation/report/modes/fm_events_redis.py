"""Modes 13, 14 and 16 across two routers on one Redis: the in-memory scenarios, cross-router.

Runs only when the report is given ``--redis URL``. Each check builds routers A
and B on one fresh Redis namespace (:func:`._redis.two_routers`), as two
processes would, and waits for B to catch up with A's publishes through a
marker (no sleeping):

* ``bound-for-life-redis`` (13): 8 users x 3 connections on B, two shifts,
  every event published through A. Besides the in-memory property (no
  connection object handed out twice, none rebound, each gets exactly its
  own events, a live one refused in another user's scope), shift 1's users are
  published to again through A after their connections on B closed: a closed
  connection raises at once and is not revived. Mutant: the in-memory pool
  that rebinds closed connection objects to the next user, on the library's
  router and backend.
* ``corrupted-routes-refused-redis`` (14): the 6 sessions' connections on B,
  B's routing entries corrupted (a derangement, then half healed), the events
  published through A, whose own state is clean: 0 misdelivered on B, every
  refusal counted in B's stats, every event on a healthy route delivered.
  Mutant: the in-memory one (no last-step check), on the backend.
* ``tokens-bound-redis`` (16): tickets issued on one router are redeemed on
  either, and are single-use across both (claimed with ``SET NX`` in the
  shared namespace): a ticket redeemed on A is refused on B and on A, one that
  re-authenticated a connection on B opens nothing on A; foreign-purpose,
  expired and other users' tickets are refused across routers; each user's
  connection receives exactly its event published through A. Mutant: the
  in-memory token cache keyed by a prefix, on the backend.

Mode 10 has its own two-router scenario (:mod:`.fm10_redis`), mode 15 its own
(:mod:`.fm15_redis`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio

from isolation import tokens
from isolation._clock import FakeClock, use_clock
from isolation._errors import ConnectionClosedError, CrossContextAccessError, TokenError
from isolation.context._model import Principal, UserContext
from isolation.context._scope import Scope
from isolation.events._connection import Connection
from isolation.events._model import CloseReason, Event
from isolation.events._router import EventRouter
from isolation.report._registry import Backend, Check, ModeRegistry, Settings
from isolation.report.modes import fm13_binding, fm14_corruption, fm16_tokens
from isolation.report.modes._events import drain_all, principal_of
from isolation.report.modes._redis import RouterPair, WrappedRouter, two_routers

__all__ = [
    "check_bound_across_routers",
    "check_routes_across_routers",
    "check_tokens_across_routers",
    "register",
]

Live = dict[Principal, list[Any]]


# -- mode 13: bound for life, across routers --


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


# -- mode 14: corrupted routes on the receiving router --


async def check_routes_across_routers(
    subject: tuple[Callable[..., Any], fm14_corruption.Corrupt], settings: Settings
) -> list[str]:
    """6 sessions on B, B's routes corrupted, events through A: 0 misdelivered, all counted."""
    make, corrupt = subject
    violations: list[str] = []
    sessions, events = fm14_corruption.SESSIONS, fm14_corruption.EVENTS
    events_logger = logging.getLogger("isolation.events")
    level = events_logger.level
    events_logger.setLevel(logging.ERROR)  # the refusals' warnings are the point, not news
    users = [
        UserContext.new(f"session-{i}", tenant_id=("fm14-a", "fm14-b")[i % 2])
        for i in range(sessions)
    ]
    try:
        async with two_routers(make, settings) as pair:
            conns = {ctx.principal: await pair.b.connect(ctx) for ctx in users}
            principals = [ctx.principal for ctx in users]
            for i, principal in enumerate(principals):
                corrupt(pair.b, publish_to=principal, deliver_to=principals[(i + 1) % sessions])
            await fm14_corruption._publish_round(pair.a, principals, "corrupted")
            # B handles every corrupted-round envelope before half its routes heal.
            if not await pair.caught_up(violations):
                return violations
            healthy = principals[: sessions // 2]
            for principal in healthy:
                corrupt(pair.b, publish_to=principal, deliver_to=principal)
            await fm14_corruption._publish_round(pair.a, principals, "mixed")
            if not await pair.caught_up(violations):
                return violations

            for result in await drain_all(list(conns.values())):
                owner = result.conn.principal
                for event in result.events:
                    if principal_of(event) != owner:
                        violations.append(
                            f"the connection of {owner[1]} on B was handed an event for "
                            f"{event.recipient} (tenant {event.tenant_id})"
                        )
                own = [e for e in result.events if principal_of(e) == owner]
                expected = events if owner in healthy else 0
                if len(own) != expected:
                    violations.append(
                        f"{owner[1]} received {len(own)} of its own events on B, "
                        f"expected {expected}"
                    )
            wrong_routes = sessions * events + (sessions - len(healthy)) * events
            refused = pair.b.stats().refused
            if refused != wrong_routes:
                violations.append(
                    f"router B counted {refused} refusals, but {wrong_routes} events "
                    f"went down its wrong routes"
                )
    finally:
        events_logger.setLevel(level)
    return violations


# -- mode 16: tickets single-use across routers --


async def check_tokens_across_routers(make: Callable[..., Any], settings: Settings) -> list[str]:
    """6 users, tickets issued on one router and redeemed on either: bound, single-use across both."""
    violations: list[str] = []
    clock = FakeClock()
    with use_clock(clock):
        async with two_routers(make, settings, keys=[fm16_tokens.KEY]) as pair:
            await _tokens_scenario(pair, clock, violations)
    return violations


async def _tokens_scenario(pair: RouterPair, clock: FakeClock, violations: list[str]) -> None:
    routers = {"A": pair.a, "B": pair.b}
    users = [UserContext.new(f"fm16-user-{i}", tenant_id="fm16") for i in range(fm16_tokens.USERS)]
    homes = ["AB"[i % 2] for i in range(len(users))]  # where each user's connection lives
    refused = fm16_tokens._refused
    conns: dict[Principal, Any] = {}
    for ctx, home in zip(users, homes, strict=True):
        other = "B" if home == "A" else "A"
        name = ctx.user_id
        ticket = pair.a.issue_ticket(ctx)
        conn = await routers[home].connect(token=ticket)
        if conn.principal != ctx.principal:
            violations.append(
                f"the ticket of {name} opened a connection of {conn.principal[1]} on {home}"
            )
        conns[ctx.principal] = conn
        what = f"a ticket of {name} redeemed on {home}"
        await refused(
            violations, f"{what}, replayed on {other}", routers[other].connect(token=ticket)
        )
        await refused(
            violations, f"{what}, replayed on {home}", routers[home].connect(token=ticket)
        )
        other_purpose = tokens.dumps(ctx, key=fm16_tokens.KEY, purpose="fm16-job")
        await refused(
            violations,
            f"a token of another purpose of {name} on {other}",
            routers[other].connect(token=other_purpose),
        )
        stale = routers[other].issue_ticket(ctx, ttl=1)
        clock.advance(1 + tokens.LEEWAY + 1)
        await refused(
            violations,
            f"an expired ticket of {name}, issued on {other}, on {home}",
            routers[home].connect(token=stale),
        )

    # Re-authentication with the next user's ticket, issued on the other router: refused.
    victims: list[Any] = []
    for i, (ctx, home) in enumerate(zip(users, homes, strict=True)):
        other = "B" if home == "A" else "A"
        victim = await routers[home].connect(ctx)
        intruder = users[(i + 1) % len(users)]
        try:
            await victim.reauthenticate(routers[other].issue_ticket(intruder))
        except ConnectionClosedError as exc:
            if exc.reason is not CloseReason.REAUTH_FAILED:
                violations.append(f"a foreign re-authentication on {home} closed with {exc.reason}")
        else:
            violations.append(
                f"a ticket of {intruder.user_id} from {other} re-authenticated a connection "
                f"of {ctx.user_id} on {home}"
            )
        if victim.principal != ctx.principal:
            violations.append(f"a connection of {ctx.user_id} now belongs to {victim.principal[1]}")
        victims.append(victim)

    # Each connection re-authenticates with its own ticket from the other router, which is
    # then spent there too; each receives exactly its own event, published through A.
    for ctx, home in zip(users, homes, strict=True):
        other = "B" if home == "A" else "A"
        ticket = routers[other].issue_ticket(ctx)
        try:
            await conns[ctx.principal].reauthenticate(ticket)
        except (ConnectionClosedError, TokenError) as exc:
            violations.append(
                f"{ctx.user_id} could not re-authenticate on {home} with its own ticket: {exc!r}"
            )
        await refused(
            violations,
            f"a ticket of {ctx.user_id} spent re-authenticating on {home}, redeemed on {other}",
            routers[other].connect(token=ticket),
        )
        await pair.a.publish(ctx, ctx.user_id)
    if not await pair.caught_up(violations):
        return
    mine = {id(conn) for conn in conns.values()}
    for result in await drain_all([*conns.values(), *victims]):
        owner = result.conn.principal
        for event in result.events:
            if principal_of(event) != owner or event.payload != owner[1]:
                violations.append(
                    f"a connection of {owner[1]} received an event for {event.payload}"
                )
        if id(result.conn) in mine and len(result.events) != 1:
            violations.append(
                f"the connection of {owner[1]} received {len(result.events)} events, not 1"
            )


def register(registry: ModeRegistry) -> None:
    """Register the two-router Redis checks of modes 13, 14 and 16."""
    # By name: a mode may hold other memory checks, registered by other modules.
    twins = {13: "bound-for-life", 14: "corrupted-routes-refused", 16: "tokens-bound"}
    memory = {
        mode_id: next(c for c in registry.mode(mode_id).checks if c.name == name)
        for mode_id, name in twins.items()
    }

    def redis_twin(mode_id: int, run: Any, description: str, **subjects: Any) -> None:
        """The memory check of ``mode_id`` across two routers on one Redis."""
        registry.register(
            mode_id,
            Check(
                name=f"{memory[mode_id].name}-redis",
                backend=Backend.REDIS,
                run=run,
                library=subjects.get("library", memory[mode_id].library),
                mutant=subjects.get("mutant", memory[mode_id].mutant),
                requires=("redis",),
                description=description,
            ),
        )

    redis_twin(
        13,
        check_bound_across_routers,
        "8 users x 3 connections on router B, two shifts, events through router A: "
        "no connection reused, rebound or revived",
        library=lambda: EventRouter,
        mutant=lambda: _PoolingRouter,
    )
    redis_twin(
        14,
        check_routes_across_routers,
        "6 sessions on router B, B's routing entries corrupted, events through "
        "router A: 0 misdelivered, every refusal counted",
    )
    redis_twin(
        16,
        check_tokens_across_routers,
        "6 users, tickets issued on one router and redeemed on either: own user "
        "only, single-use across both routers",
    )
