"""protect() on every ORM path (issue 16, findings 1 to 3), on SQLite and PostgreSQL.

Writes (bulk UPDATE/DELETE by primary key, ``update().values()`` of an owner
column, the legacy bulk methods, ``merge``, flushes of forged objects) either
get the criteria or raise ``CrossContextAccessError``; reads through
relationship loads, ``refresh()`` and detached or merged objects are filtered
or refused. PostgreSQL runs without row-level security: ``protect()`` alone.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from sqlalchemy import bindparam, select, text, update
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.exc import ObjectDeletedError

import isolation
from _support.databases import Note
from isolation import ConfigurationError, CrossContextAccessError, UsageError, UserContext
from isolation.report._modes.fm01_sessions._orm_paths import (
    OPS,
    SEED_FOLDERS,
    SEED_ITEMS,
    Folder,
    Item,
    Op,
    OrmDatabase,
    attacks,
    open_orm_database,
    ops_strategy,
    reset,
    run_ops,
)
from isolation.sessions import SessionManager

pytestmark = pytest.mark.anyio

BOB_ITEM = next(i[0] for i in SEED_ITEMS if i[1] == "bob" and i[3] == SEED_FOLDERS[2][0])
ALICE_ITEM = next(i[0] for i in SEED_ITEMS if i[1] == "alice")
BOB_FOLDER = SEED_FOLDERS[2][0]
ALICE_IN_BOB_FOLDER = next(i[0] for i in SEED_ITEMS if i[1] == "alice" and i[3] == BOB_FOLDER)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db(request: pytest.FixtureRequest) -> AsyncIterator[OrmDatabase]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    async with open_orm_database(request.param, url) as database:
        await reset(database)
        yield database


@pytest.fixture
def manager(db: OrmDatabase) -> SessionManager:
    manager = SessionManager(db.engine)
    manager.protect(Folder, user_column="owner")
    manager.protect(Item, user_column=Item.owner)
    return manager


async def as_alice(manager: SessionManager, work: Callable[[AsyncSession], Any]) -> Any:
    async with isolation.scope(UserContext.new("alice")), manager.session() as s:
        return await work(s)


async def item_row(db: OrmDatabase, item_id: int) -> tuple[Any, ...] | None:
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT owner, body FROM isolation_orm_items WHERE id = :i"), {"i": item_id}
            )
        ).one_or_none()
    return None if row is None else tuple(row)


async def bodies_owned_by(db: OrmDatabase, owner: str) -> list[str]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT body FROM isolation_orm_items WHERE owner = :o ORDER BY body"),
            {"o": owner},
        )
        return [r[0] for r in rows]


def forged(item_id: int, **values: Any) -> Item:
    obj = Item(id=item_id, **values)
    make_transient_to_detached(obj)
    return obj


class TestWrites:
    async def test_bulk_update_by_primary_key(
        self, db: OrmDatabase, manager: SessionManager
    ) -> None:
        """Finding 1: ORM bulk UPDATE by primary key of another's row is refused."""
        with pytest.raises(CrossContextAccessError, match="by primary key"):
            await as_alice(
                manager, lambda s: s.execute(update(Item), [{"id": BOB_ITEM, "body": "pwned"}])
            )
        assert await item_row(db, BOB_ITEM) == ("bob", "bob/item/00")

    async def test_bulk_update_by_primary_key_of_own_rows(
        self, db: OrmDatabase, manager: SessionManager
    ) -> None:
        """The same statement on the principal's own rows works."""
        await as_alice(
            manager, lambda s: s.execute(update(Item), [{"id": ALICE_ITEM, "body": "mine"}])
        )
        assert await item_row(db, ALICE_ITEM) == ("alice", "mine")

    async def test_bulk_delete_by_primary_key(
        self, db: OrmDatabase, manager: SessionManager
    ) -> None:
        """ORM bulk DELETE by primary key of another's row never reaches it."""
        from sqlalchemy import delete

        with pytest.raises((CrossContextAccessError, InvalidRequestError)):
            await as_alice(manager, lambda s: s.execute(delete(Item), [{"id": BOB_ITEM}]))
        assert await item_row(db, BOB_ITEM) == ("bob", "bob/item/00")

    @pytest.mark.parametrize("many", [False, True], ids=["one", "executemany"])
    async def test_core_only_strategy(
        self, db: OrmDatabase, manager: SessionManager, many: bool
    ) -> None:
        """dml_strategy="core_only" (no loader criteria in SQLAlchemy) reaches only own rows."""
        stmt = (
            update(Item)
            .where(Item.id == bindparam("i"))
            .values(body="pwned")
            .execution_options(dml_strategy="core_only")
        )
        params = [{"i": BOB_ITEM}, {"i": ALICE_ITEM}] if many else {"i": BOB_ITEM}
        await as_alice(manager, lambda s: s.execute(stmt, params))
        assert await item_row(db, BOB_ITEM) == ("bob", "bob/item/00")
        if many:
            assert await item_row(db, ALICE_ITEM) == ("alice", "pwned")

    async def test_bulk_update_mappings(self, db: OrmDatabase, manager: SessionManager) -> None:
        """Finding 1: bulk_update_mappings (no do_orm_execute, no before_flush) is refused."""
        with pytest.raises(CrossContextAccessError, match="by primary key"):
            await as_alice(
                manager,
                lambda s: s.run_sync(
                    lambda ss: ss.bulk_update_mappings(Item, [{"id": BOB_ITEM, "body": "pwned"}])
                ),
            )
        assert await item_row(db, BOB_ITEM) == ("bob", "bob/item/00")

    async def test_mass_assignment_of_the_owner(
        self, db: OrmDatabase, manager: SessionManager
    ) -> None:
        """Finding 2: update().values(owner="bob") on own rows is refused."""
        with pytest.raises(CrossContextAccessError, match="set the owner"):
            await as_alice(
                manager,
                lambda s: s.execute(
                    update(Item).where(Item.owner == "alice").values(owner="bob", body="planted")
                ),
            )
        assert "planted" not in await bodies_owned_by(db, "bob")

    @pytest.mark.parametrize(
        "values",
        [{"owner": Item.body}, {Item.owner: "bob"}],
        ids=["expression", "column-key"],
    )
    async def test_owner_set_by_other_forms(
        self, db: OrmDatabase, manager: SessionManager, values: dict[Any, Any]
    ) -> None:
        """An SQL expression, or a column key, for the owner is refused as well."""
        with pytest.raises(CrossContextAccessError, match="set the owner"):
            await as_alice(manager, lambda s: s.execute(update(Item).values(values)))
        assert len(await bodies_owned_by(db, "bob")) == 5

    async def test_bulk_insert_mappings(self, db: OrmDatabase, manager: SessionManager) -> None:
        """Finding 2: bulk_insert_mappings naming another owner is refused; without one,
        the row is stamped."""
        with pytest.raises(CrossContextAccessError, match="insert"):
            await as_alice(
                manager,
                lambda s: s.run_sync(
                    lambda ss: ss.bulk_insert_mappings(Item, [{"owner": "bob", "body": "planted"}])
                ),
            )
        await as_alice(
            manager,
            lambda s: s.run_sync(lambda ss: ss.bulk_insert_mappings(Item, [{"body": "stamped"}])),
        )
        assert "planted" not in await bodies_owned_by(db, "bob")
        assert "stamped" in await bodies_owned_by(db, "alice")

    async def test_bulk_save_objects(self, db: OrmDatabase, manager: SessionManager) -> None:
        """Finding 2: bulk_save_objects of a new row of another owner, or of a forged
        object addressing another's row, is refused."""
        with pytest.raises(CrossContextAccessError, match="insert"):
            await as_alice(
                manager,
                lambda s: s.run_sync(
                    lambda ss: ss.bulk_save_objects([Item(owner="bob", body="planted")])
                ),
            )
        obj = forged(BOB_ITEM, owner="alice")
        obj.body = "pwned"
        with pytest.raises(CrossContextAccessError, match="by primary key"):
            await as_alice(manager, lambda s: s.run_sync(lambda ss: ss.bulk_save_objects([obj])))
        assert "planted" not in await bodies_owned_by(db, "bob")
        assert await item_row(db, BOB_ITEM) == ("bob", "bob/item/00")

    @pytest.mark.parametrize("how", ["merge", "add-delete"])
    async def test_flush_of_a_forged_object(
        self, db: OrmDatabase, manager: SessionManager, how: str
    ) -> None:
        """A client-built object claiming the principal owns another's row cannot be
        flushed as an update or a delete: the row is checked in the database."""

        async def work(s: AsyncSession) -> None:
            if how == "merge":
                obj = await s.merge(forged(BOB_ITEM, owner="alice", body="x"), load=False)
                obj.body = "pwned"
            else:
                obj = forged(BOB_ITEM, owner="alice", body="x")
                s.add(obj)
                await s.delete(obj)
            await s.flush()

        with pytest.raises(CrossContextAccessError, match="by primary key"):
            await as_alice(manager, work)
        assert await item_row(db, BOB_ITEM) == ("bob", "bob/item/00")

    async def test_folder_with_uuid_key(self, db: OrmDatabase, manager: SessionManager) -> None:
        """UUID primary keys are checked the same way."""
        change = [{"id": BOB_FOLDER, "name": "pwned"}]
        with pytest.raises(CrossContextAccessError):
            await as_alice(
                manager, lambda s: s.run_sync(lambda ss: ss.bulk_update_mappings(Folder, change))
            )
        with pytest.raises(CrossContextAccessError):
            await as_alice(manager, lambda s: s.execute(update(Folder), change))


class TestReads:
    @pytest.mark.parametrize("strategy", ["select", "selectin", "joined", "subquery"])
    async def test_lazy_load_from_a_cached_parent(
        self, manager: SessionManager, strategy: str
    ) -> None:
        """Finding 3: bob's folder from a cache, merged with load=False, does not lazy-load
        bob's items into alice's session."""
        cached = Folder(id=BOB_FOLDER, owner="bob", name="bob/folder/0")
        make_transient_to_detached(cached)

        async def work(s: AsyncSession) -> list[str]:
            parent = await s.merge(cached, load=False)
            return await s.run_sync(
                lambda _: [i.body for i in getattr(parent, f"items_{strategy}")]
            )

        with pytest.raises(CrossContextAccessError, match="relationships"):
            await as_alice(manager, work)

    @pytest.mark.parametrize("strategy", ["select", "selectin", "joined", "subquery"])
    async def test_lazy_load_from_a_forged_parent(
        self, manager: SessionManager, strategy: str
    ) -> None:
        """A forged parent claiming alice owns bob's folder reaches only alice's items."""
        parent_obj = Folder(id=BOB_FOLDER, owner="alice", name="x")
        make_transient_to_detached(parent_obj)

        async def work(s: AsyncSession) -> list[str]:
            parent = await s.merge(parent_obj, load=False)
            return await s.run_sync(
                lambda _: [i.body for i in getattr(parent, f"items_{strategy}")]
            )

        assert await as_alice(manager, work) == ["alice/item/cross"]

    @pytest.mark.parametrize("strategy", ["select", "selectin", "joined", "subquery"])
    async def test_loaded_parents_reach_only_own_children(
        self, manager: SessionManager, strategy: str
    ) -> None:
        """Every loader strategy from loaded parents: only the principal's rows."""

        async def work(s: AsyncSession) -> list[str]:
            folders = (await s.scalars(select(Folder))).unique().all()
            return await s.run_sync(
                lambda _: sorted(i.owner for f in folders for i in getattr(f, f"items_{strategy}"))
            )

        assert set(await as_alice(manager, work)) == {"alice"}

    async def test_refresh_of_a_merged_object(self, manager: SessionManager) -> None:
        """Finding 3: refresh() of a client-built object merged with bob's id finds no row."""

        async def work(s: AsyncSession) -> str:
            obj = await s.merge(forged(BOB_ITEM, owner="alice", body="x"), load=False)
            await s.refresh(obj)
            return obj.body

        with pytest.raises(InvalidRequestError, match="Could not refresh"):
            await as_alice(manager, work)

    async def test_attribute_of_a_transient_to_detached_object(
        self, manager: SessionManager
    ) -> None:
        """Finding 3: make_transient_to_detached(Item(id=bob_id)) + attribute access does
        not load bob's row."""

        async def work(s: AsyncSession) -> str:
            obj = forged(BOB_ITEM)
            s.add(obj)
            return await s.run_sync(lambda _: obj.body)

        with pytest.raises(ObjectDeletedError):
            await as_alice(manager, work)

    async def test_unloaded_attribute_of_a_forged_owner(self, manager: SessionManager) -> None:
        """A forged object that claims alice as owner loads no column of bob's row."""

        async def work(s: AsyncSession) -> str:
            obj = await s.merge(forged(BOB_ITEM, owner="alice"), load=False)
            return await s.run_sync(lambda _: obj.body)

        with pytest.raises(ObjectDeletedError):
            await as_alice(manager, work)

    async def test_rows_the_criteria_miss_are_refused_and_dropped(
        self, manager: SessionManager
    ) -> None:
        """The backstop: an ORM load the criteria do not reach (from_statement(text()))
        refuses bob's row, and leaves it neither in the identity map nor in an object."""

        async def work(s: AsyncSession) -> Any:
            stmt = select(Item).from_statement(
                text("SELECT * FROM isolation_orm_items WHERE id = :i")
            )
            with pytest.raises(CrossContextAccessError, match="load"):
                await s.scalars(stmt, {"i": BOB_ITEM})
            return await s.get(Item, BOB_ITEM)

        assert await as_alice(manager, work) is None

    async def test_own_rows_load_through_every_path(self, manager: SessionManager) -> None:
        """No over-refusal: refresh, detached access and from_statement on own rows work."""

        async def work(s: AsyncSession) -> list[str]:
            obj = await s.merge(forged(ALICE_ITEM, owner="alice", body="x"), load=False)
            await s.refresh(obj)
            other = forged(ALICE_IN_BOB_FOLDER)
            s.add(other)
            stmt = select(Item).from_statement(
                text("SELECT * FROM isolation_orm_items WHERE owner = 'alice'")
            )
            texts = [i.body for i in (await s.scalars(stmt)).all()]
            return [obj.body, await s.run_sync(lambda _: other.body), *texts]

        got = await as_alice(manager, work)
        assert got[:2] == ["alice/item/00", "alice/item/cross"]
        assert len(got) == 2 + 5


class TestTenantPairs:
    """The issue's shapes on the tenant-and-user model: alice@t1 against alice@t2."""

    @pytest.fixture
    async def notes(self, db: OrmDatabase) -> SessionManager:
        from _support.databases import Base

        async with db.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        manager = SessionManager(db.engine)
        manager.protect(Note, user_column="owner", tenant_column=Note.tenant)
        for tenant in ("t1", "t2"):
            async with (
                isolation.scope(UserContext.new("alice", tenant_id=tenant)),
                manager.session() as s,
            ):
                s.add(Note(id=101 if tenant == "t1" else 102, body=f"{tenant} secret"))
        return manager

    async def bodies(self, db: OrmDatabase) -> list[tuple[Any, ...]]:
        async with db.engine.connect() as conn:
            rows = await conn.execute(text("SELECT tenant, owner, body FROM isolation_notes"))
            return sorted(tuple(r) for r in rows)

    async def in_t1(self, manager: SessionManager, work: Callable[[AsyncSession], Any]) -> Any:
        async with (
            isolation.scope(UserContext.new("alice", tenant_id="t1")),
            manager.session() as s,
        ):
            return await work(s)

    async def test_bulk_writes_by_primary_key(self, db: OrmDatabase, notes: SessionManager) -> None:
        """ORM bulk UPDATE by primary key and bulk_update_mappings of the same user id's
        row in another tenant are refused."""
        with pytest.raises(CrossContextAccessError):
            await self.in_t1(notes, lambda s: s.execute(update(Note), [{"id": 102, "body": "x"}]))
        with pytest.raises(CrossContextAccessError):
            await self.in_t1(
                notes,
                lambda s: s.run_sync(
                    lambda ss: ss.bulk_update_mappings(Note, [{"id": 102, "body": "x"}])
                ),
            )
        assert await self.bodies(db) == [
            ("t1", "alice", "t1 secret"),
            ("t2", "alice", "t2 secret"),
        ]

    async def test_planting_in_another_tenant(self, db: OrmDatabase, notes: SessionManager) -> None:
        """Mass assignment of the tenant column and bulk inserts into another tenant are
        refused; a bulk insert without owner columns is stamped with both."""
        with pytest.raises(CrossContextAccessError, match="tenant"):
            await self.in_t1(
                notes,
                lambda s: s.execute(
                    update(Note).where(Note.owner == "alice").values(tenant="t2", body="planted")
                ),
            )
        with pytest.raises(CrossContextAccessError, match="tenant"):
            await self.in_t1(
                notes,
                lambda s: s.run_sync(
                    lambda ss: ss.bulk_insert_mappings(
                        Note, [{"tenant": "t2", "owner": "alice", "body": "planted"}]
                    )
                ),
            )
        with pytest.raises(CrossContextAccessError, match="tenant"):
            await self.in_t1(
                notes,
                lambda s: s.run_sync(
                    lambda ss: ss.bulk_save_objects([Note(tenant="t2", body="planted")])
                ),
            )
        await self.in_t1(
            notes, lambda s: s.run_sync(lambda ss: ss.bulk_insert_mappings(Note, [{"body": "new"}]))
        )
        assert await self.bodies(db) == [
            ("t1", "alice", "new"),
            ("t1", "alice", "t1 secret"),
            ("t2", "alice", "t2 secret"),
        ]

    async def test_reads_of_another_tenant(self, notes: SessionManager) -> None:
        """refresh() and detached attribute loads of the other tenant's row find nothing."""

        async def refresh(s: AsyncSession) -> str:
            obj = Note(id=102, tenant="t1", owner="alice", body="x")
            make_transient_to_detached(obj)
            obj = await s.merge(obj, load=False)
            await s.refresh(obj)
            return obj.body

        async def attribute(s: AsyncSession) -> str:
            obj = Note(id=102)
            make_transient_to_detached(obj)
            s.add(obj)
            return await s.run_sync(lambda _: obj.body)

        with pytest.raises(InvalidRequestError):
            await self.in_t1(notes, refresh)
        with pytest.raises(ObjectDeletedError):
            await self.in_t1(notes, attribute)


class TestSurface:
    @pytest.mark.parametrize("ops", attacks(), ids=lambda ops: ops[0].kind)
    async def test_attack_shapes(
        self, db: OrmDatabase, manager: SessionManager, ops: list[Op]
    ) -> None:
        """Each finding's shape, through the shared reference model: nothing crosses."""
        assert await run_ops(manager, db, ops) == []

    @pytest.mark.parametrize("kind", sorted(OPS))
    async def test_own_rows_are_served(
        self, db: OrmDatabase, manager: SessionManager, kind: str
    ) -> None:
        """Every operation on the principal's own rows does what the reference says (only
        owner changes, ORM insert(), raw-text loads of every row and of rows without the
        owner column are refused)."""
        refused: list[str] = []
        assert await run_ops(manager, db, [Op(kind, 0, 0, 0, 0)], refused) == []
        allowed = {"bulk_pk_owner", "owner_parameter", "set_owner", "orm_insert", "from_text"}
        allowed.add("from_text_no_owner")
        allowed.add("bulk_pk_delete")  # SQLAlchemy does not support it yet
        assert not refused or kind in allowed, refused

    async def test_a_row_deleted_earlier_is_untouched(
        self, db: OrmDatabase, manager: SessionManager
    ) -> None:
        """Operations naming a row an earlier operation deleted: the reference model leaves
        it absent (it raised KeyError there, and the report counted the orm-paths mutant,
        which deletes rows, as crashed, not caught)."""
        ops = [Op("delete_where", 0), Op("update_where", 0), Op("delete_where", 0)]
        assert await run_ops(manager, db, ops) == []

    @settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(ops=ops_strategy())
    async def test_no_operation_crosses_principals(
        self, db: OrmDatabase, manager: SessionManager, ops: list[Op]
    ) -> None:
        """Drawn sequences of ORM operations by either principal on any row: no value of
        the other principal is read, and the database matches the reference model."""
        assert await run_ops(manager, db, ops) == []


def test_seed_ids_are_distinct() -> None:
    """The fixture data: distinct keys, UUID folders, items of both owners in each folder."""
    assert len({i[0] for i in SEED_ITEMS}) == len(SEED_ITEMS)
    assert all(isinstance(f[0], uuid.UUID) for f in SEED_FOLDERS)
    assert {i[1] for i in SEED_ITEMS if i[3] == BOB_FOLDER} == {"alice", "bob"}


class TestCost:
    async def test_loaded_and_new_objects_flush_without_a_check_query(
        self, db: OrmDatabase, manager: SessionManager
    ) -> None:
        """Objects the session loaded or inserted are flushed with no ownership query;
        a detached object added back is checked once, then flushed."""
        from sqlalchemy import event

        statements: list[str] = []

        def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            statements.append(statement)

        event.listen(db.engine.sync_engine, "before_cursor_execute", count)
        try:

            async def work(s: AsyncSession) -> Item:
                obj = await s.get(Item, ALICE_ITEM)
                assert obj is not None
                new = Item(body="new")
                s.add(new)
                await s.flush()
                statements.clear()
                obj.body = "changed"
                new.body = "changed too"
                await s.flush()
                assert [q.split()[0] for q in statements if q != "BEGIN"] == ["UPDATE"]
                return obj

            obj = await as_alice(manager, work)

            async def again(s: AsyncSession) -> None:
                s.add(obj)
                obj.body = "changed again"
                statements.clear()
                await s.flush()
                assert [q.split()[0] for q in statements if q != "BEGIN"] == ["SELECT", "UPDATE"]

            await as_alice(manager, again)
        finally:
            event.remove(db.engine.sync_engine, "before_cursor_execute", count)
        assert await item_row(db, ALICE_ITEM) == ("alice", "changed again")


class TestBulkEdges:
    async def test_many_keys_are_checked_in_batches(
        self, db: OrmDatabase, manager: SessionManager
    ) -> None:
        """More keys than one ownership query takes: all checked; one foreign key among
        them refuses the whole write."""

        def insert(ss: Any) -> None:
            ss.bulk_insert_mappings(Item, [{"id": 5000 + n, "body": "b"} for n in range(1200)])

        await as_alice(manager, lambda s: s.run_sync(insert))
        mine = [{"id": 5000 + n, "body": "updated"} for n in range(1200)]
        with pytest.raises(CrossContextAccessError, match="1 Item row"):
            await as_alice(
                manager,
                lambda s: s.run_sync(
                    lambda ss: ss.bulk_update_mappings(Item, [*mine, {"id": BOB_ITEM, "body": "x"}])
                ),
            )
        await as_alice(
            manager, lambda s: s.run_sync(lambda ss: ss.bulk_update_mappings(Item, mine))
        )
        assert (await bodies_owned_by(db, "alice")).count("updated") == 1200

    async def test_mapping_without_a_primary_key(self, manager: SessionManager) -> None:
        """A bulk update mapping that names no primary key is refused with UsageError."""
        with pytest.raises(UsageError, match="no primary key"):
            await as_alice(
                manager,
                lambda s: s.run_sync(lambda ss: ss.bulk_update_mappings(Item, [{"body": "x"}])),
            )

    async def test_bulk_methods_keep_the_tenant_rule(self, db: OrmDatabase) -> None:
        """A model protected by its user column alone refuses bulk writes under a context
        with a tenant, as it refuses statements."""
        manager = SessionManager(db.engine)
        manager.protect(Item, user_column="owner")
        async with (
            isolation.scope(UserContext.new("alice", tenant_id="t1")),
            manager.session() as s,
        ):
            for call in (
                lambda ss: ss.bulk_insert_mappings(Item, [{"body": "x"}]),
                lambda ss: ss.bulk_save_objects([Item(body="x")]),
            ):
                with pytest.raises(ConfigurationError, match="user column alone"):
                    await s.run_sync(call)
