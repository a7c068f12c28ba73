"""protect(): ORM tenant filtering, stamping and write checks on SQLite."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

import isolation
from _support.databases import Note
from isolation import ConfigurationError, CrossContextAccessError, UsageError, UserContext
from isolation.sessions import SessionManager

pytestmark = pytest.mark.anyio

PRINCIPALS = [("t1", "alice"), ("t2", "alice"), ("t1", "bob")]


async def seed(manager: SessionManager) -> None:
    for tenant, user in PRINCIPALS:
        async with isolation.scope(UserContext.new(user, tenant_id=tenant)), manager.session() as s:
            s.add_all([Note(body=f"{tenant}/{user}/{i}") for i in range(3)])


@pytest.fixture
async def manager(engine: AsyncEngine) -> SessionManager:
    manager = SessionManager(engine)
    manager.protect(Note, user_column="owner", tenant_column=Note.tenant)
    await seed(manager)
    return manager


class TestReads:
    @pytest.mark.parametrize(("tenant", "user"), PRINCIPALS)
    async def test_select_sees_only_own_rows(
        self, manager: SessionManager, tenant: str, user: str
    ) -> None:
        """ORM selects return only the principal's rows, the same user id in two tenants too."""
        async with isolation.scope(UserContext.new(user, tenant_id=tenant)), manager.session() as s:
            rows = (await s.scalars(select(Note))).all()
            assert len(rows) == 3
            assert {(r.tenant, r.owner) for r in rows} == {(tenant, user)}
            assert await s.get(Note, 1) is None or (tenant, user) == ("t1", "alice")

    async def test_update_and_delete_touch_only_own_rows(self, manager: SessionManager) -> None:
        """ORM update() and delete() carry the criteria too."""
        async with (
            isolation.scope(UserContext.new("alice", tenant_id="t2")),
            manager.session() as s,
        ):
            await s.execute(update(Note).values(body="changed"))
            await s.execute(delete(Note).where(Note.body == "changed"))
        async with (
            isolation.scope(UserContext.new("alice", tenant_id="t1")),
            manager.session() as s,
        ):
            assert len((await s.scalars(select(Note))).all()) == 3
            # Raw SQL is not covered on SQLite (documented): it sees every row.
            assert (await s.execute(text("select count(*) from isolation_notes"))).scalar() == 6

    async def test_user_only_protection_refuses_tenant_contexts(self, engine: AsyncEngine) -> None:
        """With user_column alone, a context with a tenant is refused, not served."""
        manager = SessionManager(engine)
        manager.protect(Note, user_column="owner")
        async with (
            isolation.scope(UserContext.new("alice", tenant_id="t1")),
            manager.session() as s,
        ):
            with pytest.raises(ConfigurationError, match="user column alone"):
                await s.execute(select(Note))
            s.add(Note(body="x"))
            with pytest.raises(ConfigurationError, match="user column alone"):
                await s.flush()
            await s.rollback()
        async with isolation.scope(UserContext.new("alice")), manager.session() as s:
            s.add(Note(body="no tenant"))
            await s.flush()
            assert [n.owner for n in (await s.scalars(select(Note))).all()] == ["alice"]

    async def test_tenant_protection_refuses_contexts_without_tenant(
        self, manager: SessionManager
    ) -> None:
        """A model with a tenant column refuses a context that has no tenant_id."""
        async with isolation.scope(UserContext.new("alice")), manager.session() as s:
            with pytest.raises(ConfigurationError, match="no tenant_id"):
                await s.execute(select(Note))


class TestWrites:
    async def test_new_rows_are_stamped(self, engine: AsyncEngine, manager: SessionManager) -> None:
        """Rows added without owner columns get the principal's."""
        async with isolation.scope(UserContext.new("bob", tenant_id="t9")), manager.session() as s:
            s.add(Note(body="stamped"))
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text("select tenant, owner from isolation_notes where body='stamped'")
                )
            ).one()
        assert tuple(row) == ("t9", "bob")

    @pytest.mark.parametrize(
        "values", [{"owner": "mallory"}, {"tenant": "t2"}], ids=["user", "tenant"]
    )
    async def test_inserting_a_foreign_row_is_refused(
        self, engine: AsyncEngine, manager: SessionManager, values: dict[str, str]
    ) -> None:
        """A new row naming another owner raises CrossContextAccessError; nothing is written."""
        with pytest.raises(CrossContextAccessError):
            async with (
                isolation.scope(UserContext.new("alice", tenant_id="t1")),
                manager.session() as s,
            ):
                s.add(Note(body="forged", **values))
        async with engine.connect() as conn:
            assert (
                await conn.execute(text("select count(*) from isolation_notes where body='forged'"))
            ).scalar() == 0

    async def test_changing_the_owner_is_refused(self, manager: SessionManager) -> None:
        """Moving an own row to another principal raises CrossContextAccessError."""
        with pytest.raises(CrossContextAccessError, match="change the owner"):
            async with (
                isolation.scope(UserContext.new("alice", tenant_id="t1")),
                manager.session() as s,
            ):
                row = (await s.scalars(select(Note))).first()
                assert row is not None
                row.tenant = "t2"
        async with (
            isolation.scope(UserContext.new("alice", tenant_id="t2")),
            manager.session() as s,
        ):
            assert len((await s.scalars(select(Note))).all()) == 3

    async def test_flushing_a_foreign_row_is_refused(
        self, engine: AsyncEngine, manager: SessionManager
    ) -> None:
        """A row of another principal reaching the session (merge) cannot be updated or deleted."""
        async with (
            isolation.scope(UserContext.new("alice", tenant_id="t1")),
            manager.session() as s,
        ):
            foreign = Note(id=4, body="t2/alice/0", tenant="t2", owner="alice")
            with pytest.raises(CrossContextAccessError):
                merged = await s.merge(foreign)
                merged.body = "hijacked"
                await s.flush()
            await s.rollback()
        async with engine.connect() as conn:
            bodies = (
                await conn.execute(text("select body from isolation_notes where body='hijacked'"))
            ).all()
        assert bodies == []

    async def test_bulk_insert_is_refused(self, manager: SessionManager) -> None:
        """ORM bulk insert() cannot be stamped, so it is refused."""
        async with (
            isolation.scope(UserContext.new("alice", tenant_id="t1")),
            manager.session() as s,
        ):
            with pytest.raises(UsageError, match="bulk insert"):
                await s.execute(insert(Note).values(body="bulk", owner="alice", tenant="t1"))


class TestConfiguration:
    async def test_columns_are_checked(self, engine: AsyncEngine) -> None:
        """protect() needs a column and refuses names the model does not map."""
        manager = SessionManager(engine)
        with pytest.raises(ConfigurationError, match="needs user_column"):
            manager.protect(Note)
        with pytest.raises(ConfigurationError, match="no mapped column 'nope'"):
            manager.protect(Note, user_column="nope")
        with pytest.raises(ConfigurationError, match="mapped ORM class"):
            manager.protect(int, user_column="x")
