"""FM10 across processes: two routers on one Redis, events never reach another user.

Subject: a factory ``make(url, namespace) -> router`` (see :mod:`.._support.events` for
the router shape). Runs only when the report is given ``--redis URL``.

``two-routers-redis``: two routers on one Redis under a fresh namespace, each
holding connections of 16 principals (8 user ids, each in two tenants: the
look-alikes that matter), the same user id's two tenants on different
routers; 4 publishers (2 on each router) send 10 events to every principal,
then an end marker. The property: 0 events reach another principal's
connection, 0 are refused at the last step (a routing fault upstream shows
there), and every connection receives exactly its events, each publisher's in
order, once.

The mutant is a pub/sub router of the usual kind: one channel per user id
(the tenant forgotten), unsigned JSON, no recipient check on receipt. It is
caught every run: each event for ``user-0`` of one tenant also reaches
``user-0`` of the other.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from isolation._errors import ConnectionClosedError
from isolation.context._model import Principal, UserContext
from isolation.events._model import CloseReason
from isolation.report._modes._support.events import principal_of
from isolation.report._modes._support.registration import add_check
from isolation.report._registry import Backend, ModeRegistry, Settings

__all__ = ["check_two_routers", "register"]

USERS = 8
TENANTS = ("fm10r-a", "fm10r-b")
PUBLISHERS = 4
EVENTS = 10
END = "end"
_KEY = b"isolation-report-fm10-redis-key!!"  # a throwaway key for the report's own namespace


def _library(url: str, namespace: str) -> Any:
    from isolation.events._router import EventRouter
    from isolation.events.backends.redis import RedisBackend

    return EventRouter(
        backend=RedisBackend(url, keys=[_KEY], namespace=namespace), queue_size=EVENTS * 4
    )


async def check_two_routers(make: Callable[[str, str], Any], settings: Settings) -> list[str]:
    """Two routers, 32 principals, 4 publishers on one Redis: 0 misrouted, 0 lost, 0 duplicated."""
    url = settings.redis_url
    if url is None:
        return ["no Redis URL given (--redis)"]
    namespace = f"isolation-report-{os.urandom(6).hex()}"
    routers = [make(url, namespace), make(url, namespace)]
    violations: list[str] = []
    principals = [Principal(t, f"user-{i}") for i in range(USERS) for t in TENANTS]
    try:
        conns = []
        for n, (tenant, user) in enumerate(principals):
            router = routers[n % 2]  # the two tenants of one user id sit on different routers
            conns.append(await router.connect(UserContext.new(user, tenant_id=tenant)))
        received: dict[int, list[Any]] = {id(c): [] for c in conns}

        async def consume(conn: Any) -> None:
            ends = 0
            while ends < PUBLISHERS:
                event = await conn.receive()
                received[id(conn)].append(event)
                if event.payload == END:
                    ends += 1

        async def publish(number: int) -> None:
            router = routers[number % 2]
            for k in range(EVENTS):
                for principal in principals:
                    await router.publish(principal, [*principal, number, k])
            for principal in principals:
                await router.publish(principal, END)

        with anyio.move_on_after(60) as timer:
            async with anyio.create_task_group() as tg:
                for conn in conns:
                    tg.start_soon(consume, conn)
                for number in range(PUBLISHERS):
                    tg.start_soon(publish, number)
        if timer.cancelled_caught:
            violations.append("the scenario did not finish within 60 s (events lost?)")
        for conn in conns:
            owner = conn.principal
            mine: dict[int, list[int]] = {n: [] for n in range(PUBLISHERS)}
            for event in received[id(conn)]:
                if principal_of(event) != owner or (
                    event.payload != END and tuple(event.payload[:2]) != owner
                ):
                    violations.append(
                        f"the connection of {owner[1]} ({owner[0]}) was handed an event for "
                        f"{event.recipient} ({event.tenant_id})"
                    )
                elif event.payload != END:
                    mine[event.payload[2]].append(event.payload[3])
            for number, ks in mine.items():
                if ks != list(range(EVENTS)) and not timer.cancelled_caught:
                    violations.append(
                        f"{owner[1]} ({owner[0]}) received {ks} from publisher {number}, "
                        f"expected 0..{EVENTS - 1} once each, in order"
                    )
        for router in routers:
            refused = router.stats().refused
            if refused:
                violations.append(
                    f"{refused} events were refused at the last step (misrouted upstream)"
                )
    finally:
        for router in routers:
            await router.aclose()
    return violations


# -- the mutant: one channel per user id, unsigned, unchecked --


class _Event:
    __slots__ = ("payload", "recipient", "tenant_id")

    def __init__(self, recipient: str, tenant_id: str | None, payload: Any) -> None:
        self.recipient = recipient
        self.tenant_id = tenant_id
        self.payload = payload


class _Stats:
    refused = 0


class _Conn:
    def __init__(self, ctx: UserContext) -> None:
        self.principal = ctx.principal
        self.queue: asyncio.Queue[_Event | None] = asyncio.Queue()

    async def receive(self) -> _Event:
        event = await self.queue.get()
        if event is None:
            raise ConnectionClosedError("closed", reason=CloseReason.CLOSED)
        return event

    async def aclose(self) -> None:
        self.queue.put_nowait(None)


class _TenantBlindRouter:
    """Mutant: channels by user id alone, no signature, no recipient check on receipt."""

    def __init__(self, url: str, namespace: str) -> None:
        import redis.asyncio as aioredis

        self.namespace = namespace
        self.client = aioredis.Redis.from_url(url)
        self.pubsub = self.client.pubsub()
        self.conns: dict[str, list[_Conn]] = {}
        self.listener: asyncio.Task[None] | None = None

    def _channel(self, user_id: str) -> str:
        return f"{self.namespace}:{user_id}"

    async def connect(self, ctx: UserContext) -> _Conn:
        conn = _Conn(ctx)
        channel = self._channel(ctx.user_id)
        if channel not in self.conns:
            self.conns[channel] = []
            await self.pubsub.subscribe(channel)
            if self.listener is None:
                # Read the confirmation here, then leave reading to the listener.
                await self.pubsub.get_message(timeout=5)
                self.listener = asyncio.ensure_future(self._listen())
            else:
                await asyncio.sleep(0.05)
        self.conns[channel].append(conn)
        return conn

    async def _listen(self) -> None:
        async for message in self.pubsub.listen():
            if message["type"] != "message":
                continue
            data = json.loads(message["data"])
            for conn in self.conns.get(message["channel"].decode(), ()):
                conn.queue.put_nowait(_Event(data["u"], data["t"], data["p"]))

    async def publish(self, to: Principal, payload: Any) -> None:
        tenant_id, user_id = to
        body = json.dumps({"u": user_id, "t": tenant_id, "p": payload})
        await self.client.publish(self._channel(user_id), body)

    def stats(self) -> _Stats:
        return _Stats()

    async def aclose(self) -> None:
        if self.listener is not None:
            self.listener.cancel()
            await asyncio.gather(self.listener, return_exceptions=True)
        # Through a typed name: redis-py annotates PubSub.aclose() only from 8.2 on,
        # so a call (or an ignore) would fail mypy on one end of the allowed range.
        close_pubsub: Callable[[], Awaitable[None]] = self.pubsub.aclose
        await close_pubsub()
        await self.client.aclose()


def register(registry: ModeRegistry) -> None:
    """Register FM10's check across two routers on Redis."""
    add_check(
        registry,
        10,
        "two-routers-redis",
        check_two_routers,
        library=lambda: _library,
        mutant=lambda: _TenantBlindRouter,
        backend=Backend.REDIS,
        requires=("redis",),
        description=(
            "two routers on one Redis, 8 user ids x 2 tenants, 4 publishers: "
            "0 misrouted, 0 refused, 0 lost, 0 duplicated"
        ),
    )
