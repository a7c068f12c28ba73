"""FM1, bulk writes and relationship loads stay the principal's (issue 16, findings 1 to 3).

Subject: a manager factory (``make(db) -> manager`` with ``session()``) for the
two models of :mod:`._orm_paths` (a ``Folder`` with a UUID key and one
relationship per loader strategy, its ``Item`` rows with integer keys), both
protected by their ``owner`` column, without row-level security. The check
replays the shapes of the findings (ORM bulk UPDATE by primary key,
``bulk_update_mappings``, owner mass assignment, ``bulk_insert_mappings``,
``bulk_save_objects``, lazy loads from a cached parent merged with
``load=False``, ``refresh()`` and attribute loads of forged objects, flushes of
forged objects) and of the session review (the owner set through a named
bind, ``insert().from_select()`` into an unprotected table, ``from_statement()``
rows without the owner column or with a forged one then flushed) and of
issue 17's boolean oracle (``exists()``, ``any()``, a count, a scalar subquery,
a bare ``Table``, a CTE over a union, each asking whether the other's row
starts with its name), then operation sequences Hypothesis draws over the ORM
surface, as two principals on each other's rows. Properties: no value of the
other principal is returned, and after every operation the database holds
exactly what the reference model allows (the effect on the principal's own
rows if the operation succeeded, nothing if it was refused).

Mutant: ``protect()`` as it was before issue 16 (the SQLAlchemy recipe):
criteria on top-level ORM statements only, relationship and column loads
trusted to carry their parent's, new rows stamped on flush, no checks on
bulk writes by primary key or the legacy bulk methods, no check of what a
statement renders (the oracle through a count of ``and_()`` criteria or a bare
``Table`` reads the other's row; on SQLAlchemy 2.0, ``exists()`` too).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs

from isolation.report._modes._support.faces import register_face
from isolation.report._registry import ModeRegistry, Settings

__all__ = ["OrmSubject", "register"]


@attrs.frozen(kw_only=True)
class OrmSubject:
    """What the check drives: ``make(db) -> manager`` for an :class:`._orm_paths.OrmDatabase`."""

    make: Callable[[Any], Any]


def _check(backend: str) -> Callable[[OrmSubject, Settings], Any]:
    async def check(subject: OrmSubject, settings: Settings) -> list[str]:
        from isolation.report._modes._support.sessions import generate
        from isolation.report._modes.fm01_sessions._orm_paths import (
            attacks,
            open_orm_database,
            ops_strategy,
            run_ops,
        )

        found: list[str] = []
        async with open_orm_database(backend, settings.postgres_url) as db:
            manager = subject.make(db)
            for ops in generate(ops_strategy(), settings.examples, explicit=attacks()):
                found += await run_ops(manager, db, ops)
        return found

    return check


def _library_manager(db: Any) -> Any:
    from isolation.report._modes.fm01_sessions._orm_paths import Folder, Item
    from isolation.sessions import SessionManager

    manager = SessionManager(db.engine)
    manager.protect(Folder, user_column="owner")
    manager.protect(Item, user_column="owner")
    return manager


def _library() -> OrmSubject:
    return OrmSubject(make=_library_manager)


# -- mutant: protect() before issue 16 ------------------------------------------------


class _RecipeManager:
    """Mutant: a session per scope with the pre-issue-16 filter (the SQLAlchemy recipe)."""

    def __init__(self, db: Any) -> None:
        self._engine = db.engine

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Any]:
        from sqlalchemy import event
        from sqlalchemy.ext.asyncio import AsyncSession
        from sqlalchemy.orm import with_loader_criteria

        from isolation.context._scope import current_context
        from isolation.report._modes.fm01_sessions._orm_paths import Folder, Item

        user = current_context().user_id
        models = (Folder, Item)
        async with AsyncSession(self._engine, expire_on_commit=False) as s:

            @event.listens_for(s.sync_session, "do_orm_execute")
            def _criteria(state: Any) -> None:
                if state.is_column_load or state.is_relationship_load:
                    return  # "they carry the criteria of their parent's statement"
                if state.is_select or state.is_update or state.is_delete:
                    state.statement = state.statement.options(
                        *(
                            with_loader_criteria(m, m.owner == user, include_aliases=True)
                            for m in models
                        )
                    )

            @event.listens_for(s.sync_session, "before_flush")
            def _stamp(session: Any, context: Any, instances: Any) -> None:
                for obj in session.new:
                    if obj.owner is None:
                        obj.owner = user
                    elif obj.owner != user:
                        raise PermissionError("foreign owner")

            yield s
            await s.commit()


def register(registry: ModeRegistry) -> None:
    """Register the check, on SQLite and on PostgreSQL (``protect()`` alone, no RLS)."""
    register_face(
        registry,
        1,
        "orm-paths",
        _check,
        library=_library,
        mutant=lambda: OrmSubject(make=_RecipeManager),
        description=(
            "bulk writes by primary key, legacy bulk methods, owner mass assignment, "
            "relationship loads of merged parents, refresh and forged objects, insert from "
            "select, from_statement loads, the exists()/count/bare-Table boolean oracle: "
            "nothing of another principal read or written"
        ),
    )
