"""Faults: a Redis of the test's own, killed and restarted mid-stream, ten times.

Each cycle publishes to four principals (one user id in two tenants and with
no tenant, and another user), kills the server, checks that publishing during
the outage raises ``BackendUnavailableError``, restarts it, and waits for the
receiving backend to resubscribe: every connection gets a ``"gap"`` event and
then the events published after the restart. Over all cycles, 0 events reach
another principal's connection.
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
from redis_support import KEY, OwnRedis

import isolation
from isolation import Principal, UserContext
from isolation.events import Event, EventRouter
from isolation.events.backends import redis as redis_backend
from isolation.events.backends.redis import RedisBackend

pytestmark = pytest.mark.anyio

PRINCIPALS = [("acme", "u0"), ("globex", "u0"), (None, "u0"), ("acme", "u1")]
RESTARTS = 10
PER_CYCLE = 5


@pytest.fixture
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Reconnect attempts at most 50 ms apart, so ten restarts take seconds."""
    monkeypatch.setattr(redis_backend, "_BACKOFF_MAX", 0.05)
    return


class Inbox:
    """Every event each connection received, and a wake-up when one arrives."""

    def __init__(self) -> None:
        self.events: dict[tuple[str | None, str], list[Event]] = {p: [] for p in PRINCIPALS}
        self.foreign: list[tuple[tuple[str | None, str], Event]] = []
        self.changed = anyio.Event()

    def add(self, owner: tuple[str | None, str], event: Event) -> None:
        if (event.tenant_id, event.recipient) != owner:
            self.foreign.append((owner, event))
        self.events[owner].append(event)
        self.changed.set()
        self.changed = anyio.Event()

    async def until(self, predicate: object) -> None:
        while not predicate():  # type: ignore[operator]
            await self.changed.wait()

    def gaps(self, owner: tuple[str | None, str]) -> int:
        return sum(1 for e in self.events[owner] if e.kind == "gap")

    def payloads(self, owner: tuple[str | None, str]) -> list[object]:
        return [e.payload for e in self.events[owner] if e.kind != "gap"]


async def test_ten_restarts(own_redis: OwnRedis, namespace: str, quick_backoff: None) -> None:
    """Ten restarts: typed error during outages, a gap each time, resubscribed, 0 misrouted."""
    receiver = EventRouter(
        backend=RedisBackend(
            own_redis.url, keys=[KEY], namespace=namespace, unavailable_timeout=0.3
        ),
        queue_size=1000,
    )
    sender = EventRouter(
        backend=RedisBackend(
            own_redis.url, keys=[KEY], namespace=namespace, unavailable_timeout=0.3
        )
    )
    inbox = Inbox()
    try:
        conns = {
            p: await receiver.connect(UserContext.new(p[1], tenant_id=p[0])) for p in PRINCIPALS
        }

        async def consume(owner: tuple[str | None, str]) -> None:
            async for event in conns[owner]:
                inbox.add(owner, event)

        async with anyio.create_task_group() as tg:
            for owner in PRINCIPALS:
                tg.start_soon(consume, owner)
            with anyio.fail_after(60):
                sent = 0
                for cycle in range(RESTARTS):
                    for _ in range(PER_CYCLE):
                        for tenant, user in PRINCIPALS:
                            await sender.publish(Principal(tenant, user), [tenant, user, sent])
                        sent += 1
                    await inbox.until(
                        lambda n=sent: all(len(inbox.payloads(p)) == n for p in PRINCIPALS)
                    )
                    own_redis.kill()
                    with pytest.raises(isolation.BackendUnavailableError):
                        await sender.publish(Principal("acme", "u0"), "lost")
                    own_redis.start()
                    await inbox.until(
                        lambda n=cycle + 1: all(inbox.gaps(p) == n for p in PRINCIPALS)
                    )
            for conn in conns.values():
                await conn.aclose()
        for tenant, user in PRINCIPALS:
            assert inbox.payloads((tenant, user)) == [[tenant, user, k] for k in range(sent)]
            assert inbox.gaps((tenant, user)) == RESTARTS
        assert inbox.foreign == []
        stats = receiver.backend.stats()  # type: ignore[attr-defined]
        assert stats.reconnects == RESTARTS
        assert stats.gaps == RESTARTS * len(PRINCIPALS)
        assert sender.backend.stats().unavailable == RESTARTS  # type: ignore[attr-defined]
        assert own_redis.starts == RESTARTS + 1
    finally:
        await receiver.aclose()
        await sender.aclose()


async def test_connect_during_outage(
    own_redis: OwnRedis, namespace: str, quick_backoff: None
) -> None:
    """connect() while Redis is down raises after unavailable_timeout; after it is back, it works."""
    router = EventRouter(
        backend=RedisBackend(
            own_redis.url, keys=[KEY], namespace=namespace, unavailable_timeout=0.3
        )
    )
    try:
        first = await router.connect(UserContext.new("alice"))
        own_redis.kill()
        with pytest.raises(isolation.BackendUnavailableError):
            await router.connect(UserContext.new("bob"))
        assert router.connections(Principal(None, "bob")) == ()
        own_redis.start()
        with anyio.fail_after(10):
            assert (await first.receive()).kind == "gap"
        bob = await router.connect(UserContext.new("bob"))
        await router.publish(Principal(None, "bob"), "back")
        assert (await bob.receive()).payload == "back"
    finally:
        await router.aclose()
