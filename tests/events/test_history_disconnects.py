"""1,000 forced disconnects during a steady publish stream: nothing lost, doubled or crossed.

50 users x 3 connections (one "client" each, which keeps its last resume
point across reconnects), in memory. A seeded random schedule publishes to
random users, lets random clients read a few events, and force-disconnects a
random client (its queued events are discarded with the connection), which
reconnects later with its resume point, by ticket or directly. Over the whole
run every client must have received each offset of its own user's stream
exactly once, in order (0 lost within history, 0 duplicated), and nothing of
another user (0 cross-user). ``anyio.fail_after`` is only a hang guard.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import anyio
import pytest

from isolation import Principal, UserContext
from isolation.events import Connection, EventRouter, History, ResumePoint

pytestmark = pytest.mark.anyio

KEY = b"0123456789abcdef" * 2
USERS = 50
TABS = 3
DISCONNECTS = 1_000


@dataclass
class Client:
    principal: Principal
    conn: Connection | None = None
    epoch: str | None = None
    offset: int = 0
    received: list[int] = field(default_factory=list)
    duplicates: int = 0
    out_of_order: int = 0
    cross_user: int = 0
    gaps: int = 0


async def test_a_thousand_forced_disconnects() -> None:
    rng = random.Random(20)
    router = EventRouter(
        history=History(size=1_000, ttl=3_600),
        keys=[KEY],
        queue_size=10_000,
        max_connections_per_user=TABS,
    )
    # Two tenants with the same user ids: the cross-user check includes "same id, other tenant".
    principals = [Principal(f"t{i % 2}", f"u{i // 2}") for i in range(USERS)]
    clients = [Client(p) for p in principals for _ in range(TABS)]
    published = dict.fromkeys(principals, 0)
    replayed = 0

    async def connect(client: Client) -> None:
        nonlocal replayed
        ctx = UserContext.new(client.principal.user_id, tenant_id=client.principal.tenant_id)
        if client.epoch is None:
            client.conn = await router.connect(ctx)
            return
        point = ResumePoint(client.epoch, client.offset)
        if rng.random() < 0.5:
            client.conn = await router.connect(token=router.issue_ticket(ctx, resume=point))
        else:
            client.conn = await router.connect(ctx, resume=point)
        replayed += client.conn.stats().queued

    async def read(client: Client, most: int) -> None:
        conn = client.conn
        assert conn is not None
        for _ in range(most):
            if not conn.stats().queued:
                return
            event = await conn.receive()
            if (event.tenant_id, event.recipient) != client.principal:
                client.cross_user += 1
                continue
            if event.kind == "gap":
                client.gaps += 1
                continue
            assert event.offset is not None
            if event.offset in client.received:
                client.duplicates += 1
            elif event.offset != client.offset + 1:
                client.out_of_order += 1
            client.received.append(event.offset)
            client.epoch, client.offset = event.epoch, event.offset

    with anyio.fail_after(120):  # a hang guard only
        for client in clients:
            await connect(client)
        # A first event per user, read by every client: each learns its stream's epoch
        # (a client that never saw an event has no point to resume from).
        for to in principals:
            await router.publish(to, {"n": 0})
            published[to] += 1
        for client in clients:
            await read(client, 10)
        disconnects = 0
        down: list[Client] = []
        while disconnects < DISCONNECTS:
            for _ in range(5):  # the steady stream: five events per step
                to = rng.choice(principals)
                await router.publish(to, {"n": published[to]})
                published[to] += 1
            for client in rng.sample(clients, 10):
                if client.conn is not None:
                    await read(client, rng.randint(0, 4))
            victim = rng.choice(clients)
            if victim.conn is not None:
                victim.conn.close()  # forced: whatever it had queued is discarded
                victim.conn = None
                down.append(victim)
                disconnects += 1
            if down and (len(down) > 5 or rng.random() < 0.5):
                await connect(down.pop(rng.randrange(len(down))))
        for client in down:
            await connect(client)
        for client in clients:
            await read(client, 10_000)

    lost = sum(published[c.principal] - len(set(c.received)) for c in clients)
    figures = {
        "disconnects": disconnects,
        "published": sum(published.values()),
        "delivered": sum(len(c.received) for c in clients),
        "replayed": replayed,
        "lost": lost,
        "duplicated": sum(c.duplicates for c in clients),
        "out_of_order": sum(c.out_of_order for c in clients),
        "cross_user": sum(c.cross_user for c in clients),
        "gaps": sum(c.gaps for c in clients),
    }
    print(figures)
    assert figures["disconnects"] == DISCONNECTS
    assert figures["lost"] == 0
    assert figures["duplicated"] == 0
    assert figures["out_of_order"] == 0
    assert figures["cross_user"] == 0
    assert figures["gaps"] == 0  # history (1,000 per user) covers every absence here
    assert figures["replayed"] > 0
    for client in clients:
        assert client.received == list(range(1, published[client.principal] + 1))
