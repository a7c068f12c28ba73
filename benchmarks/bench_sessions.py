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

The sync face (``test_sqlite_sync``, ``test_postgres_sync``): per request, open a
session, one small write and one read of the user's row, commit, close —
sequentially and from 16 threads — with ``with manager.session()`` against a
plain ``sqlalchemy.orm.Session(engine)`` doing the same, timed in alternating
pairs (the summary prints the median ratio of the pairs); the same targets.
PostgreSQL rows need ``ISOLATION_TEST_POSTGRES_URL``.
Run: ``pytest benchmarks/bench_sessions.py`` (``-k sync`` for the sync face).
"""

from __future__ import annotations

import contextvars
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import Engine, create_engine, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import Session

import isolation
from isolation.report._modes._support.sessions import (
    Note,
    create_tables,
    pg_sandbox,
    sqlite_engine,
    sync_sqlite_engine,
)
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


# -- the sync face: `with manager.session()` in threads, against a plain `Session` ------------
#
# Per request: open a session, one small write (an ORM UPDATE of the user's row) and one
# read (select the user's rows), commit, close. The write comes first so that, on SQLite,
# a deferred transaction takes the write lock at its first statement (waiting on
# busy_timeout) instead of failing to upgrade a read snapshot another writer outdated.
# Sequentially in the benchmark's thread, and from SYNC_THREADS threads of a
# ThreadPoolExecutor (as FastAPI's pool runs sync endpoints). The anchor and the library
# each get their own engine, so the anchor's carries no manager's guard.
#
# Measured in alternating pairs (anchor batch, library batch, the order swapped every
# pair) inside one benchmark: on a shared machine the load drifts within seconds, and
# rows timed one after the other measure the drift. The summary prints the median of
# the pairs' ratios of wall time and of process CPU time (extra_info).

SYNC_THREADS = 16
SYNC_BATCH = 100
SYNC_PAIRS = 15


def _sync_statements(ctx: isolation.UserContext, i: int, *, explicit_where: bool) -> list[Any]:
    mine = (Note.owner == ctx.user_id, Note.tenant == ctx.tenant_id) if explicit_where else ()
    return [update(Note).where(*mine).values(body=f"request {i}"), select(Note).where(*mine)]


def _sync_plain(engine: Engine, *, set_config: bool = False) -> Callable[[int], None]:
    def request(i: int) -> None:
        ctx = USERS[i % len(USERS)]
        write, read = _sync_statements(ctx, i, explicit_where=True)
        with Session(engine) as session:
            if set_config:
                session.execute(
                    text(
                        "SELECT set_config('isolation.user_id', :u, true), set_config('isolation.tenant_id', :t, true)"
                    ),
                    {"u": ctx.user_id, "t": ctx.tenant_id},
                )
            session.execute(write)
            session.execute(read).scalars().all()
            session.commit()

    return request


def _sync_library(manager: SessionManager, *, explicit_where: bool = True) -> Callable[[int], None]:
    def request(i: int) -> None:
        ctx = USERS[i % len(USERS)]
        write, read = _sync_statements(ctx, i, explicit_where=explicit_where)
        with isolation.scope(ctx), manager.session() as session:
            session.execute(write)
            session.execute(read).scalars().all()

    return request


def _sync_paired(
    benchmark: Any,
    anchor: Callable[[int], None],
    library: Callable[[int], None],
    shape: str,
) -> None:
    """Time ``anchor`` and ``library`` batches in alternating pairs; ratios in extra_info."""
    pool = ThreadPoolExecutor(SYNC_THREADS) if shape == "threads" else None

    def batch(request: Callable[[int], None]) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        if pool is None:
            for i in range(SYNC_BATCH):
                request(i)
        else:
            # Each thread starts from an empty context, as a server's worker does.
            list(pool.map(lambda i: contextvars.Context().run(request, i), range(SYNC_BATCH)))
        return time.perf_counter() - wall, time.process_time() - cpu

    pairs: list[tuple[tuple[float, float], tuple[float, float]]] = []

    def pair() -> None:
        if len(pairs) % 2:
            lib = batch(library)
            plain = batch(anchor)
        else:
            plain = batch(anchor)
            lib = batch(library)
        pairs.append((plain, lib))

    try:
        batch(anchor)  # warm the pools and the statement caches
        batch(library)
        benchmark.pedantic(pair, rounds=SYNC_PAIRS, iterations=1)
    finally:
        if pool is not None:
            pool.shutdown()
    per_request = 1e6 / SYNC_BATCH
    benchmark.extra_info.update(
        anchor_us=statistics.median(p[0][0] for p in pairs) * per_request,
        library_us=statistics.median(p[1][0] for p in pairs) * per_request,
        paired_ratio=statistics.median(p[1][0] / p[0][0] for p in pairs),
        paired_cpu_ratio=statistics.median(p[1][1] / p[0][1] for p in pairs),
    )


def _seed(engine: Engine, table: str) -> None:
    """One row per bench user (outside any scope), the row each request updates and reads."""
    with engine.begin() as conn:
        conn.execute(text(f"DELETE FROM {table}"))
        conn.execute(
            text(f"INSERT INTO {table} (tenant, owner, body) VALUES (:t, :o, 'seed')"),
            [{"t": ctx.tenant_id, "o": ctx.user_id} for ctx in USERS],
        )


@pytest.fixture(scope="module")
def sync_sqlite_path() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "bench-sync.sqlite")
        engine = sync_sqlite_engine(path)
        _seed(engine, "isolation_notes")
        engine.dispose()
        yield path


@pytest.mark.parametrize("shape", ["sequential", "threads"])
@pytest.mark.parametrize("row", ["library", "protect"])
def test_sqlite_sync(benchmark: Any, sync_sqlite_path: str, shape: str, row: str) -> None:
    benchmark.group = "sync sessions sqlite, paired with a plain Session"
    plain_engine = sync_sqlite_engine(sync_sqlite_path, pool_size=SYNC_THREADS, max_overflow=0)
    engine = sync_sqlite_engine(sync_sqlite_path, pool_size=SYNC_THREADS, max_overflow=0)
    try:
        manager = SessionManager(engine, per_user_limit=SYNC_THREADS, acquire_timeout=60)
        if row == "protect":
            manager.protect(Note, user_column="owner", tenant_column="tenant")
        library = _sync_library(manager, explicit_where=row == "library")
        _sync_paired(benchmark, _sync_plain(plain_engine), library, shape)
    finally:
        plain_engine.dispose()
        engine.dispose()


@pytest.fixture(scope="module")
def pg_sync_boxes() -> Iterator[dict[str, Any]]:
    """Two sandboxes: the notes table without a policy (the library row, whose statements
    then reach real rows) and with one (the row-level security row)."""
    if POSTGRES_URL is None:
        pytest.skip("ISOLATION_TEST_POSTGRES_URL is not set")

    def no_policy(table: str, **kwargs: Any) -> list[str]:
        return []

    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        plain_sandbox = pg_sandbox(POSTGRES_URL, policy_sql=no_policy)
        rls_sandbox = pg_sandbox(POSTGRES_URL)
        with (
            portal.wrap_async_context_manager(plain_sandbox) as plain_box,
            portal.wrap_async_context_manager(rls_sandbox) as rls_box,
        ):
            admin = create_engine(make_url(POSTGRES_URL).set(drivername="postgresql+psycopg"))
            try:
                _seed(admin, plain_box.table)
                _seed(admin, rls_box.table)
            finally:
                admin.dispose()
            yield {"plain": plain_box, "rls": rls_box}


@pytest.mark.parametrize("shape", ["sequential", "threads"])
@pytest.mark.parametrize("row", ["library", "library-rls", "library-rls-no-return-check"])
def test_postgres_sync(benchmark: Any, pg_sync_boxes: dict[str, Any], shape: str, row: str) -> None:
    """``library`` against a plain ``Session``; ``library-rls`` against a plain ``Session``
    that sends the same ``set_config`` first (the library's row adds the return check's
    round trip; ``-no-return-check`` is ``return_check=0``)."""
    benchmark.group = "sync sessions postgres, paired with a plain Session"
    rls = row.startswith("library-rls")
    box = pg_sync_boxes["rls" if rls else "plain"]
    url = box.engine.url.set(drivername="postgresql+psycopg")
    plain_engine = create_engine(url, pool_size=SYNC_THREADS, max_overflow=0)
    engine = create_engine(url, pool_size=SYNC_THREADS, max_overflow=0)
    try:
        manager = SessionManager(
            engine,
            per_user_limit=SYNC_THREADS,
            acquire_timeout=60,
            row_level_security=rls,
            rls_tables=[box.table] if rls else (),
            return_check=0 if row.endswith("no-return-check") else 1,
        )
        anchor = _sync_plain(plain_engine, set_config=rls)
        _sync_paired(benchmark, anchor, _sync_library(manager), shape)
    finally:
        plain_engine.dispose()
        engine.dispose()
