"""Async finalizers stay shielded however they suspend (isolation.context._shield).

The shield is entered before a finalizer's first step and bounded only once
it suspends; these tests cancel the scope from outside and check the
finalizer's awaits still complete whether it suspends in its own cancel scope,
after leaving it, in nested ones, or behind a lock (whose
``checkpoint_if_cancelled()`` looks at the stack before suspending), and that
its cleanup time still bounds it.
"""

from __future__ import annotations

import asyncio
import contextlib
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


async def test_shield_of_the_running_backend() -> None:
    """The cached shield class is the running backend's (asyncio and trio in one process)."""
    shield = _shield._shield()
    assert type(shield) is type(anyio.CancelScope())
    assert shield.shield


async def test_bounded_once_suspended() -> None:
    """Before its first suspension a finalizer's step is unbounded; after it, bounded."""
    seen: list[float] = []

    async def finalizer(exc: BaseException | None) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(anyio.current_effective_deadline() - anyio.current_time())

    async with scope(UserContext.new("alice"), cleanup_timeout=7.0) as s:
        s.on_close(finalizer)
    assert len(seen) == 1
    assert 0 < seen[0] <= 7.0


async def test_start_shielded_without_suspending() -> None:
    """A coroutine that finishes at once leaves nothing to await (and no bound set)."""

    async def quick() -> None:
        return None

    assert _shield.start_shielded(quick(), 1.0) is None  # nothing left to await


async def test_lock_first_at_a_cancelled_exit() -> None:
    """A finalizer that takes an anyio.Lock first still runs when the body was cancelled."""
    lock = anyio.Lock()
    done: list[str] = []

    async def finalizer(exc: BaseException | None) -> None:
        async with lock:
            done.append("locked")

    with anyio.fail_after(10):
        with anyio.CancelScope() as outer:
            async with scope(UserContext.new("alice"), cleanup_timeout=2.0) as s:
                s.on_close(finalizer)
                outer.cancel()
                await anyio.lowlevel.checkpoint()
    assert done == ["locked"]


async def test_lock_after_own_scope_when_cancelled_meanwhile() -> None:
    """Cancelled while in its own scope, a finalizer still takes a lock after leaving it."""
    lock = anyio.Lock()
    inside = anyio.Event()
    proceed = anyio.Event()
    done: list[str] = []

    async def finalizer(exc: BaseException | None) -> None:
        with anyio.CancelScope():
            inside.set()
            await proceed.wait()
        async with lock:
            done.append("locked")

    async def request() -> None:
        async with scope(UserContext.new("alice"), cleanup_timeout=2.0) as s:
            s.on_close(finalizer)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(request)
            await inside.wait()
            tg.cancel_scope.cancel()
            proceed.set()
    assert done == ["locked"]


async def test_generator_exit_leaves_no_scope_behind() -> None:
    """A finalizer raising GeneratorExit after suspending leaves the cancel-scope stack as it was."""

    async def finalizer(exc: BaseException | None) -> None:
        await anyio.lowlevel.checkpoint()
        raise GeneratorExit

    with anyio.fail_after(10):
        with anyio.CancelScope() as outer:
            with pytest.raises(GeneratorExit):
                async with scope(UserContext.new("alice")) as s:
                    s.on_close(finalizer)
            outer.cancel()
            await anyio.lowlevel.checkpoint()
        assert outer.cancelled_caught


# -- the same in a task that no anyio cancel scope encloses ---------------------------
# anyio's pytest runner starts each test in a plain asyncio task, which no scope encloses;
# ``enclosed`` adds one. The hang guards here are asyncio timeouts, not anyio scopes.
# These pin that a finalizer is bounded and shielded the same way in either task: a
# version that skipped the shield where no scope encloses the task (and bounded the rest
# with one asyncio.timeout when the finalizer first suspended in a scope of its own)
# failed the first three.


async def _expect_overrun(finalizer: Finalizer, *, enclosed: bool) -> None:
    """Run ``finalizer`` (bound: 0.05 s) at a scope's exit, inside an anyio scope if
    ``enclosed``; it must be reported as overrunning, within a 10 s hang guard."""
    async with asyncio.timeout(10):
        with pytest.raises(TimeoutError, match="overran its cleanup time"):
            if enclosed:
                with anyio.CancelScope():
                    async with scope(UserContext.new("alice"), cleanup_timeout=0.05) as s:
                        s.on_close(finalizer)
            else:
                async with scope(UserContext.new("alice"), cleanup_timeout=0.05) as s:
                    s.on_close(finalizer)


@pytest.mark.parametrize("enclosed", [False, True])
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_await_after_the_bound_is_bounded_too(anyio_backend: str, enclosed: bool) -> None:
    """The bound is level-triggered: a cleanup await after its cancellation is cancelled too."""
    cleaned: list[str] = []

    async def finalizer(exc: BaseException | None) -> None:
        with anyio.CancelScope():  # its first suspension is inside a scope of its own
            try:
                await anyio.Event().wait()  # the hung operation
            finally:
                cleaned.append("cleanup started")
                await anyio.Event().wait()  # a cleanup that hangs too

    await _expect_overrun(finalizer, enclosed=enclosed)
    assert cleaned == ["cleanup started"]


@pytest.mark.parametrize("enclosed", [False, True])
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_swallowed_bound_is_still_an_overrun(anyio_backend: str, enclosed: bool) -> None:
    """A finalizer that swallows the bound's cancellation is stopped at its next await and reported."""

    async def finalizer(exc: BaseException | None) -> None:
        with anyio.CancelScope(), contextlib.suppress(BaseException):  # a careless library
            await anyio.Event().wait()
        await anyio.Event().wait()

    await _expect_overrun(finalizer, enclosed=enclosed)


@pytest.mark.parametrize("enclosed", [False, True])
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_bound_does_not_pierce_the_finalizers_own_shield(
    anyio_backend: str, enclosed: bool
) -> None:
    """A shielded section of the finalizer's own runs to its end; the overrun is reported after it."""
    bound_fired = anyio.Event()
    done: list[str] = []

    async def watch_the_bound() -> None:
        try:
            await anyio.sleep_forever()
        finally:  # cancelled by the bound: it is outside the shielded section
            bound_fired.set()

    async def finalizer(exc: BaseException | None) -> None:
        with anyio.CancelScope():
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch_the_bound)
                with anyio.CancelScope(shield=True):
                    await bound_fired.wait()  # the bound has fired; this section goes on
                    await anyio.lowlevel.checkpoint()
                    done.append("shielded section done")
        await anyio.lowlevel.checkpoint()
        done.append("after the bound")  # not reached: the bound cancels this checkpoint

    await _expect_overrun(finalizer, enclosed=enclosed)
    assert done == ["shielded section done"]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_finalizers_own_timeout_error_is_its_failure(anyio_backend: str) -> None:
    """A TimeoutError the finalizer raises itself is reported as its failure, not an overrun."""

    async def finalizer(exc: BaseException | None) -> None:
        with anyio.CancelScope():
            await anyio.lowlevel.checkpoint()
            raise TimeoutError("the pool timed out")

    async with asyncio.timeout(10):
        with pytest.raises(TimeoutError, match="the pool timed out"):
            async with scope(UserContext.new("alice"), cleanup_timeout=30) as s:
                s.on_close(finalizer)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_native_cancel_reaches_a_suspended_finalizer(anyio_backend: str) -> None:
    """anyio's shield does not stop a native Task.cancel(): it propagates, and is no overrun."""
    inside = asyncio.Event()

    async def finalizer(exc: BaseException | None) -> None:
        with anyio.CancelScope():
            inside.set()
            await asyncio.Event().wait()

    async def request() -> None:
        async with scope(UserContext.new("alice"), cleanup_timeout=30) as s:
            s.on_close(finalizer)

    task = asyncio.create_task(request())
    async with asyncio.timeout(10):
        await inside.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
