"""FM16 across two routers on one Redis: tickets bound and single-use across both.

Runs only when the report is given ``--redis URL``. ``tokens-bound-redis``: tickets
issued on one router are redeemed on either, and are single-use across both
(claimed with ``SET NX`` in the shared namespace): a ticket redeemed on A is
refused on B and on A, one that re-authenticated a connection on B opens nothing
on A; foreign-purpose, expired and other users' tickets are refused across
routers; each user's connection receives exactly its event published through A.
Mutant: the in-memory token cache keyed by a prefix, on the backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from isolation import tokens
from isolation._clock import FakeClock, use_clock
from isolation._errors import ConnectionClosedError, TokenError
from isolation.context._model import Principal, UserContext
from isolation.events._model import CloseReason
from isolation.report._modes._support.events import drain_all, principal_of
from isolation.report._modes._support.redis import RouterPair, register_redis_twin, two_routers
from isolation.report._modes.fm16_tokens import tokens as fm16_tokens
from isolation.report._registry import ModeRegistry, Settings

__all__ = ["check_tokens_across_routers", "register"]


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
    """Register ``tokens-bound-redis``, after the memory ``tokens-bound``."""
    register_redis_twin(
        registry,
        16,
        "tokens-bound",
        check_tokens_across_routers,
        "6 users, tickets issued on one router and redeemed on either: own user "
        "only, single-use across both routers",
    )
