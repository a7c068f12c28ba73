"""The publish writer: concurrent publishes coalesced into pipelines, against a real Redis.

One writer task per backend sends every envelope waiting at the moment in one
non-transactional pipeline and resolves each publisher's future from its own
reply. These tests check what that must not change: each publisher's events
arrive in order and once; a publisher cancelled at any point neither
mis-resolves another's future nor loses or duplicates anything beyond
at-most-once; a pipeline retried after a lost reply is delivered once (the
receivers' replay window drops the copies); a writer that dies fails every
pending publish with ``BackendUnavailableError`` rather than leaving it
waiting; an outage raises the typed error after ``unavailable_timeout``.

Faults are real where Redis can make them: a Redis of the test's own is killed,
or paused for writes (``CLIENT PAUSE ... WRITE`` holds ``PUBLISH`` commands
that are already on the wire, and ``blocked_clients`` tells when they are).
Where it cannot (a reply lost after Redis carried out the pipeline, a crash of
the writer), the backend's ``_wrap_batch`` hook injects the fault around the
real pipeline execution.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis_support import KEY, OwnRedis, free_port

import isolation
from isolation import Principal, UserContext
from isolation.events import Connection, Event, EventRouter, PublishResult
from isolation.events.backends import Envelope
from isolation.events.backends import redis as redis_backend
from isolation.events.backends.redis import RedisBackend

pytestmark = pytest.mark.anyio

Make = Callable[..., EventRouter]
PUBLISHERS = 8


def backend_of(router: EventRouter) -> RedisBackend:
    backend = router.backend
    assert isinstance(backend, RedisBackend)
    return backend


class Inbox:
    """Every event each connection of the receiving router got, with a wake-up per arrival."""

    def __init__(self) -> None:
        self.events: dict[Principal, list[Event]] = {}
        self.foreign: list[tuple[Principal, Event]] = []
        self.changed = anyio.Event()

    async def consume(self, owner: Principal, conn: Connection) -> None:
        self.events.setdefault(owner, [])
        async for event in conn:
            if (event.tenant_id, event.recipient) != owner:
                self.foreign.append((owner, event))
            self.events[owner].append(event)
            self.changed.set()
            self.changed = anyio.Event()

    def payloads(self, owner: Principal) -> list[Any]:
        return [e.payload for e in self.events.get(owner, []) if e.kind != "gap"]

    async def until(self, predicate: Callable[[], bool]) -> None:
        with anyio.fail_after(10):
            while not predicate():
                await self.changed.wait()


async def receive_all(
    receiver: EventRouter, principals: list[Principal], inbox: Inbox, tg: Any
) -> None:
    for tenant, user in principals:
        conn = await receiver.connect(UserContext.new(user, tenant_id=tenant))
        tg.start_soon(inbox.consume, Principal(tenant, user), conn)


async def blocked_clients(url: str) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        return int((await client.info("clients"))["blocked_clients"])
    finally:
        await client.aclose()


async def until_blocked(url: str, count: int) -> None:
    """Wait until ``count`` clients have commands held by ``CLIENT PAUSE`` (bounded poll)."""
    with anyio.fail_after(10):
        while await blocked_clients(url) < count:  # noqa: ASYNC110 - Redis state, no event
            await anyio.sleep(0.005)


async def publish_or_record(sender: EventRouter, user: str, errors: list[BaseException]) -> None:
    """Publish one event that is expected to be lost; keep the BackendUnavailableError."""
    try:
        await sender.publish(Principal(None, user), "lost")
    except isolation.BackendUnavailableError as exc:
        errors.append(exc)


async def pause_writes(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        await client.execute_command("CLIENT", "PAUSE", "30000", "WRITE")
    finally:
        await client.aclose()


async def unpause(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        await client.execute_command("CLIENT", "UNPAUSE")
    finally:
        await client.aclose()


async def in_step(router: EventRouter, principal: Principal, subscribers: int) -> None:
    """The command pool is in step: a ``PUBLISH`` through it gets its own reply."""
    backend = backend_of(router)
    envelope = Envelope(
        id=f"probe-{time.monotonic_ns()}",
        recipient=principal[1],
        tenant_id=principal[0],
        kind="probe",
        created_at=time.time(),
        payload="probe",
    )
    data = backend._codec.encode(envelope, origin="probe", now=time.time())
    channel = backend.channel(principal)
    for _ in range(3):
        replies = await backend._call("publish", lambda c: c.publish(channel, data))
        assert replies == subscribers


class Gate:
    """A ``_wrap_batch`` hook: each pipeline waits at the gate until the test opens it.

    With ``crash`` set when the gate opens, the waiting pipeline raises it
    instead of running: a crash inside the writer.
    """

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.opened = anyio.Event()
        self.crash: BaseException | None = None
        self.batches = 0

    def __call__(self, execution: Awaitable[list[Any]]) -> Awaitable[list[Any]]:
        assert isinstance(execution, Coroutine)

        async def gated() -> list[Any]:
            self.batches += 1
            self.entered.set()
            try:
                await self.opened.wait()
            except BaseException:
                execution.close()
                raise
            if self.crash is not None:
                execution.close()
                raise self.crash
            return await execution

        return gated()


class TestCoalescing:
    async def test_concurrent_publishes_share_round_trips(self, routers: Make) -> None:
        """Eight concurrent publishers: far fewer pipelines than publishes; each stream in order."""
        receiver, sender = routers(queue_size=1000), routers()
        principals = [Principal("t", f"p{k}") for k in range(PUBLISHERS)]
        inbox = Inbox()
        per_publisher = 25
        results: list[PublishResult] = []

        async def publisher(tenant: str | None, user: str) -> None:
            for n in range(per_publisher):
                results.append(await sender.publish(Principal(tenant, user), [user, n]))

        async with anyio.create_task_group() as tg:
            await receive_all(receiver, principals, inbox, tg)
            async with anyio.create_task_group() as publishers:
                for tenant, user in principals:
                    publishers.start_soon(publisher, tenant, user)
            await inbox.until(
                lambda: all(len(inbox.payloads(p)) == per_publisher for p in principals)
            )
            tg.cancel_scope.cancel()
        for tenant, user in principals:
            assert inbox.payloads((tenant, user)) == [[user, n] for n in range(per_publisher)]
        assert inbox.foreign == []
        assert results == [PublishResult(delivered=0, dropped=0)] * (PUBLISHERS * per_publisher)
        stats = backend_of(sender).stats()
        assert stats.published == PUBLISHERS * per_publisher
        # Every publisher waits for its reply before its next publish, so a
        # pipeline carries up to one envelope of each: 25 round trips, not 200.
        assert stats.batches <= stats.published // 4
        assert backend_of(receiver).stats().delivered == PUBLISHERS * per_publisher

    async def test_one_publisher_one_round_trip_each(self, routers: Make) -> None:
        """A lone publisher gets no coalescing: one pipeline per publish, counted honestly."""
        sender = routers()
        for n in range(5):
            await sender.publish(Principal(None, "alice"), n)
        stats = backend_of(sender).stats()
        assert (stats.published, stats.batches) == (5, 5)

    async def test_many_publishers_to_one_principal_keep_each_order(self, routers: Make) -> None:
        """Eight publishers to one principal: each one's events arrive in its order, once."""
        receiver, sender = routers(queue_size=1000), routers()
        owner = Principal("acme", "shared")
        inbox = Inbox()
        count = 30

        async def publisher(k: int) -> None:
            for n in range(count):
                await sender.publish(Principal("acme", "shared"), [k, n])

        async with anyio.create_task_group() as tg:
            await receive_all(receiver, [owner], inbox, tg)
            async with anyio.create_task_group() as publishers:
                for k in range(PUBLISHERS):
                    publishers.start_soon(publisher, k)
            await inbox.until(lambda: len(inbox.payloads(owner)) == PUBLISHERS * count)
            tg.cancel_scope.cancel()
        got = inbox.payloads(owner)
        for k in range(PUBLISHERS):
            assert [n for j, n in got if j == k] == list(range(count))
        assert backend_of(sender).stats().batches < PUBLISHERS * count

    async def test_local_connections_still_served(self, routers: Make) -> None:
        """Coalesced publishes still deliver to this process's own connections, once each."""
        sender = routers()
        locals_ = [await sender.connect(UserContext.new(f"u{k}")) for k in range(4)]
        results: list[PublishResult] = []

        async def publisher(k: int) -> None:
            for n in range(10):
                results.append(await sender.publish(Principal(None, f"u{k}"), n))

        async with anyio.create_task_group() as tg:
            for k in range(4):
                tg.start_soon(publisher, k)
        assert results == [PublishResult(delivered=1, dropped=0)] * 40
        for conn in locals_:
            assert [(await conn.receive()).payload for _ in range(10)] == list(range(10))
            assert conn.stats().queued == 0


class TestCancellation:
    async def test_cancelled_while_queued_is_withdrawn(self, routers: Make) -> None:
        """A publish cancelled before the writer took it is never sent; the others are."""
        receiver, sender = routers(), routers()
        backend = backend_of(sender)
        gate = Gate()
        backend._wrap_batch = gate
        inbox = Inbox()
        first: list[PublishResult] = []
        async with anyio.create_task_group() as tg:
            await receive_all(receiver, [(None, "a"), (None, "x")], inbox, tg)

            async def publish_a() -> None:
                first.append(await sender.publish(Principal(None, "a"), "a-1"))

            tg.start_soon(publish_a)
            with anyio.fail_after(5):
                await gate.entered.wait()  # the writer holds a's pipeline at the gate
            with anyio.CancelScope() as scope:
                scope.cancel()
                await sender.publish(
                    Principal(None, "x"), "withdrawn"
                )  # queued behind a, then cancelled
            assert scope.cancelled_caught
            gate.opened.set()
            await inbox.until(lambda: inbox.payloads((None, "a")) == ["a-1"])
            await sender.publish(Principal(None, "x"), "marker")
            await inbox.until(lambda: inbox.payloads((None, "x")) == ["marker"])
            tg.cancel_scope.cancel()
        assert first == [PublishResult(delivered=0, dropped=0)]
        assert gate.batches == 2  # a's pipeline, then the marker's: x was never sent
        assert backend.stats().published == 2
        assert not backend._outbox

    async def test_cancelled_in_flight_returns_at_once_and_is_delivered_once(
        self, own_redis: OwnRedis, routers: Make
    ) -> None:
        """Cancelling a publish whose PUBLISH is on the wire does not wait for Redis, nor
        disturb the pipeline: every envelope in it is delivered once, the others resolve."""
        receiver = routers(url=own_redis.url)
        sender = routers(url=own_redis.url, backend_options={"unavailable_timeout": 30})
        principals = [Principal(None, f"p{k}") for k in range(4)]
        inbox = Inbox()
        results: dict[str, PublishResult] = {}
        scopes: dict[str, anyio.CancelScope] = {}
        finished = {user: anyio.Event() for _, user in principals}

        async def publisher(user: str) -> None:
            with anyio.CancelScope() as scope:
                scopes[user] = scope
                try:
                    results[user] = await sender.publish(Principal(None, user), f"{user}-1")
                finally:
                    finished[user].set()

        backend = backend_of(sender)
        async with anyio.create_task_group() as tg:
            await receive_all(receiver, principals, inbox, tg)
            await pause_writes(own_redis.url)
            try:
                async with anyio.create_task_group() as publishers:
                    for _, user in principals:
                        publishers.start_soon(publisher, user)
                    await until_blocked(own_redis.url, 1)  # the pipeline is held by Redis
                    assert len(backend._in_flight) == len(principals)  # all four in it
                    scopes["p1"].cancel()
                    scopes["p2"].cancel()
                    with anyio.fail_after(5):  # while Redis still holds the pipeline
                        await finished["p1"].wait()
                        await finished["p2"].wait()
                    assert scopes["p1"].cancelled_caught
                    assert scopes["p2"].cancelled_caught
                    assert not finished["p0"].is_set()
                    await unpause(own_redis.url)
            finally:
                await unpause(own_redis.url)
            await inbox.until(lambda: all(inbox.payloads(p) == [f"{p[1]}-1"] for p in principals))
            await sender.publish(Principal(None, "p1"), "after")
            await inbox.until(lambda: inbox.payloads((None, "p1")) == ["p1-1", "after"])
            tg.cancel_scope.cancel()
        assert sorted(results) == ["p0", "p3"]
        assert backend_of(sender).stats().published == 5
        assert backend_of(receiver).stats().dropped["replayed"] == 0
        await in_step(sender, Principal(None, "p0"), subscribers=1)

    async def test_random_cancellations(self, routers: Make) -> None:
        """Eight publishers, each publish cancelled after a drawn delay (600 publishes).

        A publish that returned is delivered exactly once; a cancelled one at
        most once; each publisher's events arrive in order; nothing reaches
        another principal; and the command pool stays in step.
        """
        import random

        rng = random.Random(20240624)
        receiver, sender = routers(queue_size=10_000), routers()
        principals = [Principal("t", f"p{k}") for k in range(PUBLISHERS)]
        inbox = Inbox()
        returned: dict[Principal, list[int]] = {p: [] for p in principals}
        count = 75
        delays = {p: [rng.uniform(0, 0.002) for _ in range(count)] for p in principals}

        async def publisher(owner: Principal) -> None:
            for n, delay in enumerate(delays[owner]):
                with anyio.move_on_after(delay if n % 3 else 0):  # 0: at its first checkpoint
                    await sender.publish(owner, n)
                    returned[owner].append(n)

        async with anyio.create_task_group() as tg:
            await receive_all(receiver, principals, inbox, tg)
            async with anyio.create_task_group() as publishers:
                for owner in principals:
                    publishers.start_soon(publisher, owner)
            for owner in principals:
                await sender.publish(owner, "end")
            await inbox.until(lambda: all(inbox.payloads(p)[-1:] == ["end"] for p in principals))
            tg.cancel_scope.cancel()
        cancelled = 0
        for owner in principals:
            got = inbox.payloads(owner)[:-1]
            assert got == sorted(set(got))  # in order, never twice
            assert set(returned[owner]) <= set(got)  # every publish that returned arrived
            cancelled += count - len(returned[owner])
        assert cancelled > 0  # the draw did cancel publishes
        assert inbox.foreign == []
        assert receiver.stats().refused == 0
        assert backend_of(receiver).stats().dropped["replayed"] == 0
        await in_step(sender, principals[0], subscribers=1)


class TestFaults:
    async def test_lost_reply_retried_and_delivered_once(self, routers: Make) -> None:
        """Redis carried out a pipeline but its reply was lost: the writer sends it again, and
        the receivers' replay window drops the second copies: each event arrives once."""
        receiver, sender = routers(), routers()
        backend = backend_of(sender)
        lost = 0

        def lose_first_reply(execution: Awaitable[list[Any]]) -> Awaitable[list[Any]]:
            async def run() -> list[Any]:
                nonlocal lost
                replies = await execution  # Redis published every envelope
                if lost == 0:
                    lost += 1
                    raise RedisConnectionError("the reply was lost (injected)")
                return replies

            return run()

        principals = [Principal(None, f"p{k}") for k in range(4)]
        inbox = Inbox()
        async with anyio.create_task_group() as tg:
            await receive_all(receiver, principals, inbox, tg)
            backend._wrap_batch = lose_first_reply
            async with anyio.create_task_group() as publishers:
                for _, user in principals:
                    publishers.start_soon(sender.publish, Principal(None, user), f"{user}-1")
            await sender.publish(Principal(None, "p0"), "marker")
            await inbox.until(lambda: inbox.payloads((None, "p0"))[-1:] == ["marker"])
            tg.cancel_scope.cancel()
        for _, user in principals:
            expected = [f"{user}-1", "marker"] if user == "p0" else [f"{user}-1"]
            assert inbox.payloads((None, user)) == expected
        assert lost == 1
        assert backend_of(receiver).stats().dropped["replayed"] == 4  # the four copies
        stats = backend.stats()
        assert (stats.published, stats.batches, stats.unavailable) == (5, 2, 0)

    @pytest.mark.parametrize("death", ["crash", "cancel"])
    async def test_writer_death_fails_every_pending_publish(
        self, routers: Make, death: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The writer dies with a pipeline in flight and more queued: each of those publishers
        gets BackendUnavailableError at once (not after the timeout); the next publish works."""
        receiver = routers()
        sender = routers(backend_options={"unavailable_timeout": 60})
        backend = backend_of(sender)
        gate = Gate()
        backend._wrap_batch = gate
        errors: list[BaseException] = []

        conn = await receiver.connect(UserContext.new("after"))
        with anyio.fail_after(5):  # far less than unavailable_timeout
            async with anyio.create_task_group() as tg:
                tg.start_soon(publish_or_record, sender, "p0", errors)
                await gate.entered.wait()  # p0's pipeline is in flight
                for k in range(1, 4):
                    tg.start_soon(publish_or_record, sender, f"p{k}", errors)
                await anyio.wait_all_tasks_blocked()  # the three publishers queued theirs
                assert len(backend._outbox) == 3
                writer = backend._publisher
                assert writer is not None
                if death == "cancel":
                    writer.cancel()
                else:
                    gate.crash = RuntimeError("the writer crashed (injected)")
                    gate.opened.set()
        assert len(errors) == 4
        messages = [str(e) for e in errors]
        assert sum("sent but not confirmed" in m for m in messages) == 1  # p0's
        assert sum("the event was not sent" in m for m in messages) == 3
        assert all("publish writer ended" in m for m in messages)
        assert any("publish writer ended" in r.getMessage() for r in caplog.records)
        assert backend.stats().unavailable == 4
        assert backend.stats().published == 0
        backend._wrap_batch = None
        await sender.publish(Principal(None, "after"), "works")
        with anyio.fail_after(5):
            assert (await conn.receive()).payload == "works"
        assert backend.stats().published == 1

    async def test_publish_right_after_the_writer_died(
        self, routers: Make, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A publish in the same loop iteration as the writer's death (before its done
        callback ran) fails what the dead writer held, starts a new one and is sent."""
        receiver = routers()
        sender = routers(backend_options={"unavailable_timeout": 60})
        backend = backend_of(sender)
        gate = Gate()
        backend._wrap_batch = gate
        conn = await receiver.connect(UserContext.new("after"))
        errors: list[BaseException] = []

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(publish_or_record, sender, "p0", errors)
                await gate.entered.wait()
                with anyio.CancelScope() as withdrawn:
                    withdrawn.cancel()
                    await sender.publish(
                        Principal(None, "p1"), "withdrawn"
                    )  # queued, then cancelled
                assert withdrawn.cancelled_caught
                assert len(backend._outbox) == 1  # still there, its future cancelled
                dead = backend._publisher
                assert dead is not None
                backend._wrap_batch = None
                dead.cancel()
                await asyncio.sleep(0)  # the writer ends; its done callback is queued behind us
                assert dead.done()
                assert backend._publisher is dead
                await sender.publish(Principal(None, "after"), "works")
                assert backend._publisher is not dead
        assert [type(e) for e in errors] == [isolation.BackendUnavailableError]
        assert backend.stats().unavailable == 1  # the withdrawn publish is not counted
        with anyio.fail_after(5):
            assert (await conn.receive()).payload == "works"
        assert sum("publish writer ended" in r.getMessage() for r in caplog.records) == 1

    async def test_channel_names_cache_is_bounded(
        self, routers: Make, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The cache of recipients' channel names is emptied when full; names stay right."""
        monkeypatch.setattr(redis_backend, "_NAMES_CACHED", 2)
        receiver, sender = routers(), routers()
        conns = [await receiver.connect(UserContext.new(f"u{k}")) for k in range(5)]
        for round_ in range(2):
            for k in range(5):
                await sender.publish(Principal(None, f"u{k}"), [k, round_])
        assert len(backend_of(sender)._names) <= 2
        with anyio.fail_after(5):
            for k, conn in enumerate(conns):
                assert [(await conn.receive()).payload for _ in range(2)] == [[k, 0], [k, 1]]

    async def test_outage_raises_after_the_timeout(
        self, own_redis: OwnRedis, routers: Make
    ) -> None:
        """Redis killed: eight concurrent publishes each raise the typed error after
        unavailable_timeout, none earlier; once Redis is back, publishing works again."""
        timeout = 0.5
        receiver = routers(url=own_redis.url)
        sender = routers(url=own_redis.url, backend_options={"unavailable_timeout": timeout})
        conn = await receiver.connect(UserContext.new("alice"))
        await sender.publish(Principal(None, "alice"), "before")
        with anyio.fail_after(10):  # received before the kill: after it, a gap comes first
            assert (await conn.receive()).payload == "before"
        own_redis.kill()
        raised: list[tuple[float, BaseException]] = []

        async def publisher(n: int) -> None:
            started = anyio.current_time()
            try:
                await sender.publish(Principal(None, "alice"), n)
            except isolation.BackendUnavailableError as exc:
                raised.append((anyio.current_time() - started, exc))

        async with anyio.create_task_group() as tg:
            for n in range(PUBLISHERS):
                tg.start_soon(publisher, n)
        assert len(raised) == PUBLISHERS
        for elapsed, exc in raised:
            assert timeout * 0.9 <= elapsed < timeout + 2
            assert "did not accept the publish" in str(exc)
            assert "127.0.0.1" in str(exc)
        stats = backend_of(sender).stats()
        assert stats.unavailable == PUBLISHERS
        own_redis.start()
        with anyio.fail_after(10):
            assert (await conn.receive()).kind == "gap"  # the listener's reconnection
        await sender.publish(Principal(None, "alice"), "back")
        with anyio.fail_after(10):
            assert (await conn.receive()).payload == "back"

    async def test_timeout_with_the_pipeline_on_the_wire(
        self, own_redis: OwnRedis, routers: Make
    ) -> None:
        """Redis holds the pipeline past the deadline: the publisher gets the typed error,
        saying the event was sent but not confirmed; it arrives at most once, and the
        command pool stays in step."""
        receiver = routers(url=own_redis.url)
        sender = routers(url=own_redis.url, backend_options={"unavailable_timeout": 0.3})
        inbox = Inbox()
        owner = Principal(None, "alice")
        async with anyio.create_task_group() as tg:
            await receive_all(receiver, [owner], inbox, tg)
            await pause_writes(own_redis.url)
            try:
                with pytest.raises(isolation.BackendUnavailableError) as info:
                    await sender.publish(Principal(None, "alice"), "held")
            finally:
                await unpause(own_redis.url)
            assert "sent but not confirmed" in str(info.value)
            await sender.publish(Principal(None, "alice"), "marker")
            await inbox.until(lambda: inbox.payloads(owner)[-1:] == ["marker"])
            tg.cancel_scope.cancel()
        assert inbox.payloads(owner) in (["marker"], ["held", "marker"])
        await in_step(sender, owner, subscribers=1)

    async def test_aclose_fails_pending_publishes(self, own_redis: OwnRedis, routers: Make) -> None:
        """Closing the backend while publishes wait for Redis fails them at once."""
        sender = routers(url=own_redis.url, backend_options={"unavailable_timeout": 60})
        await sender.publish(Principal(None, "alice"), "warm")
        own_redis.kill()
        errors: list[BaseException] = []
        backend = backend_of(sender)

        async def publisher(n: int) -> None:
            try:
                await sender.publish(Principal(None, "alice"), n)
            except isolation.BackendUnavailableError as exc:
                errors.append(exc)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for n in range(3):
                    tg.start_soon(publisher, n)
                await anyio.wait_all_tasks_blocked()  # the writer retries; three wait
                assert len(backend._outbox) + len(backend._in_flight) == 3
                await sender.aclose()
        assert len(errors) == 3
        assert all("closed" in str(e) for e in errors)
        late = Envelope(
            id="late", recipient="alice", tenant_id=None, kind="message", created_at=0, payload=0
        )
        with pytest.raises(isolation.BackendUnavailableError, match="closed"):
            await backend.publish(late)

    async def test_each_publisher_gets_its_own_reply(
        self, own_redis: OwnRedis, namespace: str
    ) -> None:
        """One pipeline, mixed replies: Redis refuses bob's channel (ACL) but not alice's; only
        bob's publisher gets the error, alice's and carol's return, in one round trip."""
        backend = RedisBackend(
            f"redis://onlysome:pw@127.0.0.1:{own_redis.port}/0", keys=[KEY], namespace=namespace
        )
        admin = aioredis.Redis.from_url(own_redis.url)
        await admin.execute_command(
            "ACL",
            "SETUSER",
            "onlysome",
            "on",
            ">pw",
            "resetchannels",
            f"&{backend.channel(Principal(None, 'alice'))}",
            f"&{backend.channel(Principal(None, 'carol'))}",
            "+publish",
        )
        await admin.aclose()
        router = EventRouter(backend=backend)
        outcomes: dict[str, object] = {}

        async def publisher(user: str) -> None:
            try:
                outcomes[user] = await router.publish(Principal(None, user), user)
            except isolation.BackendUnavailableError as exc:
                outcomes[user] = exc

        try:
            async with anyio.create_task_group() as tg:
                for user in ("alice", "carol", "bob"):
                    tg.start_soon(publisher, user)
            assert outcomes["alice"] == outcomes["carol"] == PublishResult(delivered=0, dropped=0)
            assert isinstance(outcomes["bob"], isolation.BackendUnavailableError)
            assert "refused the publish" in str(outcomes["bob"])
            stats = backend.stats()
            assert (stats.published, stats.batches, stats.unavailable) == (2, 1, 1)
        finally:
            await router.aclose()

    async def test_connection_refused_by_acl(self, own_redis: OwnRedis, namespace: str) -> None:
        """A Redis user that may not SELECT its database: every publish is refused, typed."""
        router = await _router_as(
            own_redis,
            namespace,
            ("noselect", "on", ">pw", "+ping", "+publish", "&*", "~*"),
            "noselect:pw",
            database=1,
        )
        try:
            started = anyio.current_time()
            with pytest.raises(isolation.BackendUnavailableError, match="refused the publish"):
                await router.publish(Principal(None, "alice"), 1)
            assert anyio.current_time() - started < 4  # refused at once, not timed out
            with pytest.raises(isolation.BackendUnavailableError, match="refused the ticket"):
                await router.backend.claim_ticket("iso1.t", expires_at=time.time() + 60)
            assert backend_of(router).stats().unavailable == 2
        finally:
            await router.aclose()


class TestDeadlinesAndRefusals:
    async def test_a_held_pipeline_is_not_resent_as_its_envelopes_expire(
        self, routers: Make
    ) -> None:
        """A pipeline with no answer stays out until its last envelope's deadline; each
        envelope fails at its own deadline meanwhile. (Timing each attempt out at the
        earliest deadline resent the rest every time: a retry storm.)"""
        gate = Gate()  # never opened: no answer
        sender = routers(backend_options={"unavailable_timeout": 0.3})
        backend = backend_of(sender)
        backend._wrap_batch = gate
        failed: dict[str, tuple[float, str]] = {}

        async def publisher(name: str) -> None:
            started = anyio.current_time()
            try:
                await sender.publish(Principal(None, "alice"), name)
            except isolation.BackendUnavailableError as exc:
                failed[name] = (anyio.current_time() - started, str(exc))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(publisher, "A")
                await gate.entered.wait()  # [A] is out
                tg.start_soon(publisher, "B")
                tg.start_soon(publisher, "C")
                while len(backend._outbox) < 2:
                    await anyio.lowlevel.checkpoint()
                # B's deadline well after A's, so that [B, C] is out before B
                # expires (at A's own deadline the two raced: B "not sent"), and
                # C's well after B's.
                backend._outbox[0].deadline += 0.2
                backend._outbox[-1].deadline += 0.6
        assert gate.batches == 2  # [A], then [B, C] once: never [C] again
        assert sorted(failed) == ["A", "B", "C"]
        messages = {name: message for name, (_, message) in failed.items()}
        assert all("sent but not confirmed" in message for message in messages.values()), messages
        assert failed["B"][0] < 0.5 + 0.25 < failed["C"][0]

    async def test_nothing_listening_is_not_sent(self, namespace: str) -> None:
        """No Redis at the address: the typed error says the event was not sent."""
        router = EventRouter(
            backend=RedisBackend(
                f"redis://127.0.0.1:{free_port()}/0",
                keys=[KEY],
                namespace=namespace,
                unavailable_timeout=0.3,
            )
        )
        try:
            with pytest.raises(isolation.BackendUnavailableError, match="was not sent"):
                await router.publish(Principal(None, "alice"), 1)
        finally:
            await router.aclose()

    async def test_wrong_password_refused_at_once(
        self, own_redis: OwnRedis, namespace: str
    ) -> None:
        """Bad credentials are a refusal, not an outage: no retrying until the deadline."""
        router = await _router_as(
            own_redis, namespace, ("publisher", "on", ">right", "+@all", "&*"), "publisher:wrong"
        )
        try:
            started = anyio.current_time()
            with pytest.raises(isolation.BackendUnavailableError, match="refused the publish"):
                await router.publish(Principal(None, "alice"), 1)
            assert anyio.current_time() - started < 4
        finally:
            await router.aclose()


async def test_writer_cancelled_with_nothing_pending_is_not_an_error(
    live_redis: str, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The writer cancelled with nothing pending (an event loop ending without aclose())
    is logged at INFO, not as the ERROR of a writer lost with publishes in hand."""
    router = EventRouter(backend=RedisBackend(live_redis, keys=[KEY], namespace=namespace))
    try:
        with caplog.at_level("INFO", logger="isolation"):
            await router.publish(Principal(None, "alice"), 1)  # starts the writer
            writer = backend_of(router)._publisher
            assert writer is not None
            writer.cancel()  # as asyncio.run() does to tasks left at its end
            with pytest.raises(asyncio.CancelledError):
                await writer
    finally:
        await router.aclose()
    ended = [r for r in caplog.records if getattr(r, "event", None) == "backend_publisher_lost"]
    assert [r.levelname for r in ended] == ["INFO"]


async def _router_as(
    own_redis: OwnRedis,
    namespace: str,
    acl: tuple[str, ...],
    credentials: str,
    *,
    database: int = 0,
) -> EventRouter:
    """A router whose backend logs in as ``credentials``, after ``ACL SETUSER *acl``."""
    admin = aioredis.Redis.from_url(own_redis.url)
    await admin.execute_command("ACL", "SETUSER", *acl)
    await admin.aclose()
    return EventRouter(
        backend=RedisBackend(
            f"redis://{credentials}@127.0.0.1:{own_redis.port}/{database}",
            keys=[KEY],
            namespace=namespace,
            unavailable_timeout=5,
        )
    )
