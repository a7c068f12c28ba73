"""A connection lives no longer than its context: it closes EXPIRED and delivers nothing more."""

from __future__ import annotations

import anyio
import pytest

import isolation
from isolation import Principal, UserContext
from isolation.events import CloseReason, EventRouter, PublishResult
from isolation.testing import FakeClock

pytestmark = pytest.mark.anyio


def ctx(ttl: float | None = 10) -> UserContext:
    return UserContext.new("alice", tenant_id="acme", ttl=ttl)


class TestFakeClock:
    async def test_waiting_receiver_woken_at_expiry(self, fake_clock: FakeClock) -> None:
        """advance() past expires_at closes the connection and wakes its consumer with EXPIRED."""
        router = EventRouter()
        conn = await router.connect(ctx())
        errors: list[isolation.ConnectionClosedError] = []
        async with anyio.create_task_group() as tg:

            async def consume() -> None:
                try:
                    await conn.receive()
                except isolation.ConnectionClosedError as exc:
                    errors.append(exc)

            tg.start_soon(consume)
            await anyio.wait_all_tasks_blocked()
            fake_clock.advance(9.9)
            await anyio.wait_all_tasks_blocked()
            assert errors == []
            fake_clock.advance(0.1)
        assert [e.reason for e in errors] == [CloseReason.EXPIRED]
        assert router.stats().expired == 1
        assert router.stats().connections == 0

    async def test_queued_events_not_delivered_after_expiry(self, fake_clock: FakeClock) -> None:
        """Events queued before the expiry are dropped, not handed over after it."""
        router = EventRouter()
        conn = await router.connect(ctx())
        await router.publish(Principal("acme", "alice"), 1)
        await router.publish(Principal("acme", "alice"), 2)
        fake_clock.advance(10)
        with pytest.raises(isolation.ConnectionClosedError) as info:
            await conn.receive()
        assert info.value.reason is CloseReason.EXPIRED
        assert (conn.stats().delivered, conn.stats().dropped) == (0, 2)

    async def test_last_step_catches_expiry_without_clock_watch(
        self, fake_clock: FakeClock
    ) -> None:
        """Even if nothing closed it yet, the last step refuses to deliver past expiry."""
        router = EventRouter()
        conn = await router.connect(ctx())
        await router.publish(Principal("acme", "alice"), 1)
        fake_clock._unwatch(router)  # as if the clock never told the router
        fake_clock.advance(10)
        assert conn.state == "open"
        with pytest.raises(isolation.ConnectionClosedError) as info:
            await conn.receive()
        assert info.value.reason is CloseReason.EXPIRED
        assert conn.stats().dropped == 1

    async def test_publish_skips_expired(self, fake_clock: FakeClock) -> None:
        """A publish after expiry closes the connection instead of queueing for it."""
        router = EventRouter()
        conn = await router.connect(ctx())
        fake_clock._unwatch(router)
        fake_clock.advance(10)
        assert await router.publish(Principal("acme", "alice"), 1) == PublishResult(
            delivered=0, dropped=0
        )
        assert conn.close_reason is CloseReason.EXPIRED

    async def test_stats_sweep(self, fake_clock: FakeClock) -> None:
        """stats() counts no connection past its expiry."""
        router = EventRouter()
        await router.connect(ctx(ttl=5))
        await router.connect(ctx(ttl=None))
        fake_clock._unwatch(router)
        fake_clock.advance(5)
        stats = router.stats()
        assert (stats.connections, stats.expired) == (1, 1)

    async def test_explicit_context_outlives_nothing(self, fake_clock: FakeClock) -> None:
        """A connection without expiry is untouched by the clock."""
        router = EventRouter()
        conn = await router.connect(ctx(ttl=None))
        fake_clock.advance(10**6)
        await router.publish(Principal("acme", "alice"), 1)
        assert (await conn.receive()).payload == 1

    async def test_expired_and_closed_refuse_live_ones_keep_their_events(
        self, fake_clock: FakeClock
    ) -> None:
        """One user id in two tenants, contexts of 5 s, none and 20 s: after 5 s the first
        refuses, the second keeps its event, a closed one refuses, and a later event
        reaches only the live connection, even through a cancelled receive.

        (The fixed sequence FM10's operations check ran against its own model before
        it drove the shipped RouterMachine; from tests/events/test_event_modes.py.)
        """
        router = EventRouter()
        a, b = Principal("fm10-a", "user-2"), Principal("fm10-b", "user-2")
        expiring = await router.connect(UserContext.new("user-2", tenant_id="fm10-a", ttl=5))
        lasting = await router.connect(UserContext.new("user-2", tenant_id="fm10-a"))
        other = await router.connect(UserContext.new("user-2", tenant_id="fm10-b", ttl=20))
        assert await router.publish(a, 1) == PublishResult(delivered=2, dropped=0)
        assert await router.publish(b, 2) == PublishResult(delivered=1, dropped=0)
        fake_clock.advance(5)
        with pytest.raises(isolation.ConnectionClosedError):
            await expiring.receive()
        assert (await lasting.receive()).payload == 1
        await other.aclose()
        with pytest.raises(isolation.ConnectionClosedError):
            await other.receive()
        assert await router.publish(a, 3) == PublishResult(delivered=1, dropped=0)
        got: list[int] = []
        async with anyio.create_task_group() as tg:

            async def receive() -> None:
                got.append((await lasting.receive()).payload)

            tg.start_soon(receive)
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
        assert got == [3]
        with anyio.move_on_after(0.01) as nothing_more:
            await lasting.receive()
        assert nothing_more.cancelled_caught
        await router.aclose()


class TestSystemClock:
    async def test_timer_wakes_waiting_receiver(self) -> None:
        """With the real clock a waiting receive() wakes at expires_at (a short real ttl)."""
        router = EventRouter()
        conn = await router.connect(ctx(ttl=0.05))
        with anyio.fail_after(10):
            with pytest.raises(isolation.ConnectionClosedError) as info:
                await conn.receive()
        assert info.value.reason is CloseReason.EXPIRED
