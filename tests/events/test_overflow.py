"""Overflow per connection: exact counts and seq gaps for each policy, BLOCK's shared deadline."""

from __future__ import annotations

import anyio
import pytest

import isolation
from isolation import Principal, UserContext
from isolation.events import CloseReason, Connection, Event, EventRouter, Overflow, PublishResult
from isolation.events._queue import burst

pytestmark = pytest.mark.anyio

CAPACITY = 10
BURST = 50


async def drain(conn: Connection) -> list[Event]:
    events: list[Event] = []
    while conn.stats().queued:
        events.append(await conn.receive())
    return events


def ctx(user: str = "alice", tenant: str | None = "acme") -> UserContext:
    return UserContext.new(user, tenant_id=tenant)


class TestDropPolicies:
    @pytest.mark.parametrize(
        ("policy", "kept"),
        [(Overflow.DROP_OLDEST, range(41, 51)), (Overflow.DROP_NEWEST, range(1, 11))],
    )
    async def test_burst(self, policy: Overflow, kept: range) -> None:
        """Capacity 10, burst 50: the policy keeps exactly its 10, the gap is visible in seq."""
        router = EventRouter(queue_size=CAPACITY, overflow=policy)
        slow = await router.connect(ctx())
        neighbour = await router.connect(ctx("bob"))
        results = [await router.publish(Principal("acme", "alice"), i) for i in range(1, BURST + 1)]
        assert sum(r.delivered for r in results) == (
            BURST if policy is Overflow.DROP_OLDEST else 10
        )
        assert sum(r.dropped for r in results) == BURST - CAPACITY
        events = await drain(slow)
        assert [e.seq for e in events] == list(kept)
        assert [e.payload for e in events] == list(kept)
        assert all(e.recipient == "alice" for e in events)
        stats = slow.stats()
        assert (stats.seq, stats.delivered, stats.dropped) == (BURST, CAPACITY, BURST - CAPACITY)
        assert neighbour.stats().seq == 0
        # After the burst the next event continues the sequence: the gap stays visible.
        await router.publish(Principal("acme", "alice"), "next")
        assert (await slow.receive()).seq == BURST + 1
        assert outcome_matches_model(policy)

    async def test_only_the_slow_tab_drops(self) -> None:
        """A fast tab of the same user loses nothing while a slow tab overflows."""
        router = EventRouter(queue_size=CAPACITY, overflow=Overflow.DROP_NEWEST)
        slow = await router.connect(ctx())
        fast = await router.connect(ctx())
        got: list[int] = []
        for i in range(1, BURST + 1):
            await router.publish(Principal("acme", "alice"), i)
            got.extend(e.seq for e in await drain(fast))
        assert got == list(range(1, BURST + 1))
        assert slow.stats().dropped == BURST - CAPACITY
        principal = router.principal_stats(Principal("acme", "alice"))
        assert principal is not None
        assert (principal.delivered, principal.dropped) == (BURST, BURST - CAPACITY)


def outcome_matches_model(policy: Overflow) -> bool:
    model = burst(policy, CAPACITY, range(1, BURST + 1))
    expected = {
        Overflow.DROP_OLDEST: tuple(range(41, 51)),
        Overflow.DROP_NEWEST: tuple(range(1, 11)),
    }[policy]
    return model.kept == expected and model.dropped == BURST - CAPACITY


class TestDisconnect:
    async def test_overflow_closes_slow_connection(self) -> None:
        """DISCONNECT: the 11th event closes the connection; backlog and event count as dropped."""
        router = EventRouter(queue_size=CAPACITY, overflow=Overflow.DISCONNECT)
        slow = await router.connect(ctx())
        fast = await router.connect(ctx())
        for i in range(1, CAPACITY + 1):
            await router.publish(Principal("acme", "alice"), i)
        await drain(fast)
        result = await router.publish(Principal("acme", "alice"), CAPACITY + 1)
        assert result == PublishResult(delivered=1, dropped=CAPACITY + 1)
        assert slow.close_reason is CloseReason.OVERFLOW
        with pytest.raises(isolation.ConnectionClosedError) as info:
            await slow.receive()
        assert info.value.reason is CloseReason.OVERFLOW
        assert (slow.stats().delivered, slow.stats().dropped) == (0, CAPACITY + 1)
        assert (await fast.receive()).seq == CAPACITY + 1
        stats = router.stats()
        assert (stats.overflow_disconnects, stats.dropped, stats.connections) == (1, 11, 1)

    async def test_async_for_raises_on_overflow(self) -> None:
        """`async for` raises ConnectionClosedError(OVERFLOW): the consumer must know."""
        router = EventRouter(queue_size=1, overflow=Overflow.DISCONNECT)
        conn = await router.connect(ctx())
        await router.publish(Principal("acme", "alice"), 1)
        await router.publish(Principal("acme", "alice"), 2)
        with pytest.raises(isolation.ConnectionClosedError) as info:
            async for _ in conn:
                pass
        assert info.value.reason is CloseReason.OVERFLOW

    async def test_later_publishes_are_undeliverable(self) -> None:
        """Once the only connection is closed, the principal gets nothing and keeps no state."""
        router = EventRouter(queue_size=CAPACITY, overflow=Overflow.DISCONNECT)
        await router.connect(ctx())
        for i in range(BURST):
            await router.publish(Principal("acme", "alice"), i)
        stats = router.stats()
        assert stats.undeliverable == BURST - CAPACITY - 1
        assert router.principal_stats(Principal("acme", "alice")) is None


class TestBlock:
    async def test_consumer_keeps_up(self) -> None:
        """BLOCK with a consumer: 50 through a queue of 10, none lost, none duplicated, in order."""
        router = EventRouter(queue_size=CAPACITY, overflow=Overflow.BLOCK)
        conn = await router.connect(ctx())
        seen: list[int] = []
        async with anyio.create_task_group() as tg:

            async def consume() -> None:
                async for event in conn:
                    seen.append(event.seq)

            tg.start_soon(consume)
            for i in range(BURST):
                result = await router.publish(Principal("acme", "alice"), i)
                assert result == PublishResult(delivered=1, dropped=0)
            await anyio.wait_all_tasks_blocked()
            await conn.aclose()
        assert seen == list(range(1, BURST + 1))
        assert conn.stats().dropped == 0

    async def test_timeout_without_consumer(self) -> None:
        """BLOCK with no consumer: 10 queued, each later publish times out with QueueFullError."""
        router = EventRouter(queue_size=CAPACITY, overflow=Overflow.BLOCK, publish_timeout=0.001)
        conn = await router.connect(ctx())
        for i in range(1, CAPACITY + 1):
            await router.publish(Principal("acme", "alice"), i)
        for i in range(CAPACITY + 1, BURST + 1):
            with pytest.raises(isolation.QueueFullError) as info:
                await router.publish(Principal("acme", "alice"), i)
            assert info.value.result == PublishResult(delivered=0, dropped=1)
            assert info.value.connections == (conn,)
            assert conn.id in str(info.value)
        assert [e.seq for e in await drain(conn)] == list(range(1, CAPACITY + 1))
        assert (conn.stats().delivered, conn.stats().dropped, conn.stats().waiting) == (10, 40, 0)
        await router.publish(Principal("acme", "alice"), "after")
        assert (await conn.receive()).seq == BURST + 1

    async def test_partial_result(self) -> None:
        """The tab with room gets the event; QueueFullError names only the full tab."""
        router = EventRouter(queue_size=1, overflow=Overflow.BLOCK, publish_timeout=0.001)
        full = await router.connect(ctx())
        roomy = await router.connect(ctx())
        await router.publish(Principal("acme", "alice"), 1)
        await roomy.receive()
        with pytest.raises(isolation.QueueFullError) as info:
            await router.publish(Principal("acme", "alice"), 2)
        assert info.value.result == PublishResult(delivered=1, dropped=1)
        assert info.value.connections == (full,)
        assert (await roomy.receive()).payload == 2

    async def test_blocked_publish_does_not_block_others(self) -> None:
        """A publisher blocked on alice's full queue does not delay publishes to bob."""
        router = EventRouter(queue_size=1, overflow=Overflow.BLOCK, publish_timeout=60)
        a = await router.connect(ctx())
        b = await router.connect(ctx("bob"))
        await router.publish(Principal("acme", "alice"), 1)
        results: list[PublishResult] = []
        async with anyio.create_task_group() as tg:

            async def blocked_publish() -> None:
                results.append(await router.publish(Principal("acme", "alice"), 2))

            tg.start_soon(blocked_publish)
            await anyio.wait_all_tasks_blocked()
            assert a.stats().waiting == 1
            for i in range(5):
                await router.publish(Principal("acme", "bob"), i)
                assert (await b.receive()).payload == i
            assert results == []
            assert (await a.receive()).payload == 1  # frees room: the blocked event goes in
        assert results == [PublishResult(delivered=1, dropped=0)]
        assert (await a.receive()).payload == 2

    async def test_waiting_publishers_keep_seq_order(self) -> None:
        """Several blocked publishers enter the queue in seq order as room frees."""
        router = EventRouter(queue_size=1, overflow=Overflow.BLOCK, publish_timeout=60)
        conn = await router.connect(ctx())
        await router.publish(Principal("acme", "alice"), 0)
        async with anyio.create_task_group() as tg:
            for i in range(1, 5):

                async def publish(i: int = i) -> None:
                    await router.publish(Principal("acme", "alice"), i)

                tg.start_soon(publish)
                await anyio.wait_all_tasks_blocked()
            assert conn.stats().waiting == 4
            got = [await conn.receive() for _ in range(5)]
        assert [e.payload for e in got] == [0, 1, 2, 3, 4]
        assert [e.seq for e in got] == [1, 2, 3, 4, 5]

    async def test_cancelled_publish_withdraws(self) -> None:
        """Cancelling a blocked publish withdraws its event (counted dropped, a seq gap)."""
        router = EventRouter(queue_size=1, overflow=Overflow.BLOCK, publish_timeout=60)
        conn = await router.connect(ctx())
        await router.publish(Principal("acme", "alice"), 1)
        async with anyio.create_task_group() as tg:

            async def publish() -> None:
                await router.publish(Principal("acme", "alice"), 2)

            tg.start_soon(publish)
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
        assert (conn.stats().waiting, conn.stats().dropped) == (0, 1)
        assert (await conn.receive()).seq == 1
        await router.publish(Principal("acme", "alice"), 3)
        assert (await conn.receive()).seq == 3

    async def test_close_releases_blocked_publisher(self) -> None:
        """Closing a full connection releases its blocked publisher: dropped, no timeout."""
        router = EventRouter(queue_size=1, overflow=Overflow.BLOCK, publish_timeout=60)
        conn = await router.connect(ctx())
        await router.publish(Principal("acme", "alice"), 1)
        results: list[PublishResult] = []
        async with anyio.create_task_group() as tg:

            async def publish() -> None:
                results.append(await router.publish(Principal("acme", "alice"), 2))

            tg.start_soon(publish)
            await anyio.wait_all_tasks_blocked()
            await conn.aclose()
        assert results == [PublishResult(delivered=0, dropped=1)]
        assert conn.stats().dropped == 2
