"""The session modes' faces (1 to 4): the subject their checks drive and their registration.

Every session check runs twice, on SQLite and on PostgreSQL, against a
:class:`SessionSubject`; the library's subject is the same for all of them.
Imports no extra: the modes register their checks with it before any check
runs (the database helpers are imported when a check is built).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Final

import attrs

from isolation.report._registry import CheckFn, ModeRegistry, lazy_check, register_on_databases

__all__ = [
    "ASYNC_FACE",
    "SYNC_FACE",
    "SessionSubject",
    "register_face",
    "scope_sessions",
    "session_library",
    "sync_rounds",
    "sync_run_for",
]

ASYNC_FACE: Final = ("sqlalchemy", "aiosqlite", "hypothesis")
"""The extras of an async-face check (PostgreSQL adds asyncpg)."""

SYNC_FACE: Final = ("sqlalchemy", "hypothesis")
"""The extras of a sync-face check (PostgreSQL adds asyncpg and psycopg)."""


def _library_policy() -> Callable[..., Sequence[str]]:
    # Imported when a subject is built (a check runs), not when checks register.
    from isolation.sessions.postgres import rls_policy_sql

    return rls_policy_sql


@attrs.frozen(kw_only=True)
class SessionSubject:
    """What the session checks drive.

    Attributes:
        make: Builds a manager for a database (``make(db) -> manager``).
        policy_sql: Builds the row-level security policy on PostgreSQL; the
            library's own by default.
    """

    make: Callable[[Any], Any]
    policy_sql: Callable[..., Sequence[str]] = attrs.field(factory=_library_policy)


def session_library() -> SessionSubject:
    """The library's subject: a :class:`~isolation.sessions.SessionManager` per database."""
    from isolation.report._modes._support.sessions import library_manager

    return SessionSubject(make=library_manager)


def sync_run_for(scenario: Callable[[], Any], **engine_kw: Any) -> Callable[[str], CheckFn]:
    """``run_for`` of a sync-face check: ``scenario()`` (built when the check first runs)
    runs in a thread on a fresh database with the engine options ``engine_kw``."""

    def run_for(backend: str) -> CheckFn:
        def build() -> CheckFn:
            from isolation.report._modes._support.sync_sessions import sync_check

            return sync_check(backend, scenario(), **engine_kw)

        return lazy_check(build)

    return run_for


def sync_rounds(rounds: Callable[[int], Sequence[Any]], run_round: Callable[..., Any]) -> Any:
    """A ``scenario`` for :func:`sync_run_for` that runs drawn rounds under one fake clock
    (:func:`~isolation.report._modes._support.sync_sessions.rounds_scenario`)."""

    def scenario() -> Any:
        from isolation.report._modes._support.sync_sessions import rounds_scenario

        return rounds_scenario(rounds, run_round)

    return scenario


def scope_sessions(**options: Any) -> Callable[[], SessionSubject]:
    """A sync-face mutant: :class:`~isolation.report._modes._support.sync_sessions.ScopeSessions`
    (a session per scope, no deadline, no admission) with ``options``."""

    def mutant() -> SessionSubject:
        from isolation.report._modes._support.sync_sessions import ScopeSessions

        return SessionSubject(make=functools.partial(ScopeSessions, **options))

    return mutant


def register_face(
    registry: ModeRegistry,
    mode_id: int,
    name: str,
    run_for: Callable[[str], CheckFn],
    *,
    mutant: Callable[[], Any],
    description: str,
    sync: bool = False,
    requires: tuple[str, ...] | None = None,
    library: Callable[[], Any] = session_library,
) -> None:
    """Register a session check on SQLite and on PostgreSQL.

    ``sync`` marks a sync-face check (its PostgreSQL variant needs psycopg too);
    ``requires`` defaults to the face's extras (:data:`ASYNC_FACE`, :data:`SYNC_FACE`).
    """
    register_on_databases(
        registry,
        mode_id,
        name,
        run_for=run_for,
        library=library,
        mutant=mutant,
        requires=(SYNC_FACE if sync else ASYNC_FACE) if requires is None else requires,
        postgres_requires=("asyncpg", "psycopg") if sync else ("asyncpg",),
        description=description,
    )
