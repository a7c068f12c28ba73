"""RedisBackend against a real Redis: subscriptions, delivery, overflow, tickets, errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import anyio
import pytest
import redis.asyncio as aioredis
from redis_support import KEY, OwnRedis, free_port

import isolation
from isolation import Principal, UserContext
from isolation.events import EventRouter, Overflow, PublishResult
from isolation.events.backends import EventBackend
from isolation.events.backends.redis import RedisBackend
from isolation.report._modes._support.redis import SettlingBackend

pytestmark = pytest.mark.anyio

Make = Callable[..., EventRouter]


async def numsub(url: str, channel: str) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        [(_, count)] = await client.pubsub_numsub(channel)
        return int(count)
    finally:
        await client.aclose()


class TestSubscriptions:
    async def test_connect_waits_for_the_subscription(self, routers: Make, live_redis: str) -> None:
        """Once connect() returns, Redis has the subscription: a publish right after arrives."""
        receiver, sender = routers(), routers()
        for n in range(20):
            conn = await receiver.connect(UserContext.new(f"u{n}", tenant_id="acme"))
            await sender.publish(Principal("acme", f"u{n}"), n)
            with anyio.fail_after(5):
                event = await conn.receive()
            assert (event.payload, event.recipient, event.tenant_id) == (n, f"u{n}", "acme")

    async def test_only_live_principals_subscribed(self, routers: Make, live_redis: str) -> None:
        """A channel is subscribed while a connection of its principal lives, plain SUBSCRIBE only."""
        router = routers()
        backend = router.backend
        assert isinstance(backend, RedisBackend)
        channel = backend.channel(Principal("acme", "alice"))
        client = aioredis.Redis.from_url(live_redis)
        patterns = await client.pubsub_numpat()
        first = await router.connect(UserContext.new("alice", tenant_id="acme"))
        second = await router.connect(UserContext.new("alice", tenant_id="acme"))
        assert await numsub(live_redis, channel) == 1
        assert backend.stats().subscriptions == 1
        try:
            assert await client.pubsub_numpat() == patterns  # no pattern subscription added
            await first.aclose()
            assert await numsub(live_redis, channel) == 1
            await second.aclose()
            # A barrier: subscription commands go out in order on one connection, so
            # once Redis confirms a later SUBSCRIBE it has carried out the UNSUBSCRIBE.
            with anyio.fail_after(5):
                barrier = await router.connect(UserContext.new("barrier"))
            assert await numsub(live_redis, channel) == 0
            assert backend.stats().subscriptions == 1  # the barrier's alone
            await barrier.aclose()
        finally:
            await client.aclose()

    async def test_channel_of_a_principal(self, routers: Make) -> None:
        """channel() takes a Principal or a UserContext; a user id alone is refused, and
        with tenant_id= it is deprecated and names the same channel."""
        backend = routers().backend
        assert isinstance(backend, RedisBackend)
        name = backend.channel(Principal("acme", "alice"))
        assert backend.channel(UserContext.new("alice", tenant_id="acme")) == name
        others = {backend.channel(Principal(t, "alice")) for t in ("globex", None)}
        assert len(others) == 2
        assert name not in others
        with pytest.raises(isolation.UsageError, match="tenant is never assumed"):
            backend.channel("alice")  # type: ignore[call-overload]
        with pytest.warns(DeprecationWarning, match="is deprecated"):
            assert backend.channel("alice", tenant_id="acme") == name

    async def test_resubscribe_after_leaving(self, routers: Make) -> None:
        """Connect, close and connect again quickly: the last connect is subscribed."""
        receiver, sender = routers(), routers()
        for n in range(10):
            conn = await receiver.connect(UserContext.new("alice"))
            if n % 2:
                await conn.aclose()
                conn = await receiver.connect(UserContext.new("alice"))
            await sender.publish(Principal(None, "alice"), n)
            with anyio.fail_after(5):
                assert (await conn.receive()).payload == n
            await conn.aclose()

    async def test_concurrent_connects(self, routers: Make) -> None:
        """Many connects of one principal at once all return subscribed."""
        receiver, sender = routers(max_connections_per_user=50), routers()
        conns: list[isolation.events.Connection] = []

        async def connect() -> None:
            conns.append(await receiver.connect(UserContext.new("alice", tenant_id="t")))

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(connect)
        await sender.publish(Principal("t", "alice"), "hi")
        with anyio.fail_after(5):
            for conn in conns:
                assert (await conn.receive()).payload == "hi"


class TestDelivery:
    async def test_two_routers_isolated(self, routers: Make) -> None:
        """Each principal gets its own events, in order; the same user id in another tenant gets none."""
        one, two, sender = routers(), routers(), routers()
        principals = [("acme", "alice"), ("globex", "alice"), ("acme", "bob"), (None, "alice")]
        conns = {}
        for n, (tenant, user) in enumerate(principals):
            router = one if n % 2 == 0 else two
            conns[(tenant, user)] = await router.connect(UserContext.new(user, tenant_id=tenant))
        for k in range(10):
            for tenant, user in principals:
                await sender.publish(Principal(tenant, user), [tenant, user, k])
        with anyio.fail_after(5):
            for principal, conn in conns.items():
                got = [(await conn.receive()).payload for _ in range(10)]
                assert got == [[principal[0], principal[1], k] for k in range(10)]
                assert conn.stats().queued == 0

    async def test_local_result_and_remote_stats(self, routers: Make) -> None:
        """publish() counts local connections; remote delivery shows in the receiver's stats."""
        receiver, sender = routers(), routers()
        remote = await receiver.connect(UserContext.new("alice"))
        local = await sender.connect(UserContext.new("alice"))
        result = await sender.publish(Principal(None, "alice"), "x")
        assert result == PublishResult(delivered=1, dropped=0)
        assert (await local.receive()).payload == "x"
        with anyio.fail_after(5):
            assert (await remote.receive()).payload == "x"
        assert local.stats().seq == 1  # its own publish did not come back a second time
        sender_backend, receiver_backend = sender.backend, receiver.backend
        assert isinstance(sender_backend, RedisBackend)
        assert isinstance(receiver_backend, RedisBackend)
        assert sender_backend.stats().published == 1
        assert receiver_backend.stats().delivered == 1
        assert receiver.stats().delivered == 1
        assert await sender.publish(Principal(None, "nobody"), "x") == PublishResult(
            delivered=0, dropped=0
        )

    async def test_is_a_backend(self, routers: Make) -> None:
        """RedisBackend implements the protocol; one backend serves one router."""
        router = routers()
        backend = router.backend
        assert isinstance(backend, EventBackend)
        assert backend.shared
        with pytest.raises(isolation.ConfigurationError):
            EventRouter(backend=backend)
        assert "RedisBackend" in repr(backend)
        assert "@" not in repr(backend)

    async def test_sizes_checked_before_sending(self, routers: Make) -> None:
        """An envelope over the limit raises EventTooLargeError; nothing is sent."""
        router = routers(backend_options={"max_envelope_bytes": 1024})
        with pytest.raises(isolation.EventTooLargeError):
            await router.publish(Principal(None, "alice"), "x" * 2000)
        with pytest.raises(isolation.UsageError):
            await router.publish(Principal(None, "alice"), object())
        backend = router.backend
        assert isinstance(backend, RedisBackend)
        assert backend.stats().published == 0


class TestReceivingOverflow:
    async def test_block_never_stalls_the_listener(self, routers: Make) -> None:
        """A full BLOCK connection waits on its own; others keep receiving; past the timeout a gap."""
        receiver = routers(
            queue_size=2, overflow=Overflow.BLOCK, publish_timeout=0.3, wrap=SettlingBackend
        )
        sender = routers()
        stuck = await receiver.connect(UserContext.new("slow"))
        fast = await receiver.connect(UserContext.new("fast"))
        for n in range(5):
            await sender.publish(Principal(None, "slow"), n)
        for n in range(5):
            await sender.publish(Principal(None, "fast"), n)
        with anyio.fail_after(5):
            assert [(await fast.receive()).payload for _ in range(5)] == list(range(5))
        # The slow connection's blocked events time out on the receiving side, each
        # in a wait task of its own (the fast events came after them, so all three
        # waits have started); room must not be made until they ended: await them.
        waits = receiver.backend
        assert isinstance(waits, SettlingBackend)
        backend = waits.inner
        with anyio.fail_after(5):
            await waits.settled()
        assert backend.stats().dropped["overflow"] == 3
        # ...and it reads its first two, then one gap (the later timeouts share it).
        events = [await stuck.receive() for _ in range(3)]
        assert [e.payload for e in events[:2]] == [0, 1]
        assert events[2].kind == "gap"
        assert events[2].payload == {"reason": "overflow"}
        assert stuck.stats().queued == 0
        assert backend.stats().gaps == 1

    async def test_drop_oldest_keeps_newest(self, routers: Make) -> None:
        """DROP_OLDEST applies per connection on the receiving side; seq shows the drop."""
        receiver = routers(queue_size=3, overflow=Overflow.DROP_OLDEST)
        sender = routers()
        conn = await receiver.connect(UserContext.new("alice"))
        marker = await receiver.connect(UserContext.new("marker-user"))
        for n in range(6):
            await sender.publish(Principal(None, "alice"), n)
        await sender.publish(Principal(None, "marker-user"), 0)
        with anyio.fail_after(5):
            # One subscriber connection reads in order: the marker arrives after all six.
            await marker.receive()
        assert conn.stats().seq == 6
        got = [await conn.receive() for _ in range(3)]
        assert [e.payload for e in got] == [3, 4, 5]
        assert [e.seq for e in got] == [4, 5, 6]


class TestTickets:
    async def test_single_use_across_processes(self, routers: Make) -> None:
        """A ticket redeemed through one backend is refused through another sharing the Redis."""
        one, two = routers(keys=[KEY]), routers(keys=[KEY])
        one._keys = two._keys = (KEY,)  # the routers sign tickets with the same key
        ticket = one.issue_ticket(UserContext.new("alice"))
        conn = await one.connect(token=ticket)
        assert conn.principal == (None, "alice")
        with pytest.raises(isolation.TokenReplayedError):
            await two.connect(token=ticket)

    async def test_concurrent_claims_one_winner(self, routers: Make) -> None:
        """Twenty concurrent claims of one ticket through four backends: exactly one wins."""
        backends = [routers().backend for _ in range(4)]
        wins: list[bool] = []

        async def claim(backend: EventBackend) -> None:
            wins.append(await backend.claim_ticket("iso1.ticket.made-up", expires_at=1e12))

        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(claim, backends[n % 4])
        assert sorted(wins) == [False] * 19 + [True]

    async def test_record_expires(self, routers: Make, live_redis: str, namespace: str) -> None:
        """The record is a hash of the ticket (never the ticket) with an expiry."""
        import hashlib
        import time

        backend = routers().backend
        token = "iso1.secret-ticket"
        assert await backend.claim_ticket(token, expires_at=time.time() + 30)
        client = aioredis.Redis.from_url(live_redis)
        try:
            keys = [k async for k in client.scan_iter(match=f"{namespace}:*")]
            assert keys == [
                f"{namespace}:ticket:{hashlib.sha256(token.encode()).hexdigest()}".encode()
            ]
            ttl = await client.pttl(keys[0])
            # expiry - now + 2 * LEEWAY + 1 s (see test_redis_ticket_skew.py)
            assert 32_000 < ttl <= 33_000
        finally:
            await client.aclose()


class TestUnavailable:
    async def test_publish_raises_after_timeout(self, routers: Make) -> None:
        """With nothing listening on the port, publish raises BackendUnavailableError in time."""
        url = f"redis://127.0.0.1:{free_port()}/0"
        router = routers(url=url, backend_options={"unavailable_timeout": 0.3})
        started = anyio.current_time()
        with pytest.raises(isolation.BackendUnavailableError) as info:
            await router.publish(Principal(None, "alice"), "x")
        assert 0.25 < anyio.current_time() - started < 3
        assert "127.0.0.1" in str(info.value)
        with pytest.raises(isolation.BackendUnavailableError):
            await router.backend.claim_ticket("iso1.t", expires_at=1e12)
        with pytest.raises(isolation.BackendUnavailableError):
            await router.connect(UserContext.new("alice"))
        assert router.connections(Principal(None, "alice")) == ()
        backend = router.backend
        assert isinstance(backend, RedisBackend)
        assert backend.stats().unavailable == 3

    async def test_credentials_never_shown(self, routers: Make) -> None:
        """A password in the URL never appears in errors or the repr."""
        url = f"redis://user:s3cret-pw@127.0.0.1:{free_port()}/0"
        router = routers(url=url, backend_options={"unavailable_timeout": 0.2})
        with pytest.raises(isolation.BackendUnavailableError) as info:
            await router.publish(Principal(None, "alice"), "x")
        assert "s3cret" not in str(info.value)
        assert "s3cret" not in repr(router.backend)

    async def test_acl_refusal_is_reported(self, own_redis: OwnRedis, namespace: str) -> None:
        """A Redis user without the needed commands gets a typed error naming the refusal."""
        admin = aioredis.Redis.from_url(own_redis.url)
        await admin.execute_command("ACL", "SETUSER", "limited", "on", ">pw", "+ping", "&*", "~*")
        await admin.aclose()
        backend = RedisBackend(
            f"redis://limited:pw@127.0.0.1:{own_redis.port}/0",
            keys=[KEY],
            namespace=namespace,
            unavailable_timeout=1,
        )
        router = EventRouter(backend=backend)
        try:
            with pytest.raises(isolation.BackendUnavailableError, match="refused the publish"):
                await router.publish(Principal(None, "alice"), 1)
        finally:
            await router.aclose()

    async def test_acl_of_the_docs_is_enough(self, own_redis: OwnRedis, namespace: str) -> None:
        """The ACL the how-to recommends lets the backend publish, subscribe and claim tickets."""
        admin = aioredis.Redis.from_url(own_redis.url)
        await admin.execute_command(
            "ACL",
            "SETUSER",
            "events",
            "on",
            ">pw",
            "resetchannels",
            f"&{namespace}:*",
            "resetkeys",
            f"~{namespace}:ticket:*",
            "-@all",
            "+publish",
            "+subscribe",
            "+unsubscribe",
            "+ping",
            "+set",
            "+get",
            "+hello",
            "+client|setname",
        )
        await admin.aclose()
        url = f"redis://events:pw@127.0.0.1:{own_redis.port}/0"
        receiver = EventRouter(backend=RedisBackend(url, keys=[KEY], namespace=namespace))
        sender = EventRouter(backend=RedisBackend(url, keys=[KEY], namespace=namespace))
        try:
            conn = await receiver.connect(UserContext.new("alice"))
            await sender.publish(Principal(None, "alice"), "ok")
            with anyio.fail_after(5):
                assert (await conn.receive()).payload == "ok"
            assert await sender.backend.claim_ticket("iso1.t", expires_at=1e12)
        finally:
            await receiver.aclose()
            await sender.aclose()


class TestSettingsAndLifecycle:
    @pytest.mark.parametrize(
        "options",
        [
            {"url": "http://localhost"},
            {"url": 3},
            {"namespace": "a:b"},
            {"unavailable_timeout": 0},
            {"health_interval": float("nan")},
            {"keys": [b"short"]},
            {"event_ttl": -1},
        ],
    )
    def test_settings_checked(self, options: dict[str, object]) -> None:
        """Bad settings are refused when the backend is made."""
        kwargs: dict[str, object] = {"url": "redis://127.0.0.1:6379/0", "keys": [KEY], **options}
        url = kwargs.pop("url")
        with pytest.raises(isolation.ConfigurationError):
            RedisBackend(url, **kwargs)  # type: ignore[arg-type]

    async def test_close_is_final(self, routers: Make) -> None:
        """After aclose() the backend refuses work; aclose() is idempotent."""
        router = routers()
        backend = router.backend
        await router.connect(UserContext.new("alice"))
        await router.aclose()
        await backend.aclose()
        with pytest.raises(isolation.BackendUnavailableError):
            await backend.publish(
                isolation.events.backends.Envelope(
                    id="x", recipient="a", tenant_id=None, kind="message", created_at=0.0, payload=1
                )
            )

    @pytest.mark.parametrize("anyio_backend", ["trio"])
    async def test_trio_refused(self, live_redis: str) -> None:
        """Under trio the backend raises UnsupportedBackendError, and connect() leaves nothing open."""
        router = EventRouter(backend=RedisBackend(live_redis, keys=[KEY]))
        with pytest.raises(isolation.UnsupportedBackendError):
            await router.connect(UserContext.new("alice"))
        assert router.stats().connections == 0
        with pytest.raises(isolation.UnsupportedBackendError):
            await router.publish(Principal(None, "alice"), 1)
        await router.aclose()

    async def test_other_loop_refused(self, live_redis: str) -> None:
        """A backend started on one event loop refuses another."""
        backend = RedisBackend(live_redis, keys=[KEY])
        EventRouter(backend=backend)
        await backend.claim_ticket("iso1.x", expires_at=1e12)

        def elsewhere() -> None:
            async def claim() -> None:
                await backend.claim_ticket("iso1.y", expires_at=1e12)

            with pytest.raises(isolation.UnsupportedBackendError):
                asyncio.run(claim())

        await anyio.to_thread.run_sync(elsewhere)
        await backend.aclose()


class TestLiveness:
    async def test_dead_listener_restarted(
        self, routers: Make, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A listener task that dies is noticed, logged and restarted; connections get a gap."""
        receiver, sender = routers(), routers()
        backend = receiver.backend
        assert isinstance(backend, RedisBackend)
        conn = await receiver.connect(UserContext.new("alice"))
        session = backend._session
        assert session is not None
        with caplog.at_level(logging.WARNING, logger="isolation.events"):
            session.cancel()
            with anyio.fail_after(5):
                gap = await conn.receive()
        assert gap.kind == "gap"
        assert gap.payload == {"reason": "reconnected"}
        assert any(r.__dict__.get("event") == "backend_listener_lost" for r in caplog.records)
        await sender.publish(Principal(None, "alice"), "after")
        with anyio.fail_after(5):
            assert (await conn.receive()).payload == "after"
        stats = backend.stats()
        assert (stats.listener_restarts, stats.reconnects, stats.gaps) == (1, 1, 1)

    async def test_unresponsive_listener_restarted(
        self, own_redis: OwnRedis, namespace: str
    ) -> None:
        """A listener whose PING goes unanswered (the server hangs) is replaced, with a gap."""
        backend = RedisBackend(own_redis.url, keys=[KEY], namespace=namespace, health_interval=0.2)
        router = EventRouter(backend=backend)
        try:
            conn = await router.connect(UserContext.new("alice"))
            admin = aioredis.Redis.from_url(own_redis.url)
            await admin.execute_command("DEBUG", "SLEEP", "0.8")
            await admin.aclose()
            with anyio.fail_after(10):
                gap = await conn.receive()
            assert gap.kind == "gap"
            assert backend.stats().listener_restarts >= 1
        finally:
            await router.aclose()

    async def test_dead_supervisor_restarted(self, routers: Make) -> None:
        """If the supervisor task itself is gone, the next watch starts a new one."""
        router = routers()
        backend = router.backend
        assert isinstance(backend, RedisBackend)
        await router.connect(UserContext.new("alice"))
        supervisor = backend._supervisor
        assert supervisor is not None
        supervisor.cancel()
        await asyncio.gather(supervisor, return_exceptions=True)
        conn = await router.connect(UserContext.new("bob"))
        sender = routers()
        await sender.publish(Principal(None, "bob"), 1)
        with anyio.fail_after(5):
            events = [await conn.receive()]
        assert events[-1].payload == 1 or events[-1].kind == "gap"
