"""FM14, corrupted routing state misroutes messages: a wrong entry is refused at delivery.

Subject: ``(make, corrupt)``, a router class and a function that corrupts one
routing entry of a router (``corrupt(router, publish_to=..., deliver_to=...)``);
the library's are :class:`isolation.events.EventRouter` and
:func:`isolation.testing.unsafe_corrupt_routing`. Scenario: 6 sessions (users,
two tenants), each with a connection; the routing entry of each user is
pointed at the next user's connections (a derangement), 5 events are
published to each user, then the entries of half the users are corrupted
back to themselves (a healthy route) and 5 more go out. The property: 0
events reach a connection of another principal, the refusals counted in
``stats().refused`` equal the events sent down wrong routes, and every event
on a healthy route is delivered. The mutant feeds the library's connections
through a routing table of its own, handing a connection whatever its entry
routes there, with no last-step check.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from isolation.context._model import Principal, UserContext
from isolation.events._connection import Connection
from isolation.events._model import Event, RouterStats, make_event
from isolation.events._router import EventRouter
from isolation.report._modes._support.events import drain_all, principal_of
from isolation.report._modes._support.registration import add_check
from isolation.report._registry import ModeRegistry, Settings
from isolation.testing._unsafe import unsafe_corrupt_routing

__all__ = ["check_corrupted_routes_refused", "register"]

SESSIONS = 6
EVENTS = 5

Corrupt = Callable[..., None]


async def check_corrupted_routes_refused(
    subject: tuple[Callable[..., Any], Corrupt], settings: Settings
) -> list[str]:
    """6 sessions, every routing entry corrupted: 0 misdelivered, every refusal counted."""
    make, corrupt = subject
    violations: list[str] = []
    router = make()
    # Each refusal logs a warning; 45 of them are the point here, not news.
    events_logger = logging.getLogger("isolation.events")
    level = events_logger.level
    events_logger.setLevel(logging.ERROR)
    users = [
        UserContext.new(f"session-{i}", tenant_id=("fm14-a", "fm14-b")[i % 2])
        for i in range(SESSIONS)
    ]
    try:
        conns = {ctx.principal: await router.connect(ctx) for ctx in users}
        principals = [ctx.principal for ctx in users]
        for i, principal in enumerate(principals):
            corrupt(router, publish_to=principal, deliver_to=principals[(i + 1) % SESSIONS])
        await _publish_round(router, principals, "corrupted")
        healthy = principals[: SESSIONS // 2]
        for principal in healthy:
            # A route corrupted again, onto itself: the entry is right once more.
            corrupt(router, publish_to=principal, deliver_to=principal)
        await _publish_round(router, principals, "mixed")

        drained = await drain_all(list(conns.values()))
        for result in drained:
            owner = result.conn.principal
            for event in result.events:
                if principal_of(event) != owner:
                    violations.append(
                        f"the connection of {owner[1]} was handed an event for "
                        f"{event.recipient} (tenant {event.tenant_id})"
                    )
            own = [e for e in result.events if principal_of(e) == owner]
            expected = EVENTS if owner in healthy else 0
            if len(own) != expected:
                violations.append(
                    f"{owner[1]} received {len(own)} of its own events, expected {expected}"
                )
        wrong_routes = SESSIONS * EVENTS + (SESSIONS - len(healthy)) * EVENTS
        refused = router.stats().refused
        if refused != wrong_routes:
            violations.append(
                f"{refused} refusals counted, but {wrong_routes} events went down wrong routes"
            )
    finally:
        events_logger.setLevel(level)
        await router.aclose()
    return violations


async def _publish_round(router: Any, principals: list[Principal], label: str) -> None:
    for principal in principals:
        for n in range(EVENTS):
            await router.publish(principal, (label, principal.user_id, n))


# -- the mutant: a consumer side without the last-step check --


class _UncheckedConnection:
    """Mutant: hands over whatever its routes queued for it, without the last-step check."""

    def __init__(self, inner: Connection) -> None:
        self.inner = inner
        self.queue: deque[Event] = deque()

    @property
    def principal(self) -> Principal:
        return self.inner.principal

    async def receive(self) -> Event:
        if self.queue:
            return self.queue.popleft()
        return await self.inner.receive()  # nothing more is routed to it: waits until closed

    async def aclose(self) -> None:
        await self.inner.aclose()


class _UncheckedRouter:
    """Mutant router: the library's connections, fed through a routing table of its own
    whose entries nothing checks at delivery."""

    def __init__(self, **options: Any) -> None:
        self.inner = EventRouter(**options)
        self.live: list[_UncheckedConnection] = []
        self.routes: dict[Principal, list[_UncheckedConnection]] = {}
        self.numbers = itertools.count(1)

    async def connect(self, ctx: UserContext) -> _UncheckedConnection:
        conn = _UncheckedConnection(await self.inner.connect(ctx))
        self.live.append(conn)
        self.routes.setdefault(conn.principal, []).append(conn)
        return conn

    async def publish(self, to: Principal, payload: Any) -> Any:
        number = next(self.numbers)
        for conn in self.routes.get(to, ()):
            packed = (number, to.user_id, to.tenant_id, "message", 0.0)
            conn.queue.append(make_event(packed, payload, len(conn.queue) + 1))

    def stats(self) -> RouterStats:
        return self.inner.stats()

    async def aclose(self) -> None:
        await self.inner.aclose()


def _corrupt_unchecked(
    router: _UncheckedRouter, *, publish_to: Principal, deliver_to: Principal
) -> None:
    router.routes[publish_to] = [c for c in router.live if c.principal == deliver_to]


def register(registry: ModeRegistry) -> None:
    """Register FM14's check."""
    add_check(
        registry,
        14,
        "corrupted-routes-refused",
        check_corrupted_routes_refused,
        library=lambda: (EventRouter, unsafe_corrupt_routing),
        mutant=lambda: (_UncheckedRouter, _corrupt_unchecked),
        description=(
            "6 sessions, routing entries corrupted on purpose: 0 events misdelivered, "
            "every refusal counted"
        ),
    )
