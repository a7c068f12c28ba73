"""FM14 across two routers on one Redis: routes corrupted on the receiving router.

Runs only when the report is given ``--redis URL``. ``corrupted-routes-refused-redis``:
the 6 sessions' connections on router B, B's routing entries corrupted (a
derangement, then half healed), the events published through router A, whose own
state is clean: 0 misdelivered on B, every refusal counted in B's stats, every
event on a healthy route delivered. Mutant: the in-memory one (no last-step
check), on the backend.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from isolation.context._model import UserContext
from isolation.report._modes._support.events import drain_all, principal_of
from isolation.report._modes._support.redis import register_redis_twin, two_routers
from isolation.report._modes.fm14_corruption import memory as fm14_corruption
from isolation.report._registry import ModeRegistry, Settings

__all__ = ["check_routes_across_routers", "register"]


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


def register(registry: ModeRegistry) -> None:
    """Register ``corrupted-routes-refused-redis``, after its memory check."""
    register_redis_twin(
        registry,
        14,
        "corrupted-routes-refused",
        check_routes_across_routers,
        "6 sessions on router B, B's routing entries corrupted, events through "
        "router A: 0 misdelivered, every refusal counted",
    )
