"""EventRouter and Connection: identity sources, routing, limits, states, stats, closing."""

from __future__ import annotations

import logging

import anyio
import pytest

import isolation
import isolation.logging
import isolation.testing
from isolation import Principal, UserContext
from isolation.events import (
    CloseReason,
    Connection,
    Event,
    EventRouter,
    PublishResult,
)
from isolation.events._model import ConnectionState

pytestmark = pytest.mark.anyio


def alice(tenant: str | None = "acme", **kwargs: object) -> UserContext:
    return UserContext.new("alice", tenant_id=tenant, **kwargs)  # type: ignore[arg-type]


def bob(tenant: str | None = "acme") -> UserContext:
    return UserContext.new("bob", tenant_id=tenant)


async def drain(conn: Connection) -> list[Event]:
    """Every event queued for ``conn`` now, without waiting for more."""
    events: list[Event] = []
    while conn.stats().queued:
        events.append(await conn.receive())
    return events


class TestConnect:
    async def test_explicit_context(self) -> None:
        """connect(ctx) binds the connection to ctx's principal, open."""
        router = EventRouter()
        conn = await router.connect(alice())
        assert conn.principal == ("acme", "alice")
        assert (conn.user_id, conn.tenant_id) == ("alice", "acme")
        assert conn.state is ConnectionState.OPEN
        assert conn.close_reason is None
        assert not conn.closed

    async def test_scope_context(self) -> None:
        """With no ctx or token, the current scope's context is used."""
        router = EventRouter()
        ctx = alice()
        async with isolation.scope(ctx):
            conn = await router.connect()
            assert conn.context is ctx

    async def test_no_source(self) -> None:
        """Neither ctx, token nor scope: NoContextError."""
        with pytest.raises(isolation.NoContextError):
            await EventRouter().connect()

    async def test_both_sources(self) -> None:
        """ctx and token together are a UsageError."""
        with pytest.raises(isolation.UsageError):
            await EventRouter(keys=[b"0123456789abcdef" * 2]).connect(alice(), token="x")

    async def test_not_a_context(self) -> None:
        """Something that is not a UserContext is refused."""
        with pytest.raises(isolation.UsageError):
            await EventRouter().connect("alice")  # type: ignore[arg-type]

    async def test_other_principal_in_bound_scope(self) -> None:
        """A context of another principal than the bound scope's: ContextSwitchError."""
        router = EventRouter()
        async with isolation.scope(alice()):
            with pytest.raises(isolation.ContextSwitchError):
                await router.connect(bob())
            with pytest.raises(isolation.ContextSwitchError):
                await router.connect(alice(tenant="other"))
        assert router.stats().connections == 0

    async def test_same_principal_explicit_in_scope(self) -> None:
        """An explicit context of the bound principal is accepted, and outlives the scope."""
        router = EventRouter()
        async with isolation.scope(alice()):
            conn = await router.connect(alice())
        assert conn.state is ConnectionState.OPEN

    async def test_expired_context(self, fake_clock: isolation.testing.FakeClock) -> None:
        """An expired context cannot connect."""
        ctx = alice(ttl=5)
        fake_clock.advance(5)
        with pytest.raises(isolation.ContextExpiredError):
            await EventRouter().connect(ctx)

    async def test_limit(self) -> None:
        """Past max_connections_per_user the next connect is refused; others are unaffected."""
        router = EventRouter(max_connections_per_user=2)
        first = await router.connect(alice())
        await router.connect(alice())
        with pytest.raises(isolation.ConnectionLimitError) as info:
            await router.connect(alice())
        assert info.value.limit == 2
        await router.connect(alice(tenant="other"))
        await router.connect(bob())
        await first.aclose()
        await router.connect(alice())

    async def test_closed_router(self) -> None:
        """connect() after aclose() raises ConnectionClosedError(ROUTER_CLOSED)."""
        router = EventRouter()
        await router.aclose()
        with pytest.raises(isolation.ConnectionClosedError) as info:
            await router.connect(alice())
        assert info.value.reason is CloseReason.ROUTER_CLOSED

    async def test_connection_not_constructible(self) -> None:
        """Connections are made by a router only."""
        with pytest.raises(isolation.UsageError):
            Connection()


class TestScopeBinding:
    async def test_closes_with_async_scope(self) -> None:
        """A connection opened from the scope closes (CLOSED) when the scope ends."""
        router = EventRouter()
        async with isolation.scope(alice()):
            conn = await router.connect()
            other = await router.connect()
        assert conn.close_reason is CloseReason.CLOSED
        assert other.close_reason is CloseReason.CLOSED
        assert router.stats().connections == 0

    async def test_closes_with_sync_scope(self) -> None:
        """A sync `with` scope closes its connections too."""
        router = EventRouter()
        with isolation.scope(alice()):
            conn = await router.connect()
        assert conn.closed

    async def test_closed_early_is_forgotten(self) -> None:
        """A connection closed before its scope ends leaves nothing for the scope to do."""
        router = EventRouter()
        async with isolation.scope(alice()) as scope:
            conn = await router.connect()
            await conn.aclose()
            assert router._scoped[scope] == set()
        assert router.stats().closed == 1

    async def test_expired_scope_closes_expired(
        self, fake_clock: isolation.testing.FakeClock
    ) -> None:
        """A scope that ends by its deadline closes its connections with EXPIRED."""
        router = EventRouter()
        conn: Connection | None = None
        with pytest.raises(isolation.ContextExpiredError):
            async with isolation.scope(alice(ttl=10)):
                conn = await router.connect()
                assert conn.expires_at is not None
                fake_clock.advance(10)
                await anyio.sleep_forever()
        assert conn is not None
        assert conn.close_reason is CloseReason.EXPIRED


class TestPublish:
    async def test_every_connection_of_the_principal(self) -> None:
        """An event reaches every live connection of its recipient, with the same id."""
        router = EventRouter()
        tabs = [await router.connect(alice()) for _ in range(3)]
        result = await router.publish(Principal("acme", "alice"), {"n": 1})
        assert result == PublishResult(delivered=3, dropped=0)
        events = [await tab.receive() for tab in tabs]
        assert {e.id for e in events} == {events[0].id}
        for event in events:
            assert (event.recipient, event.tenant_id, event.kind, event.seq) == (
                "alice",
                "acme",
                "message",
                1,
            )
            assert event.payload == {"n": 1}

    async def test_no_other_principal(self) -> None:
        """The same user id in another tenant, and another user, get nothing."""
        router = EventRouter()
        mine = await router.connect(alice())
        other_tenant = await router.connect(alice(tenant="globex"))
        no_tenant = await router.connect(alice(tenant=None))
        other_user = await router.connect(bob())
        await router.publish(Principal("acme", "alice"), "for acme")
        assert [e.payload for e in await drain(mine)] == ["for acme"]
        for conn in (other_tenant, no_tenant, other_user):
            assert conn.stats().queued == 0
            assert conn.stats().seq == 0

    async def test_undeliverable(self) -> None:
        """No live connection: delivered == 0, one router-wide counter, no per-principal state."""
        router = EventRouter()
        for i in range(100):
            assert await router.publish(Principal(None, f"nobody-{i}"), "x") == PublishResult(
                delivered=0, dropped=0
            )
        stats = router.stats()
        assert stats.undeliverable == 100
        assert stats.published == 0
        assert router._totals == {}
        assert router._routes == {}
        assert router.principal_stats(Principal(None, "nobody-1")) is None

    async def test_seq_per_connection(self) -> None:
        """seq counts per connection: a later tab starts at 1."""
        router = EventRouter()
        first = await router.connect(alice())
        await router.publish(Principal("acme", "alice"), 1)
        second = await router.connect(alice())
        await router.publish(Principal("acme", "alice"), 2)
        assert [e.seq for e in await drain(first)] == [1, 2]
        assert [e.seq for e in await drain(second)] == [1]

    async def test_kind(self) -> None:
        """Any non-empty kind is carried; "gap" is reserved; non-strings are refused."""
        router = EventRouter()
        conn = await router.connect(alice())
        await router.publish(Principal("acme", "alice"), None, kind="typing")
        assert (await conn.receive()).kind == "typing"
        for bad in ("gap", "", 3):
            with pytest.raises(isolation.UsageError):
                await router.publish(Principal("acme", "alice"), None, kind=bad)  # type: ignore[arg-type]
        assert conn.stats().seq == 1

    async def test_bad_recipients(self) -> None:
        """Anything but a Principal or a UserContext is a UsageError; a bad id never
        becomes a Principal."""
        router = EventRouter()
        for bad in (3, None, ("acme", "alice"), ["acme", "alice"], b"alice"):
            with pytest.raises(isolation.UsageError, match=r"takes an isolation\.Principal"):
                await router.publish(bad, "x")  # type: ignore[arg-type]
        with pytest.raises(isolation.InvalidContextError):
            Principal(None, "")
        with (
            pytest.warns(DeprecationWarning, match="is deprecated"),
            pytest.raises(isolation.UsageError),
        ):
            await router.publish("alice", "x", tenant_id=7)  # type: ignore[call-overload]
        assert router.stats().undeliverable == 0

    async def test_max_event_bytes(self) -> None:
        """Over max_event_bytes (compact UTF-8 JSON) raises and queues nothing."""
        router = EventRouter(max_event_bytes=11)
        conn = await router.connect(alice())
        await router.publish(Principal("acme", "alice"), {"a": "é"})  # {"a":"é"}: 10 bytes
        with pytest.raises(isolation.EventTooLargeError):
            await router.publish(Principal("acme", "alice"), {"a": "éé"})  # 12 bytes
        with pytest.raises(isolation.EventTooLargeError):
            await router.publish(Principal(None, "nobody"), "x" * 20)
        with pytest.raises(isolation.UsageError):
            await router.publish(Principal("acme", "alice"), {1, 2})
        assert conn.stats().seq == 1
        assert conn.stats().queued == 1

    async def test_publish_after_close(self) -> None:
        """publish() on a closed router raises ConnectionClosedError."""
        router = EventRouter()
        await router.aclose()
        with pytest.raises(isolation.ConnectionClosedError):
            await router.publish(Principal(None, "alice"), 1)


class TestNamingThePrincipal:
    """publish, connections and principal_stats take a Principal or a UserContext (issue 19)."""

    async def test_a_user_id_alone_is_refused(self) -> None:
        """A bare user id is refused, never given a default tenant: with "alice" of
        "acme" and "alice" of no tenant connected, neither gets anything."""
        router = EventRouter()
        of_acme = await router.connect(alice())
        of_none = await router.connect(alice(tenant=None))
        with pytest.raises(isolation.UsageError, match="tenant is never assumed") as info:
            await router.publish("alice", "x")  # type: ignore[call-overload]
        assert "isolation.Principal(tenant_id, user_id)" in str(info.value)
        with pytest.raises(isolation.UsageError, match="connections"):
            router.connections("alice")  # type: ignore[call-overload]
        with pytest.raises(isolation.UsageError, match="principal_stats"):
            router.principal_stats("alice")  # type: ignore[call-overload]
        assert (of_acme.stats().seq, of_none.stats().seq) == (0, 0)
        assert router.stats().undeliverable == 0

    async def test_tenant_keyword_is_deprecated_but_works(self) -> None:
        """publish(user_id, tenant_id=...) (None included, given explicitly) warns,
        pointing at the caller, and reaches exactly that principal."""
        router = EventRouter()
        of_acme = await router.connect(alice())
        of_none = await router.connect(alice(tenant=None))
        with pytest.warns(DeprecationWarning, match=r"Principal\(tenant_id, user_id\)") as w:
            assert (await router.publish("alice", 1, tenant_id="acme")).delivered == 1
        assert w[0].filename == __file__
        with pytest.warns(DeprecationWarning, match="is deprecated"):
            assert (await router.publish("alice", 2, tenant_id=None)).delivered == 1
        assert [e.payload for e in await drain(of_acme)] == [1]
        assert [e.payload for e in await drain(of_none)] == [2]
        with pytest.warns(DeprecationWarning, match="is deprecated") as w:
            assert router.connections("alice", tenant_id="acme") == (of_acme,)
        assert w[0].filename == __file__
        with pytest.warns(DeprecationWarning, match="is deprecated"):
            stats = router.principal_stats("alice", tenant_id=None)
        assert stats is not None
        assert stats.delivered == 1

    async def test_principal_or_context(self) -> None:
        """A Principal and a UserContext name the same connections; a Principal with a
        tenant_id= as well is a UsageError."""
        router = EventRouter()
        ctx = alice()
        conn = await router.connect(ctx)
        assert (await router.publish(ctx, 1)).delivered == 1
        assert (await router.publish(Principal("acme", "alice"), 2)).delivered == 1
        assert (await router.publish(ctx.principal, 3)).delivered == 1
        assert router.connections(ctx) == router.connections(Principal("acme", "alice")) == (conn,)
        assert router.principal_stats(ctx) == router.principal_stats(ctx.principal)
        assert [e.payload for e in await drain(conn)] == [1, 2, 3]
        for to in (ctx, ctx.principal):
            with pytest.raises(isolation.UsageError, match="already names its tenant"):
                await router.publish(to, 4, tenant_id="acme")  # type: ignore[call-overload]

    async def test_one_user_id_in_two_tenants_is_two_principals(self) -> None:
        """("t1", "alice"), ("t2", "alice") and (None, "alice") are never conflated by
        publish, connections or principal_stats."""
        router = EventRouter()
        principals = [Principal("t1", "alice"), Principal("t2", "alice"), Principal(None, "alice")]
        conns = {
            p: await router.connect(UserContext.new(p.user_id, tenant_id=p.tenant_id))
            for p in principals
        }
        for n, p in enumerate(principals):
            for _ in range(n + 1):
                assert (await router.publish(p, p.tenant_id)).delivered == 1
        for n, p in enumerate(principals):
            assert router.connections(p) == (conns[p],)
            assert [e.payload for e in await drain(conns[p])] == [p.tenant_id] * (n + 1)
            stats = router.principal_stats(p)
            assert stats is not None
            assert (stats.connections, stats.delivered) == (1, n + 1)
        assert router.stats().refused == 0


class TestReceive:
    async def test_waits_then_gets(self) -> None:
        """A receive() on an empty queue waits, and gets the next event published."""
        router = EventRouter()
        conn = await router.connect(alice())
        got: list[Event] = []
        async with anyio.create_task_group() as tg:

            async def consume() -> None:
                got.append(await conn.receive())

            tg.start_soon(consume)
            await anyio.wait_all_tasks_blocked()
            assert got == []
            await router.publish(Principal("acme", "alice"), "hello")
        assert [e.payload for e in got] == ["hello"]

    async def test_ready_event_returns_without_checkpoint(self) -> None:
        """With an event queued, receive() returns even inside a cancelled scope."""
        router = EventRouter()
        conn = await router.connect(alice())
        await router.publish(Principal("acme", "alice"), "ready")
        with anyio.CancelScope() as cancel:
            cancel.cancel()
            event = await conn.receive()
        assert event.payload == "ready"

    async def test_two_receivers_refused(self) -> None:
        """A second task waiting on the same connection is a UsageError."""
        router = EventRouter()
        conn = await router.connect(alice())
        async with anyio.create_task_group() as tg:
            tg.start_soon(conn.receive)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(isolation.UsageError):
                await conn.receive()
            tg.cancel_scope.cancel()

    async def test_foreign_scope_refused(self) -> None:
        """Using a connection inside another principal's scope: CrossContextAccessError."""
        router = EventRouter()
        conn = await router.connect(alice())
        await router.publish(Principal("acme", "alice"), "secret")
        async with isolation.scope(bob()):
            with pytest.raises(isolation.CrossContextAccessError):
                await conn.receive()
        async with isolation.scope(alice()):
            assert (await conn.receive()).payload == "secret"

    async def test_async_for_ends_quietly_on_close(self) -> None:
        """`async for` ends without error when the connection is closed by its owner."""
        router = EventRouter()
        conn = await router.connect(alice())
        seen: list[object] = []
        async with anyio.create_task_group() as tg:

            async def consume() -> None:
                async for event in conn:
                    seen.append(event.payload)

            tg.start_soon(consume)
            await router.publish(Principal("acme", "alice"), 1)
            await router.publish(Principal("acme", "alice"), 2)
            await anyio.wait_all_tasks_blocked()
            await conn.aclose()
        assert seen == [1, 2]

    async def test_async_for_ends_quietly_on_router_close(self) -> None:
        """`async for` ends without error when the router closes."""
        router = EventRouter()
        conn = await router.connect(alice())
        async with anyio.create_task_group() as tg:

            async def consume() -> None:
                async for _ in conn:
                    pass

            tg.start_soon(consume)
            await anyio.wait_all_tasks_blocked()
            await router.aclose()
        assert conn.close_reason is CloseReason.ROUTER_CLOSED

    async def test_context_manager(self) -> None:
        """`async with conn` closes it at exit; a closed connection cannot be entered."""
        router = EventRouter()
        async with await router.connect(alice()) as conn:
            assert not conn.closed
        assert conn.close_reason is CloseReason.CLOSED
        with pytest.raises(isolation.ConnectionClosedError):
            async with conn:
                pass


class TestClosing:
    async def test_closed_connection_raises(self) -> None:
        """After close, receive() raises with the reason; queued events count as dropped."""
        router = EventRouter()
        conn = await router.connect(alice())
        await router.publish(Principal("acme", "alice"), 1)
        await router.publish(Principal("acme", "alice"), 2)
        conn.close()
        conn.close()  # idempotent
        with pytest.raises(isolation.ConnectionClosedError) as info:
            await conn.receive()
        assert info.value.reason is CloseReason.CLOSED
        assert conn.stats().dropped == 2
        assert conn.stats().queued == 0

    async def test_close_wakes_waiting_receiver(self) -> None:
        """Closing a connection wakes its waiting consumer with ConnectionClosedError."""
        router = EventRouter()
        conn = await router.connect(alice())
        errors: list[BaseException] = []
        async with anyio.create_task_group() as tg:

            async def consume() -> None:
                try:
                    await conn.receive()
                except isolation.ConnectionClosedError as exc:
                    errors.append(exc)

            tg.start_soon(consume)
            await anyio.wait_all_tasks_blocked()
            await conn.aclose()
        assert len(errors) == 1

    async def test_closed_gets_nothing_more(self) -> None:
        """A closed connection is out of routing: later publishes skip it."""
        router = EventRouter()
        closed = await router.connect(alice())
        live = await router.connect(alice())
        await closed.aclose()
        assert await router.publish(Principal("acme", "alice"), 1) == PublishResult(
            delivered=1, dropped=0
        )
        assert closed.stats().seq == 0
        assert live.stats().seq == 1

    async def test_router_async_with(self) -> None:
        """`async with EventRouter()` closes every connection at exit (ROUTER_CLOSED)."""
        async with EventRouter() as router:
            conn = await router.connect(alice())
        assert router.closed
        assert conn.close_reason is CloseReason.ROUTER_CLOSED
        await router.aclose()  # idempotent
        with pytest.raises(isolation.ConnectionClosedError):
            async with router:
                pass

    async def test_no_reopen(self) -> None:
        """A closed connection refuses the transition back to OPEN."""
        router = EventRouter()
        conn = await router.connect(alice())
        await conn.aclose()
        with pytest.raises(isolation.UsageError):
            conn._opened()
        assert conn.state is ConnectionState.CLOSED


class TestStats:
    async def test_counts(self) -> None:
        """Router, principal and connection counters add up."""
        router = EventRouter()
        a1 = await router.connect(alice())
        a2 = await router.connect(alice())
        await router.connect(bob())
        for i in range(3):
            await router.publish(Principal("acme", "alice"), i)
        await drain(a1)
        await a2.aclose()
        stats = router.stats()
        assert (stats.connections, stats.principals, stats.opened, stats.closed) == (2, 2, 3, 1)
        assert (stats.published, stats.delivered, stats.dropped, stats.refused) == (3, 3, 3, 0)
        principal = router.principal_stats(Principal("acme", "alice"))
        assert principal is not None
        assert (principal.connections, principal.delivered, principal.dropped) == (1, 3, 3)
        assert a1.stats().delivered == 3
        assert router.connections(Principal("acme", "alice")) == (a1,)

    async def test_principal_stats_dropped_with_last_connection(self) -> None:
        """Per-principal state lives only while the principal has a live connection."""
        router = EventRouter()
        conn = await router.connect(alice())
        await conn.aclose()
        assert router.principal_stats(Principal("acme", "alice")) is None
        assert router._totals == {}

    async def test_repr_redacts(self) -> None:
        """Reprs name ids through the redaction hook and never show payloads."""
        previous = isolation.logging.set_redactor(lambda value: "<id>")
        try:
            router = EventRouter()
            conn = await router.connect(alice())
            await router.publish(Principal("acme", "alice"), "the secret payload")
            event = await conn.receive()
            assert "alice" not in repr(conn)
            assert "alice" not in repr(event)
            assert "secret" not in repr(event)
            assert "EventRouter" in repr(router)
        finally:
            isolation.logging.set_redactor(previous)


class TestSettings:
    @pytest.mark.parametrize(
        "kwargs",
        [
            {"queue_size": 0},
            {"queue_size": 1.5},
            {"overflow": "sideways"},
            {"publish_timeout": 0},
            {"publish_timeout": float("inf")},
            {"max_connections_per_user": 0},
            {"max_event_bytes": 0},
            {"authenticate": "nope"},
            {"keys": [b"short"]},
            {"backend": object()},
        ],
    )
    def test_bad_settings(self, kwargs: dict[str, object]) -> None:
        """Out-of-range settings raise ConfigurationError."""
        with pytest.raises(isolation.ConfigurationError):
            EventRouter(**kwargs)  # type: ignore[arg-type]

    def test_defaults(self) -> None:
        """The documented defaults."""
        router = EventRouter()
        assert router.queue_size == 100
        assert router.overflow == "block"
        assert router.publish_timeout == 5.0
        assert router.max_connections_per_user == 16
        assert router.max_event_bytes is None
        assert not router.closed


class TestLogging:
    async def test_refusal_logged_without_payload(self, caplog: pytest.LogCaptureFixture) -> None:
        """A refused event is logged with its id and the principals, never the payload."""
        from isolation.testing import unsafe_corrupt_routing

        router = EventRouter()
        victim = await router.connect(bob())
        unsafe_corrupt_routing(router, publish_to=("acme", "alice"), deliver_to=("acme", "bob"))
        await router.publish(Principal("acme", "alice"), "TOP-SECRET")
        await router.publish(Principal("acme", "bob"), "for bob")
        with caplog.at_level(logging.WARNING, logger="isolation.events"):
            event = await victim.receive()
        assert event.payload == "for bob"
        assert victim.stats().refused == 1
        assert router.stats().refused == 1
        [record] = caplog.records
        assert "TOP-SECRET" not in record.getMessage()
        assert record.event == "delivery_refused"  # type: ignore[attr-defined]
