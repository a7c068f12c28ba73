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
outer scope there and spun until the bound; so the shield comes first.

A later version skipped the shield in asyncio tasks that no anyio cancel
scope encloses (nothing there could cancel the step), raising it only if the
finalizer suspended. Where the finalizer first suspended inside a cancel
scope of its own, no shield could be put beneath that scope with anyio's
public API, and the one-shot ``asyncio.timeout`` used instead was not a bound
(cleanup awaits after its cancellation ran unbounded, and it pierced the
finalizer's own shields). tests/context/test_shield.py keeps the cases.
"""

from __future__ import annotations

import types
from collections.abc import Awaitable, Coroutine, Generator
from types import CoroutineType
from typing import Any

import anyio

from isolation._compat import async_library

__all__ = ["start_shielded"]

# The backend's CancelScope class, by library name: anyio.CancelScope(...)
# looks the backend up on every call, a third of the scope's cost.
_scope_classes: dict[str, type[anyio.CancelScope]] = {}


def _shield() -> anyio.CancelScope:
    library = async_library()
    cls = _scope_classes.get(library)
    if cls is None:
        cls = _scope_classes[library] = type(anyio.CancelScope())
    return cls(shield=True)


def start_shielded(awaitable: Awaitable[Any], limit: float) -> Awaitable[bool] | None:
    """Start ``awaitable`` shielded from outside cancellation, for at most ``limit`` s.

    Returns None if it already finished (it never suspended), else an awaitable
    of the rest that returns whether it overran (and was cancelled). Its own
    exceptions propagate, from here or from the rest.
    """
    if type(awaitable) is not CoroutineType:
        return _shield_first(awaitable, limit)
    coro: Coroutine[Any, Any, Any] = awaitable
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


@types.coroutine
def _finish(
    coro: Coroutine[Any, Any, Any], value: Any, shield: anyio.CancelScope
) -> Generator[Any, Any, bool]:
    """Drive the rest of ``coro`` (suspended on ``value``) inside ``shield``, then leave it."""
    error: BaseException | None = None
    try:
        while True:
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
    except BaseException as raised:  # GeneratorExit too: the shield must come off
        error = raised
    if error is None:
        shield.__exit__(None, None, None)
    elif shield.__exit__(type(error), error, error.__traceback__):
        error = None  # the bound's own cancellation, swallowed by its scope
    if error is not None:
        raise error
    return shield.cancelled_caught
