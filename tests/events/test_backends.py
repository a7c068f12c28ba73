"""The EventBackend extension point: the memory backend, and a shared backend plugged in."""

from __future__ import annotations

import pytest

import isolation
from isolation import UserContext
from isolation.context._model import Principal
from isolation.events import EventRouter, PublishResult
from isolation.events.backends import Deliver, Envelope, EventBackend, MemoryBackend

pytestmark = pytest.mark.anyio


class LoopbackBackend:
    """A shared backend in miniature: every publish comes back through deliver()."""

    def __init__(self) -> None:
        self.deliver: Deliver | None = None
        self.sent: list[Envelope] = []
        self.watching: set[Principal] = set()
        self.tickets = MemoryBackend()
        self.closed = False

    @property
    def shared(self) -> bool:
        return True

    def attach(self, deliver: Deliver) -> None:
        self.deliver = deliver

    async def publish(self, envelope: Envelope) -> PublishResult:
        self.sent.append(envelope)
        assert self.deliver is not None
        if (envelope.tenant_id, envelope.recipient) not in self.watching:
            return PublishResult(delivered=0, dropped=0)
        return await self.deliver(envelope)

    def watch(self, principal: Principal) -> None:
        self.watching.add(principal)

    def unwatch(self, principal: Principal) -> None:
        self.watching.remove(principal)

    async def claim_ticket(self, token: str, *, expires_at: float) -> bool:
        return await self.tickets.claim_ticket(token, expires_at=expires_at)

    async def aclose(self) -> None:
        self.closed = True


class TestMemoryBackend:
    def test_is_a_backend(self) -> None:
        """MemoryBackend implements the protocol and is not shared."""
        backend = MemoryBackend()
        assert isinstance(backend, EventBackend)
        assert backend.shared is False

    def test_one_router(self) -> None:
        """A MemoryBackend serves one router."""
        backend = MemoryBackend()
        EventRouter(backend=backend)
        with pytest.raises(isolation.ConfigurationError):
            EventRouter(backend=backend)

    async def test_loopback_publish(self) -> None:
        """Its publish() hands the envelope back to the router, like a direct publish."""
        backend = MemoryBackend()
        router = EventRouter(backend=backend)
        conn = await router.connect(UserContext.new("alice"))
        envelope = Envelope(
            id="e1", recipient="alice", tenant_id=None, kind="message", created_at=1.0, payload=3
        )
        assert await backend.publish(envelope) == PublishResult(delivered=1, dropped=0)
        event = await conn.receive()
        assert (event.id, event.payload, event.seq) == ("e1", 3, 1)
        await router.aclose()
        with pytest.raises(isolation.ConfigurationError):
            await backend.publish(envelope)


class TestSharedBackend:
    async def test_publish_travels_through_the_backend(self) -> None:
        """With a shared backend, publishes go out as envelopes and come back to connections."""
        backend = LoopbackBackend()
        router = EventRouter(backend=backend)
        assert isinstance(backend, EventBackend)
        conn = await router.connect(UserContext.new("alice", tenant_id="acme"))
        assert backend.watching == {("acme", "alice")}
        result = await router.publish(Principal("acme", "alice"), {"n": 1}, kind="note")
        assert result == PublishResult(delivered=1, dropped=0)
        [envelope] = backend.sent
        assert (envelope.recipient, envelope.tenant_id, envelope.kind) == ("alice", "acme", "note")
        event = await conn.receive()
        assert (event.id, event.payload, event.seq) == (envelope.id, {"n": 1}, 1)
        await conn.aclose()
        assert backend.watching == set()
        await router.aclose()
        assert backend.closed

    async def test_gap_from_backend(self) -> None:
        """A backend may deliver "gap" events; the router checks the recipient as always."""
        backend = LoopbackBackend()
        router = EventRouter(backend=backend)
        conn = await router.connect(UserContext.new("alice"))
        assert backend.deliver is not None
        gap = Envelope(
            id="g", recipient="alice", tenant_id=None, kind="gap", created_at=0.0, payload=None
        )
        await backend.deliver(gap)
        assert (await conn.receive()).kind == "gap"
        stray = Envelope(
            id="s", recipient="nobody", tenant_id=None, kind="message", created_at=0.0, payload=None
        )
        assert await backend.deliver(stray) == PublishResult(delivered=0, dropped=0)
        assert router.stats().undeliverable == 1

    async def test_checks_before_sending(self) -> None:
        """Kind, size and ids are checked before anything reaches the backend."""
        backend = LoopbackBackend()
        router = EventRouter(backend=backend, max_event_bytes=5)
        with pytest.raises(isolation.EventTooLargeError):
            await router.publish(Principal(None, "alice"), "too long")
        with pytest.raises(isolation.UsageError):
            await router.publish(Principal(None, "alice"), 1, kind="gap")
        with pytest.raises(isolation.UsageError):
            await router.publish(None, 1)  # type: ignore[call-overload]
        with pytest.raises(isolation.UsageError):
            await router.publish("alice", 1)  # type: ignore[call-overload]
        with (
            pytest.warns(DeprecationWarning, match="is deprecated"),
            pytest.raises(isolation.InvalidContextError),
        ):
            await router.publish("a\u200bb", 1, tenant_id=None)
        assert backend.sent == []
        await router.aclose()
        with pytest.raises(isolation.ConnectionClosedError):
            await router.publish(Principal(None, "alice"), 1)

    async def test_tickets_recorded_by_the_backend(self) -> None:
        """Ticket redemption goes through the backend's claim_ticket."""
        backend = LoopbackBackend()
        router = EventRouter(backend=backend, keys=[b"0123456789abcdef" * 2])
        ticket = router.issue_ticket(UserContext.new("alice"))
        await router.connect(token=ticket)
        assert backend.tickets.tickets_recorded == 1
        with pytest.raises(isolation.TokenReplayedError):
            await router.connect(token=ticket)
