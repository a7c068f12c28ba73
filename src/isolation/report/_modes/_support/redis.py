"""Two routers on one Redis namespace, for the event modes' Redis checks (13, 14, 15, 16).

:func:`two_routers` builds router A and router B from a subject ``make``, each
on a :class:`~isolation.events.backends.redis.RedisBackend` of its own in one
fresh namespace: to Redis they are two processes' routers. B also holds a
*barrier* connection, of a principal no scenario uses.
:meth:`RouterPair.caught_up` publishes a marker through A to that principal
and waits for B to hand it over: A's publishes run one after another, Redis
pushes their messages to B's one subscriber connection in that order, and B's
listener handles each (verifies it and offers it to the router) before reading
the next, so once the marker is out every envelope A published before it has
reached B's connections or been dropped by B's backend. No sleep: the wait
ends on the marker, with a hang guard.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import anyio

from isolation._errors import ConfigurationError, ConnectionClosedError, QueueFullError
from isolation.context._model import Principal, UserContext
from isolation.events import PublishResult
from isolation.events.backends import Deliver, Envelope
from isolation.report._modes._support.events import principal_of
from isolation.report._registry import Backend, Check, ModeRegistry, Settings

if TYPE_CHECKING:
    from isolation.events.backends.redis import RedisBackend

__all__ = [
    "BARRIER",
    "HANG_GUARD",
    "RouterPair",
    "SettlingBackend",
    "WrappedRouter",
    "register_redis_twin",
    "two_routers",
]

BARRIER: Final = Principal("isolation-report", "barrier")
"""The principal of B's barrier connection (no scenario publishes to it)."""
HANG_GUARD: Final = 30.0
"""Seconds a wait may take before the check reports it as a violation (never a pacing)."""
_KEY: Final = b"isolation-report-redis-envelopes!"  # a throwaway key for the report's namespaces


class RouterPair:
    """Routers ``a`` and ``b`` on one Redis namespace, with B's backend and barrier.

    ``waits_b`` is what router B was given as its backend: ``backend_b`` seen
    through :class:`SettlingBackend`, which counts B's receive-side ``BLOCK`` waits.
    """

    __slots__ = ("_barrier", "_marks", "a", "b", "backend_b", "waits_b")

    def __init__(self, a: Any, b: Any, waits_b: SettlingBackend, barrier: Any) -> None:
        self.a = a
        self.b = b
        self.waits_b = waits_b
        self.backend_b = waits_b.inner
        self._barrier = barrier
        self._marks = 0

    async def caught_up(self, violations: list[str]) -> bool:
        """Publish a marker through A and wait until B's barrier connection hands it over.

        Returns whether it arrived; a hang, a closed barrier connection or an
        event of another principal handed to it is added to ``violations``.
        """
        self._marks += 1
        mark = ["isolation-report-barrier", self._marks]
        await self.a.publish(BARRIER, mark)
        foreign = 0
        arrived = False
        try:
            with anyio.move_on_after(HANG_GUARD):
                while not arrived:
                    event = await self._barrier.receive()
                    if principal_of(event) != BARRIER:
                        foreign += 1
                    arrived = event.payload == mark
        except ConnectionClosedError as exc:
            violations.append(f"B's barrier connection closed ({exc.reason.value})")
        else:
            if not arrived:
                violations.append(
                    f"a marker published through router A did not reach router B "
                    f"within {HANG_GUARD:.0f} s"
                )
        if foreign:
            violations.append(f"B's barrier connection was handed {foreign} events of others")
        return arrived


@contextlib.asynccontextmanager
async def two_routers(
    make: Callable[..., Any], settings: Settings, **options: Any
) -> AsyncIterator[RouterPair]:
    """Routers ``make(backend=..., **options)`` A and B on one fresh namespace; closed at exit.

    B's backend is given to ``make`` seen through :class:`SettlingBackend`.

    Raises:
        ConfigurationError: ``settings`` has no Redis URL.
    """
    from isolation.events.backends.redis import RedisBackend

    url = settings.redis_url
    if url is None:
        raise ConfigurationError("no Redis URL given (--redis)")
    namespace = f"isolation-report-{os.urandom(6).hex()}"
    backend_a = RedisBackend(url, keys=[_KEY], namespace=namespace)
    waits_b = SettlingBackend(RedisBackend(url, keys=[_KEY], namespace=namespace))
    backends: list[Any] = [backend_a, waits_b]
    routers: list[Any] = []
    try:
        for backend in backends:
            routers.append(make(backend=backend, **options))
        barrier = await routers[1].connect(UserContext.new(BARRIER[1], tenant_id=BARRIER[0]))
        yield RouterPair(routers[0], routers[1], waits_b, barrier)
    finally:
        for router in routers:
            await router.aclose()
        for backend in backends[len(routers) :]:
            await backend.aclose()


class SettlingBackend:
    """A backend seen through its public surface, counting its receive-side ``BLOCK`` waits.

    It passes every :class:`~isolation.events.backends.EventBackend` call to
    ``inner`` and wraps the router's :class:`~isolation.events.backends.Deliver`
    given to :meth:`attach`: an ``offer()`` that returns an awaitable (some
    ``BLOCK`` connection is full) is a *pending* wait until that awaitable ends;
    one that ends in :class:`~isolation.QueueFullError` owes a gap until the
    backend queues it (``gap(reason="overflow")``). :meth:`settled` waits until
    neither is left. ``RedisBackend`` is final, so this wraps rather than subclasses;
    what is not the protocol's (``namespace``, ``stats()``, ...) is ``inner``'s.
    """

    def __init__(self, inner: RedisBackend) -> None:
        self.inner = inner
        self.pending = 0
        self.owed_gaps = 0
        self._idle: anyio.Event | None = None

    @property
    def shared(self) -> bool:
        return self.inner.shared

    def attach(self, deliver: Deliver) -> None:
        self.inner.attach(_CountingDeliver(deliver, self))

    async def publish(self, envelope: Envelope) -> PublishResult:
        return await self.inner.publish(envelope)

    def watch(self, principal: Principal) -> Awaitable[None] | None:
        return self.inner.watch(principal)

    def unwatch(self, principal: Principal) -> None:
        self.inner.unwatch(principal)

    async def claim_ticket(self, token: str, *, expires_at: float) -> bool:
        return await self.inner.claim_ticket(token, expires_at=expires_at)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __getattr__(self, name: str) -> Any:
        """The rest of the backend's surface (``namespace``, ``channel``, ``stats``) is inner's."""
        if name == "inner":  # not set yet: no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def busy(self) -> bool:
        """Whether a receive-side wait is pending or a gap it owes is not queued yet."""
        return bool(self.pending or self.owed_gaps)

    def _changed(self) -> None:
        if not self.busy() and self._idle is not None:
            self._idle.set()

    async def settled(self) -> None:
        """Wait until every receive-side ``BLOCK`` wait ended and its gap (if any) is queued.

        Each wait ends when the event is admitted, or dropped past the router's
        ``publish_timeout`` with a gap queued. Awaited, not polled.
        """
        while self.busy():
            self._idle = anyio.Event()
            await self._idle.wait()


class _CountingDeliver:
    """The router's ``Deliver``, counting the waits its ``offer()`` hands out."""

    def __init__(self, inner: Deliver, counts: SettlingBackend) -> None:
        self._inner = inner
        self._counts = counts

    def __call__(self, envelope: Envelope) -> Awaitable[PublishResult]:
        return self._inner(envelope)

    def offer(self, envelope: Envelope) -> PublishResult | Awaitable[PublishResult]:
        result = self._inner.offer(envelope)
        if isinstance(result, PublishResult):
            return result
        self._counts.pending += 1
        return self._tracked(result)

    async def _tracked(self, waiting: Awaitable[PublishResult]) -> PublishResult:
        counts = self._counts
        try:
            return await waiting
        except QueueFullError:
            counts.owed_gaps += 1  # before the wait counts as ended: never idle in between
            raise
        finally:
            counts.pending -= 1
            counts._changed()

    def gap(
        self, principal: Principal, *, reason: str, connections: Sequence[Any] | None = None
    ) -> int:
        queued = self._inner.gap(principal, reason=reason, connections=connections)
        counts = self._counts
        if reason == "overflow" and counts.owed_gaps:
            counts.owed_gaps -= 1
            counts._changed()
        return queued


class WrappedRouter:
    """A mutant router's plumbing: publish, stats and aclose go to the library's router."""

    inner: Any

    async def publish(self, to: Principal | UserContext, payload: Any) -> Any:
        return await self.inner.publish(to, payload)

    def stats(self) -> Any:
        return self.inner.stats()

    async def aclose(self) -> None:
        await self.inner.aclose()


def register_redis_twin(
    registry: ModeRegistry,
    mode_id: int,
    memory_name: str,
    run: Any,
    description: str,
    **subjects: Any,
) -> None:
    """Register the memory check ``memory_name`` of ``mode_id`` across two routers on one Redis.

    The twin is named ``<memory_name>-redis`` and, unless ``library=`` or ``mutant=``
    are given, builds the memory check's subjects (registered before it, by name).
    """
    memory = next(c for c in registry.mode(mode_id).checks if c.name == memory_name)
    registry.register(
        mode_id,
        Check(
            name=f"{memory.name}-redis",
            backend=Backend.REDIS,
            run=run,
            library=subjects.get("library", memory.library),
            mutant=subjects.get("mutant", memory.mutant),
            requires=("redis",),
            description=description,
        ),
    )
