"""FM1, DB sessions not isolated between users: one session per scope, only own rows read.

Subject: a :class:`SessionSubject`, a manager factory (the interface of
:class:`isolation.sessions.SessionManager`: ``session()``) plus the policy
builder used on PostgreSQL. The check runs on the async state-machine runner
(:mod:`._machine`): requests of several principals, **the same user id in
two tenants** among them, each a task holding its scope and session block open
across steps, insert rows, read rows and end cleanly or with an error, in an
order Hypothesis draws (after one fixed example that has every principal's
block open at once). Properties: the sets of session objects per principal
are disjoint, every row a request reads is its own (ORM reads filtered by
``protect()`` on SQLite; raw SQL under row-level security on PostgreSQL, as a
role that is neither owner nor superuser), and the database holds exactly the
committed work.

Mutants: ``session-per-scope`` faces a manager that caches one session per
process; ``own-rows-only`` faces a filter on the user column alone (on
PostgreSQL: a policy on the user column alone).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from isolation.context._principal import Principal
from isolation.context._scope import current_context
from isolation.report._modes._support.faces import SessionSubject, register_face
from isolation.report._registry import ModeRegistry, Settings

__all__ = ["SessionSubject", "register"]

PRINCIPALS: tuple[Principal, ...] = (
    Principal("t1", "alice"),
    Principal("t2", "alice"),
    Principal("t1", "bob"),
    Principal("t2", "carol"),
)


def _check(backend: str) -> Callable[[SessionSubject, Settings], list[str]]:
    def check(subject: SessionSubject, settings: Settings) -> list[str]:
        from isolation.report._modes.fm01_sessions._machine import run_machine

        return run_machine(subject, backend, settings.postgres_url, examples=settings.examples)

    return check


async def _close(manager: Any) -> None:
    aclose = getattr(manager, "aclose", None)
    if aclose is not None:
        await aclose()


# -- the library ---------------------------------------------------------------


RoundRunner = Callable[[Any, Any, Any, Any, str], Any]


def rounds_check(
    backend: str, rounds: Callable[[int], Sequence[Any]], run_round: RoundRunner
) -> Callable[[SessionSubject, Settings], Any]:
    """A session check that runs drawn rounds on a fresh database until one finds a violation.

    ``rounds(examples)`` draws the scenarios; ``run_round(manager, db, clock,
    scenario, tag)`` runs one under a :class:`~isolation.testing.FakeClock`
    and returns its violations. Modes 3 and 4 are built on it.
    """

    async def check(subject: SessionSubject, settings: Settings) -> list[str]:
        from isolation._clock import FakeClock, use_clock
        from isolation.report._modes._support.sessions import open_database

        found: list[str] = []
        tag = uuid.uuid4().hex[:8]
        async with open_database(
            backend, settings.postgres_url, policy_sql=subject.policy_sql
        ) as db:
            manager = subject.make(db)
            clock = FakeClock()
            with use_clock(clock):
                for number, scenario in enumerate(rounds(settings.examples)):
                    found += await run_round(manager, db, clock, scenario, f"{tag}-{number:03d}")
                    if found:
                        break
        return found

    return check


# -- mutant 1: one session cached per process --------------------------------------


class _ProcessSessionManager:
    """Mutant: every request of every user gets the one session the process made first."""

    def __init__(self, db: Any) -> None:
        from sqlalchemy.ext.asyncio import AsyncSession

        self._session = AsyncSession(db.engine, expire_on_commit=False)
        self._rls = db.backend == "postgres"
        if not self._rls:
            _filter_pairs(self._session)

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Any]:
        from isolation.report._modes._support.sessions import bind_principal

        s = self._session
        if self._rls:
            await bind_principal(s)
        yield s
        await s.commit()

    async def aclose(self) -> None:
        await self._session.close()


def _filter_pairs(session: Any, *, user_only: bool = False) -> None:
    """The ORM filter, re-implemented for the mutants (pair, or user column alone).

    ``session`` is an ``AsyncSession`` or a sync ``Session``.
    """
    from sqlalchemy import event
    from sqlalchemy.orm import with_loader_criteria

    from isolation.report._modes._support.sessions import Note

    @event.listens_for(getattr(session, "sync_session", session), "do_orm_execute")
    def _criteria(state: Any) -> None:
        if state.is_select and not state.is_column_load and not state.is_relationship_load:
            tenant, user = current_context().principal
            criteria = Note.owner == user
            if not user_only:
                criteria = criteria & (Note.tenant == tenant)
            state.statement = state.statement.options(with_loader_criteria(Note, criteria))


def _mutant_cached() -> SessionSubject:

    return SessionSubject(make=_ProcessSessionManager)


# -- mutant 2: a filter on the user column alone ------------------------------------


class _UserColumnOnlyManager:
    """Mutant: a session per scope, but the ORM filter compares the user column only."""

    def __init__(self, db: Any) -> None:
        self._engine = db.engine

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Any]:
        from sqlalchemy.ext.asyncio import AsyncSession

        async with AsyncSession(self._engine, expire_on_commit=False) as s:
            _filter_pairs(s, user_only=True)
            yield s
            await s.commit()


def _user_only_policy_sql(table: str, **kwargs: Any) -> list[str]:
    """Mutant policy: the tenant column is left out."""
    from isolation.sessions.postgres import rls_policy_sql

    return rls_policy_sql(table, user_column=kwargs["user_column"])


def _make_user_only(db: Any) -> Any:
    if db.backend == "postgres":
        from isolation.report._modes._support.sessions import library_manager

        return library_manager(db)
    return _UserColumnOnlyManager(db)


def _mutant_user_only() -> SessionSubject:
    return SessionSubject(make=_make_user_only, policy_sql=_user_only_policy_sql)


def register(registry: ModeRegistry) -> None:
    """Register FM1's checks, on SQLite and on PostgreSQL."""
    register_face(
        registry,
        1,
        "session-per-scope",
        _check,
        mutant=_mutant_cached,
        description=(
            "interleaved requests of 4 principals (one user id in two tenants): "
            "session objects per principal disjoint, rows read own"
        ),
    )
    register_face(
        registry,
        1,
        "own-rows-only",
        _check,
        mutant=_mutant_user_only,
        description=(
            "the same interleavings against a filter (or policy) on the user column alone"
        ),
    )
