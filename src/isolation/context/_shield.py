"""Run an async finalizer shielded, paying for the bound only when it suspends.

Every async finalizer runs inside a shielded anyio cancel scope entered before
its first step, so whatever it does — take a lock, open cancel scopes of its
own, read its effective deadline — it does on a stack where outside
cancellation cannot reach it. What is lazy is the bound: most finalizers
never suspend (a registry teardown closing a plain object, a sync close
behind an ``async def``), so the coroutine is stepped by hand once inside the
shield, and only if it suspends is the scope given its deadline (a timer on
the event loop, about half of the scope's cost on asyncio). A step that never
suspends cannot overrun, and nothing can cancel it.

An earlier version stepped the finalizer *before* raising the shield. anyio's
``checkpoint_if_cancelled()`` (the first thing ``Lock``, ``Semaphore`` and
``Condition`` do) walks the stack without suspending, found the cancelled
outer scope there and spun until the bound; so the shield comes first —
where there is something to shield from. On asyncio, a task that no anyio
cancel scope encloses cannot be cancelled by one (anyio's shield never
stopped a native ``Task.cancel()``), so there the finalizer is stepped with
no shield at all; if it suspends, a bounded shield is raised then, at the
root of the task's empty scope stack, or, if the finalizer is suspended
inside cancel scopes of its own, the bound is an ``asyncio.timeout`` (a
shield cannot be slid beneath scopes already open). Knowing whether a scope
encloses the task means reading anyio's per-task state: a private name,
looked up once and checked; without it every finalizer takes the shield.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Awaitable, Coroutine, Generator
from types import CoroutineType
from typing import Any

import anyio

try:  # anyio uses sniffio to tell the backends apart when it is installed
    import sniffio
except ImportError:  # pragma: no cover - without it, anyio assumes asyncio too
    sniffio = None  # type: ignore[assignment]

__all__ = ["start_shielded"]

# The backend's CancelScope class, by library name: anyio.CancelScope(...)
# looks the backend up on every call, a third of the scope's cost.
_scope_classes: dict[str, type[anyio.CancelScope]] = {}


def _library() -> str:
    """sniffio.current_async_library(), without its slow sniffing for asyncio."""
    if sniffio is None:  # pragma: no cover - anyio then assumes asyncio too
        return "asyncio"
    name = sniffio.thread_local.name or sniffio.current_async_library_cvar.get()
    if name is None and asyncio._get_running_loop() is not None:
        return "asyncio"
    return name or sniffio.current_async_library()  # raises the usual error outside a loop


def _shield() -> anyio.CancelScope:
    library = _library()
    cls = _scope_classes.get(library)
    if cls is None:
        cls = _scope_classes[library] = type(anyio.CancelScope())
    return cls(shield=True)


def _load_task_states() -> Any:
    """anyio's asyncio per-task state table, or None if it is not as expected."""
    global _task_states
    table: Any
    try:
        from anyio._backends._asyncio import TaskState
        from anyio._backends._asyncio import _task_states as table
    except ImportError:  # pragma: no cover - a future anyio: every finalizer takes the shield
        table = None
    else:
        if "cancel_scope" not in getattr(TaskState, "__slots__", ()):  # pragma: no cover
            table = None
    _task_states = table
    return table


_UNLOADED: Any = object()
# Loaded by the first async finalizer: anyio's asyncio backend takes ~19 ms to import.
_task_states: Any = _UNLOADED


def _scope_of(task: object) -> object:
    """The innermost anyio cancel scope of an asyncio ``task`` (None: none is open)."""
    state = _task_states.get(task)
    return None if state is None else state.cancel_scope


def _unenclosed() -> asyncio.Task[Any] | None:
    """The running asyncio task if no anyio cancel scope encloses it, else None."""
    states = _task_states if _task_states is not _UNLOADED else _load_task_states()
    if states is None or (sniffio is not None and sniffio.thread_local.name is not None):
        return None  # pragma: no cover - anyio's internals changed, or trio said so
    if asyncio._get_running_loop() is None:
        return None  # another backend (trio)
    task = asyncio.current_task()
    if task is None:  # pragma: no cover - a loop callback, not a task
        return None
    state = states.get(task)
    return task if state is None or state.cancel_scope is None else None


def start_shielded(awaitable: Awaitable[Any], limit: float) -> Awaitable[bool] | None:
    """Start ``awaitable`` shielded from outside cancellation, for at most ``limit`` s.

    Returns None if it already finished (it never suspended), else an awaitable
    of the rest that returns whether it overran (and was cancelled). Its own
    exceptions propagate, from here or from the rest.
    """
    if type(awaitable) is not CoroutineType:
        return _shield_first(awaitable, limit)
    coro: Coroutine[Any, Any, Any] = awaitable
    task = _unenclosed()
    if task is not None:  # nothing to shield from, unless it suspends
        try:
            first = coro.send(None)
        except StopIteration:
            return None
        if _scope_of(task) is not None:  # suspended inside scopes of its own
            return _native_bound(coro, first, limit)
        shield = _shield()
        shield.__enter__()  # the root of an empty stack: everything after nests inside
        shield.deadline = anyio.current_time() + limit
        return _finish(coro, first, shield)
    shield = _shield()
    shield.__enter__()
    try:
        first = coro.send(None)
    except StopIteration:
        shield.__exit__(None, None, None)
        return None  # finished without suspending: it could not overrun
    except BaseException as error:
        shield.__exit__(type(error), error, error.__traceback__)  # no deadline: never swallows
        raise
    shield.deadline = anyio.current_time() + limit
    return _finish(coro, first, shield)


async def _shield_first(awaitable: Awaitable[Any], limit: float) -> bool:
    with anyio.CancelScope(shield=True, deadline=anyio.current_time() + limit) as shield:
        await awaitable
    return shield.cancelled_caught


async def _native_bound(coro: Coroutine[Any, Any, Any], value: Any, limit: float) -> bool:
    """Drive the rest of ``coro`` (suspended on ``value``) for at most ``limit`` s."""
    timeout = asyncio.timeout(limit)
    try:
        async with timeout:
            await _drive(coro, value)
    except TimeoutError:
        if timeout.expired():
            return True
        raise
    return False


@types.coroutine
def _drive(coro: Coroutine[Any, Any, Any], value: Any) -> Generator[Any, Any, None]:
    """Drive the rest of ``coro``, suspended on ``value``, passing its suspensions up."""
    while True:
        try:
            sent = yield value
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as thrown:
            try:
                value = coro.throw(thrown)
            except StopIteration:
                return
        else:
            try:
                value = coro.send(sent)
            except StopIteration:
                return


@types.coroutine
def _finish(
    coro: Coroutine[Any, Any, Any], value: Any, shield: anyio.CancelScope
) -> Generator[Any, Any, bool]:
    """Drive the rest of ``coro`` (suspended on ``value``) inside ``shield``, then leave it."""
    error: BaseException | None = None
    try:
        yield from _drive(coro, value)
    except BaseException as raised:  # GeneratorExit too: the shield must come off
        error = raised
    if error is None:
        shield.__exit__(None, None, None)
    elif shield.__exit__(type(error), error, error.__traceback__):
        error = None  # the bound's own cancellation, swallowed by its scope
    if error is not None:
        raise error
    return shield.cancelled_caught
