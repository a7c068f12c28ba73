"""The publish writer is shared by every tenant: it must not run in its first publisher's scope.

Review regression test (fails at be6f85d): ``publish()`` starts the writer task
with ``loop.create_task()``, which copies the caller's context, so the writer
(and its done callback) carry the first publisher's scope for the backend's
lifetime. Then bob's pipeline runs with ``current_context()`` being alice's,
and the writer's log lines are stamped with alice's ids by ``ContextFilter``.
The session manager's watchdog avoids this with ``context=contextvars.Context()``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
import pytest

import isolation
from isolation import Principal, UserContext
from isolation.events import EventRouter
from isolation.events.backends.redis import RedisBackend

pytestmark = pytest.mark.anyio

Make = Callable[..., EventRouter]


async def test_writer_runs_in_no_users_scope(routers: Make) -> None:
    """Alice publishes first, in her (still open) scope; bob's pipeline must not see her."""
    router = routers()
    backend = router.backend
    assert isinstance(backend, RedisBackend)
    seen: list[UserContext | None] = []

    def spy(execution: Awaitable[list[Any]]) -> Awaitable[list[Any]]:
        assert isinstance(execution, Coroutine)
        seen.append(isolation.current_context_or_none())
        return execution

    backend._wrap_batch = spy
    alice_published = anyio.Event()
    bob_done = anyio.Event()

    async def alice() -> None:
        async with isolation.scope(UserContext.new("alice", tenant_id="acme")):
            await router.publish(Principal("acme", "alice"), 1)
            alice_published.set()
            await bob_done.wait()  # a long-lived scope, such as a websocket's

    async def bob() -> None:
        await alice_published.wait()
        async with isolation.scope(UserContext.new("bob", tenant_id="globex")):
            await router.publish(Principal("globex", "bob"), 2)
        bob_done.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(alice)
            tg.start_soon(bob)
    assert len(seen) == 2
    assert seen == [None, None]
