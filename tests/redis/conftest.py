"""Fixtures of the Redis backend's tests: asyncio only, real Redis, a Redis of our own.

``redis_url`` (from the top conftest) is the shared server; each test uses a
namespace of its own, so tests and engineers never see each other's channels.
``own_redis`` starts a private ``redis-server`` on a free port of 127.0.0.1,
which a test may kill and restart.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("redis", reason="the Redis backend's tests need the redis extra")

from redis_support import KEY, OwnRedis, free_port, ping

from isolation.events import EventRouter


@pytest.fixture
def anyio_backend() -> str:
    """The Redis backend is asyncio only (redis-py's asyncio client)."""
    return "asyncio"


@pytest.fixture
def live_redis(redis_url: str) -> str:
    """``redis_url``, probed: a URL that was set but does not answer fails the test."""
    if not ping(redis_url):
        pytest.fail(f"ISOLATION_TEST_REDIS_URL is set but Redis does not answer at {redis_url}")
    return redis_url


@pytest.fixture
def namespace() -> str:
    """A namespace of this test only."""
    return f"test-{os.urandom(6).hex()}"


@pytest.fixture
async def routers(live_redis: str, namespace: str) -> AsyncIterator[Callable[..., EventRouter]]:
    """Make routers on Redis backends (same URL and namespace); all closed at teardown."""
    from isolation.events.backends.redis import RedisBackend

    made: list[EventRouter] = []

    def make(
        *,
        url: str | None = None,
        keys: list[bytes] | None = None,
        backend_options: dict[str, Any] | None = None,
        wrap: Callable[[Any], Any] | None = None,
        **options: Any,
    ) -> EventRouter:
        backend = RedisBackend(
            url or live_redis, keys=keys or [KEY], namespace=namespace, **(backend_options or {})
        )
        router = EventRouter(backend=backend if wrap is None else wrap(backend), **options)
        made.append(router)
        return router

    yield make
    for router in made:
        await router.aclose()


@pytest.fixture
def own_redis(tmp_path: Any) -> Iterator[OwnRedis]:
    """A redis-server of this test on a free port (killed at teardown)."""
    if shutil.which("redis-server") is None and not os.path.exists("/usr/bin/redis-server"):
        pytest.skip("redis-server is not installed")
    server = OwnRedis(free_port(), str(tmp_path))
    server.start()
    try:
        yield server
    finally:
        server.kill()
