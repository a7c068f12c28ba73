"""The databases the report's session checks (modes 1 to 4) and the library's own tests
share: a notes model, real SQLite files, a PostgreSQL sandbox.

Private to the library (it needs the ``sqlalchemy`` extra, and Hypothesis for
:func:`generate`): one copy, so the report and the tests cannot drift apart. SQLite
databases are files in a temporary directory, in WAL mode with a busy timeout
and SQLAlchemy's recipe for real ``BEGIN``/``SAVEPOINT`` on pysqlite, so that
concurrent scenarios see the library's errors, never ``database is locked``.
On PostgreSQL each run creates its own schema and a fresh LOGIN role that is
neither superuser, owner nor ``BYPASSRLS``, connects **as that role** (not
``SET ROLE``), and drops everything afterwards.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
from sqlalchemy import String, create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool

__all__ = [
    "Base",
    "Note",
    "Sandbox",
    "checked_out",
    "pg_sandbox",
    "sqlite_engine",
    "sync_sqlite_engine",
    "sync_twin",
]

TABLE: Final = "isolation_notes"


class Base(DeclarativeBase):
    """The declarative base of the check models."""


class Note(Base):
    """A row owned by a principal: ``(tenant, owner)``."""

    __tablename__ = TABLE

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant: Mapped[str | None] = mapped_column(String(100), nullable=True)
    owner: Mapped[str] = mapped_column(String(100))
    body: Mapped[str] = mapped_column(String(200))


def sqlite_engine(path: str, **engine_kw: Any) -> AsyncEngine:
    """An aiosqlite engine on the file ``path``: WAL, busy timeout, real BEGIN and SAVEPOINT."""
    if ("pool_size" in engine_kw or "max_overflow" in engine_kw) and "poolclass" not in engine_kw:
        # A sized pool on every SQLAlchemy 2.0 release (before 2.0.38, aiosqlite's default
        # for a file was NullPool, which takes no size).
        engine_kw["poolclass"] = AsyncAdaptedQueuePool
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}", **engine_kw)

    _sqlite_setup(engine.sync_engine)
    return engine


def sync_sqlite_engine(path: str, **engine_kw: Any) -> Engine:
    """A pysqlite engine on the file ``path``, as :func:`sqlite_engine` (the sync face's)."""
    engine = create_engine(f"sqlite:///{path}", **engine_kw)

    _sqlite_setup(engine)
    Base.metadata.create_all(engine)
    return engine


def sync_twin(engine: AsyncEngine, **engine_kw: Any) -> Engine:
    """A sync engine on ``engine``'s database and role (psycopg for asyncpg).

    Its pool holds 5 connections and no overflow unless ``engine_kw`` say otherwise.
    """
    url = engine.url
    driver = "postgresql+psycopg" if url.get_backend_name() == "postgresql" else "sqlite"
    return create_engine(
        url.set(drivername=driver), **{"pool_size": 5, "max_overflow": 0, **engine_kw}
    )


async def create_tables(engine: AsyncEngine) -> None:
    """Create the check tables (SQLite)."""
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)


def checked_out(engine: AsyncEngine) -> int:
    """Connections the engine's own pool has checked out now."""
    pool: Any = engine.sync_engine.pool
    return int(pool.checkedout()) if hasattr(pool, "checkedout") else 0


@attrs.frozen(kw_only=True)
class Sandbox:
    """A PostgreSQL schema and role of one run.

    Attributes:
        engine: Connects as ``role`` (not a superuser, not the owner, no BYPASSRLS).
        admin: Connects as the given (superuser) URL, for setup and inspection.
        schema: The run's schema, on the role's ``search_path``.
        role: The run's LOGIN role.
        table: The schema-qualified notes table.
    """

    engine: AsyncEngine
    admin: AsyncEngine
    schema: str
    role: str
    table: str


PolicySql = Callable[..., Sequence[str]]


@asynccontextmanager
async def pg_sandbox(
    admin_url: str,
    *,
    policy_sql: PolicySql | None = None,
    role_owns_table: bool = False,
    force: bool = True,
    **engine_kw: Any,
) -> AsyncIterator[Sandbox]:
    """Create a schema, the notes table with its policy, and a fresh role; drop them after.

    Args:
        admin_url: A URL whose role may create roles and schemas.
        policy_sql: Builds the policy statements (default
            :func:`isolation.sessions.postgres.rls_policy_sql`).
        role_owns_table: Make the run's role the table's owner.
        force: Keep ``FORCE ROW LEVEL SECURITY`` in the policy statements.
        engine_kw: Passed to ``create_async_engine`` for the role's engine.
    """
    from isolation.sessions.postgres import quote_identifier, rls_policy_sql

    make_policy = policy_sql or rls_policy_sql
    suffix = uuid.uuid4().hex[:12]
    schema = f"isolation_check_{suffix}"
    role = f"isolation_role_{suffix}"
    password = secrets.token_hex(16)
    url = make_url(admin_url).set(drivername="postgresql+asyncpg")
    admin = create_async_engine(url, poolclass=NullPool)
    q_schema, q_role = quote_identifier(schema), quote_identifier(role)
    table = f"{schema}.{TABLE}"
    statements = [
        f"CREATE ROLE {q_role} LOGIN PASSWORD '{password}' NOSUPERUSER NOBYPASSRLS "
        "NOCREATEDB NOCREATEROLE",
        f"CREATE SCHEMA {q_schema}",
        f"GRANT USAGE ON SCHEMA {q_schema} TO {q_role}",
        f"ALTER ROLE {q_role} SET search_path = {q_schema}",
        f"CREATE TABLE {q_schema}.{TABLE} (id serial PRIMARY KEY, tenant varchar(100), "
        "owner varchar(100) NOT NULL, body varchar(200) NOT NULL)",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {q_schema}.{TABLE} TO {q_role}",
        f"GRANT USAGE, SELECT ON SEQUENCE {q_schema}.{TABLE}_id_seq TO {q_role}",
    ]
    if role_owns_table:
        statements.append(f"ALTER TABLE {q_schema}.{TABLE} OWNER TO {q_role}")
    policy = [
        s
        for s in make_policy(table, user_column="owner", tenant_column="tenant")
        if force or "FORCE ROW LEVEL SECURITY" not in s
    ]
    engine: AsyncEngine | None = None
    try:
        async with admin.begin() as conn:
            for statement in [*statements, *policy]:
                await conn.exec_driver_sql(statement)
        engine = create_async_engine(url.set(username=role, password=password), **engine_kw)
        yield Sandbox(engine=engine, admin=admin, schema=schema, role=role, table=table)
    finally:
        if engine is not None:
            await engine.dispose()
        async with admin.begin() as conn:
            await conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"),
                {"r": role},
            )
            await conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {q_schema} CASCADE")
            await conn.exec_driver_sql(f"DROP ROLE IF EXISTS {q_role}")
        await admin.dispose()


async def role_bypasses_rls(engine: AsyncEngine) -> str | None:
    """Why the engine's role would not be restricted by row-level security, or ``None``."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
            )
        ).one()
    if row[0]:
        return "the check's role is a superuser"
    if row[1]:
        return "the check's role has BYPASSRLS"
    return None


def generate(strategy: Any, count: int, explicit: Sequence[Any] = ()) -> list[Any]:
    """Draw ``count`` examples of ``strategy`` deterministically, after the ``explicit`` ones."""
    from hypothesis import HealthCheck, Phase, given, settings

    drawn: list[Any] = list(explicit)

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(strategy)
    def collect(example: Any) -> None:
        drawn.append(example)

    collect()
    return drawn[: len(explicit) + count]


def _sqlite_setup(engine: Engine) -> None:
    # Let SQLAlchemy emit BEGIN itself (below), so SAVEPOINT works on pysqlite;
    # WAL and a busy timeout let the checks' concurrent sessions share the file.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")
