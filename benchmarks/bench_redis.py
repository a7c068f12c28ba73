"""The Redis event backend across two processes, against broadcaster's Redis backend.

Workload: one child process holds one connection for each of 1,000 users (on
``RedisBackend``: signed envelopes, verified on receipt, the last-step check;
on broadcaster: one ``subscribe()`` per user, no checks); this process
publishes to them round-robin from 8 concurrent tasks, each payload carrying
its publish time. Measured, from one run on the same Redis:

* **throughput**: 20,000 events as fast as the publishers go; events per
  second from the first publish to the last ``receive()``. Target: at least
  broadcaster's (the anchor).
* **latency**: 1,000 events/s for 3 s; p50 and p99 from publish to
  ``receive()`` (goal: p99 under 10 ms; reported, not asserted).
* **resubscription** (RedisBackend only, on a redis-server of its own): the
  server is killed and restarted 5 times; the time from the restart until
  every connection has its ``"gap"`` event (the listener reconnected,
  resubscribed 1,000 channels, and had Redis confirm them).

channels_redis's pub/sub layer (``RedisPubSubChannelLayer``: one group per
user, one channel per connection) is measured the same way when installed.

Run: ``python benchmarks/bench_redis.py [REDIS_URL]`` (default
``$ISOLATION_TEST_REDIS_URL`` or ``redis://127.0.0.1:6379/0``), or
``pytest benchmarks/bench_redis.py -s`` for a shorter run. asyncio only.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

KEY = b"bench-redis-key-0123456789abcdef-0123"
USERS = 1_000
PUBLISHERS = 8


# -- the receiving process ------------------------------------------------------------


async def receive_isolation(url: str, namespace: str, expected: int) -> dict[str, Any]:
    from isolation import UserContext
    from isolation.events import EventRouter
    from isolation.events.backends.redis import RedisBackend

    router = EventRouter(
        backend=RedisBackend(url, keys=[KEY], namespace=namespace), queue_size=expected + 10
    )
    conns = [await router.connect(UserContext.new(f"user-{n}")) for n in range(USERS)]
    latencies: list[float] = []
    last = 0.0
    done = asyncio.Event()

    async def consume(conn: Any) -> None:
        nonlocal last
        while True:
            event = await conn.receive()
            now = time.time()
            latencies.append(now - event.payload["t"])
            last = now
            if len(latencies) == expected:
                done.set()

    print("ready", flush=True)
    tasks = [asyncio.create_task(consume(c)) for c in conns]
    await done.wait()
    for task in tasks:
        task.cancel()
    await router.aclose()
    return {"latencies": latencies, "last": last}


async def receive_broadcaster(url: str, namespace: str, expected: int) -> dict[str, Any]:
    from broadcaster import Broadcast

    broadcast = Broadcast(url)
    await broadcast.connect()
    latencies: list[float] = []
    last = 0.0
    done = asyncio.Event()
    subscribed = 0
    all_subscribed = asyncio.Event()

    async def consume(n: int) -> None:
        nonlocal last, subscribed
        async with broadcast.subscribe(f"{namespace}:user-{n}") as subscriber:
            subscribed += 1
            if subscribed == USERS:
                all_subscribed.set()
            async for event in subscriber:  # type: ignore[union-attr]
                now = time.time()
                latencies.append(now - json.loads(event.message)["t"])
                last = now
                if len(latencies) == expected:
                    done.set()

    tasks = [asyncio.create_task(consume(n)) for n in range(USERS)]
    await all_subscribed.wait()
    # broadcaster 0.3.1's listener can miss its wake-up: it sets `_ready` before
    # subscribing, so the listener may find nothing subscribed yet, clear `_ready`
    # and wait forever (no event is ever received). Wake it once all are subscribed.
    broadcast._backend._ready.set()  # type: ignore[attr-defined]
    await asyncio.sleep(0.5)  # broadcaster does not wait for Redis to confirm subscriptions
    print("ready", flush=True)
    await done.wait()
    # No teardown: broadcaster's subscribers unsubscribe one by one on cancellation
    # (through a pool that is closing); the process exits right after reporting.
    del tasks
    return {"latencies": latencies, "last": last}


async def receive_channels(url: str, namespace: str, expected: int) -> dict[str, Any]:
    from channels_redis.pubsub import RedisPubSubChannelLayer

    layer = RedisPubSubChannelLayer(hosts=[url])
    latencies: list[float] = []
    last = 0.0
    done = asyncio.Event()
    channels = []
    for n in range(USERS):
        channel = await layer.new_channel()
        await layer.group_add(f"{namespace}.user-{n}", channel)
        channels.append(channel)

    async def consume(channel: str) -> None:
        nonlocal last
        while True:
            message = await layer.receive(channel)
            now = time.time()
            latencies.append(now - message["t"])
            last = now
            if len(latencies) == expected:
                done.set()

    tasks = [asyncio.create_task(consume(channel)) for channel in channels]
    await asyncio.sleep(0.5)  # like broadcaster, it does not report confirmed subscriptions
    print("ready", flush=True)
    await done.wait()
    del tasks
    return {"latencies": latencies, "last": last}


RECEIVERS = {
    "isolation": receive_isolation,
    "broadcaster": receive_broadcaster,
    "channels_redis": receive_channels,
}


def receiver_main(kind: str, url: str, namespace: str, expected: int) -> None:
    run = RECEIVERS[kind]
    result = asyncio.run(run(url, namespace, expected))
    print(json.dumps(result), flush=True)
    os._exit(0)  # nothing left to flush; skip the teardown of 1,000 subscriptions


# -- the publishing process -------------------------------------------------------------


async def publish(kind: str, url: str, namespace: str, events: int, rate: float | None) -> float:
    """Publish ``events`` round-robin from 8 tasks (paced to ``rate``/s if given); return the start."""
    if kind == "isolation":
        from isolation import Principal
        from isolation.events import EventRouter
        from isolation.events.backends.redis import RedisBackend

        router = EventRouter(backend=RedisBackend(url, keys=[KEY], namespace=namespace))
        principals = [Principal(None, f"user-{i}") for i in range(USERS)]

        async def send(n: int) -> None:
            await router.publish(principals[n % USERS], {"t": time.time(), "n": n})

        async def close() -> None:
            await router.aclose()
    elif kind == "channels_redis":
        from channels_redis.pubsub import RedisPubSubChannelLayer

        layer = RedisPubSubChannelLayer(hosts=[url])

        async def send(n: int) -> None:
            group = f"{namespace}.user-{n % USERS}"
            await layer.group_send(group, {"type": "event", "t": time.time(), "n": n})

        async def close() -> None:
            await layer.flush()
    else:
        from broadcaster import Broadcast

        broadcast = Broadcast(url)
        await broadcast.connect()

        async def send(n: int) -> None:
            message = json.dumps({"t": time.time(), "n": n})
            await broadcast.publish(channel=f"{namespace}:user-{n % USERS}", message=message)

        async def close() -> None:
            await broadcast.disconnect()

    started = time.time()

    async def publisher(offset: int) -> None:
        for n in range(offset, events, PUBLISHERS):
            if rate is not None:
                delay = started + n / rate - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            await send(n)

    await asyncio.gather(*(publisher(k) for k in range(PUBLISHERS)))
    await close()
    return started


def run_pair(kind: str, url: str, events: int, rate: float | None) -> dict[str, float]:
    namespace = f"bench-{os.urandom(4).hex()}"
    child = subprocess.Popen(
        [sys.executable, __file__, "receiver", kind, url, namespace, str(events)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"the {kind} receiver did not start: {line!r}")
        started = asyncio.run(publish(kind, url, namespace, events, rate))
        result = json.loads(child.stdout.readline())
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
    latencies = sorted(result["latencies"])
    return {
        "events_per_s": events / (result["last"] - started),
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1e3,
    }


# -- resubscription after a restart ------------------------------------------------------------


async def resubscription_times(restarts: int) -> list[float]:
    from isolation import UserContext
    from isolation.events import EventRouter
    from isolation.events.backends.redis import RedisBackend

    binary = shutil.which("redis-server")
    if binary is None:
        return []
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]

    async def start() -> subprocess.Popen[bytes]:
        server = subprocess.Popen(args, stdout=subprocess.DEVNULL)  # noqa: ASYNC220 - a benchmark
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.005)
                continue
            writer.close()
            return server

    server = await start()
    url = f"redis://127.0.0.1:{port}/0"
    router = EventRouter(backend=RedisBackend(url, keys=[KEY], unavailable_timeout=10))
    times: list[float] = []
    try:
        conns = [await router.connect(UserContext.new(f"user-{n}")) for n in range(USERS)]
        for _ in range(restarts):
            server.kill()
            server.wait()
            server = await start()
            restarted = time.perf_counter()
            for conn in conns:
                event = await conn.receive()
                assert event.kind == "gap"
            times.append(time.perf_counter() - restarted)
    finally:
        await router.aclose()
        server.kill()
        server.wait()
    return times


# -- entry points --------------------------------------------------------------------------------


def main(
    url: str, *, events: int = 20_000, paced_seconds: float = 3.0, restarts: int = 5
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    kinds = ["isolation"]
    for anchor in ("channels_redis", "broadcaster"):
        try:
            __import__(anchor)
        except ImportError:
            continue
        kinds.insert(0, anchor)
    for kind in kinds:
        results[f"{kind} throughput"] = run_pair(kind, url, events, None)
        results[f"{kind} latency at 1,000/s"] = run_pair(
            kind, url, int(1000 * paced_seconds), 1000.0
        )
    times = asyncio.run(resubscription_times(restarts))
    if times:
        results["resubscribe 1,000 channels after a restart (s)"] = {
            "median": statistics.median(times),
            "max": max(times),
        }
    return results


def report(results: dict[str, Any]) -> None:
    anchor = results.get("broadcaster throughput", {}).get("events_per_s")
    for name, figures in results.items():
        line = ", ".join(
            f"{k} {v:,.3f}" if v < 100 else f"{k} {v:,.0f}" for k, v in figures.items()
        )
        if anchor and name.endswith("throughput"):
            line += f"  ({figures['events_per_s'] / anchor:.2f}x broadcaster)"
        print(f"{name:<48} {line}")


def test_bench_redis() -> None:
    """A short run (5,000 events, 2 s paced, 3 restarts), printed with ``-s``."""
    url = os.environ.get("ISOLATION_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    report(main(url, events=5_000, paced_seconds=2.0, restarts=3))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "receiver":
        receiver_main(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        target = (
            sys.argv[1]
            if len(sys.argv) > 1
            else os.environ.get("ISOLATION_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
        )
        report(main(target))
