"""FM10 and FM15, payload aliasing: mutating a published payload never changes what anyone gets.

Subject: a router class (``make(**options)``). Scenario: 8 users x 2
connections; the publisher reuses **one** nested dict for every user (the
issue's shape: ``payload["text"] = f"private digest of {u}"; await
router.publish(u, payload)``) for several rounds, and scribbles over it after
the last publish; then each user's first connection takes its events and
scribbles over every copy it got before the second connection takes its own.
The property: every connection receives exactly its own user's texts, in
order, as they were at their publish. Mode 10 runs it with consumers ready
(queues of 100); mode 15 with a queue of 3 under ``DROP_OLDEST``, so the
payloads sit queued (and some are evicted) while they are mutated. With
``--redis`` the mode-10 scenario runs across two routers on one Redis, with
connections on both the publishing router and the other.

The mutant is a router that passes payloads by reference (the library before
issue 16): each publish carries only a handle, and every recipient is handed
the publisher's object itself.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, Final

from isolation.context._model import Principal, UserContext
from isolation.events._connection import Connection
from isolation.events._model import Event, Overflow, make_event
from isolation.events._router import EventRouter
from isolation.report._modes._support.events import drain_all
from isolation.report._modes._support.redis import BARRIER, WrappedRouter, two_routers
from isolation.report._modes._support.registration import add_check
from isolation.report._registry import Backend, ModeRegistry, Settings

__all__ = [
    "DESCRIPTION",
    "aliasing_router",
    "check_payload_snapshot",
    "check_payload_snapshot_redis",
    "register",
]

USERS: Final = 8
ROUNDS: Final = 5
TENANT: Final = "fm10-snapshot"
QUEUED: Final = 3  # mode 15: queue size under DROP_OLDEST, smaller than ROUNDS + 1 publishes


def _text(user: str, n: int) -> str:
    return f"private digest {n} of {user}"


async def _publish_reused(router: Any, users: list[UserContext]) -> None:
    """The issue's shape: one dict, mutated between publishes, scribbled over at the end."""
    payload: dict[str, Any] = {"kind": "digest", "body": {"lines": []}}
    for n in range(ROUNDS):
        for ctx in users:
            payload["text"] = _text(ctx.user_id, n)
            payload["body"]["lines"] = [_text(ctx.user_id, n)]
            await router.publish(ctx, payload)
    payload["text"] = "scribbled by the publisher"
    payload["body"]["lines"].append("scribbled by the publisher")


def _scribble(value: Any) -> None:
    """What a careless consumer does to its copy: mutate every container in it."""
    if isinstance(value, dict):
        for item in list(value.values()):
            _scribble(item)
        value["text"] = "scribbled by another recipient"
    elif isinstance(value, list):
        for item in value:
            _scribble(item)
        value.append("scribbled by another recipient")


def _verify(
    where: str, principal: Principal, events: list[Any], kept: range, violations: list[str]
) -> None:
    user = principal[1]
    texts: list[str] = []
    for event in events:
        payload = event.payload
        texts.append(str(payload.get("text")) if isinstance(payload, dict) else repr(payload))
        body = payload.get("body") if isinstance(payload, dict) else None
        if not isinstance(body, dict) or body.get("lines") != [payload.get("text")]:
            violations.append(f"{where} of {user} got a payload changed after publishing")
    expected = [_text(user, n) for n in kept]
    if texts != expected:
        got = sorted(set(texts) - set(expected))
        violations.append(
            f"{where} of {user} received {len(texts)} payloads, {len(got)} not as published"
            + (f" (e.g. {got[0]!r})" if got else "")
        )


async def _scenario(
    publisher: Any, routers: list[Any], kept: range, violations: list[str]
) -> list[Any]:
    users = [UserContext.new(f"user-{i}", tenant_id=TENANT) for i in range(USERS)]
    # Two connections per user, on each router in turn (both on one router in memory).
    pairs = [
        (
            await routers[i % len(routers)].connect(ctx),
            await routers[(i + 1) % len(routers)].connect(ctx),
        )
        for i, ctx in enumerate(users)
    ]
    await _publish_reused(publisher, users)
    return pairs


async def _read_both(pairs: list[Any], kept: range, violations: list[str]) -> None:
    for result in await drain_all([first for first, _ in pairs]):
        _verify("a first connection", result.conn.principal, result.events, kept, violations)
        for event in result.events:
            _scribble(event.payload)
    for result in await drain_all([second for _, second in pairs]):
        _verify("a second connection", result.conn.principal, result.events, kept, violations)


async def check_payload_snapshot(
    make: Callable[..., Any], settings: Settings, *, queued: bool = False
) -> list[str]:
    """8 users x 2 connections, one reused dict: each gets its own texts, as published."""
    violations: list[str] = []
    options: dict[str, Any] = {}
    kept = range(ROUNDS)
    if queued:
        options = {"queue_size": QUEUED, "overflow": Overflow.DROP_OLDEST}
        kept = range(max(0, ROUNDS - QUEUED), ROUNDS)
    router = make(**options)
    try:
        pairs = await _scenario(router, [router], kept, violations)
        await _read_both(pairs, kept, violations)
    finally:
        await router.aclose()
    return violations


async def check_payload_snapshot_redis(make: Callable[..., Any], settings: Settings) -> list[str]:
    """Two routers on one Redis, connections on both, every publish through A."""
    violations: list[str] = []
    kept = range(ROUNDS)
    async with two_routers(make, settings) as pair:
        pairs = await _scenario(pair.a, [pair.a, pair.b], kept, violations)
        if not await pair.caught_up(violations):
            return violations
        await _read_both(pairs, kept, violations)
    return violations


# -- the mutant: payloads passed by reference --

_HANDLES = itertools.count()
_OBJECTS: dict[int, Any] = {}  # shared by the mutant routers of one process, as memory is


class _AliasingConnection:
    def __init__(self, inner: Connection) -> None:
        self._inner = inner

    @property
    def principal(self) -> Principal:
        return self._inner.principal

    async def receive(self) -> Event:
        event = await self._inner.receive()
        handle = event.payload
        payload = _OBJECTS.get(handle, handle) if type(handle) is int else handle
        packed = (event.id, event.recipient, event.tenant_id, event.kind, event.created_at)
        return make_event(packed, payload, event.seq)

    async def aclose(self) -> None:
        await self._inner.aclose()


class _AliasingRouter(WrappedRouter):
    """Mutant: the publisher's object itself is what every recipient is handed."""

    def __init__(self, **options: Any) -> None:
        self.inner = EventRouter(**options)

    async def connect(self, ctx: UserContext) -> _AliasingConnection:
        return _AliasingConnection(await self.inner.connect(ctx))

    async def publish(self, to: Principal | UserContext, payload: Any) -> Any:
        if to == BARRIER:  # the Redis pair's marker, not a scenario payload
            return await self.inner.publish(to, payload)
        handle = next(_HANDLES)
        _OBJECTS[handle] = payload
        return await self.inner.publish(to, handle)


DESCRIPTION: Final = (
    "8 users x 2 connections, one dict reused and mutated for every publish, "
    "copies scribbled by their recipients: each gets its own payloads as published"
)


def aliasing_router() -> type[_AliasingRouter]:
    """The mutant: a router that hands every recipient the published object itself."""
    return _AliasingRouter


def register(registry: ModeRegistry) -> None:
    """Register the payload-aliasing checks of mode 10 (memory, and Redis); mode 15's
    queued variant is :mod:`..fm15_overflow.payload_queued`."""
    description = DESCRIPTION
    add_check(
        registry,
        10,
        "payload-aliasing",
        check_payload_snapshot,
        library=lambda: EventRouter,
        mutant=aliasing_router,
        description=description,
    )
    add_check(
        registry,
        10,
        "payload-aliasing-redis",
        check_payload_snapshot_redis,
        library=lambda: EventRouter,
        mutant=aliasing_router,
        backend=Backend.REDIS,
        requires=("redis",),
        description=description + "; two routers on one Redis, publishing through A",
    )
