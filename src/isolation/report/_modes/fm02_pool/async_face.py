"""FM2, connection pool exhaustion under load: bounded waits, clear errors, nothing held after.

Subject: a manager factory (:class:`~isolation.report._modes._support.faces.SessionSubject`).
The engine has ``pool_size=5, max_overflow=0``; the manager a per-user limit
of 2 and a short acquire timeout. Scenario (20 users x 5 concurrent sessions):

1. a greedy user opens 5 sessions and holds them; then the 19 other users run
   5 concurrent requests each. Every request must complete (or get
   :class:`~isolation.PoolExhaustedError`) within the hang guard, and the
   greedy user must never hold more than its limit;
2. 5 users hold every connection; one more request must get
   :class:`~isolation.PoolExhaustedError` within its bound, not hang;
3. afterwards 0 connections are checked out, by the manager and by the
   engine's own pool.

The mutant has no per-user limit and no bound of its own: the greedy user
takes the whole pool, the others wait inside SQLAlchemy's pool, and the hang
guard (``anyio.fail_after``) counts it as a violation.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio

from isolation._errors import PoolExhaustedError
from isolation.context._model import UserContext
from isolation.context._scope import Scope
from isolation.report._modes._support.faces import SessionSubject, register_face
from isolation.report._registry import ModeRegistry, Settings

__all__ = ["pool_library", "register"]

USERS = 20
SESSIONS = 5
PER_USER = 2
ACQUIRE_TIMEOUT = 5.0
HANG_GUARD = 4.0
EXHAUST_TIMEOUT = 0.2


async def _select(manager: Any) -> None:
    from sqlalchemy import text

    async with manager.session() as s:
        await s.execute(text("SELECT 1"))


async def _greedy_phase(manager: Any, engine: Any) -> list[str]:
    from sqlalchemy import text

    found: list[str] = []
    release = anyio.Event()
    inside = 0
    peak = 0
    completed = 0
    exhausted = 0
    slow: list[float] = []

    async def greedy() -> None:
        nonlocal inside, peak, exhausted
        try:
            async with Scope(UserContext.new("greedy", tenant_id="t")), manager.session() as s:
                await s.execute(text("SELECT 1"))
                inside += 1
                peak = max(peak, inside)
                await release.wait()
                inside -= 1
        except PoolExhaustedError:
            exhausted += 1

    async def other(user: int) -> None:
        nonlocal completed, exhausted
        started = time.monotonic()
        try:
            async with Scope(UserContext.new(f"user-{user}", tenant_id="t")):
                await _select(manager)
            completed += 1
        except PoolExhaustedError:
            exhausted += 1
        waited = time.monotonic() - started
        if waited > ACQUIRE_TIMEOUT + 1.0:
            slow.append(waited)

    try:
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                for _ in range(SESSIONS):
                    tg.start_soon(greedy)
                await anyio.wait_all_tasks_blocked()
                async with anyio.create_task_group() as others:
                    for user in range(1, USERS):
                        for _ in range(SESSIONS):
                            others.start_soon(other, user)
                release.set()
    except TimeoutError:
        found.append(
            f"requests hung: {completed} of {(USERS - 1) * SESSIONS} other users' requests "
            f"completed within {HANG_GUARD} s while a greedy user held sessions"
        )
    if peak > PER_USER:
        found.append(f"the greedy user held {peak} sessions at once (limit {PER_USER})")
    if slow:
        found.append(f"{len(slow)} requests waited past their acquire timeout: {max(slow):.1f} s")
    if not found and completed != (USERS - 1) * SESSIONS:
        found.append(
            f"only {completed} of {(USERS - 1) * SESSIONS} requests of other users completed "
            f"({exhausted} exhausted) although the greedy user was held at its limit"
        )
    return found


async def _exhaustion_phase(manager: Any) -> list[str]:
    found: list[str] = []
    release = anyio.Event()
    outcome: list[str] = []

    async def holder(user: int) -> None:
        async with Scope(UserContext.new(f"holder-{user}", tenant_id="t")), manager.session() as s:
            from sqlalchemy import text

            await s.execute(text("SELECT 1"))
            await release.wait()

    try:
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                for user in range(SESSIONS):
                    tg.start_soon(holder, user)
                await anyio.wait_all_tasks_blocked()
                started = time.monotonic()
                try:
                    async with Scope(UserContext.new("late", tenant_id="t")):
                        await _select(manager)
                    outcome.append("completed")
                except PoolExhaustedError as exc:
                    outcome.append(f"exhausted after {time.monotonic() - started:.2f} s: {exc}")
                finally:
                    release.set()
    except TimeoutError:
        found.append(f"a request hung for {HANG_GUARD} s on a full pool instead of failing clearly")
    if outcome and outcome[0] == "completed":
        found.append("a sixth session was served while 5 sessions held a pool of 5")
    return found


def _check(backend: str) -> Callable[[Any, Settings], Any]:
    async def check(subject: Any, settings: Settings) -> list[str]:
        from isolation.report._modes._support.sessions import checked_out, open_database

        found: list[str] = []
        async with open_database(
            backend,
            settings.postgres_url,
            policy_sql=subject.policy_sql,
            pool_size=SESSIONS,
            max_overflow=0,
            pool_timeout=30,
        ) as db:
            manager = subject.make(db)
            found += await _greedy_phase(manager, db.engine)
            if not found:
                found += await _exhaustion_phase(subject.make(db, acquire_timeout=EXHAUST_TIMEOUT))
            stats = getattr(manager, "stats", None)
            if stats is not None and stats().checked_out:
                found.append(f"the manager counts {stats().checked_out} sessions still checked out")
            if checked_out(db.engine):
                found.append(
                    f"the engine's pool has {checked_out(db.engine)} connections checked out after"
                )
        return found

    return check


def pool_library() -> Any:
    """The library's subject for mode 2: managers with a per-user limit and a bounded wait."""
    from isolation.report._modes._support.sessions import library_manager

    def make(db: Any, acquire_timeout: float = ACQUIRE_TIMEOUT) -> Any:
        return library_manager(db, per_user_limit=PER_USER, acquire_timeout=acquire_timeout)

    return SessionSubject(make=make)


class _UnboundedManager:
    """Mutant: one session per request straight from the engine: no limit, no bound."""

    def __init__(self, db: Any, **ignored: Any) -> None:
        self._engine = db.engine

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Any]:
        from sqlalchemy.ext.asyncio import AsyncSession

        async with AsyncSession(self._engine) as s:
            yield s
            await s.commit()


def register(registry: ModeRegistry) -> None:
    """Register FM2's checks, on SQLite and on PostgreSQL."""
    register_face(
        registry,
        2,
        "bounded-admission",
        _check,
        library=pool_library,
        mutant=functools.partial(SessionSubject, make=_UnboundedManager),
        requires=("sqlalchemy", "aiosqlite"),
        description=(
            "20 users x 5 sessions on a pool of 5: a greedy user held at its limit, "
            "exhaustion raised within the bound, 0 checked out after"
        ),
    )
