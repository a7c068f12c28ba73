"""Cancellation loses and duplicates nothing; 10,000 connect/disconnect cycles leave nothing behind."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given
from hypothesis import strategies as st

import isolation
from isolation import Principal, UserContext
from isolation.events import CloseReason, Connection, Event, EventRouter, Overflow
from isolation.events.backends import MemoryBackend
from isolation.testing import FakeClock

pytestmark = pytest.mark.anyio

STEPS = st.lists(
    st.sampled_from(["publish", "publish_then_cancel", "cancel_waiting", "settle"]), max_size=40
)


class TestCancelledReceive:
    @given(steps=STEPS)
    async def test_nothing_lost_or_duplicated(self, steps: list[str]) -> None:
        """Receives cancelled while waiting, or just after a wake-up, lose and repeat nothing."""
        router = EventRouter(queue_size=1000)
        conn = await router.connect(UserContext.new("alice", tenant_id="acme"))
        got: list[int] = []
        scopes: list[anyio.CancelScope] = []
        published = 0

        async def consume() -> None:
            while True:
                with anyio.CancelScope() as scope:
                    scopes.append(scope)
                    got.append((await conn.receive()).payload)

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await anyio.wait_all_tasks_blocked()
            for step in steps:
                if step.startswith("publish"):
                    await router.publish(Principal("acme", "alice"), published)
                    published += 1
                if step in ("publish_then_cancel", "cancel_waiting"):
                    # Cancel the consumer's current receive: right after the wake-up
                    # (before it ran) or while it waits.
                    scopes[-1].cancel()
                await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
        assert got == list(range(published))
        assert conn.stats().queued == 0
        assert conn.stats().delivered == published

    async def test_cancel_while_waiting_keeps_later_event(self) -> None:
        """An event published after a receive was cancelled goes to the next receive."""
        router = EventRouter()
        conn = await router.connect(UserContext.new("alice"))
        with anyio.move_on_after(0.001):
            await conn.receive()
        assert conn._waiter is None
        await router.publish(Principal(None, "alice"), "later")
        assert (await conn.receive()).payload == "later"


async def _tasks() -> int:
    """How many tasks the event loop has now."""
    import sniffio

    if sniffio.current_async_library() == "trio":
        import trio

        def count(task: Any) -> int:
            return 1 + sum(count(child) for n in task.child_nurseries for child in n.child_tasks)

        return count(trio.lowlevel.current_root_task())
    import asyncio

    return len(asyncio.all_tasks())


class TestCycles:
    CYCLES = 10_000

    async def test_connect_disconnect_leaves_nothing(self, fake_clock: FakeClock) -> None:
        """10,000 cycles of every kind of connection: no task, entry, counter or object left."""
        backend = MemoryBackend()
        router = EventRouter(
            keys=[b"0123456789abcdef" * 2], backend=backend, overflow=Overflow.DROP_OLDEST
        )
        tasks_before = await _tasks()
        refs: list[weakref.ref[Connection]] = []
        for i in range(self.CYCLES):
            ctx = UserContext.new(
                f"user-{i % 50}", tenant_id=f"t{i % 3}", ttl=60 if i % 2 else None
            )
            kind = i % 4
            if kind == 0:
                conn = await router.connect(ctx)
                await router.publish(ctx, i)
                await conn.aclose()
            elif kind == 1:
                async with isolation.scope(ctx):
                    conn = await router.connect()
                    await router.publish(ctx, i)
                    assert (await conn.receive()).payload == i
            elif kind == 2:
                async with await router.connect(token=router.issue_ticket(ctx)) as conn:
                    pass
            else:
                conn = await router.connect(ctx)
                if ctx.expires_at is not None:
                    fake_clock.advance(61)
                    assert conn.close_reason is CloseReason.EXPIRED
                else:
                    await conn.aclose()
            refs.append(weakref.ref(conn))
            del conn
        assert await _tasks() == tasks_before
        stats = router.stats()
        assert (stats.connections, stats.principals) == (0, 0)
        assert stats.opened == stats.closed == self.CYCLES
        assert router._routes == {}
        assert router._totals == {}
        assert router._live == set()
        assert router._expiring == set()
        fake_clock.advance(3600)
        assert backend.tickets_recorded == 0
        gc.collect()
        assert [r for r in refs if r() is not None] == []
        assert len(router._scoped) == 0
        await router.aclose()

    async def test_payloads_not_kept(self) -> None:
        """Neither a delivered event's payload nor a dropped backlog is kept by the router."""

        class Payload(dict[str, int]):  # weakly referenceable, and JSON can carry it
            pass

        router = EventRouter()
        conn = await router.connect(UserContext.new("alice"))
        delivered, queued = Payload(), Payload()
        refs = [weakref.ref(delivered), weakref.ref(queued)]
        await router.publish(Principal(None, "alice"), delivered)
        event: Event | None = await conn.receive()
        await router.publish(Principal(None, "alice"), queued)
        await conn.aclose()
        del delivered, queued
        event = None
        gc.collect()
        assert [r() for r in refs] == [None, None]
        assert event is None
        assert conn.stats().dropped == 1
