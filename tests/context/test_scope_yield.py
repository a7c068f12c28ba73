"""No scope across a yield (issue 16, finding 7).

A generator holding ``with isolation.scope(...)`` across ``yield`` shares its
consumer's ``contextvars.Context``: before the fix the consumer ran as alice
between items, a bare ``ThreadPoolExecutor``'s next job ran as alice, closing
the generator elsewhere raised ``ValueError`` from a foreign token, and an async
generator closed by another task broke that task. Each attack's shape is here,
with real threads and tasks, next to the patterns that must keep working.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import anyio
import pytest

import isolation
from isolation import (
    ContextLocal,
    UsageError,
    UserContext,
    current_context,
    current_context_or_none,
)
from isolation.logging import ContextFilter
from isolation.testing import FakeClock

ALICE = UserContext.new("alice")


def jobs(ctx: UserContext = ALICE) -> Iterator[str]:
    """The background-jobs pattern written as a generator: the scope spans the yields."""
    with isolation.scope(ctx):
        yield current_context().user_id
        yield current_context().user_id


async def ajobs(ctx: UserContext = ALICE) -> AsyncIterator[str]:
    """The same, as an async generator."""
    async with isolation.scope(ctx):
        yield current_context().user_id
        yield current_context().user_id


def _who() -> str:
    """The user this code runs as, or the name of the error that refused to say."""
    try:
        return current_context().user_id
    except isolation.IsolationError as exc:
        return type(exc).__name__


class TestSyncGenerator:
    def test_consumer_between_items_is_refused_not_alice(self) -> None:
        """The consumer between items does not run as alice: reads raise UsageError
        naming the pattern and the fix; inside the generator alice is bound."""
        gen = jobs()
        assert next(gen) == "alice"
        with pytest.raises(UsageError, match="held across a yield") as info:
            current_context()
        assert "Enter the scope in the consumer" in str(info.value)
        with pytest.raises(UsageError):
            current_context_or_none()
        with pytest.raises(UsageError):
            isolation.current_scope()
        with pytest.raises(UsageError):
            ContextLocal(dict).get()
        assert next(gen) == "alice"
        with pytest.raises(StopIteration):
            next(gen)
        assert current_context_or_none() is None

    def test_log_lines_between_items_not_stamped_with_alice(self) -> None:
        """The logging filter stamps no user between items (it did stamp alice)."""
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "msg", None, None)
        gen = jobs()
        next(gen)
        ContextFilter().filter(record)
        assert record.user_id == "-"
        gen.close()

    def test_consumer_can_open_its_own_scope_between_items(self) -> None:
        """Between items the consumer may enter a scope for another user: it opens as a
        root (not a ContextSwitchError, not a child of alice's)."""
        gen = jobs()
        next(gen)
        with isolation.scope(UserContext.new("bob")) as bob:
            assert current_context().user_id == "bob"
            assert bob.parent is None
        assert next(gen) == "alice"
        gen.close()
        assert current_context_or_none() is None

    def test_closed_in_another_context_raises_typed_error(self) -> None:
        """Closing the generator in another Context raises UsageError, never a
        ValueError from a foreign token; the consumer is back where it was (no user)
        and can open a clean scope."""
        gen = jobs()
        next(gen)
        with pytest.raises(UsageError, match="another context"):
            contextvars.copy_context().run(gen.close)
        assert _who() == "NoContextError"
        with isolation.scope(UserContext.new("carol")):
            assert current_context().user_id == "carol"
        assert current_context_or_none() is None

    def test_closed_elsewhere_restores_the_enclosing_scope(self) -> None:
        """A generator iterated inside the consumer's own scope of the same user, then
        closed elsewhere: the consumer is back in its own scope."""
        with isolation.scope(ALICE) as outer:
            gen = jobs(UserContext.new("alice"))
            next(gen)
            assert _who() == "UsageError"
            with pytest.raises(UsageError):
                contextvars.copy_context().run(gen.close)
            assert isolation.current_scope() is outer

    def test_closed_in_another_thread_raises_typed_error(self) -> None:
        """Closing it from another thread: the same typed error."""
        gen = jobs()
        next(gen)
        with ThreadPoolExecutor(1) as pool:
            with pytest.raises(UsageError, match="held across a yield"):
                pool.submit(gen.close).result(timeout=30)

    def test_closed_under_another_scope_raises_typed_error(self) -> None:
        """The generator's scope ending while the consumer's own scope is bound on top
        is refused, and leaves the consumer's binding alone."""
        gen = jobs()
        next(gen)
        with isolation.scope(UserContext.new("bob")):
            with pytest.raises(UsageError, match="under another scope"):
                gen.close()
            assert current_context().user_id == "bob"


class TestThreadPool:
    def test_later_job_on_the_worker_never_runs_as_alice(self) -> None:
        """On a bare ThreadPoolExecutor worker, a job that left the generator suspended
        does not make a later, unrelated job run as alice; that job can still open its
        own scope; closing the generator on its thread leaves the worker clean."""
        kept: list[Iterator[str]] = []

        def first_job() -> str:
            gen = jobs()
            kept.append(gen)
            return next(gen)

        def unrelated_job() -> str:
            return _who()

        def job_for_dave() -> str:
            with isolation.scope(UserContext.new("dave")):
                return _who()

        with ThreadPoolExecutor(max_workers=1) as pool:
            assert pool.submit(first_job).result(timeout=30) == "alice"
            assert pool.submit(unrelated_job).result(timeout=30) == "UsageError"
            assert pool.submit(job_for_dave).result(timeout=30) == "dave"
            assert pool.submit(unrelated_job).result(timeout=30) == "UsageError"
            pool.submit(kept[0].close).result(timeout=30)
            assert pool.submit(unrelated_job).result(timeout=30) == "NoContextError"


@pytest.mark.anyio
class TestAsyncGenerator:
    async def test_consumer_task_between_items_is_refused(self) -> None:
        """The consuming task, and a task it starts between items, never see alice."""
        gen = ajobs()
        assert await gen.__anext__() == "alice"
        assert _who() == "UsageError"
        seen: list[str] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: _record(seen))
        assert seen == ["UsageError"]
        assert await gen.__anext__() == "alice"
        with pytest.raises(StopAsyncIteration):
            await gen.__anext__()
        assert _who() == "NoContextError"

    @pytest.mark.parametrize("ttl", [None, 60.0])
    async def test_closed_in_another_task(self, ttl: float | None, fake_clock: FakeClock) -> None:
        """An async generator closed by another task raises UsageError there (no
        ValueError), and both tasks can open a new, clean scope afterwards; the
        deadline of the abandoned scope never cancels the consumer."""
        gen = ajobs(UserContext.new("alice", ttl=ttl))
        await gen.__anext__()
        closed = anyio.Event()
        results: list[str] = []

        async def closer() -> None:
            with pytest.raises(UsageError, match="held across a yield"):
                await gen.aclose()
            async with isolation.scope(UserContext.new("carol")):
                results.append(_who())
            closed.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(closer)
            await closed.wait()
        assert results == ["carol"]
        async with isolation.scope(UserContext.new("erin")):
            assert _who() == "erin"
        fake_clock.advance(3600)
        await anyio.lowlevel.checkpoint()  # not cancelled by alice's old deadline
        assert _who() == "NoContextError"


async def _record(seen: list[str]) -> None:
    seen.append(_who())


class TestStillAllowed:
    def test_scope_inside_each_item(self) -> None:
        """The fix the error names: a scope per item, left before yielding."""

        def items() -> Iterator[str]:
            for user in ("alice", "bob"):
                with isolation.scope(UserContext.new(user)):
                    who = _who()
                yield who

        seen = []
        for who in items():
            seen.append((who, _who()))
        assert seen == [("alice", "NoContextError"), ("bob", "NoContextError")]

    def test_context_manager_generators(self) -> None:
        """A @contextmanager that holds a scope for its caller is what it is for."""

        @contextlib.contextmanager
        def as_user(ctx: UserContext) -> Iterator[None]:
            with isolation.scope(ctx):
                yield

        with as_user(ALICE):
            assert _who() == "alice"
        with contextlib.ExitStack() as stack:
            stack.enter_context(as_user(ALICE))
            assert _who() == "alice"
        assert _who() == "NoContextError"

    def test_exit_stack_in_a_generator_is_still_held(self) -> None:
        """An ExitStack does not hide the generator that entered the scope."""

        def via_stack() -> Iterator[None]:
            with contextlib.ExitStack() as stack:
                stack.enter_context(isolation.scope(ALICE))
                yield

        gen = via_stack()
        next(gen)
        assert _who() == "UsageError"
        gen.close()

    def test_fixture(self, isolation_scope: isolation.Scope) -> None:
        """The pytest plugin's fixture holds its scope across a yield for the test."""
        assert current_context() is isolation_scope.context

    @pytest.mark.anyio
    async def test_async_context_manager_and_children(self) -> None:
        """An @asynccontextmanager holds a scope for its caller; inside an async
        generator's scope, child tasks and threads see it while it awaits."""

        @contextlib.asynccontextmanager
        async def as_user(ctx: UserContext) -> AsyncIterator[None]:
            async with isolation.scope(ctx):
                yield

        async with as_user(ALICE):
            assert _who() == "alice"

        async def with_children() -> AsyncIterator[list[str]]:
            async with isolation.scope(ALICE):
                seen: list[str] = []
                started = anyio.Event()

                async def child() -> None:
                    started.set()
                    await anyio.lowlevel.checkpoint()
                    seen.append(_who())

                async with anyio.create_task_group() as tg:
                    tg.start_soon(child)
                    await started.wait()
                seen.append(await isolation.to_thread(_who))
                yield seen

        gen = with_children()
        assert await gen.__anext__() == ["alice", "alice"]
        await gen.aclose()


def test_exit_in_another_context_is_typed() -> None:
    """Any scope exited in another Context than its own raises UsageError, never a
    ValueError from a foreign token, and leaves this context usable."""
    entered = isolation.scope(ALICE)
    contextvars.Context().run(entered.__enter__)
    with pytest.raises(UsageError, match="another context"):
        entered.__exit__(None, None, None)
    assert _who() == "NoContextError"
    with isolation.scope(UserContext.new("bob")):
        assert _who() == "bob"
