"""Park a connection's consumer until an event arrives: the one backend-native module.

anyio's primitives (``anyio.Event``, memory object streams) add a layer per
wait that the router's fan-out cannot afford (streams reach 0.28x of raw
``asyncio.Queue`` fan-out here), so parking uses what each event loop offers
natively: an ``asyncio`` future, or ``trio.lowlevel.wait_task_rescheduled``.
Both are cancellable by anyio cancel scopes, and a wake-up only *signals*:
the event stays in the connection's queue until the woken consumer takes it,
so a cancelled wait loses nothing.

The contract with the connection (``Waitable``): ``park(conn, timeout)`` sets
``conn._waiter`` to a handle while the consumer is parked and clears it when
it returns, however it returns; whoever wants to wake it takes the handle,
sets ``conn._waiter = None`` and calls ``wake(handle)``, at most once per handle.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from isolation._errors import UnsupportedBackendError

__all__ = ["Park", "Waitable", "Wake", "current_backend", "for_backend"]


class Waitable(Protocol):
    """What a parker needs of a connection: a slot for the wake-up handle."""

    _waiter: Any


Park = Callable[[Waitable, "float | None"], Awaitable[None]]
Wake = Callable[[Any], None]


def current_backend() -> str:
    """Return ``"asyncio"`` or ``"trio"``: the event loop running this task."""
    sniffio = sys.modules.get("sniffio")
    if sniffio is None:
        try:
            import sniffio
        except ImportError:  # pragma: no cover - trio brings it
            sniffio = None
    if sniffio is not None:
        try:
            return str(sniffio.current_async_library())
        except sniffio.AsyncLibraryNotFoundError:
            pass
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return "asyncio"
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass
        else:
            return "trio"
    raise UnsupportedBackendError(
        "the event router needs a running asyncio or trio event loop",
        hint="Call it from async code under asyncio or trio (anyio runs both)",
    )


# -- asyncio -------------------------------------------------------------------


async def _park_asyncio(conn: Waitable, timeout: float | None) -> None:  # noqa: ASYNC109
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    conn._waiter = future
    handle = None if timeout is None else loop.call_later(timeout, _wake_asyncio, future)
    try:
        await future
    finally:
        if conn._waiter is future:
            conn._waiter = None
        if handle is not None:
            handle.cancel()


def _wake_asyncio(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# -- trio ------------------------------------------------------------------------


async def _park_trio(conn: Waitable, timeout: float | None) -> None:  # noqa: ASYNC109
    import trio

    task = trio.lowlevel.current_task()

    def abort(raise_cancel: object) -> trio.lowlevel.Abort:
        if conn._waiter is task:
            conn._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    if timeout is None:
        conn._waiter = task
        await trio.lowlevel.wait_task_rescheduled(abort)
        return
    with trio.move_on_after(timeout):
        conn._waiter = task
        await trio.lowlevel.wait_task_rescheduled(abort)


def _wake_trio(task: Any) -> None:
    import trio

    trio.lowlevel.reschedule(task)


def for_backend(name: str) -> tuple[Park, Wake]:
    """Return the ``(park, wake)`` pair for the event loop ``name``."""
    if name == "asyncio":
        return _park_asyncio, _wake_asyncio
    if name == "trio":
        return _park_trio, _wake_trio
    raise UnsupportedBackendError(
        f"the event router runs on asyncio and trio, not {name!r}",
        hint="Run it under asyncio or trio (anyio runs both)",
    )
