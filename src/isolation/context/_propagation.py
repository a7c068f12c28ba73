"""Carry the bound context into threads: ``to_thread`` and ``ContextThreadPoolExecutor``.

``loop.run_in_executor`` and a bare :class:`~concurrent.futures.ThreadPoolExecutor`
do not copy context variables (python/cpython#78195), so work they start runs
with no user, or with whatever the worker thread last had. These helpers copy
the submitter's context at submit time, so the work runs as the submitter.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

import anyio.to_thread

__all__ = ["ContextThreadPoolExecutor", "to_thread"]

P = ParamSpec("P")
T = TypeVar("T")


async def to_thread(fn: Callable[..., T], /, *args: object) -> T:
    """Run ``fn(*args)`` in a worker thread, as the current user; await its result.

    A thin name over :func:`anyio.to_thread.run_sync`, which copies the context,
    so that the call reads the same scope as the caller, on asyncio and trio.
    """
    return await anyio.to_thread.run_sync(fn, *args)


class ContextThreadPoolExecutor(ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` whose ``submit`` runs each call in a copy of the caller's context.

    ``loop.set_default_executor(ContextThreadPoolExecutor())`` makes
    ``loop.run_in_executor(None, fn)`` carry the context too. Each call gets its
    own copy, so work submitted by two users never shares a context, and a
    call submitted from an ended scope fails closed with ``ScopeEndedError``.
    """

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        context = contextvars.copy_context()
        return super().submit(context.run, fn, *args, **kwargs)  # type: ignore[arg-type]


ContextThreadPoolExecutor.__module__ = "isolation"
