"""Which ways of starting work carry the context: one test per row of the docs' table.

Rows that do not carry it show the work running with *no* user (fail closed:
``current_context()`` raises ``NoContextError``), never with a wrong one.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import anyio
import anyio.to_thread
import pytest

import isolation
from isolation import ContextThreadPoolExecutor, UserContext, current_context_or_none

pytestmark = pytest.mark.anyio


def _who() -> str | None:
    ctx = current_context_or_none()
    return None if ctx is None else ctx.user_id


@pytest.fixture
def alice() -> UserContext:
    return UserContext.new("alice", tenant_id="acme")


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as executor:
        yield executor


@pytest.fixture
def context_pool() -> Iterator[ContextThreadPoolExecutor]:
    with ContextThreadPoolExecutor(2) as executor:
        yield executor


class TestCarries:
    """Rows where the work runs as the user who started it."""

    async def test_anyio_task_group(self, alice: UserContext) -> None:
        """Tasks started in an anyio task group see the scope (asyncio and trio)."""
        seen: list[str | None] = []

        async def child() -> None:
            seen.append(_who())

        async with isolation.scope(alice), anyio.create_task_group() as tg:
            tg.start_soon(child)
        assert seen == ["alice"]

    async def test_anyio_to_thread(self, alice: UserContext) -> None:
        """anyio.to_thread.run_sync copies the context into the worker thread."""
        async with isolation.scope(alice):
            assert await anyio.to_thread.run_sync(_who) == "alice"

    async def test_isolation_to_thread(self, alice: UserContext) -> None:
        """isolation.to_thread runs the call as the caller, on asyncio and trio."""
        async with isolation.scope(alice):
            assert await isolation.to_thread(_who) == "alice"

    def test_context_thread_pool_executor(
        self, alice: UserContext, context_pool: ContextThreadPoolExecutor
    ) -> None:
        """ContextThreadPoolExecutor.submit copies the submitter's context."""
        with isolation.scope(alice):
            assert context_pool.submit(_who).result(timeout=30) == "alice"

    def test_context_thread_pool_executor_each_submitter(
        self, context_pool: ContextThreadPoolExecutor
    ) -> None:
        """Two users submitting to one pool each get their own user in the worker."""
        results = {}
        for name in ("alice", "bob"):
            with isolation.scope(UserContext.new(name)):
                results[name] = context_pool.submit(_who).result(timeout=30)
        assert results == {"alice": "alice", "bob": "bob"}

    def test_context_thread_pool_executor_after_scope_end_fails_closed(self) -> None:
        """Work submitted from a scope but run after it ended gets ScopeEndedError."""
        gate = threading.Event()
        with ContextThreadPoolExecutor(1) as executor:
            executor.submit(gate.wait, 30)  # occupy the only worker
            with isolation.scope(UserContext.new("alice")):
                late = executor.submit(_who)
            gate.set()
            with pytest.raises(isolation.ScopeEndedError):
                late.result(timeout=30)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
class TestAsyncioRows:
    """Rows specific to asyncio."""

    async def test_asyncio_task_group(self, alice: UserContext) -> None:
        """asyncio.TaskGroup children see the scope."""
        async with isolation.scope(alice), asyncio.TaskGroup() as tg:
            task = tg.create_task(asyncio.to_thread(lambda: None))
            child = tg.create_task(self._who_async())
        assert task.done()
        assert child.result() == "alice"

    @staticmethod
    async def _who_async() -> str | None:
        return _who()

    async def test_create_task(self, alice: UserContext) -> None:
        """asyncio.create_task copies the context at creation."""
        async with isolation.scope(alice):
            assert await asyncio.create_task(self._who_async()) == "alice"

    async def test_create_task_escaping_the_scope_fails_closed(self, alice: UserContext) -> None:
        """A task still running after its scope ended gets ScopeEndedError, not the user."""
        release = asyncio.Event()

        async def detached() -> str | None:
            await release.wait()
            return _who()

        async with isolation.scope(alice):
            task = asyncio.create_task(detached())
        release.set()
        with pytest.raises(isolation.ScopeEndedError):
            await task

    async def test_asyncio_to_thread(self, alice: UserContext) -> None:
        """asyncio.to_thread copies the context."""
        async with isolation.scope(alice):
            assert await asyncio.to_thread(_who) == "alice"

    async def test_run_in_executor_default_does_not_carry(self, alice: UserContext) -> None:
        """loop.run_in_executor(None, ...) runs with no user (python/cpython#78195)."""
        async with isolation.scope(alice):
            assert await asyncio.get_running_loop().run_in_executor(None, _who) is None

    async def test_run_in_executor_default_with_context_executor(self, alice: UserContext) -> None:
        """With a ContextThreadPoolExecutor as the default executor, it carries the user."""
        loop = asyncio.get_running_loop()
        executor = ContextThreadPoolExecutor(2)
        loop.set_default_executor(executor)
        async with isolation.scope(alice):
            assert await loop.run_in_executor(None, _who) == "alice"

    async def test_run_in_executor_custom_does_not_carry(
        self, alice: UserContext, pool: ThreadPoolExecutor
    ) -> None:
        """loop.run_in_executor on a bare ThreadPoolExecutor runs with no user."""
        async with isolation.scope(alice):
            assert await asyncio.get_running_loop().run_in_executor(pool, _who) is None

    async def test_run_in_executor_custom_context_executor(
        self, alice: UserContext, context_pool: ContextThreadPoolExecutor
    ) -> None:
        """loop.run_in_executor on a ContextThreadPoolExecutor carries the user."""
        async with isolation.scope(alice):
            assert await asyncio.get_running_loop().run_in_executor(context_pool, _who) == "alice"


@pytest.mark.parametrize("anyio_backend", ["trio"])
class TestTrioRows:
    """Rows specific to trio."""

    async def test_trio_nursery_and_to_thread(self, alice: UserContext) -> None:
        """trio's nursery children and trio.to_thread.run_sync see the scope."""
        import trio

        seen: list[str | None] = []

        async def child() -> None:
            seen.append(await trio.to_thread.run_sync(_who))

        async with isolation.scope(alice):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(child)
        assert seen == ["alice"]


class TestDoesNotCarry:
    """Rows where the work runs with no user at all."""

    def test_bare_thread_pool_executor(self, alice: UserContext, pool: ThreadPoolExecutor) -> None:
        """A bare ThreadPoolExecutor.submit runs with no user."""
        with isolation.scope(alice):
            assert pool.submit(_who).result(timeout=30) is None

    @pytest.mark.skipif(
        bool(getattr(sys.flags, "thread_inherit_context", 0)),
        reason="this interpreter copies the context into new threads",
    )
    def test_threading_thread(self, alice: UserContext) -> None:
        """threading.Thread starts with an empty context: no user."""
        seen: list[str | None] = []
        with isolation.scope(alice):
            thread = threading.Thread(target=lambda: seen.append(_who()))
            thread.start()
            thread.join(timeout=30)
        assert seen == [None]

    def test_threading_thread_with_copied_context(self, alice: UserContext) -> None:
        """A thread given contextvars.copy_context().run carries the user."""
        seen: list[str | None] = []
        with isolation.scope(alice):
            context = contextvars.copy_context()
            thread = threading.Thread(target=context.run, args=(lambda: seen.append(_who()),))
            thread.start()
            thread.join(timeout=30)
        assert seen == ["alice"]
