"""FM12, corruption in multi-threaded processing: the context travels into threads.

Two checks. ``executor``: the subject makes an executor; 8 submitter threads,
each in its own user's scope, submit 50 operations each to one shared pool of
4 workers, so workers serve every user in turn. Each operation reads the
current user and appends to that user's per-scope list. The property: every
operation saw its submitter, and each user's list holds exactly its 50
entries. ``to-thread``: the subject runs a function in a worker thread from
async code; 8 users x 50 calls at once. Mutants: a bare ``ThreadPoolExecutor``
and ``loop.run_in_executor`` on it, which run the work with no user at all.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import anyio

from isolation.context._local import ContextLocal
from isolation.context._model import UserContext
from isolation.context._propagation import ContextThreadPoolExecutor, to_thread
from isolation.context._scope import Scope, current_context_or_none
from isolation.report._modes._support.registration import add_check
from isolation.report._registry import ModeRegistry, Settings

__all__ = ["register"]

THREADS = 8
OPERATIONS = 50
WORKERS = 4


def _operation(expected: UserContext, log: ContextLocal[list[str]]) -> str | None:
    ctx = current_context_or_none()
    if ctx is None:
        return f"an operation of {expected.user_id} ran with no user"
    if ctx.principal != expected.principal:
        return f"an operation of {expected.user_id} ran as {ctx.user_id}"
    log.get().append(ctx.user_id)
    return None


def check_executor(make_executor: Callable[[int], Executor], settings: Settings) -> list[str]:
    """8 threads x 50 operations through one shared executor: each sees its submitter."""
    log: ContextLocal[list[str]] = ContextLocal(list)
    violations: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(THREADS, timeout=30)
    executor = make_executor(WORKERS)

    def submitter(i: int) -> None:
        ctx = UserContext.new(f"worker-user-{i}", tenant_id="fm12")
        with Scope(ctx):
            start.wait()
            futures = [executor.submit(_operation, ctx, log) for _ in range(OPERATIONS)]
            outcomes = [f.result(timeout=60) for f in futures]
            entries = list(log.get())
        found = [v for v in outcomes if v is not None]
        if len(entries) != OPERATIONS - len(found) or set(entries) - {ctx.user_id}:
            found.append(f"{ctx.user_id}'s counter is {len(entries)}, not {OPERATIONS}")
        with lock:
            violations.extend(found[:3])

    with executor, ThreadPoolExecutor(THREADS) as submitters:
        list(submitters.map(submitter, range(THREADS)))
    return violations


async def check_to_thread(
    run_in_thread: Callable[..., Awaitable[Any]], settings: Settings
) -> list[str]:
    """8 users x 50 calls to a worker thread at once: each call sees its caller."""
    log: ContextLocal[list[str]] = ContextLocal(list)
    violations: list[str] = []

    async def user(i: int) -> None:
        ctx = UserContext.new(f"thread-user-{i}", tenant_id="fm12")
        async with Scope(ctx):
            results: list[str | None] = []

            async def call() -> None:
                results.append(await run_in_thread(_operation, ctx, log))

            async with anyio.create_task_group() as tg:
                for _ in range(OPERATIONS):
                    tg.start_soon(call)
            found = [r for r in results if r is not None]
            if len(log.get()) != OPERATIONS:
                found.append(f"{ctx.user_id}'s counter is {len(log.get())}, not {OPERATIONS}")
            violations.extend(found[:3])

    async with anyio.create_task_group() as tg:
        for i in range(THREADS):
            tg.start_soon(user, i)
    return violations


_bare_pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="fm12-mutant")


async def _run_in_bare_executor(fn: Callable[..., Any], *args: Any) -> Any:
    """Mutant: ``loop.run_in_executor`` on an executor that does not copy the context."""
    return await asyncio.get_running_loop().run_in_executor(_bare_pool, fn, *args)


def register(registry: ModeRegistry) -> None:
    """Register FM12's checks."""
    add_check(
        registry,
        12,
        "executor",
        check_executor,
        library=lambda: ContextThreadPoolExecutor,
        mutant=lambda: ThreadPoolExecutor,
        description="8 threads x 50 operations through a shared executor see their submitter",
    )
    add_check(
        registry,
        12,
        "to-thread",
        check_to_thread,
        library=lambda: to_thread,
        mutant=lambda: _run_in_bare_executor,
        description="8 users x 50 calls through to_thread see their caller",
    )
