"""FM16, auth tokens reused across users: a ticket opens one connection of its own user.

Subject: a router class taking ``keys=`` (``issue_ticket``, ``connect(token=)``,
``Connection.reauthenticate``). Scenario: 6 users each redeem a ticket, then
try a replay, a token of another purpose, an expired ticket, and a
re-authentication with the *next* user's fresh ticket; finally each
connection re-authenticates with its own fresh ticket and receives its own
events. The property: every connection is bound to the user of the ticket
that opened it; a token of one user never opens or re-authenticates a
connection of another; replayed, foreign-purpose and expired tokens are
refused. The mutant is a router with a token cache keyed by a token prefix
(the first 40 characters), which all tickets of one purpose share.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from isolation import tokens
from isolation._clock import FakeClock, use_clock
from isolation._errors import ConnectionClosedError, TokenError
from isolation.context._model import Principal, UserContext
from isolation.events._connection import Connection
from isolation.events._model import CloseReason, Event
from isolation.events._router import EventRouter
from isolation.report._modes._support.events import drain_all, principal_of
from isolation.report._modes._support.registration import add_check
from isolation.report._registry import ModeRegistry, Settings

__all__ = ["check_tokens_bound", "register"]

USERS = 6
KEY = b"fm16 check key, never a real one"  # 32 bytes


async def check_tokens_bound(make: Callable[..., Any], settings: Settings) -> list[str]:
    """6 users: tickets bind their own user only; replays, other purposes, expiry refused."""
    violations: list[str] = []
    clock = FakeClock()
    with use_clock(clock):
        router = make(keys=[KEY])
        try:
            await _scenario(router, clock, violations)
        finally:
            await router.aclose()
    return violations


async def _scenario(router: Any, clock: FakeClock, violations: list[str]) -> None:
    users = [UserContext.new(f"fm16-user-{i}", tenant_id="fm16") for i in range(USERS)]
    conns: dict[Principal, Any] = {}
    for ctx in users:
        ticket = router.issue_ticket(ctx)
        conn = await router.connect(token=ticket)
        if conn.principal != ctx.principal:
            violations.append(
                f"the ticket of {ctx.user_id} opened a connection of {conn.principal[1]}"
            )
        conns[ctx.principal] = conn
        await _refused(
            violations, f"a replayed ticket of {ctx.user_id}", router.connect(token=ticket)
        )
        other_purpose = tokens.dumps(ctx, key=KEY, purpose="fm16-job")
        await _refused(
            violations,
            f"a token of another purpose of {ctx.user_id}",
            router.connect(token=other_purpose),
        )
        stale = router.issue_ticket(ctx, ttl=1)
        clock.advance(1 + tokens.LEEWAY + 1)
        await _refused(
            violations, f"an expired ticket of {ctx.user_id}", router.connect(token=stale)
        )

    # Re-authentication with the next user's ticket: refused, and the connection closed.
    victims: list[Any] = []
    for i, ctx in enumerate(users):
        victim = await router.connect(ctx)
        intruder = users[(i + 1) % USERS]
        try:
            await victim.reauthenticate(router.issue_ticket(intruder))
        except ConnectionClosedError as exc:
            if exc.reason is not CloseReason.REAUTH_FAILED:
                violations.append(f"a foreign re-authentication closed with {exc.reason}")
        else:
            violations.append(
                f"a ticket of {intruder.user_id} re-authenticated a connection of {ctx.user_id}"
            )
        if victim.principal != ctx.principal:
            violations.append(f"a connection of {ctx.user_id} now belongs to {victim.principal[1]}")
        victims.append(victim)

    # Each original connection re-authenticates with its own ticket and gets its own events.
    for ctx in users:
        try:
            await conns[ctx.principal].reauthenticate(router.issue_ticket(ctx))
        except (ConnectionClosedError, TokenError) as exc:
            violations.append(
                f"{ctx.user_id} could not re-authenticate with its own ticket: {exc!r}"
            )
        await router.publish(ctx, ctx.user_id)
    for result in await drain_all([*conns.values(), *victims]):
        owner = result.conn.principal
        for event in result.events:
            if principal_of(event) != owner or event.payload != owner[1]:
                violations.append(
                    f"a connection of {owner[1]} received an event for {event.payload}"
                )


async def _refused(violations: list[str], what: str, attempt: Any) -> None:
    try:
        conn = await attempt
    except TokenError:
        return
    violations.append(f"{what} was accepted (bound to {conn.principal[1]})")
    await conn.aclose()


# -- the mutant: a token cache keyed by the token's prefix --

PREFIX = 40


class _CachingConnection:
    def __init__(self, router: _PrefixCachingRouter, inner: Connection) -> None:
        self._router = router
        self._inner = inner

    @property
    def principal(self) -> Principal:
        return self._inner.principal

    async def receive(self) -> Event:
        return await self._inner.receive()

    async def reauthenticate(self, token: str) -> None:
        cached = self._router.cache.get(token[:PREFIX])
        if cached is not None and cached.principal == self.principal:
            return  # "already verified": the cache says this token is this user's
        await self._inner.reauthenticate(token)
        self._router.cache[token[:PREFIX]] = self._inner.context

    async def aclose(self) -> None:
        await self._inner.aclose()


class _PrefixCachingRouter:
    """Mutant: verified tokens cached by their first 40 characters, to skip the HMAC."""

    def __init__(self, *, keys: Sequence[bytes], **options: Any) -> None:
        self.inner = EventRouter(keys=keys, **options)
        self.cache: dict[str, UserContext] = {}

    def issue_ticket(self, ctx: UserContext, *, ttl: float = 30.0) -> str:
        return self.inner.issue_ticket(ctx, ttl=ttl)

    async def connect(self, ctx: UserContext | None = None, *, token: str | None = None) -> Any:
        if token is None:
            return _CachingConnection(self, await self.inner.connect(ctx))
        cached = self.cache.get(token[:PREFIX])
        if cached is not None:
            return _CachingConnection(self, await self.inner.connect(cached))
        conn = await self.inner.connect(token=token)
        self.cache[token[:PREFIX]] = conn.context
        return _CachingConnection(self, conn)

    async def publish(self, to: Principal | UserContext, payload: Any) -> Any:
        return await self.inner.publish(to, payload)

    async def aclose(self) -> None:
        await self.inner.aclose()


def register(registry: ModeRegistry) -> None:
    """Register FM16's check."""
    add_check(
        registry,
        16,
        "tokens-bound",
        check_tokens_bound,
        library=lambda: EventRouter,
        mutant=lambda: _PrefixCachingRouter,
        description=(
            "6 users: a ticket opens and re-authenticates only its own user; replayed, "
            "foreign-purpose and expired tokens refused"
        ),
    )
