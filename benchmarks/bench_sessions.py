"""Sessions bound to the user against plain SQLAlchemy (issue: sessions).

Per request: open a session, one small select filtered by the user, commit,
close — sequentially and 100 at once, on SQLite and PostgreSQL. The anchor is
a plain ``AsyncSession`` with the same explicit ``WHERE``; the library's row
adds the scope, admission and lifecycle. Targets: at least 0.85x the anchor's
throughput (so at most 1/0.85 = 1.18x its time per request); ``protect()`` as
its own row (goal 0.75x); with row-level security at least 0.9x the anchor
plus a parameterised ``set_config``. Ratios printed are of time, so lower is
faster. ``library-rls`` includes the return check (on by default: one round
trip per return); ``library-rls-signed`` is ``row_level_security="signed"``
(an HMAC per transaction, the bind function, the two verifying getters once
per statement).
PostgreSQL rows need ``ISOLATION_TEST_POSTGRES_URL``.
Run: ``pytest benchmarks/bench_sessions.py``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

import isolation
from isolation.report.modes._sessions import Note, create_tables, pg_sandbox, sqlite_engine
from isolation.sessions import SessionManager

REQUESTS = 200
CONCURRENT = 100
USERS = [isolation.UserContext.new(f"user-{i}", tenant_id="bench") for i in range(20)]
POSTGRES_URL = os.environ.get("ISOLATION_TEST_POSTGRES_URL")


def _timed(benchmark: Any, run: Callable[[], Awaitable[None]]) -> None:
    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        portal.call(run)  # warm the pool and the statement caches
        benchmark.pedantic(lambda: portal.call(run), rounds=5, iterations=1)


def _plain(engine: AsyncEngine, *, set_config: bool = False) -> Callable[[int], Awaitable[None]]:
    factory = async_sessionmaker(engine, expire_on_commit=False)

    async def request(i: int) -> None:
        ctx = USERS[i % len(USERS)]
        async with factory() as session:
            if set_config:
                await session.execute(
                    text(
                        "SELECT set_config('isolation.user_id', :u, true), set_config('isolation.tenant_id', :t, true)"
                    ),
                    {"u": ctx.user_id, "t": ctx.tenant_id},
                )
            await session.execute(
                select(Note).where(Note.owner == ctx.user_id, Note.tenant == ctx.tenant_id)
            )
            await session.commit()

    return request


def _library(
    manager: SessionManager, *, explicit_where: bool = True
) -> Callable[[int], Awaitable[None]]:
    async def request(i: int) -> None:
        ctx = USERS[i % len(USERS)]
        async with isolation.scope(ctx), manager.session() as session:
            statement = select(Note)
            if explicit_where:
                statement = statement.where(Note.owner == ctx.user_id, Note.tenant == ctx.tenant_id)
            await session.execute(statement)

    return request


def _sequential(request: Callable[[int], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        for i in range(REQUESTS):
            await request(i)

    return run


def _concurrent(request: Callable[[int], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        async with anyio.create_task_group() as tg:
            for i in range(CONCURRENT):
                tg.start_soon(request, i)

    return run


@pytest.fixture(scope="module")
def sqlite_db() -> Iterator[AsyncEngine]:
    with tempfile.TemporaryDirectory() as tmp:
        engine = sqlite_engine(str(Path(tmp) / "bench.sqlite"), pool_size=20, max_overflow=0)
        anyio.run(create_tables, engine)
        yield engine
        anyio.run(engine.dispose)


@pytest.mark.parametrize("shape", ["sequential", "concurrent"])
@pytest.mark.parametrize("row", ["anchor-plain", "library", "protect"])
def test_sqlite(benchmark: Any, sqlite_db: AsyncEngine, shape: str, row: str) -> None:
    benchmark.group = f"sessions sqlite {shape}"
    if row == "anchor-plain":
        request = _plain(sqlite_db)
    else:
        manager = SessionManager(sqlite_db, per_user_limit=CONCURRENT, acquire_timeout=60)
        if row == "protect":
            manager.protect(Note, user_column="owner", tenant_column="tenant")
        request = _library(manager, explicit_where=row == "library")
    _timed(benchmark, (_sequential if shape == "sequential" else _concurrent)(request))


@pytest.fixture(scope="module")
def pg_box() -> Iterator[tuple[Any, Any]]:
    if POSTGRES_URL is None:
        pytest.skip("ISOLATION_TEST_POSTGRES_URL is not set")
    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        sandbox = pg_sandbox(POSTGRES_URL, pool_size=20, max_overflow=0)
        with portal.wrap_async_context_manager(sandbox) as box:
            yield portal, box


@pytest.mark.parametrize("shape", ["sequential", "concurrent"])
@pytest.mark.parametrize(
    "row", ["anchor-plain", "library", "anchor-plain-set-config", "library-rls"]
)
def test_postgres(benchmark: Any, pg_box: tuple[Any, Any], shape: str, row: str) -> None:
    benchmark.group = f"sessions postgres {shape}"
    portal, box = pg_box
    if row.startswith("anchor"):
        request = _plain(box.engine, set_config=row.endswith("set-config"))
    else:
        rls = row == "library-rls"
        manager = SessionManager(
            box.engine,
            per_user_limit=CONCURRENT,
            acquire_timeout=60,
            row_level_security=rls,
            rls_tables=[box.table] if rls else (),
        )
        request = _library(manager)
    run = (_sequential if shape == "sequential" else _concurrent)(request)
    portal.call(run)
    benchmark.pedantic(lambda: portal.call(run), rounds=5, iterations=1)


@pytest.fixture(scope="module")
def pg_signed_box() -> Iterator[tuple[Any, Any, bytes]]:
    if POSTGRES_URL is None:
        pytest.skip("ISOLATION_TEST_POSTGRES_URL is not set")
    from sqlalchemy import text as sql_text

    from isolation.sessions.postgres import rls_policy_sql, rls_signing_key_sql, rls_signing_sql

    def policy(table: str, **kwargs: Any) -> list[str]:
        schema = table.split(".", maxsplit=1)[0]
        return [
            *rls_signing_sql(schema=schema),
            *rls_policy_sql(table, signed=True, schema=schema, **kwargs),
        ]

    key = os.urandom(32)
    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        sandbox = pg_sandbox(POSTGRES_URL, policy_sql=policy, pool_size=20, max_overflow=0)
        with portal.wrap_async_context_manager(sandbox) as box:
            statement, params = rls_signing_key_sql(key, schema=box.schema)

            async def install() -> None:
                async with box.admin.begin() as conn:
                    await conn.execute(sql_text(statement), params)

            portal.call(install)
            yield portal, box, key


@pytest.mark.parametrize("shape", ["sequential", "concurrent"])
def test_postgres_signed(benchmark: Any, pg_signed_box: tuple[Any, Any, bytes], shape: str) -> None:
    benchmark.group = f"sessions postgres {shape}"
    benchmark.name = f"test_postgres[library-rls-signed-{shape}]"
    portal, box, key = pg_signed_box
    manager = SessionManager(
        box.engine,
        per_user_limit=CONCURRENT,
        acquire_timeout=60,
        row_level_security="signed",
        rls_key=key,
        rls_schema=box.schema,
        rls_tables=[box.table],
    )
    run = (_sequential if shape == "sequential" else _concurrent)(_library(manager))
    portal.call(run)
    benchmark.pedantic(lambda: portal.call(run), rounds=5, iterations=1)
