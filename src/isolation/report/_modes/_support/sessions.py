"""What the session checks (modes 1 to 4) share: a database per check run.

Imported only inside the checks (it needs the ``sqlalchemy`` extra). The model, the
SQLite engines and the PostgreSQL sandbox are :mod:`isolation.testing._databases`,
which the library's own tests use too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from isolation.testing._databases import (
    TABLE,
    Base,
    Note,
    PolicySql,
    Sandbox,
    checked_out,
    create_tables,
    generate,
    pg_sandbox,
    role_bypasses_rls,
    sqlite_engine,
    sync_sqlite_engine,
    sync_twin,
)

__all__ = [
    "TABLE",
    "checked_out",
    "create_tables",
    "generate",
    "pg_sandbox",
    "role_bypasses_rls",
    "sqlite_engine",
    "sync_sqlite_engine",
    "sync_twin",
    "Base",
    "Note",
    "PolicySql",
    "Sandbox",
]


@attrs.frozen(kw_only=True)
class Database:
    """A database of one check run.

    Attributes:
        engine: What the subject's sessions use (on PostgreSQL: the restricted role).
        raw: An engine that sees every row, to verify what was committed.
        backend: ``"sqlite"`` or ``"postgres"``.
        table: The notes table's name for ``rls_tables``.
    """

    engine: AsyncEngine
    raw: AsyncEngine
    backend: str
    table: str


@asynccontextmanager
async def open_database(
    backend: str,
    postgres_url: str | None,
    *,
    policy_sql: PolicySql | None = None,
    **engine_kw: Any,
) -> AsyncIterator[Database]:
    """A fresh SQLite file or PostgreSQL sandbox with the notes table; removed afterwards.

    Raises:
        RuntimeError: On PostgreSQL, the sandbox role would bypass row-level security.
    """
    if backend == "sqlite":
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory(prefix="isolation-check-") as tmp:
            engine = sqlite_engine(str(Path(tmp) / "check.sqlite"), **engine_kw)
            try:
                await create_tables(engine)
                yield Database(engine=engine, raw=engine, backend=backend, table=TABLE)
            finally:
                await engine.dispose()
        return
    if postgres_url is None:
        raise RuntimeError("a PostgreSQL check needs settings.postgres_url")
    async with pg_sandbox(postgres_url, policy_sql=policy_sql, **engine_kw) as box:
        reason = await role_bypasses_rls(box.engine)
        if reason is not None:
            raise RuntimeError(f"refusing to run: {reason}")
        yield Database(engine=box.engine, raw=box.admin, backend=backend, table=box.table)


async def bind_principal(session: Any) -> None:
    """Set the current principal for row-level security on ``session``'s transaction.

    What the library's PostgreSQL support does for its own sessions, for the
    mutants that open theirs by hand.
    """
    from sqlalchemy import text

    from isolation.context._scope import current_context

    tenant, user = current_context().principal
    await session.execute(
        text(
            "SELECT set_config('isolation.user_id', :u, true), "
            "set_config('isolation.tenant_id', :t, true)"
        ),
        {"u": user, "t": tenant or ""},
    )


async def committed_bodies(db: Database, prefix: str) -> list[str]:
    """Bodies of the committed notes whose body starts with ``prefix`` (every owner)."""
    table = db.table
    async with db.raw.connect() as conn:
        rows = (
            await conn.execute(
                text(f"SELECT body FROM {table} WHERE body LIKE :p ORDER BY body"),  # noqa: S608 - our own table name
                {"p": prefix + "%"},
            )
        ).all()
    return [str(r[0]) for r in rows]


def library_manager(db: Database, **kwargs: Any) -> Any:
    """The library's manager for ``db``: protect() on SQLite, row-level security on PostgreSQL."""
    from isolation.sessions import SessionManager

    if db.backend == "postgres":
        return SessionManager(db.engine, row_level_security=True, rls_tables=[db.table], **kwargs)
    manager = SessionManager(db.engine, **kwargs)
    manager.protect(Note, user_column="owner", tenant_column="tenant")
    return manager
