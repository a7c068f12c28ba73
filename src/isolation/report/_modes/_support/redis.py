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

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Final

import anyio

from isolation._errors import ConfigurationError, ConnectionClosedError
from isolation.context._model import Principal, UserContext
from isolation.report._modes._support.events import principal_of
from isolation.report._registry import Backend, Check, ModeRegistry, Settings

if TYPE_CHECKING:
    from isolation.events.backends.redis import RedisBackend

__all__ = [
    "BARRIER",
    "HANG_GUARD",
    "RouterPair",
    "WrappedRouter",
    "receive_side_settled",
    "register_redis_twin",
    "two_routers",
]

BARRIER: Final = Principal("isolation-report", "barrier")
"""The principal of B's barrier connection (no scenario publishes to it)."""
HANG_GUARD: Final = 30.0
"""Seconds a wait may take before the check reports it as a violation (never a pacing)."""
_KEY: Final = b"isolation-report-redis-envelopes!"  # a throwaway key for the report's namespaces


class RouterPair:
    """Routers ``a`` and ``b`` on one Redis namespace, with B's backend and barrier."""

    __slots__ = ("_barrier", "_marks", "a", "b", "backend_b")

    def __init__(self, a: Any, b: Any, backend_b: RedisBackend, barrier: Any) -> None:
        self.a = a
        self.b = b
        self.backend_b = backend_b
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

    Raises:
        ConfigurationError: ``settings`` has no Redis URL.
    """
    from isolation.events.backends.redis import RedisBackend

    url = settings.redis_url
    if url is None:
        raise ConfigurationError("no Redis URL given (--redis)")
    namespace = f"isolation-report-{os.urandom(6).hex()}"
    backends = [RedisBackend(url, keys=[_KEY], namespace=namespace) for _ in range(2)]
    routers: list[Any] = []
    try:
        for backend in backends:
            routers.append(make(backend=backend, **options))
        barrier = await routers[1].connect(UserContext.new(BARRIER[1], tenant_id=BARRIER[0]))
        yield RouterPair(routers[0], routers[1], backends[1], barrier)
    finally:
        for router in routers:
            await router.aclose()
        for backend in backends[len(routers) :]:
            await backend.aclose()


async def receive_side_settled(backend: RedisBackend) -> None:
    """Wait until every receive-side ``BLOCK`` wait ``backend`` started has ended.

    A full ``BLOCK`` connection makes the backend wait for room in a task of its
    own (``RedisBackend._tasks``); each ends when the event is admitted, or
    dropped past the router's ``publish_timeout``, with a gap queued. Awaited,
    not polled.
    """
    while backend._tasks:
        await asyncio.gather(*tuple(backend._tasks), return_exceptions=True)


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
