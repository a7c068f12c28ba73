"""Row-level security on a real PostgreSQL, as a role that is neither owner nor superuser."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from sqlalchemy import Integer, String, create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, mapped_column

import isolation
from _support.databases import Note, Sandbox, checked_out, pg_sandbox
from isolation import ConfigurationError, CrossContextAccessError, UserContext
from isolation.sessions import SessionManager
from isolation.sessions.postgres import rls_policy_sql

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


class TestPolicySql:
    def test_statements(self) -> None:
        """Enable, force, drop and create: one statement each, identifiers quoted."""
        statements = rls_policy_sql(
            "app.notes", user_column="owner", tenant_column='te"nant', user_type="uuid"
        )
        assert statements[:4] == [
            'ALTER TABLE "app"."notes" ENABLE ROW LEVEL SECURITY',
            'ALTER TABLE "app"."notes" FORCE ROW LEVEL SECURITY',
            'DROP POLICY IF EXISTS "isolation_principal" ON "app"."notes"',
            'DROP POLICY IF EXISTS "isolation_unrestricted" ON "app"."notes"',
        ]
        policy = statements[4]
        assert all(";" not in s for s in statements)
        assert "FOR ALL USING (" in policy
        assert "WITH CHECK (" in policy
        assert "\"owner\" = NULLIF(current_setting('isolation.user_id', true), '')::uuid" in policy
        assert (
            "\"te\"\"nant\" = NULLIF(current_setting('isolation.tenant_id', true), '')::text"
            in policy
        )

    @pytest.mark.parametrize(
        "kwargs",
        [{}, {"user_column": "owner", "user_type": "text; DROP TABLE x"}, {"user_column": ""}],
    )
    def test_refuses_what_it_cannot_quote(self, kwargs: dict[str, str]) -> None:
        """No column, a type that is not a plain name, or an empty identifier is refused."""
        with pytest.raises(ConfigurationError):
            rls_policy_sql("notes", **kwargs)


@pytest.fixture
async def box(postgres_url: str) -> AsyncIterator[Sandbox]:
    async with pg_sandbox(postgres_url, pool_size=1, max_overflow=0) as sandbox:
        yield sandbox


def manager_for(box: Sandbox, **kwargs: object) -> SessionManager:
    return SessionManager(box.engine, row_level_security=True, rls_tables=[box.table], **kwargs)  # type: ignore[arg-type]


async def write_as(manager: SessionManager, user: str, tenant: str, body: str) -> None:
    async with isolation.scope(UserContext.new(user, tenant_id=tenant)), manager.session() as s:
        s.add(Note(body=body, owner=user, tenant=tenant))


class TestRowLevelSecurity:
    async def test_raw_sql_sees_only_own_rows(self, box: Sandbox) -> None:
        """Raw SQL under RLS returns only the principal's rows; the same user id in two
        tenants is two users; with nothing bound, no row at all."""
        manager = manager_for(box)
        for tenant, user in [("t1", "alice"), ("t2", "alice"), ("t1", "bob")]:
            await write_as(manager, user, tenant, f"{tenant}/{user}")
        async with (
            isolation.scope(UserContext.new("alice", tenant_id="t1")),
            manager.session() as s,
        ):
            rows = (await s.execute(text("SELECT tenant, owner, body FROM isolation_notes"))).all()
        assert [tuple(r) for r in rows] == [("t1", "alice", "t1/alice")]
        async with box.engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM isolation_notes"))).scalar() == 0

    async def test_writing_a_foreign_row_is_refused_by_the_policy(self, box: Sandbox) -> None:
        """WITH CHECK refuses a row of another principal even from raw SQL (typed)."""
        manager = manager_for(box)
        with pytest.raises(CrossContextAccessError, match="row-level security"):
            async with (
                isolation.scope(UserContext.new("alice", tenant_id="t1")),
                manager.session() as s,
            ):
                await s.execute(
                    text(
                        "INSERT INTO isolation_notes (tenant, owner, body) "
                        "VALUES ('t2', 'alice', 'x')"
                    )
                )

    async def test_settings_do_not_survive_into_the_pool(self, box: Sandbox) -> None:
        """After a block, the pooled connection (pool of 1) has both settings empty."""
        manager = manager_for(box)
        async with (
            isolation.scope(UserContext.new("alice", tenant_id="t1")),
            manager.session() as s,
        ):
            inside = (
                await s.execute(text("SELECT current_setting('isolation.user_id', true)"))
            ).scalar()
            assert inside == "alice"
        async with box.engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT current_setting('isolation.user_id', true), "
                        "current_setting('isolation.tenant_id', true)"
                    )
                )
            ).one()
        assert all(value in (None, "") for value in row)

    async def test_alternating_users_on_one_connection(self, box: Sandbox) -> None:
        """1,000 alternating checkouts by two users on pool_size=1 never see the other's setting."""
        manager = manager_for(box)
        users = [("t1", "alice"), ("t2", "alice")]
        for tenant, user in users:
            await write_as(manager, user, tenant, f"{tenant}/{user}")
        for i in range(1000):
            tenant, user = users[i % 2]
            async with (
                isolation.scope(UserContext.new(user, tenant_id=tenant)),
                manager.session() as s,
            ):
                row = (
                    await s.execute(
                        text(
                            "SELECT current_setting('isolation.user_id', true), "
                            "current_setting('isolation.tenant_id', true), "
                            "(SELECT array_agg(tenant) FROM isolation_notes)"
                        )
                    )
                ).one()
            assert tuple(row) == (user, tenant, [tenant]), i
        assert checked_out(box.engine) == 0

    async def test_terminated_backend_leaves_no_partial_commit(self, box: Sandbox) -> None:
        """pg_terminate_backend mid-transaction: nothing committed, the next request works."""
        manager = manager_for(box)
        with pytest.raises(isolation.DatabaseConnectionLostError):
            async with (
                isolation.scope(UserContext.new("alice", tenant_id="t1")),
                manager.session() as s,
            ):
                s.add(Note(body="partial", owner="alice", tenant="t1"))
                await s.flush()
                pid = (await s.execute(text("SELECT pg_backend_pid()"))).scalar()
                async with box.admin.connect() as admin:
                    await admin.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                    await admin.commit()
                s.add(Note(body="after", owner="alice", tenant="t1"))
                await s.flush()
        await write_as(manager, "alice", "t1", "next")
        async with box.admin.connect() as admin:
            bodies = (await admin.execute(text(f"SELECT body FROM {box.table}"))).scalars().all()
        assert bodies == ["next"]
        assert manager.stats().checked_out == 0

    async def test_return_check_catches_a_plain_set(self, box: Sandbox) -> None:
        """A session-level SET left on a connection is found on return; the connection dropped."""
        manager = manager_for(box, return_check=1.0)
        invalidated: list[object] = []
        from sqlalchemy import event

        event.listen(box.engine.sync_engine.pool, "invalidate", lambda *a: invalidated.append(a))
        async with (
            isolation.scope(UserContext.new("alice", tenant_id="t1")),
            manager.session() as s,
        ):
            await s.execute(text("SET isolation.user_id = 'alice'"))
        assert manager.stats().dirty_returns == 1
        assert invalidated
        await manager.aclose()
        async with box.engine.connect() as conn:
            value = (
                await conn.execute(text("SELECT current_setting('isolation.user_id', true)"))
            ).scalar()
        assert value in (None, "")


class TestStartupChecks:
    async def test_superuser_is_refused(self, postgres_url: str, box: Sandbox) -> None:
        """Connected as a superuser, the manager refuses to start, and lazily on first use."""
        from sqlalchemy.engine import make_url

        engine = create_async_engine(make_url(postgres_url).set(drivername="postgresql+asyncpg"))
        try:
            manager = SessionManager(engine, row_level_security=True, rls_tables=[box.table])
            with pytest.raises(ConfigurationError, match="superuser"):
                await manager.start()
            lazy = SessionManager(engine, row_level_security=True, rls_tables=[box.table])
            for _ in range(2):  # refused every time, never skipped
                with pytest.raises(ConfigurationError, match="superuser"):
                    async with isolation.scope(UserContext.new("alice")), lazy.session():
                        pass
            assert lazy.stats().checked_out == 0
        finally:
            await engine.dispose()

    @pytest.mark.parametrize("force", [False, True], ids=["no-force", "force"])
    async def test_owning_role(self, postgres_url: str, force: bool) -> None:
        """A role that owns a table is refused unless the table forces RLS."""
        async with pg_sandbox(postgres_url, role_owns_table=True, force=force) as sandbox:
            manager = SessionManager(
                sandbox.engine, row_level_security=True, rls_tables=[sandbox.table]
            )
            if force:
                await manager.start()
                await manager.aclose()
            else:
                with pytest.raises(ConfigurationError, match="owns the table"):
                    await manager.start()

    async def test_bypassrls_and_missing_table_are_refused(self, box: Sandbox) -> None:
        """BYPASSRLS and a table that does not exist are both named."""
        async with box.admin.begin() as conn:
            await conn.exec_driver_sql(f'ALTER ROLE "{box.role}" BYPASSRLS')
        manager = SessionManager(
            box.engine, row_level_security=True, rls_tables=[box.table, "no_such_table"]
        )
        with pytest.raises(ConfigurationError, match="BYPASSRLS") as refused:
            await manager.start()
        assert "no_such_table" in str(refused.value)

    async def test_autocommit_is_refused(self, box: Sandbox) -> None:
        """An AUTOCOMMIT engine would make the settings last one statement: refused."""
        engine = box.engine.execution_options(isolation_level="AUTOCOMMIT")
        manager = SessionManager(engine, row_level_security=True, rls_tables=[box.table])
        with pytest.raises(ConfigurationError, match="AUTOCOMMIT"):
            await manager.start()

    async def test_rls_on_sqlite_is_refused(self, engine: object) -> None:
        """row_level_security=True needs PostgreSQL."""
        manager = SessionManager(engine, row_level_security=True)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="needs PostgreSQL"):
            await manager.start()


async def test_concurrent_first_use_runs_the_check_once(box: Sandbox) -> None:
    """Several first requests at once all wait for the one startup check, then proceed."""
    manager = SessionManager(
        box.engine, row_level_security=True, rls_tables=[box.table], per_user_limit=1
    )
    done = 0

    async def request(i: int) -> None:
        nonlocal done
        async with isolation.scope(UserContext.new(f"u{i}", tenant_id="t")), manager.session() as s:
            await s.execute(text("SELECT 1"))
        done += 1

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(request, i)
    assert done == 3


class _GhostBase(DeclarativeBase):
    """A model protected while the start check runs: its table has no policy (none exists)."""


class Ghost(_GhostBase):
    __tablename__ = "isolation_no_such_table_protected_late"
    id = mapped_column(Integer, primary_key=True)
    owner = mapped_column(String(50), nullable=False)


@pytest.mark.parametrize("face", ["async", "sync"])
async def test_protect_during_the_start_check_is_checked(
    box: Sandbox, monkeypatch: pytest.MonkeyPatch, face: str
) -> None:
    """protect() called while the start check runs (another thread's first session) adds a
    table that check did not see: the check is owed again, so the table without a policy
    is refused, never skipped because the earlier check passed."""
    import isolation.sessions.postgres as postgres

    if face == "async":
        manager = manager_for(box)
        real = postgres.check_role

        async def check_role(*args: object, **kwargs: object) -> object:
            manager.protect(Ghost, user_column="owner")  # arrives while the check runs
            return await real(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(postgres, "check_role", check_role)
        with pytest.raises(ConfigurationError, match=Ghost.__tablename__):
            async with isolation.scope(UserContext.new("alice", tenant_id="t")):
                async with manager.session():
                    pass
        return
    sync_url = box.engine.url.set(drivername="postgresql+psycopg")
    engine = create_engine(sync_url, pool_size=1, max_overflow=0)
    try:
        manager = SessionManager(engine, row_level_security=True, rls_tables=[box.table])
        real_sync = postgres.check_role_sync

        def check_role_sync(*args: object, **kwargs: object) -> object:
            manager.protect(Ghost, user_column="owner")
            return real_sync(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(postgres, "check_role_sync", check_role_sync)

        def first_session() -> None:
            with isolation.scope(UserContext.new("alice", tenant_id="t")):
                with manager.session():
                    pass

        with pytest.raises(ConfigurationError, match=Ghost.__tablename__):
            await anyio.to_thread.run_sync(first_session)
    finally:
        engine.dispose()
