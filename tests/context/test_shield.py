"""Async finalizers stay shielded however they suspend (isolation.context._shield).

On asyncio the shield goes up only when a finalizer suspends; these tests
cancel the scope from outside and check the finalizer's awaits still complete
whether it suspends in its own cancel scope, after leaving it, or in nested
ones, and that its cleanup time still bounds it. On trio the same tests run
through the shield-first path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from isolation import UserContext, scope
from isolation.context import _shield

pytestmark = pytest.mark.anyio

Finalizer = Callable[[BaseException | None], Awaitable[None]]


async def _exit_cancelled(finalizer: Finalizer, *, cleanup_timeout: float = 30.0) -> None:
    """Run ``finalizer`` at the exit of a scope whose body was cancelled from outside."""
    with anyio.fail_after(10):
        with anyio.CancelScope() as outer:
            async with scope(UserContext.new("alice"), cleanup_timeout=cleanup_timeout) as s:
                s.on_close(finalizer)
                outer.cancel()
                await anyio.lowlevel.checkpoint()
        assert outer.cancelled_caught


async def test_suspending_inside_its_own_scope() -> None:
    """A finalizer suspending in a cancel scope it opened is still shielded from outside."""
    done: list[str] = []

    async def finalizer(exc: BaseException | None) -> None:
        with anyio.CancelScope():
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
        done.append("done")

    await _exit_cancelled(finalizer)
    assert done == ["done"]


async def test_suspending_after_leaving_its_own_scope() -> None:
    """Suspensions after the finalizer's own scope closed are shielded too."""
    done: list[str] = []

    async def finalizer(exc: BaseException | None) -> None:
        with anyio.CancelScope():
            await anyio.lowlevel.checkpoint()
        done.append("left")
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
        with anyio.move_on_after(30):  # a scope opened again, inside the shield now
            await anyio.lowlevel.checkpoint()
        done.append("done")

    await _exit_cancelled(finalizer)
    assert done == ["left", "done"]


async def test_suspending_in_nested_scopes_then_another() -> None:
    """Nested scopes, then a second top-level scope: every suspension is shielded."""
    done: list[str] = []

    async def finalizer(exc: BaseException | None) -> None:
        with anyio.CancelScope(), anyio.CancelScope():
            await anyio.lowlevel.checkpoint()
        with anyio.CancelScope():  # a new outermost scope of the finalizer's
            await anyio.lowlevel.checkpoint()
        done.append("done")

    await _exit_cancelled(finalizer)
    assert done == ["done"]


async def test_stuck_inside_its_own_scope_is_bounded() -> None:
    """A finalizer stuck in its own scope is abandoned after the cleanup time."""

    async def finalizer(exc: BaseException | None) -> None:
        with anyio.CancelScope():
            await anyio.Event().wait()

    with anyio.fail_after(10):
        with pytest.raises(TimeoutError, match="overran its cleanup time"):
            async with scope(UserContext.new("alice"), cleanup_timeout=0.05) as s:
                s.on_close(finalizer)


async def test_stuck_after_suspending_is_bounded() -> None:
    """A finalizer that suspends, then waits forever, is abandoned after the cleanup time."""

    async def finalizer(exc: BaseException | None) -> None:
        await anyio.lowlevel.checkpoint()
        await anyio.Event().wait()

    with anyio.fail_after(10):
        with pytest.raises(TimeoutError, match="overran its cleanup time"):
            async with scope(UserContext.new("alice"), cleanup_timeout=0.05) as s:
                s.on_close(finalizer)


async def test_failure_after_suspending_is_reported() -> None:
    """An exception raised after a suspension reaches the scope's exit unchanged."""

    async def finalizer(exc: BaseException | None) -> None:
        await anyio.lowlevel.checkpoint()
        raise ValueError("closing failed")

    with anyio.fail_after(10):
        with pytest.raises(ValueError, match="closing failed"):
            async with scope(UserContext.new("alice")) as s:
                s.on_close(finalizer)


async def test_failure_before_suspending_is_reported() -> None:
    """An exception raised before any suspension is reported likewise."""

    async def finalizer(exc: BaseException | None) -> None:
        raise ValueError("closing failed at once")

    with pytest.raises(ValueError, match="closing failed at once"):
        async with scope(UserContext.new("alice")) as s:
            s.on_close(finalizer)


async def test_awaitable_that_is_not_a_coroutine() -> None:
    """Any awaitable a finalizer returns runs shielded (the shield-first path)."""
    done: list[str] = []

    class Closing:
        def __await__(self) -> Generator[Any, None, None]:
            for _ in range(3):
                yield from anyio.lowlevel.checkpoint().__await__()
            done.append("done")

    await _exit_cancelled(lambda exc: Closing())
    assert done == ["done"]


async def test_thrown_exception_reaches_the_finalizer() -> None:
    """A cancellation of the shield's own bound is thrown into the finalizer's await."""
    seen: list[str] = []

    async def finalizer(exc: BaseException | None) -> None:
        await anyio.lowlevel.checkpoint()
        try:
            await anyio.Event().wait()
        except anyio.get_cancelled_exc_class():
            seen.append("cancelled")
            raise

    with anyio.fail_after(10):
        with pytest.raises(TimeoutError):
            async with scope(UserContext.new("alice"), cleanup_timeout=0.05) as s:
                s.on_close(finalizer)
    assert seen == ["cancelled"]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_asyncio_reads_anyios_task_state() -> None:
    """On asyncio the lazy shield is in use: anyio's task state must be readable."""
    assert _shield._task_states is not None
    assert _shield._asyncio_task() is not None
    with anyio.CancelScope() as mine:  # noqa: ASYNC100 - entered only to be seen
        task = _shield._asyncio_task()
        assert task is not None
        assert _shield._innermost(task) is mine


async def test_run_shielded_without_suspending() -> None:
    """A coroutine that finishes at once reports no overrun."""

    async def quick() -> None:
        return None

    assert await _shield.run_shielded(quick(), 1.0) is False
