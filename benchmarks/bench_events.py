"""The event router against raw asyncio queues, anyio streams and broadcaster (issue: event router).

Fan-out workload: N users x 2 connections, M events published round-robin
(a small dict payload each), until every connection has consumed its share.
Anchor: a raw ``dict[user, list[asyncio.Queue]]`` (unbounded queues,
``put_nowait`` / ``await get()``, no checks). Also measured in the same run:
anyio memory object streams (unbounded, ``send_nowait`` / ``await receive()``,
their fastest use), broadcaster's memory backend if installed (unbounded
queues, a listener task, no checks), and the router with its defaults
(queues of 100 under ``BLOCK``, the last-step check on), receiving with
``receive()`` and with ``async for``, and with ``receive()`` of a nested
payload (``{"n": i, "meta": {"seen": [i]}}``): the router snapshots every
payload at publish, a flat dict by copying, a nested one as JSON text decoded
per recipient, so these rows include that cost. Targets, with verification on: at
least 0.35x raw throughput with 10 users and 0.5x with 1,000, ahead of anyio
streams (the printed ratios are times: throughput is their inverse).

Publish-only workloads: ``publish()`` alone, 1,000 events, queues drained
outside the timed section, with 10 ... 10,000 users connected: to the same 10
recipients every round (the target, flat within 1.2x: publish's own cost
against the number of users held), and round-robin to every user, which also
measures cache misses; the same for raw queues shows how much of that growth
is the memory hierarchy (more connections touched).

Run: ``pytest benchmarks/bench_events.py`` (broadcaster from
benchmarks/requirements.txt is optional). asyncio only: the anchors are.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from isolation import Principal, UserContext
from isolation.events import EventRouter

EVENTS = 20_000
ROUNDS = 5
Go = Callable[[], Awaitable[None]]
Workload = Callable[[int, int], Awaitable[Go]]


def _users(count: int) -> list[str]:
    return [f"user-{i}" for i in range(count)]


async def raw_queues(users: int, events: int) -> Go:
    queues = {name: [asyncio.Queue[Any](), asyncio.Queue[Any]()] for name in _users(users)}
    names = list(queues)
    share = events // users

    async def consume(queue: asyncio.Queue[Any]) -> None:
        for _ in range(share):
            await queue.get()

    tasks = [asyncio.create_task(consume(q)) for qs in queues.values() for q in qs]
    await asyncio.sleep(0)

    async def go() -> None:
        for i in range(events):
            payload = {"n": i}
            for queue in queues[names[i % users]]:
                queue.put_nowait(payload)
        await asyncio.gather(*tasks)

    return go


async def anyio_streams(users: int, events: int) -> Go:
    streams = {
        name: [anyio.create_memory_object_stream[Any](float("inf")) for _ in range(2)]
        for name in _users(users)
    }
    names = list(streams)
    share = events // users

    async def consume(receive: Any) -> None:
        for _ in range(share):
            await receive.receive()

    tasks = [asyncio.create_task(consume(rx)) for pairs in streams.values() for _, rx in pairs]
    await asyncio.sleep(0)

    async def go() -> None:
        for i in range(events):
            payload = {"n": i}
            for send, _ in streams[names[i % users]]:
                send.send_nowait(payload)
        await asyncio.gather(*tasks)
        for pairs in streams.values():
            for send, receive in pairs:
                send.close()
                receive.close()

    return go


async def router_receive(users: int, events: int) -> Go:
    return await _router(users, events, iterate=False)


async def router_receive_nested(users: int, events: int) -> Go:
    """A nested payload: snapshotted as JSON text, decoded once per recipient."""
    return await _router(users, events, iterate=False, nested=True)


async def router_async_for(users: int, events: int) -> Go:
    return await _router(users, events, iterate=True)


async def _router(users: int, events: int, *, iterate: bool, nested: bool = False) -> Go:
    router = EventRouter()
    names = [Principal(None, name) for name in _users(users)]
    conns = [
        await router.connect(UserContext.new(name.user_id)) for name in names for _ in range(2)
    ]
    share = events // users

    async def consume(conn: Any) -> None:
        if iterate:
            count = 0
            async for _ in conn:
                count += 1
                if count == share:
                    return
        else:
            receive = conn.receive
            for _ in range(share):
                await receive()

    tasks = [asyncio.create_task(consume(conn)) for conn in conns]
    await asyncio.sleep(0)
    publish = router.publish

    async def go() -> None:
        if nested:
            for i in range(events):
                await publish(names[i % users], {"n": i, "meta": {"seen": [i]}})
        else:
            for i in range(events):
                await publish(names[i % users], {"n": i})
        await asyncio.gather(*tasks)

    return go


async def broadcaster_memory(users: int, events: int) -> Go:
    from broadcaster import Broadcast

    broadcast = Broadcast("memory://")
    await broadcast.connect()
    names = _users(users)
    share = events // users
    subscribed = asyncio.Event()
    ready = [0]

    async def consume(channel: str) -> None:
        async with broadcast.subscribe(channel) as subscriber:
            ready[0] += 1
            if ready[0] == 2 * users:
                subscribed.set()
            for _ in range(share):
                await subscriber.get()

    tasks = [asyncio.create_task(consume(name)) for name in names for _ in range(2)]
    await subscribed.wait()

    async def go() -> None:
        for i in range(events):
            await broadcast.publish(names[i % users], {"n": i})
        await asyncio.gather(*tasks)
        await broadcast.disconnect()

    return go


def _run(benchmark: Any, workload: Workload, users: int, events: int = EVENTS) -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        loop = asyncio.new_event_loop()
        loops.append(loop)
        go = loop.run_until_complete(workload(users, events))
        gc.collect()  # every round starts without garbage from the setup
        return (loop, go), {}

    def target(loop: asyncio.AbstractEventLoop, go: Go) -> None:
        loop.run_until_complete(go())

    def teardown(loop: asyncio.AbstractEventLoop, go: Go) -> None:
        loop.close()

    benchmark.pedantic(target, setup=setup, teardown=teardown, rounds=ROUNDS, iterations=1)
    benchmark.extra_info["events_per_second"] = events / benchmark.stats.stats.median


FANOUT = [
    pytest.param(raw_queues, id="anchor_raw_asyncio_queues"),
    pytest.param(anyio_streams, id="anyio_memory_streams"),
    pytest.param(router_receive, id="router_receive"),
    pytest.param(router_async_for, id="router_async_for"),
    pytest.param(router_receive_nested, id="router_receive_nested_payload"),
    pytest.param(broadcaster_memory, id="broadcaster_memory"),
]


@pytest.mark.benchmark(group="fan-out: 10 users x 2 connections, 20,000 events")
@pytest.mark.parametrize("workload", FANOUT)
def test_fanout_10_users(benchmark: Any, workload: Workload) -> None:
    if workload is broadcaster_memory:
        pytest.importorskip("broadcaster")
    _run(benchmark, workload, 10)


@pytest.mark.benchmark(group="fan-out: 1,000 users x 2 connections, 20,000 events")
@pytest.mark.parametrize("workload", FANOUT)
def test_fanout_1000_users(benchmark: Any, workload: Workload) -> None:
    if workload is broadcaster_memory:
        pytest.importorskip("broadcaster")
    _run(benchmark, workload, 1000)


PUBLISHES = 1_000
USER_COUNTS = [
    pytest.param(10, id="anchor_10_users"),
    pytest.param(100, id="100_users"),
    pytest.param(1_000, id="1000_users"),
    pytest.param(10_000, id="10000_users"),
]


@pytest.mark.benchmark(group="publish only: 1,000 events round-robin, by number of users")
@pytest.mark.parametrize("users", USER_COUNTS)
def test_publish_only(benchmark: Any, users: int) -> None:
    names = _users(users)
    _time_publishes(benchmark, names, names)


@pytest.mark.benchmark(
    group="publish only: 1,000 events to 10 recipients, by number of users connected"
)
@pytest.mark.parametrize("users", USER_COUNTS)
def test_publish_only_fixed_recipients(benchmark: Any, users: int) -> None:
    """publish()'s own cost against the number of users connected, the cache held equal.

    The same 10 recipients every round, with 10 ... 10,000 users connected: any
    growth is publish() depending on how many users the router holds, which
    round-robin over all of them cannot separate from cache misses.
    """
    names = _users(users)
    _time_publishes(benchmark, names, names[:: max(1, users // 10)][:10])


def _time_publishes(benchmark: Any, names: list[str], recipients: list[str]) -> None:
    """Time PUBLISHES publishes round-robin over ``recipients``, every one of ``names``
    connected twice; the recipients' queues are drained between rounds, untimed."""
    loop = asyncio.new_event_loop()
    router = EventRouter(queue_size=PUBLISHES)
    conns = loop.run_until_complete(_connect_all(router, names))
    wanted = set(recipients)
    targets = [c for c in conns if c.principal[1] in wanted]
    to = [Principal(None, name) for name in recipients]
    start = [0]

    async def publish_batch() -> None:
        publish = router.publish
        first, count = start[0], len(to)
        for i in range(first, first + PUBLISHES):
            await publish(to[i % count], i)
        start[0] = first + PUBLISHES

    async def drain() -> None:
        for conn in targets:
            while conn._queue:
                await conn.receive()

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        loop.run_until_complete(drain())
        return (), {}

    try:
        benchmark.pedantic(
            lambda: loop.run_until_complete(publish_batch()), setup=setup, rounds=20, iterations=1
        )
    finally:
        loop.close()


async def _connect_all(router: EventRouter, names: list[str]) -> list[Any]:
    return [await router.connect(UserContext.new(name)) for name in names for _ in range(2)]


@pytest.mark.benchmark(group="publish only, raw asyncio queues for comparison, by number of users")
@pytest.mark.parametrize(
    "users",
    [
        pytest.param(10, id="anchor_10_users"),
        pytest.param(1_000, id="1000_users"),
        pytest.param(10_000, id="10000_users"),
    ],
)
def test_publish_only_raw(benchmark: Any, users: int) -> None:
    names = _users(users)
    queues = {name: [asyncio.Queue[Any](), asyncio.Queue[Any]()] for name in names}
    start = [0]

    def publish_batch() -> None:
        first = start[0]
        for i in range(first, first + PUBLISHES):
            for queue in queues[names[i % users]]:
                queue.put_nowait(i)
        start[0] = first + PUBLISHES

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        for pair in queues.values():
            for queue in pair:
                while not queue.empty():
                    queue.get_nowait()
        return (), {}

    benchmark.pedantic(publish_batch, setup=setup, rounds=20, iterations=1)
