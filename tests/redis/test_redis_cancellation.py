"""Cancellation never lets a reply reach the wrong caller (redis/redis-py#2624, CVE-2023-28858).

A cancelled command must not leave a pooled connection one reply behind. The
calls are cancelled at every checkpoint they pass (the task is cancelled just
as the call suspends for the k-th time, for every k up to the number of
suspensions of an uncancelled call), and after Hypothesis-chosen delays (1,000
trials). After each cancellation the next calls must get their own replies:
``PUBLISH`` to a channel with one subscriber returns 1 (the cancelled call
published to one with two), a fresh ticket is claimed, a used one refused, and
no event reaches a connection of another principal.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis_support import KEY

from isolation import Principal, UserContext
from isolation.events import EventRouter
from isolation.events.backends import Envelope
from isolation.events.backends._envelope import channel_name
from isolation.events.backends.redis import RedisBackend

pytestmark = pytest.mark.anyio


class _CancelAt:
    """Await ``coro`` in the current task, cancelling the task as it suspends the k-th time."""

    def __init__(self, coro: Coroutine[Any, Any, Any], k: int) -> None:
        self.coro = coro
        self.k = k
        self.suspensions = 0

    def __await__(self) -> Generator[Any, Any, Any]:
        inner = self.coro.__await__()
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            try:
                value = inner.throw(thrown) if thrown is not None else inner.send(sent)
            except StopIteration as stop:
                return stop.value
            thrown = None
            self.suspensions += 1
            if self.suspensions == self.k:
                task = asyncio.current_task()
                assert task is not None
                task.cancel()  # the task cancels what it now waits for: a real cancellation
            try:
                sent = yield value
            except BaseException as exc:
                thrown, sent = exc, None


async def suspensions_of(make: Callable[[], Coroutine[Any, Any, Any]]) -> int:
    stepper = _CancelAt(make(), 0)
    await stepper
    return stepper.suspensions


async def cancelled_at(make: Callable[[], Coroutine[Any, Any, Any]], k: int) -> bool:
    """Run ``make()`` cancelled at its k-th suspension; ``True`` if it was cancelled."""
    try:
        await asyncio.ensure_future(_run(_CancelAt(make(), k)))
    except asyncio.CancelledError:
        return True
    return False


async def _run(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


class Rig:
    """A sender, and receivers: channel "two" has two subscribers, channel "one" has one."""

    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        self.namespace = namespace
        self.sender = EventRouter(backend=RedisBackend(url, keys=[KEY], namespace=namespace))
        self.receivers = [
            EventRouter(
                backend=RedisBackend(url, keys=[KEY], namespace=namespace), queue_size=100_000
            )
            for _ in range(2)
        ]
        self.conns: list[Any] = []
        self.used = f"iso1.used-{os.urandom(8).hex()}"
        self.one_sent = 0

    async def start(self) -> None:
        for receiver in self.receivers:
            self.conns.append(await receiver.connect(UserContext.new("two", tenant_id="t")))
        self.conns.append(await self.receivers[0].connect(UserContext.new("one", tenant_id="t")))
        assert await self.backend.claim_ticket(self.used, expires_at=time.time() + 60)

    @property
    def backend(self) -> RedisBackend:
        backend = self.sender.backend
        assert isinstance(backend, RedisBackend)
        return backend

    def publish_two(self) -> Coroutine[Any, Any, Any]:
        return self.sender.publish(Principal("t", "two"), ["t", "two"])

    def claim_fresh(self) -> Coroutine[Any, Any, Any]:
        return self.backend.claim_ticket(f"iso1.{os.urandom(8).hex()}", expires_at=time.time() + 60)

    async def check_replies(self) -> None:
        """The next calls get their own replies."""
        envelope = Envelope(
            id=f"one-{os.urandom(6).hex()}",
            recipient="one",
            tenant_id="t",
            kind="message",
            created_at=time.time(),
            payload=["t", "one", self.one_sent],
        )
        data = self.backend._codec.encode(envelope, origin="check", now=time.time())
        channel = channel_name(self.namespace, ("t", "one"))
        receivers = await self.backend._call("publish", lambda c: c.publish(channel, data))
        assert receivers == 1, f"PUBLISH to a channel of one subscriber returned {receivers}"
        self.one_sent += 1
        assert await self.claim_fresh() is True
        assert await self.backend.claim_ticket(self.used, expires_at=time.time() + 60) is False

    async def finish(self) -> None:
        """Every event reached only its principal; "one" got all of its, in order, once."""
        marker = self.one_sent
        await self.sender.publish(Principal("t", "one"), ["t", "one", marker])
        with anyio.fail_after(10):
            one: list[Any] = []
            while not one or one[-1] != ["t", "one", marker]:
                event = await self.conns[2].receive()
                assert (event.tenant_id, event.recipient) == ("t", "one")
                one.append(event.payload)
        assert one == [["t", "one", k] for k in range(marker + 1)]
        for conn in self.conns[:2]:
            while conn.stats().queued:
                event = await conn.receive()
                assert (event.tenant_id, event.recipient, event.payload) == (
                    "t",
                    "two",
                    ["t", "two"],
                )
        for router in (self.sender, *self.receivers):
            assert router.stats().refused == 0

    async def aclose(self) -> None:
        for router in (self.sender, *self.receivers):
            await router.aclose()


@pytest.fixture
async def rig(live_redis: str, namespace: str) -> Any:
    made = Rig(live_redis, namespace)
    await made.start()
    yield made
    await made.aclose()


async def test_publish_cancelled_at_every_checkpoint(rig: Rig) -> None:
    """A publish cancelled at each of its checkpoints leaves every later reply in place."""
    total = await suspensions_of(rig.publish_two)
    assert total >= 1
    for k in range(1, total + 1):
        assert await cancelled_at(rig.publish_two, k), k
        await rig.check_replies()
    await rig.finish()


async def test_claim_cancelled_at_every_checkpoint(rig: Rig) -> None:
    """A ticket claim cancelled at each of its checkpoints leaves every later reply in place."""
    total = await suspensions_of(rig.claim_fresh)
    assert total >= 1
    for k in range(1, total + 1):
        assert await cancelled_at(rig.claim_fresh, k), k
        await rig.check_replies()
    await rig.finish()


async def test_listener_cancelled_at_every_checkpoint(rig: Rig) -> None:
    """The listener cancelled at each checkpoint of a session is restarted; delivery stays exact.

    Events to "one" flow while the session is cancelled: those read before
    arrive once and in order, those in the outage are lost (with a gap), and
    none reaches another principal's connection.
    """
    backend = rig.receivers[0].backend
    assert isinstance(backend, RedisBackend)
    steppers: list[_CancelAt] = []

    def once(k: int) -> Callable[[Awaitable[None]], Awaitable[None]]:
        def wrap(session: Awaitable[None]) -> Awaitable[None]:
            backend._wrap_session = None  # one session only: the next runs plainly
            steppers.append(_CancelAt(session, k))  # type: ignore[arg-type]
            return _run(steppers[-1])

        return wrap

    sent = 0

    async def publish_one() -> None:
        nonlocal sent
        await rig.sender.publish(Principal("t", "one"), ["t", "one", sent])
        sent += 1

    async def restart(k: int) -> None:
        restarts = backend.stats().listener_restarts
        backend._wrap_session = once(k)
        session = backend._session
        assert session is not None
        session.cancel()
        with anyio.fail_after(10):
            # Traffic makes the wrapped session pass its checkpoints until the k-th.
            while backend.stats().listener_restarts < restarts + (2 if k else 1):
                await publish_one()
            while backend.stats().subscriptions < 2:
                await publish_one()

    # Count the checkpoints of one session that reads three events.
    await restart(0)
    before = sent
    with anyio.fail_after(10):
        for _ in range(3):
            await publish_one()
        received = 0
        while received < 3:
            event = await rig.conns[2].receive()
            received += event.kind != "gap" and event.payload[2] >= before
    total = steppers[-1].suspensions
    assert total >= 4
    for k in range(1, total + 1):
        await restart(k)
    marker = sent
    await publish_one()
    payloads: list[int] = []
    with anyio.fail_after(10):
        while not payloads or payloads[-1] != marker:
            event = await rig.conns[2].receive()
            assert (event.tenant_id, event.recipient) == ("t", "one")
            if event.kind != "gap":
                payloads.append(event.payload[2])
    assert payloads == sorted(set(payloads))  # in order, never twice
    assert backend.stats().gaps >= 2  # unread gaps are not repeated: one covers many losses
    for router in rig.receivers:
        assert router.stats().refused == 0
    for conn in rig.conns[:2]:
        while conn.stats().queued:
            event = await conn.receive()
            assert (event.tenant_id, event.recipient) == ("t", "two")


@settings(
    max_examples=4,
    suppress_health_check=list(HealthCheck),
    deadline=None,
    derandomize=True,
    database=None,
)
@given(
    st.lists(
        st.tuples(st.sampled_from(["publish", "claim"]), st.floats(0, 0.002)),
        min_size=250,
        max_size=250,
    )
)
def test_cancelled_after_random_delays(live_redis: str, trials: list[tuple[str, float]]) -> None:
    """1,000 trials (4 x 250): publish or claim cancelled after a drawn delay; replies stay exact."""

    async def run() -> None:
        rig = Rig(live_redis, f"test-{os.urandom(6).hex()}")
        await rig.start()
        try:
            for what, delay in trials:
                make = rig.publish_two if what == "publish" else rig.claim_fresh
                with anyio.move_on_after(delay):
                    await make()
                await rig.check_replies()
            await rig.finish()
        finally:
            await rig.aclose()

    anyio.run(run, backend="asyncio")
