"""FM6, user contexts not garbage collected: nothing keeps an ended scope alive.

Subject: a ``scope`` callable, ``scope(ctx)`` usable as ``with`` and
``async with``. The library's is :class:`isolation.Scope`; the mutant is a
scope that remembers recent contexts in a module-level list (a "recent
requests" cache, the commonest way this leak is written).
"""

from __future__ import annotations

import collections
import gc
import tracemalloc
import weakref
from collections.abc import Callable
from typing import Any

import anyio

from isolation.context._model import UserContext
from isolation.context._scope import Scope, current_context
from isolation.report._modes._support.registration import add_check
from isolation.report._registry import ModeRegistry, Settings

__all__ = ["register"]

ScopeFactory = Callable[[UserContext], Any]

SCOPES = 10_000
WARMUP = 1_000
MAX_GROWTH = 64 * 1024


def _ctx(i: int) -> UserContext:
    return UserContext.new(f"user-{i % 100}", tenant_id=f"t{i % 7}", ttl=60.0)


async def _async_scopes(
    scope: ScopeFactory, start: int, count: int, refs: list[Any] | None
) -> None:
    for i in range(start, start + count):
        ctx = _ctx(i)
        async with scope(ctx) as s:
            s.on_close(lambda exc: None)
            current_context()
            if refs is not None:
                refs.append(weakref.ref(ctx))
                refs.append(weakref.ref(s))


def _sync_scopes(scope: ScopeFactory, start: int, count: int, refs: list[Any] | None) -> None:
    for i in range(start, start + count):
        ctx = _ctx(i)
        with scope(ctx) as s:
            s.on_close(lambda exc: None)
            current_context()
            if refs is not None:
                refs.append(weakref.ref(ctx))
                refs.append(weakref.ref(s))


def check_weakrefs_dead(scope: ScopeFactory, settings: Settings) -> list[str]:
    """10,000 scopes (half sync, half async): every context and scope collectable after."""
    refs: list[weakref.ref[Any]] = []
    half = SCOPES // 2
    _sync_scopes(scope, 0, half, refs)
    anyio.run(_async_scopes, scope, half, SCOPES - half, refs, backend="asyncio")
    gc.collect()
    alive = [r() for r in refs if r() is not None]
    if not alive:
        return []
    kinds = collections.Counter(type(obj).__name__ for obj in alive)
    return [
        f"{len(alive)} of {len(refs)} contexts and scopes still alive after their scopes ended "
        f"and gc.collect(): {dict(kinds)}"
    ]


def check_memory_flat(scope: ScopeFactory, settings: Settings) -> list[str]:
    """Traced memory after 10,000 scopes minus after 1,000 stays under 64 KiB."""
    started_here = not tracemalloc.is_tracing()
    if started_here:
        tracemalloc.start()
    try:
        _sync_scopes(scope, 0, WARMUP, None)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        _sync_scopes(scope, WARMUP, SCOPES - WARMUP, None)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        if started_here:
            tracemalloc.stop()
    growth = after - before
    if growth >= MAX_GROWTH:
        return [
            f"traced memory grew by {growth} bytes between {WARMUP} and {SCOPES} scopes "
            f"(limit {MAX_GROWTH})"
        ]
    return []


# -- the mutant: a scope that keeps "recent" contexts in a module-level list --

_RECENT: list[UserContext] = []


class _RememberingScope:
    """Mutant: a scope that appends every context to a module-level list."""

    def __init__(self, ctx: UserContext) -> None:
        self._inner = Scope(ctx)
        _RECENT.append(ctx)
        del _RECENT[:-2_000]  # "bounded", which is how such caches look harmless

    def __enter__(self) -> Scope:
        return self._inner.__enter__()

    def __exit__(self, *exc: Any) -> bool:
        return self._inner.__exit__(*exc)

    async def __aenter__(self) -> Scope:
        return await self._inner.__aenter__()

    async def __aexit__(self, *exc: Any) -> bool:
        return await self._inner.__aexit__(*exc)


def _library() -> ScopeFactory:
    return Scope


def _mutant() -> ScopeFactory:
    return _RememberingScope


def register(registry: ModeRegistry) -> None:
    """Register FM6's checks."""
    add_check(
        registry,
        6,
        "weakrefs-dead",
        check_weakrefs_dead,
        library=_library,
        mutant=_mutant,
        description="10,000 scopes: weak references to every context and scope dead after gc",
    )
    add_check(
        registry,
        6,
        "memory-flat",
        check_memory_flat,
        library=_library,
        mutant=_mutant,
        description="traced memory after 10,000 scopes minus after 1,000 under 64 KiB",
    )
