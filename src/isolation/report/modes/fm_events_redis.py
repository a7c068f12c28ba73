"""Modes 13, 14 and 16 on Redis: the same checks, with every router on a Redis backend.

Runs only when the report is given ``--redis URL``. Each check of the
in-memory router is run again with the router built on
:class:`~isolation.events.backends.redis.RedisBackend` in a fresh namespace, so
connections, corrupted routes and tickets (claimed with ``SET NX`` across
processes) are checked through Redis. The mutants are those of the in-memory
checks, given the same backend: they must still be caught. Mode 10 has its own
two-router scenario (:mod:`.fm10_redis`); mode 15's exact counts hold per
router and are checked in memory (over Redis a ``BLOCK`` overflow becomes a
``"gap"`` event, see the Redis delivery docs).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from isolation.report._registry import Backend, Check, ModeRegistry, Settings

__all__ = ["register"]

_KEY = b"isolation-report-redis-envelopes!"


def _with_redis(make: Callable[..., Any], settings: Settings) -> Callable[..., Any]:
    """``make`` with a Redis backend in a namespace of its own for each router."""

    def build(*args: Any, **options: Any) -> Any:
        from isolation.events.backends.redis import RedisBackend

        assert settings.redis_url is not None
        backend = RedisBackend(
            settings.redis_url, keys=[_KEY], namespace=f"isolation-report-{uuid.uuid4().hex[:12]}"
        )
        return make(*args, backend=backend, **options)

    return build


def _on_redis(
    run: Callable[[Any, Settings], Awaitable[Sequence[str]]], *, paired: bool = False
) -> Callable[[Any, Settings], Awaitable[Sequence[str]]]:
    async def check(subject: Any, settings: Settings) -> Sequence[str]:
        if paired:  # (router factory, helper) pairs, as mode 14's subject is
            make, helper = subject
            return await run((_with_redis(make, settings), helper), settings)
        return await run(_with_redis(subject, settings), settings)

    return check


def register(registry: ModeRegistry) -> None:
    """Register the Redis variants of modes 13, 14 and 16."""
    from isolation.report.modes import fm13_binding, fm14_corruption, fm16_tokens

    for mode_id, run, paired in (
        (13, fm13_binding.check_bound_for_life, False),
        (14, fm14_corruption.check_corrupted_routes_refused, True),
        (16, fm16_tokens.check_tokens_bound, False),
    ):
        original = next(c for c in registry.mode(mode_id).checks if c.backend is Backend.MEMORY)
        registry.register(
            mode_id,
            Check(
                name=f"{original.name}-redis",
                backend=Backend.REDIS,
                run=_on_redis(run, paired=paired),
                library=original.library,
                mutant=original.mutant,
                requires=("redis",),
                description=f"{original.description}, every router on a Redis backend",
            ),
        )
