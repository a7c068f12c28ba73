"""protect() against the shapes of the session-layer attack review, on SQLite and PostgreSQL.

H1: an owner column set through a named ``bindparam`` whose execute parameter
overrides its default. H2: ``insert().from_select()`` (and other subqueries of
an ORM insert) reading protected rows. M1: ``select(Model).from_statement()``
rows without the owner column, or with a forged one then flushed. L1: a typed
(integer, UUID) owner column given the principal's own id as the ``str`` the
context holds. Next to each refusal, the principal's own legitimate form works.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Integer,
    String,
    Uuid,
    bindparam,
    delete,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, aliased, contains_eager, mapped_column

import isolation
from _support.databases import Base as NotesBase
from _support.databases import Note
from isolation import ConfigurationError, CrossContextAccessError, UsageError, UserContext
from isolation.report._modes.fm01_sessions._orm_paths import (
    SEED_ITEMS,
    Folder,
    Item,
    OrmDatabase,
    open_orm_database,
    reset,
)
from isolation.sessions import SessionManager

pytestmark = pytest.mark.anyio

ALICE_ITEMS = [i[0] for i in SEED_ITEMS if i[1] == "alice"]
ALICE_BODIES = sorted(i[2] for i in SEED_ITEMS if i[1] == "alice")
BOB_ITEM = next(i[0] for i in SEED_ITEMS if i[1] == "bob")
ALICE_U = "11111111-1111-1111-1111-111111111111"
BOB_U = "22222222-2222-2222-2222-222222222222"


class ReviewBase(DeclarativeBase):
    """Models of these tests only: an unprotected log and typed owner columns."""


class Log(ReviewBase):
    """An unprotected table (an audit log, an export table)."""

    __tablename__ = "isolation_review_log"
    # Not annotated: `from __future__ import annotations` and a test module's classes.
    id = mapped_column(Integer, primary_key=True)
    body = mapped_column(String(200))


class UNote(ReviewBase):
    """A row owned through a UUID column."""

    __tablename__ = "isolation_review_unotes"
    id = mapped_column(Integer, primary_key=True)
    owner = mapped_column(Uuid, nullable=False)
    body = mapped_column(String(200))


class INote(ReviewBase):
    """A row owned through an integer column."""

    __tablename__ = "isolation_review_inotes"
    id = mapped_column(Integer, primary_key=True)
    owner = mapped_column(Integer, nullable=False)
    body = mapped_column(String(200))


class KNote(ReviewBase):
    """A row owned through an attribute whose column has another name."""

    __tablename__ = "isolation_review_knotes"
    id = mapped_column(Integer, primary_key=True)
    owner_id = mapped_column("owner", String(100), nullable=False)
    body = mapped_column(String(200))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db(request: pytest.FixtureRequest) -> AsyncIterator[OrmDatabase]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    async with open_orm_database(request.param, url) as database:
        await reset(database)
        async with database.engine.begin() as conn:
            await conn.run_sync(ReviewBase.metadata.create_all)
            await conn.run_sync(NotesBase.metadata.create_all)
            await conn.execute(
                insert(UNote.__table__),
                [
                    {"id": 1, "owner": uuid.UUID(ALICE_U), "body": "alice u"},
                    {"id": 2, "owner": uuid.UUID(BOB_U), "body": "bob u"},
                ],
            )
            await conn.execute(
                insert(INote.__table__),
                [{"id": 1, "owner": 42, "body": "alice i"}, {"id": 2, "owner": 7, "body": "bob i"}],
            )
        yield database


@pytest.fixture
def manager(db: OrmDatabase) -> SessionManager:
    manager = SessionManager(db.engine)
    manager.protect(Item, user_column="owner")
    manager.protect(UNote, user_column="owner")
    manager.protect(INote, user_column="owner")
    return manager


async def as_user(
    manager: SessionManager, work: Callable[[AsyncSession], Any], user: str = "alice"
) -> Any:
    async with isolation.scope(UserContext.new(user)), manager.session() as s:
        return await work(s)


async def rows(db: OrmDatabase, sql: str) -> list[tuple[Any, ...]]:
    async with db.engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(text(sql))]


async def item(db: OrmDatabase, item_id: int) -> tuple[Any, ...]:
    found = await rows(db, f"SELECT owner, body FROM isolation_orm_items WHERE id = {item_id}")
    return found[0]


class TestNamedBindOfTheOwner:
    """H1: values(owner=bindparam("o", mine)) executed with {"o": other}."""

    async def test_override_of_the_default_is_refused(
        self, db: OrmDatabase, manager: SessionManager
    ) -> None:
        stmt = (
            update(Item)
            .where(Item.id == ALICE_ITEMS[0])
            .values(owner=bindparam("o", "alice"), body="planted by alice")
        )
        with pytest.raises(CrossContextAccessError, match="set the owner"):
            await as_user(manager, lambda s: s.execute(stmt, {"o": "bob"}))
        assert await item(db, ALICE_ITEMS[0]) == ("alice", "alice/item/00")

    async def test_override_in_a_core_only_executemany_is_refused(
        self, db: OrmDatabase, manager: SessionManager
    ) -> None:
        stmt = (
            update(Item)
            .where(Item.id == bindparam("i"))
            .values(owner=bindparam("o", "alice"), body="planted")
            .execution_options(dml_strategy="core_only")
        )
        params = [{"i": ALICE_ITEMS[0], "o": "alice"}, {"i": ALICE_ITEMS[1], "o": "bob"}]
        with pytest.raises(CrossContextAccessError, match="set the owner"):
            await as_user(manager, lambda s: s.execute(stmt, params))
        assert [await item(db, i) for i in ALICE_ITEMS[:2]] == [
            ("alice", "alice/item/00"),
            ("alice", "alice/item/01"),
        ]

    async def test_override_of_the_tenant_is_refused(self, db: OrmDatabase) -> None:
        manager = SessionManager(db.engine)
        manager.protect(Note, user_column="owner", tenant_column="tenant")
        async with isolation.scope(UserContext.new("alice", tenant_id="t1")):
            async with manager.session() as s:
                s.add(Note(id=201, body="t1 note"))
            stmt = update(Note).values(tenant=bindparam("t", "t1"), body="moved")
            with pytest.raises(CrossContextAccessError, match="tenant"):
                async with manager.session() as s:
                    await s.execute(stmt, {"t": "t2"})
            async with manager.session() as s:
                await s.execute(stmt, {"t": "t1"})
        assert await rows(db, "SELECT tenant, owner, body FROM isolation_notes") == [
            ("t1", "alice", "moved")
        ]

    async def test_owner_column_named_unlike_its_attribute(self, db: OrmDatabase) -> None:
        """An execute parameter named like the owner's column (Core's key for it), not its
        attribute, is checked as well; the principal's own value passes."""
        manager = SessionManager(db.engine)
        manager.protect(KNote, user_column="owner_id")
        await as_user(manager, lambda s: s.run_sync(lambda ss: ss.add(KNote(id=1, body="b"))))
        stmt = update(KNote).where(KNote.id == 1)
        with pytest.raises(CrossContextAccessError, match="set the owner"):
            await as_user(manager, lambda s: s.execute(stmt, {"owner": "bob"}))
        await as_user(manager, lambda s: s.execute(stmt.values(body="c"), {"owner": "alice"}))
        assert await rows(db, "SELECT owner, body FROM isolation_review_knotes") == [("alice", "c")]

    async def test_own_values_through_a_named_bind_work(
        self, db: OrmDatabase, manager: SessionManager
    ) -> None:
        """The principal's own id, as the default, as the parameter, or in every row of an
        executemany, is accepted."""
        stmt = update(Item).where(Item.id == ALICE_ITEMS[0]).values(owner=bindparam("o", "alice"))
        await as_user(manager, lambda s: s.execute(stmt.values(body="default")))
        assert await item(db, ALICE_ITEMS[0]) == ("alice", "default")
        await as_user(manager, lambda s: s.execute(stmt.values(body="given"), {"o": "alice"}))
        assert await item(db, ALICE_ITEMS[0]) == ("alice", "given")
        unset = update(Item).where(Item.id == ALICE_ITEMS[0]).values(owner=bindparam("o"))
        await as_user(manager, lambda s: s.execute(unset.values(body="no default"), {"o": "alice"}))
        assert await item(db, ALICE_ITEMS[0]) == ("alice", "no default")
        many = (
            update(Item)
            .where(Item.id == bindparam("i"))
            .values(owner=bindparam("o", "bob"), body="many")
            .execution_options(dml_strategy="core_only")
        )
        params = [{"i": i, "o": "alice"} for i in ALICE_ITEMS[:2]]
        await as_user(manager, lambda s: s.execute(many, params))
        assert [await item(db, i) for i in ALICE_ITEMS[:2]] == [("alice", "many")] * 2


class TestInsertFromSelect:
    """H2: the SELECT inside an ORM insert of an unprotected table is filtered."""

    @pytest.mark.parametrize(
        "shape",
        ["from_select", "scalar_subquery", "multi_values", "union", "aliased", "cte", "exists"],
    )
    async def test_copies_only_own_rows(
        self, db: OrmDatabase, manager: SessionManager, shape: str
    ) -> None:
        """Each shape run by alice copies her rows only; bob's never reach the log."""
        alias = aliased(Item)
        cte = select(Item.body).cte("bodies")
        stmt: Any = {
            "from_select": insert(Log).from_select(["body"], select(Item.body)),
            "scalar_subquery": insert(Log).values(
                body=select(Item.body).where(Item.id == BOB_ITEM).scalar_subquery()
            ),
            "multi_values": insert(Log).values(
                [
                    {"body": select(Item.body).where(Item.id == BOB_ITEM).scalar_subquery()},
                    {"body": select(Item.body).where(Item.id == ALICE_ITEMS[0]).scalar_subquery()},
                ]
            ),
            "union": insert(Log).from_select(
                ["body"], select(Item.body).union_all(select(alias.body))
            ),
            "aliased": insert(Log).from_select(["body"], select(alias.body)),
            "cte": insert(Log).from_select(["body"], select(cte.c.body)),
            "exists": insert(Log).from_select(
                ["body"],
                select(Item.body).where(
                    select(alias.id).where(alias.owner == "bob").exists()
                    | (Item.id == ALICE_ITEMS[0])
                ),
            ),
        }[shape]
        await as_user(manager, lambda s: s.execute(stmt))
        copied = [r[0] for r in await rows(db, "SELECT body FROM isolation_review_log")]
        assert not [b for b in copied if b is not None and b.startswith("bob")]
        expected = {
            "from_select": ALICE_BODIES,
            "scalar_subquery": [None],
            "multi_values": [None, "alice/item/00"],
            "union": sorted(ALICE_BODIES * 2),
            "aliased": ALICE_BODIES,
            "cte": ALICE_BODIES,
            "exists": ["alice/item/00"],
        }[shape]
        assert sorted(copied, key=str) == expected

    async def test_tenant_rule_is_kept(self, db: OrmDatabase, manager: SessionManager) -> None:
        """A model protected by its user column alone refuses an insert reading it under a
        context with a tenant, as it refuses a select."""
        async with isolation.scope(UserContext.new("alice", tenant_id="t1")):
            with pytest.raises(ConfigurationError, match="user column alone"):
                async with manager.session() as s:
                    await s.execute(insert(Log).from_select(["body"], select(Item.body)))
        assert await rows(db, "SELECT body FROM isolation_review_log") == []

    async def test_plain_inserts_of_unprotected_tables_work(
        self, db: OrmDatabase, manager: SessionManager
    ) -> None:
        await as_user(manager, lambda s: s.execute(insert(Log), [{"body": "a"}, {"body": "b"}]))
        await as_user(manager, lambda s: s.execute(insert(Log).values(body="c")))
        assert sorted(r[0] for r in await rows(db, "SELECT body FROM isolation_review_log")) == [
            "a",
            "b",
            "c",
        ]


class TestFromStatement:
    """M1: rows of select(Model).from_statement(...) the criteria never touched."""

    async def test_rows_without_the_owner_column_are_refused(self, manager: SessionManager) -> None:
        """bob's row, selected without the owner column, is refused and dropped."""

        async def work(s: AsyncSession) -> Any:
            stmt = select(Item).from_statement(
                text("SELECT id, body, folder_id FROM isolation_orm_items")
            )
            with pytest.raises(UsageError, match="owner column"):
                await s.scalars(stmt)
            return await s.get(Item, BOB_ITEM)

        assert await as_user(manager, work) is None

    @pytest.mark.parametrize("verb", ["update", "delete"])
    async def test_forged_owner_column_cannot_write(
        self, db: OrmDatabase, manager: SessionManager, verb: str
    ) -> None:
        """bob's row selected as 'alice' AS owner loads, but its flush is checked in the
        database and refused."""

        async def work(s: AsyncSession) -> None:
            stmt = select(Item).from_statement(
                text(
                    "SELECT id, 'alice' AS owner, body, folder_id FROM isolation_orm_items "
                    "WHERE id = :i"
                )
            )
            found = (await s.scalars(stmt, {"i": BOB_ITEM})).all()
            assert [n.id for n in found] == [BOB_ITEM]
            if verb == "update":
                found[0].body = "overwritten by alice"
            else:
                await s.delete(found[0])
            await s.flush()

        with pytest.raises(CrossContextAccessError, match="by primary key"):
            await as_user(manager, work)
        assert await item(db, BOB_ITEM) == ("bob", "bob/item/00")

    async def test_entity_aliased_to_a_forging_subquery_cannot_write(
        self, db: OrmDatabase, manager: SessionManager
    ) -> None:
        """aliased(Item, <text subquery selecting 'alice' AS owner>): the criteria compare
        the forged column, so the objects are checked in the database before a flush."""
        forging = (
            text("SELECT id, 'alice' AS owner, body, folder_id FROM isolation_orm_items")
            .columns(Item.id, Item.owner, Item.body, Item.folder_id)
            .subquery()
        )
        entity = aliased(Item, forging)

        async def work(s: AsyncSession) -> None:
            found = (await s.scalars(select(entity).where(entity.id == BOB_ITEM))).all()
            for obj in found:
                obj.body = "overwritten by alice"
            await s.flush()

        with pytest.raises(CrossContextAccessError, match="by primary key"):
            await as_user(manager, work)
        assert await item(db, BOB_ITEM) == ("bob", "bob/item/00")

    @pytest.mark.parametrize("forging", [True, False], ids=["text-alias", "plain-alias"])
    async def test_contains_eager_of_an_aliased_subquery(
        self, db: OrmDatabase, manager: SessionManager, forging: bool
    ) -> None:
        """Items eagerly loaded through an alias of a text subquery forging the owner are
        checked before a flush (bob's item in alice's folder is not overwritten); through
        a plain alias, alice's items are written."""
        cross = next(i[0] for i in SEED_ITEMS if i[1] == "bob" and i[2].endswith("cross"))
        sql = "SELECT id, 'alice' AS owner, body, folder_id FROM isolation_orm_items"
        entity = (
            aliased(
                Item,
                text(sql).columns(Item.id, Item.owner, Item.body, Item.folder_id).subquery(),
            )
            if forging
            else aliased(Item)
        )
        path = Folder.items_select.of_type(entity)

        async def work(s: AsyncSession) -> None:
            stmt = select(Folder).join(path).options(contains_eager(path))
            folders = (await s.scalars(stmt)).unique().all()
            for obj in (i for f in folders for i in f.items_select):
                obj.body = "overwritten"
            await s.flush()

        if forging:
            with pytest.raises(CrossContextAccessError, match="by primary key"):
                await as_user(manager, work)
            assert await item(db, cross) == ("bob", "bob/item/cross")
        else:
            await as_user(manager, work)
            assert await item(db, ALICE_ITEMS[0]) == ("alice", "overwritten")
            assert await item(db, cross) == ("bob", "bob/item/cross")

    async def test_tenant_rule_is_kept(self, manager: SessionManager) -> None:
        """A model protected by its user column alone refuses from_statement() under a
        context with a tenant (alice of another tenant owns the same rows)."""
        stmt = select(Item).from_statement(text("SELECT * FROM isolation_orm_items"))
        async with isolation.scope(UserContext.new("alice", tenant_id="t1")):
            with pytest.raises(ConfigurationError, match="user column alone"):
                async with manager.session() as s:
                    await s.scalars(stmt)

    async def test_own_rows_through_aliases_write(
        self, db: OrmDatabase, manager: SessionManager
    ) -> None:
        """A plain alias, and an entity aliased to a text subquery of the principal's rows,
        load and write them."""
        own = (
            text("SELECT * FROM isolation_orm_items WHERE owner = 'alice'")
            .columns(Item.id, Item.owner, Item.body, Item.folder_id)
            .subquery()
        )

        async def work(s: AsyncSession) -> None:
            for n, entity in enumerate((aliased(Item), aliased(Item, own))):
                obj = (await s.scalars(select(entity).where(entity.id == ALICE_ITEMS[n]))).one()
                obj.body = f"via alias {n}"
            await s.flush()

        await as_user(manager, work)
        assert [await item(db, i) for i in ALICE_ITEMS[:2]] == [
            ("alice", "via alias 0"),
            ("alice", "via alias 1"),
        ]

    async def test_own_rows_load_and_write(self, db: OrmDatabase, manager: SessionManager) -> None:
        """The principal's own rows through from_statement with the owner column: loaded,
        updated and deleted (after one ownership query)."""

        async def work(s: AsyncSession) -> list[str]:
            stmt = select(Item).from_statement(
                text("SELECT * FROM isolation_orm_items WHERE owner = 'alice' ORDER BY id")
            )
            found = (await s.scalars(stmt)).all()
            found[0].body = "updated"
            await s.delete(found[1])
            await s.flush()
            return [n.body for n in found]

        got = await as_user(manager, work)
        assert len(got) == len(ALICE_ITEMS)
        assert await item(db, ALICE_ITEMS[0]) == ("alice", "updated")
        assert not await rows(db, f"SELECT id FROM isolation_orm_items WHERE id = {ALICE_ITEMS[1]}")


class TestAliasedWriteTarget:
    """An UPDATE or DELETE whose target is an alias of a protected table (ORM
    ``update(aliased(Model))``, Core ``update(table.alias())``): the criteria name the
    table, not the alias, so the statement would write every row of the alias (another
    user's included); it is refused, and nothing changes."""

    @pytest.mark.parametrize("verb", ["update", "delete"])
    @pytest.mark.parametrize("face", ["orm", "core"])
    async def test_is_refused(
        self, db: OrmDatabase, manager: SessionManager, verb: str, face: str
    ) -> None:
        if face == "orm":
            entity: Any = aliased(Item)
            target, key = entity, entity.id
        else:
            target = Item.__table__.alias()
            key = target.c.id
        stmt: Any = (
            update(target).where(key == BOB_ITEM).values(body="overwritten by alice")
            if verb == "update"
            else delete(target).where(key == BOB_ITEM)
        )
        stmt = stmt.execution_options(synchronize_session=False)
        with pytest.raises(UsageError, match="alias"):
            await as_user(manager, lambda s: s.execute(stmt))
        assert await item(db, BOB_ITEM) == ("bob", "bob/item/00")


class TestTypedOwnerGivenAsText:
    """L1: the owner's own id as the str of the context, for an int or UUID column."""

    # SQLAlchemy's Uuid type takes no str on SQLite, protected or not: PostgreSQL only.
    @pytest.mark.parametrize(
        "db", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
    )
    async def test_uuid_owner_as_text(self, db: OrmDatabase, manager: SessionManager) -> None:
        own = isolation.current_context

        async def work(s: AsyncSession) -> None:
            me = own().user_id
            await s.run_sync(
                lambda ss: ss.bulk_insert_mappings(UNote, [{"id": 3, "owner": me, "body": "b"}])
            )
            await s.execute(update(UNote).where(UNote.id == 1).values(owner=me, body="u"))
            await s.execute(update(UNote), [{"id": 3, "owner": me, "body": "m"}])
            s.add(UNote(id=4, owner=me, body="added"))
            await s.flush()

        await as_user(manager, work, ALICE_U)
        assert await rows(
            db, "SELECT id, owner::text, body FROM isolation_review_unotes ORDER BY id"
        ) == [(1, ALICE_U, "u"), (2, BOB_U, "bob u"), (3, ALICE_U, "m"), (4, ALICE_U, "added")]

    @pytest.mark.parametrize("spelling", ["upper", "other"])
    async def test_uuid_other_or_non_canonical_text_is_refused(
        self, db: OrmDatabase, manager: SessionManager, spelling: str
    ) -> None:
        """Another id, or the principal's own in a non-canonical spelling, is refused."""
        me = "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa" if spelling == "upper" else ALICE_U
        value = me.upper() if spelling == "upper" else BOB_U
        for call in (
            lambda s: s.run_sync(
                lambda ss: ss.bulk_insert_mappings(UNote, [{"id": 5, "owner": value}])
            ),
            lambda s: s.execute(update(UNote).values(owner=value)),
            lambda s: s.execute(update(UNote), [{"id": 1, "owner": value}]),
        ):
            with pytest.raises(CrossContextAccessError):
                await as_user(manager, call, me)
        assert sorted(r[0] for r in await rows(db, "SELECT id FROM isolation_review_unotes")) == [
            1,
            2,
        ]

    # asyncpg takes no str for an integer column, protected or not: SQLite only.
    @pytest.mark.parametrize("db", ["sqlite"], indirect=True)
    async def test_integer_owner_as_text(self, db: OrmDatabase, manager: SessionManager) -> None:
        """SQLite converts "42" for an integer column: the owner's own id as text works,
        "042" and another id are refused."""

        async def mine(s: AsyncSession) -> None:
            await s.run_sync(
                lambda ss: ss.bulk_insert_mappings(INote, [{"id": 3, "owner": "42", "body": "b"}])
            )
            await s.execute(update(INote).where(INote.id == 1).values(owner="42", body="u"))

        await as_user(manager, mine, "42")
        for value in ("042", "7"):
            with pytest.raises(CrossContextAccessError):
                await as_user(
                    manager, lambda s, v=value: s.execute(update(INote).values(owner=v)), "42"
                )
        assert await rows(
            db, "SELECT id, owner, body FROM isolation_review_inotes ORDER BY id"
        ) == [
            (1, 42, "u"),
            (2, 7, "bob i"),
            (3, 42, "b"),
        ]


class TestLooseOwnerColumns:
    """Owner columns that compare case- or accent-insensitively would make two principals
    one owner (the second review's H5: "0oa1AbC" and "0oa1abc" on a NOCASE column)."""

    @pytest.mark.parametrize("collation", ["NOCASE", "utf8mb4_0900_ai_ci", "und-x-icu-ci"])
    def test_a_folding_collation_is_refused(self, collation: str) -> None:
        """protect() refuses a declared folding collation, naming the column."""

        class Base(DeclarativeBase):
            pass

        class Loose(Base):
            __tablename__ = "isolation_review_loose"
            id = mapped_column(Integer, primary_key=True)
            owner = mapped_column(String(64, collation=collation))

        manager = SessionManager(create_async_engine("sqlite+aiosqlite://"))
        with pytest.raises(ConfigurationError, match="'owner' compares ids loosely"):
            manager.protect(Loose, user_column="owner")

    async def test_two_subjects_stay_two_owners_on_a_binary_column(self, tmp_path: Path) -> None:
        """The default (binary) collation keeps case-sensitive subjects apart end to end."""

        class Base(DeclarativeBase):
            pass

        class Strict(Base):
            __tablename__ = "isolation_review_strict"
            id = mapped_column(Integer, primary_key=True)
            owner = mapped_column(String(64))
            body = mapped_column(String(64))

        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'strict.db'}")
        try:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            manager = SessionManager(engine)
            manager.protect(Strict, user_column="owner")
            async with isolation.scope(UserContext.new("0oa1AbC")), manager.session() as s:
                s.add(Strict(body="victim"))
            async with isolation.scope(UserContext.new("0oa1abc")), manager.session() as s:
                result = await s.execute(update(Strict).values(body="overwritten"))
                assert result.rowcount == 0
            async with isolation.scope(UserContext.new("0oa1AbC")), manager.session() as s:
                assert (await s.scalars(select(Strict.body))).all() == ["victim"]
        finally:
            await engine.dispose()
