"""Run an async finalizer shielded, paying for the shield only when it suspends.

A shielded, bounded anyio cancel scope costs about 6 µs on asyncio, more than
the rest of a request scope, and most finalizers never suspend (a registry
teardown that closes a plain object, a sync close behind an ``async def``).
So on asyncio the finalizer's coroutine is stepped by hand once: if it
finishes, the event loop never had the chance to cancel it and no shield was
needed. If it suspends, the shield goes up at that suspension, before the
event loop runs again, so nothing can be delivered to an unshielded finalizer:

* if the finalizer's cancel-scope stack is back where it started, a bounded
  shield scope is entered there and wraps the rest;
* if it suspended inside a cancel scope of its own, a scope entered now
  would sit inside the finalizer's and break its exit order; instead the
  outermost scope the finalizer opened is made shielded and bounded, and the
  choice is made again at every later suspension.

This reads anyio's per-task state on asyncio (``_task_states``, a private
name); wherever it is missing, and on trio, the finalizer runs in a bounded
shield scope entered first, as it always did.
"""

from __future__ import annotations

import asyncio
import sys
import types
from collections.abc import Awaitable, Coroutine, Generator
from types import CoroutineType
from typing import Any

import anyio

try:  # anyio's per-task cancel-scope stack on asyncio (private; checked by the tests)
    from anyio._backends._asyncio import _task_states
except ImportError:  # pragma: no cover - another anyio layout: always shield first
    _task_states = None  # type: ignore[assignment]

__all__ = ["run_shielded", "start_shielded"]


def start_shielded(awaitable: Awaitable[Any], limit: float) -> Awaitable[bool] | None:
    """Start ``awaitable`` shielded from outside cancellation, for at most ``limit`` s.

    Returns None if it already finished (it never suspended), else an awaitable
    of the rest that returns whether it overran (and was cancelled). Its own
    exceptions propagate, from here or from the rest.
    """
    task = _asyncio_task() if type(awaitable) is CoroutineType else None
    if task is None:
        return _shield_first(awaitable, limit)
    coro: Coroutine[Any, Any, Any] = awaitable  # type: ignore[assignment]
    before = _innermost(task)
    try:
        first = coro.send(None)
    except StopIteration:
        return None  # finished without suspending: nothing could have cancelled it
    return _finish(coro, first, task, before, anyio.current_time() + limit)


async def run_shielded(awaitable: Awaitable[Any], limit: float) -> bool:
    """Await ``awaitable`` as :func:`start_shielded` runs it; return whether it overran."""
    rest = start_shielded(awaitable, limit)
    return False if rest is None else await rest


async def _shield_first(awaitable: Awaitable[Any], limit: float) -> bool:
    with anyio.CancelScope(shield=True, deadline=anyio.current_time() + limit) as shield:
        await awaitable
    return shield.cancelled_caught


def _asyncio_task() -> asyncio.Task[Any] | None:
    if _task_states is None:
        return None  # pragma: no cover - see the import above
    try:
        return _current_task()
    except RuntimeError:  # no asyncio loop in this thread: trio
        return None


if sys.version_info >= (3, 12):  # pragma: no cover - CI measures coverage on 3.11
    _current_task = asyncio.current_task
else:
    # asyncio.current_task is a Python function on 3.11; this is its body, inlined.
    _current_tasks: dict[Any, asyncio.Task[Any]] = asyncio.tasks._current_tasks  # type: ignore[attr-defined]

    def _current_task() -> asyncio.Task[Any] | None:
        return _current_tasks.get(asyncio.get_running_loop())


def _innermost(task: asyncio.Task[Any]) -> Any:
    assert _task_states is not None
    state = _task_states.get(task)
    return None if state is None else state.cancel_scope


def _outermost_opened(current: Any, before: Any) -> Any:
    """The outermost scope entered since ``before`` was current, or None if not found."""
    scope = current
    while scope is not None and scope._parent_scope is not before:
        scope = scope._parent_scope
    return scope


@types.coroutine
def _finish(
    coro: Coroutine[Any, Any, Any],
    value: Any,
    task: asyncio.Task[Any],
    before: Any,
    deadline: float,
) -> Generator[Any, Any, bool]:
    """Drive the rest of ``coro`` (suspended on ``value``), shielded at every suspension."""
    shield: Any = None
    adopted: Any = None  # the finalizer's own scope, shielded for it
    error: BaseException | None = None
    try:
        while True:
            if shield is None:
                current = _innermost(task)
                if current is before:
                    shield = anyio.CancelScope(shield=True, deadline=deadline)
                    shield.__enter__()
                else:
                    outer = _outermost_opened(current, before)
                    if outer is not None and outer is not adopted:
                        outer.shield = True
                        outer.deadline = min(outer.deadline, deadline)
                        adopted = outer
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as thrown:
                value = coro.throw(thrown)
            else:
                value = coro.send(sent)
    except StopIteration:
        pass
    except GeneratorExit:
        raise
    except BaseException as raised:
        error = raised
    if shield is not None:
        if error is None:
            shield.__exit__(None, None, None)
        elif shield.__exit__(type(error), error, error.__traceback__):
            error = None  # the bound's own cancellation, swallowed by its scope
        overran = bool(shield.cancelled_caught)
    else:
        overran = adopted is not None and adopted.cancel_called and anyio.current_time() >= deadline
    if error is not None:
        raise error
    return overran
