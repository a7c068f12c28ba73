"""The router's hooks for shared backends, in memory, on asyncio and trio.

``watch()`` may return an awaitable that ``connect()`` awaits (and a failure
closes the connection); ``Deliver.offer()`` never waits; ``Deliver.gap()``
queues one ``"gap"`` event per connection, even on a full queue, behind
blocked publishers, and kept at the head under ``DROP_OLDEST``.
"""

from __future__ import annotations

from collections.abc import Awaitable

import anyio
import pytest

import isolation
from isolation import UserContext
from isolation.context._model import Principal
from isolation.events import EventRouter, Overflow, PublishResult
from isolation.events.backends import Deliver, Envelope, MemoryBackend

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """These hooks are core: both event loops."""
    return str(request.param)


class SlowBackend:
    """A shared backend whose subscriptions are confirmed when the test says so."""

    def __init__(self) -> None:
        self.deliver: Deliver | None = None
        self.confirmed = anyio.Event()
        self.fail = False
        self.watched: list[Principal] = []
        self.unwatched: list[Principal] = []
        self.tickets = MemoryBackend()

    @property
    def shared(self) -> bool:
        return True

    def attach(self, deliver: Deliver) -> None:
        self.deliver = deliver

    def watch(self, principal: Principal) -> Awaitable[None]:
        self.watched.append(principal)
        return self._confirm()

    async def _confirm(self) -> None:
        await self.confirmed.wait()
        if self.fail:
            raise isolation.BackendUnavailableError("no confirmation")

    def unwatch(self, principal: Principal) -> None:
        self.unwatched.append(principal)

    async def publish(self, envelope: Envelope) -> PublishResult:
        assert self.deliver is not None
        return await self.deliver(envelope)

    async def claim_ticket(self, token: str, *, expires_at: float) -> bool:
        return await self.tickets.claim_ticket(token, expires_at=expires_at)

    async def aclose(self) -> None:
        pass


def envelope(n: int, user: str = "alice") -> Envelope:
    return Envelope(
        id=f"e{n}", recipient=user, tenant_id=None, kind="message", created_at=0.0, payload=n
    )


class TestWatch:
    async def test_connect_waits_for_confirmation(self) -> None:
        """connect() returns only once the backend's watch() awaitable is done."""
        backend = SlowBackend()
        router = EventRouter(backend=backend)
        returned = anyio.Event()

        async def connect() -> None:
            await router.connect(UserContext.new("alice"))
            returned.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(connect)
            await anyio.wait_all_tasks_blocked()
            assert not returned.is_set()
            assert backend.watched == [(None, "alice")]
            backend.confirmed.set()
        assert returned.is_set()

    async def test_failed_watch_closes_the_connection(self) -> None:
        """If watch() fails, connect() raises and no connection is left open."""
        backend = SlowBackend()
        backend.fail = True
        backend.confirmed.set()
        router = EventRouter(backend=backend)
        with pytest.raises(isolation.BackendUnavailableError):
            await router.connect(UserContext.new("alice"))
        assert router.stats().connections == 0
        assert backend.unwatched == [(None, "alice")]

    async def test_cancelled_connect_closes_the_connection(self) -> None:
        """A connect() cancelled while waiting for confirmation leaves nothing open."""
        backend = SlowBackend()
        router = EventRouter(backend=backend)
        with anyio.move_on_after(0.05):
            await router.connect(UserContext.new("alice"))
        assert router.stats().connections == 0
        assert backend.unwatched == [(None, "alice")]


class TestOfferAndGap:
    async def test_offer_never_waits(self) -> None:
        """offer() returns a result at once, or an awaitable for a full BLOCK connection."""
        backend = SlowBackend()
        backend.confirmed.set()
        router = EventRouter(backend=backend, queue_size=1, publish_timeout=0.05)
        conn = await router.connect(UserContext.new("alice"))
        assert backend.deliver is not None
        assert backend.deliver.offer(envelope(1)) == PublishResult(delivered=1, dropped=0)
        waiting = backend.deliver.offer(envelope(2))
        assert not isinstance(waiting, PublishResult)
        with pytest.raises(isolation.QueueFullError) as info:
            await waiting
        assert (
            backend.deliver.gap(
                (None, "alice"), reason="overflow", connections=info.value.connections
            )
            == 1
        )
        got = [await conn.receive(), await conn.receive()]
        assert [e.payload for e in got] == [1, {"reason": "overflow"}]
        assert [e.kind for e in got] == ["message", "gap"]
        assert [e.seq for e in got] == [1, 3]  # seq 2 timed out
        assert backend.deliver.offer(envelope(9, "nobody")) == PublishResult(delivered=0, dropped=0)
        assert "Deliver" in repr(backend.deliver)

    async def test_one_unread_gap_even_when_full(self) -> None:
        """A full queue still takes one gap (one over capacity); a second waits until it is read."""
        backend = SlowBackend()
        backend.confirmed.set()
        router = EventRouter(backend=backend, queue_size=2, overflow=Overflow.DROP_NEWEST)
        conn = await router.connect(UserContext.new("alice"))
        deliver = backend.deliver
        assert deliver is not None
        deliver.offer(envelope(1))
        deliver.offer(envelope(2))
        assert deliver.gap((None, "alice"), reason="reconnected") == 1
        assert deliver.gap((None, "alice"), reason="reconnected") == 0
        assert conn.stats().queued == 3
        kinds = [(await conn.receive()).kind for _ in range(3)]
        assert kinds == ["message", "message", "gap"]
        assert deliver.gap((None, "alice"), reason="reconnected") == 1
        assert deliver.gap((None, "bob"), reason="reconnected") == 0

    async def test_drop_oldest_keeps_the_gap(self) -> None:
        """Under DROP_OLDEST an unread gap at the head survives; the event after it goes."""
        backend = SlowBackend()
        backend.confirmed.set()
        router = EventRouter(backend=backend, queue_size=2, overflow=Overflow.DROP_OLDEST)
        conn = await router.connect(UserContext.new("alice"))
        deliver = backend.deliver
        assert deliver is not None
        deliver.gap((None, "alice"), reason="reconnected")
        for n in range(1, 4):
            deliver.offer(envelope(n))
        got = [await conn.receive() for _ in range(conn.stats().queued)]
        assert got[0].kind == "gap"
        assert [e.payload for e in got[1:]] == [3]
        stats = conn.stats()
        assert stats.seq == stats.delivered + stats.dropped + stats.queued

    async def test_gap_behind_blocked_publishers(self) -> None:
        """With BLOCK publishers waiting, the gap queues behind them: seq stays in order."""
        backend = SlowBackend()
        backend.confirmed.set()
        router = EventRouter(backend=backend, queue_size=1, publish_timeout=10)
        conn = await router.connect(UserContext.new("alice"))
        deliver = backend.deliver
        assert deliver is not None
        deliver.offer(envelope(1))
        async with anyio.create_task_group() as tg:
            waiting = deliver.offer(envelope(2))
            assert not isinstance(waiting, PublishResult)

            async def wait() -> None:
                await waiting

            tg.start_soon(wait)
            await anyio.wait_all_tasks_blocked()
            assert deliver.gap((None, "alice"), reason="reconnected") == 1
            assert deliver.gap((None, "alice"), reason="reconnected") == 0
            got = [await conn.receive() for _ in range(3)]
        assert [e.seq for e in got] == [1, 2, 3]
        assert [e.kind for e in got] == ["message", "message", "gap"]

    async def test_closed_connection_gets_no_gap(self) -> None:
        """A closed connection is skipped."""
        backend = SlowBackend()
        backend.confirmed.set()
        router = EventRouter(backend=backend)
        conn = await router.connect(UserContext.new("alice"))
        await conn.aclose()
        assert backend.deliver is not None
        assert backend.deliver.gap((None, "alice"), reason="x", connections=[conn]) == 0
