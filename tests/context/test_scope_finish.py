"""Scope.on_finish / Scope.finish: ending a scope's unit of work early, where a failure still counts."""

from __future__ import annotations

import anyio.lowlevel
import pytest

from isolation import UsageError, UserContext, scope

pytestmark = pytest.mark.anyio


def alice() -> UserContext:
    return UserContext.new("alice")


async def test_hooks_run_last_first_once_and_the_scope_stays_open() -> None:
    """finish() runs sync and async hooks, last registered first, each once; the scope goes on."""
    order: list[str] = []

    async def async_hook() -> None:
        await anyio.lowlevel.checkpoint()
        order.append("async")

    async with scope(alice()) as s:
        s.on_finish(lambda: order.append("sync"))
        s.on_finish(async_hook)
        await s.finish()
        assert order == ["async", "sync"]
        assert s.active
        await s.finish()  # nothing left to run
        s.on_finish(lambda: order.append("later"))
        await s.finish()
    assert order == ["async", "sync", "later"]


async def test_unfinished_hooks_do_not_run_at_exit() -> None:
    """A hook is an early step only: without finish() the scope's finalizers end the work."""
    ran: list[str] = []
    async with scope(alice()) as s:
        s.on_finish(lambda: ran.append("hook"))
        s.on_close(lambda exc: ran.append("finalizer"))
    assert ran == ["finalizer"]


async def test_every_hook_runs_and_the_first_failure_is_raised() -> None:
    """A failing hook does not stop the others; later failures are notes of the first."""
    ran: list[str] = []

    def fails(name: str) -> None:
        ran.append(name)
        raise KeyError(name)

    async with scope(alice()) as s:
        s.on_finish(lambda: fails("first registered"))
        s.on_finish(lambda: ran.append("fine"))
        s.on_finish(lambda: fails("last registered"))
        with pytest.raises(KeyError, match="last registered") as info:
            await s.finish()
    assert ran == ["last registered", "fine", "first registered"]
    assert any("first registered" in note for note in info.value.__notes__)


async def test_reentered_scope_shares_the_hooks() -> None:
    """The same context re-entered is the enclosing scope: one list of hooks."""
    ran: list[str] = []
    ctx = alice()
    async with scope(ctx) as outer:
        inner = scope(ctx)
        async with inner:
            inner.on_finish(lambda: ran.append("inner"))
        await outer.finish()
    assert ran == ["inner"]


async def test_refused_outside_an_active_scope() -> None:
    """on_finish() and finish() need an active scope; on_finish() a callable."""
    s = scope(alice())
    with pytest.raises(UsageError, match="not active"):
        s.on_finish(lambda: None)
    with pytest.raises(UsageError, match="not active"):
        await s.finish()
    async with s:
        with pytest.raises(UsageError, match="callable"):
            s.on_finish("commit")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="not active"):
        await s.finish()
