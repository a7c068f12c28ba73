"""FM16, a ticket at its expiry instant: single use at every instant, the edge included.

Subject: a router class taking ``keys=`` (``issue_ticket``, ``connect(token=)``,
its ``backend.claim_ticket``). Scenario, with a clock that moves a little on
every reading (as a real clock does, deterministically): 6 users each redeem a
ticket; then each ticket is replayed with the clock placed so that the
ticket's expiry, and its expiry plus :data:`isolation.tokens.LEEWAY` (the last
instant a token verifier accepts it), falls between any two of the replay's
clock readings; and the backend's record is claimed again at every reading
around expiry plus ``LEEWAY``. The property: no replay opens a connection, and
no claim of a used ticket succeeds at any instant while any verifier could
still accept the ticket. With ``--redis`` the claims run against one Redis
from two routers, the second's clock a full ``LEEWAY`` behind the first's.

The mutant is the ticket record before issue 16: forgotten exactly when the
ticket stops being accepted (expiry plus ``LEEWAY``), judged by the purge's
own clock reading, and on Redis kept for ``expiry + LEEWAY - now`` by the
claimant's clock alone.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Callable, Sequence
from typing import Any, Final

from isolation import _clock, tokens
from isolation._clock import FakeClock, use_clock
from isolation._errors import ConfigurationError, ContextError, TokenError
from isolation.context._model import UserContext
from isolation.events._model import Envelope, PublishResult
from isolation.events._router import EventRouter
from isolation.events.backends import MemoryBackend
from isolation.report._modes._support.registration import add_check
from isolation.report._registry import Backend, ModeRegistry, Settings

__all__ = ["check_ticket_at_expiry", "check_ticket_at_expiry_redis", "register"]

USERS: Final = 6
TTL: Final = 30.0
STEP: Final = 2.0**-10  # exact in binary
PLACES: Final = 8  # readings on each side of an edge
KEY: Final = b"fm16 expiry check key, not real!"  # 32 bytes


class TickingClock(FakeClock):
    """A fake clock that moves ``STEP`` forward after every reading while ``ticking``."""

    def __init__(self) -> None:
        super().__init__()
        self.ticking = False

    def time(self) -> float:
        now = self._t
        if self.ticking:
            self._t = now + STEP
        return now

    def place(self, at: float) -> None:
        """Stop ticking and move to ``at`` (never backwards)."""
        self.ticking = False
        self.advance(max(0.0, at - self._t))


def _edges(expires_at: float) -> list[float]:
    """Starting instants that put each edge between any two readings of one attempt."""
    edges = (expires_at, expires_at + tokens.LEEWAY)
    return [edge - k * STEP for edge in edges for k in range(PLACES, -PLACES - 1, -1)]


async def check_ticket_at_expiry(make: Callable[..., Any], settings: Settings) -> list[str]:
    """6 users: replays around the expiry instants open nothing; used claims never succeed."""
    violations: list[str] = []
    clock = TickingClock()
    with use_clock(clock):
        router = make(keys=[KEY])
        try:
            await _scenario(router, clock, violations)
        finally:
            await router.aclose()
    return violations


async def _scenario(router: Any, clock: TickingClock, violations: list[str]) -> None:
    users = [UserContext.new(f"fm16-user-{i}", tenant_id="fm16") for i in range(USERS)]
    start = clock.time()
    issued = [(ctx, router.issue_ticket(ctx, ttl=TTL)) for ctx in users]
    expires_at = start + TTL
    for _, ticket in issued:
        await router.connect(token=ticket)
    opened = router.stats().opened
    for at in _edges(expires_at):
        for ctx, ticket in issued:
            clock.place(at)
            clock.ticking = True
            try:
                conn = await router.connect(token=ticket)
            except (TokenError, ContextError):
                pass
            else:
                violations.append(
                    f"the used ticket of {ctx.user_id} opened a second connection "
                    f"{at - expires_at:+.4f} s from its expiry"
                )
                await conn.aclose()
            # The record itself: a used ticket is never claimed afresh.
            clock.place(at)
            clock.ticking = True
            try:
                claimed = await router.backend.claim_ticket(ticket, expires_at=expires_at)
            except TokenError:
                claimed = False
            if claimed:
                violations.append(
                    f"the record of the used ticket of {ctx.user_id} was claimed again "
                    f"{at - expires_at:+.4f} s from its expiry"
                )
    clock.ticking = False
    if router.stats().opened != opened:
        violations.append(f"{router.stats().opened - opened} connections opened by replays")


# -- Redis: two routers, the second's clock a full LEEWAY behind --


async def check_ticket_at_expiry_redis(make: Callable[..., Any], settings: Settings) -> list[str]:
    """A ticket claimed on A at its last accepted instant is still recorded for B, LEEWAY behind."""
    from isolation.report._modes._support.redis import two_routers

    violations: list[str] = []
    clock = FakeClock()
    with use_clock(clock):
        async with two_routers(make, settings, keys=[KEY]) as pair:
            users = [UserContext.new(f"fm16-user-{i}", tenant_id="fm16") for i in range(USERS)]
            for ctx in users:
                ticket = pair.a.issue_ticket(ctx, ttl=TTL)
                expires_at = clock.time() + TTL
                # A redeems as late as a verifier accepts the ticket, by A's clock ...
                clock.advance(TTL + tokens.LEEWAY)
                if not await pair.a.backend.claim_ticket(ticket, expires_at=expires_at):
                    violations.append(f"a fresh ticket of {ctx.user_id} could not be claimed")
                    continue
                # ... and B, whose clock is LEEWAY behind A's, still accepts it for LEEWAY:
                # the record must outlive that (not be timed by A's clock alone).
                remaining = await _record_ms(settings, pair.backend_b.namespace, ticket)
                if remaining < tokens.LEEWAY * 1000:
                    violations.append(
                        f"the record of {ctx.user_id}'s ticket lives {remaining} ms, less than "
                        f"the {tokens.LEEWAY:.0f} s another process still accepts the ticket"
                    )
    return violations


def _record_key(namespace: str, ticket: str) -> str:
    """The Redis key of a used ticket's record (see ``RedisBackend.claim_ticket``)."""
    return f"{namespace}:ticket:{hashlib.sha256(ticket.encode('ascii')).hexdigest()}"


async def _record_ms(settings: Settings, namespace: str, ticket: str) -> int:
    """The remaining lifetime of ``ticket``'s record in Redis (``PTTL``; < 0: none)."""
    import redis.asyncio as aioredis

    assert settings.redis_url is not None
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        return int(await client.pttl(_record_key(namespace, ticket)))
    finally:
        await client.aclose()


# -- the mutant: the ticket record before issue 16 --


class _PreFixMemoryBackend:
    """Mutant backend: records forgotten at expiry + LEEWAY, by the purge's own reading."""

    def __init__(self) -> None:
        self._inner = MemoryBackend()
        self._used: dict[str, float] = {}
        self._expiries: list[tuple[float, str]] = []

    @property
    def shared(self) -> bool:
        return False

    def attach(self, deliver: Any) -> None:
        self._inner.attach(deliver)

    async def publish(self, envelope: Envelope) -> PublishResult:
        return await self._inner.publish(envelope)

    def watch(self, principal: Any) -> None:
        """Nothing to do: one process."""

    def unwatch(self, principal: Any) -> None:
        """Nothing to do: one process."""

    async def claim_ticket(self, token: str, *, expires_at: float) -> bool:
        now = _clock._now()
        while self._expiries and self._expiries[0][0] + tokens.LEEWAY < now:
            _, old = heapq.heappop(self._expiries)
            self._used.pop(old, None)
        if token in self._used:
            return False
        self._used[token] = expires_at
        heapq.heappush(self._expiries, (expires_at, token))
        return True

    async def aclose(self) -> None:
        await self._inner.aclose()


def _pre_fix_router(*, keys: Sequence[bytes], **options: Any) -> EventRouter:
    """Mutant: the library's router on the pre-fix ticket record."""
    return EventRouter(keys=keys, backend=_PreFixMemoryBackend(), **options)


class _PreFixRedisBackend:
    """Mutant backend: a Redis backend whose claims live ``expiry + LEEWAY - now`` (local clock).

    Its claims go to ``url`` (the run's Redis), under the inner backend's namespace.
    """

    def __init__(self, inner: Any, url: str) -> None:
        self._inner = inner
        self.url = url

    @property
    def shared(self) -> bool:
        return True

    def attach(self, deliver: Any) -> None:
        self._inner.attach(deliver)

    async def publish(self, envelope: Envelope) -> PublishResult:
        result: PublishResult = await self._inner.publish(envelope)
        return result

    def watch(self, principal: Any) -> Any:
        return self._inner.watch(principal)

    def unwatch(self, principal: Any) -> None:
        self._inner.unwatch(principal)

    async def claim_ticket(self, token: str, *, expires_at: float) -> bool:
        import redis.asyncio as aioredis

        ttl_ms = max(1, math.ceil((expires_at + tokens.LEEWAY - _clock._now()) * 1000))
        client = aioredis.Redis.from_url(self.url)
        try:
            key = _record_key(self._inner.namespace, token)
            return bool(await client.set(key, b"1", nx=True, px=ttl_ms))
        finally:
            await client.aclose()

    async def aclose(self) -> None:
        await self._inner.aclose()


def _pre_fix_redis_router(settings: Settings) -> Callable[..., EventRouter]:
    """Mutant: the library's router on the pre-fix Redis ticket record (at the run's Redis)."""
    url = settings.redis_url
    if url is None:  # pragma: no cover - the check runs only given a Redis URL
        raise ConfigurationError("no Redis URL given (--redis)")

    def make(*, backend: Any, **options: Any) -> EventRouter:
        return EventRouter(backend=_PreFixRedisBackend(backend, url), **options)

    return make


def register(registry: ModeRegistry) -> None:
    """Register FM16's ticket-at-expiry checks (memory, and Redis)."""
    add_check(
        registry,
        16,
        "ticket-at-expiry",
        check_ticket_at_expiry,
        library=lambda: EventRouter,
        mutant=lambda: _pre_fix_router,
        description=(
            "6 users, a clock that moves on every reading: replays placed around the "
            "ticket's expiry and expiry + leeway open nothing, used records never re-claimed"
        ),
    )
    add_check(
        registry,
        16,
        "ticket-at-expiry-redis",
        check_ticket_at_expiry_redis,
        library=lambda: EventRouter,
        mutant=_pre_fix_redis_router,
        backend=Backend.REDIS,
        requires=("redis",),
        description=(
            "6 users, claimed on router A at the last accepted instant by A's clock: "
            "the record outlives the leeway a process behind A still accepts"
        ),
    )
