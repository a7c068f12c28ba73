"""Owner columns of any type (issue 17, item 3), on SQLModel models as apps declare them.

The FastAPI full-stack template's ``Item`` (a UUID ``owner_id`` with a foreign
key to ``user.id``), one with an integer owner, and a custom column type given
with ``OwnerColumn(..., converter=...)``: the owner's own inserts, stamps and
updates work with values of the column's type, reads and the ``exists()``
oracle see only the owner's rows, and an id that cannot be converted is refused
naming the column, its type and the id's type. SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import Integer, exists, func, insert, select, update
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.types import TypeDecorator

sqlmodel = pytest.importorskip("sqlmodel", reason="the owner-type tests use SQLModel models")
from sqlmodel import Field, SQLModel  # noqa: E402

import isolation  # noqa: E402
from isolation import (  # noqa: E402
    ConfigurationError,
    CrossContextAccessError,
    InvalidContextError,
    UserContext,
)
from isolation.report._modes.fm01_sessions._orm_paths import OrmDatabase, open_orm_database  # noqa: E402
from isolation.sessions import OwnerColumn, SessionManager  # noqa: E402

pytestmark = pytest.mark.anyio

ALICE = uuid.UUID("37e9a3b0-0c7e-4d6f-9a55-0f3c1d2e4b61")
BOB = uuid.UUID("5b1f2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d")


class User(SQLModel, table=True):
    """The template's user table (the owner ``Item.owner_id`` refers to)."""

    __tablename__ = "isolation_types_user"
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    email: str = Field(max_length=255)


class Item(SQLModel, table=True):
    """The template's item: a UUID ``owner_id``, declared exactly as it does."""

    __tablename__ = "isolation_types_item"
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    title: str = Field(max_length=255)
    owner_id: uuid.UUID = Field(foreign_key="isolation_types_user.id", nullable=False)


class Counter(SQLModel, table=True):
    """A row owned by an integer user id."""

    __tablename__ = "isolation_types_counter"
    id: int | None = Field(default=None, primary_key=True)
    title: str = Field(max_length=255)
    owner_id: int = Field(nullable=False)


class AccountId:
    """An application's own id type: ``acct-42`` in contexts, 42 in the database."""

    __slots__ = ("number",)

    def __init__(self, number: int) -> None:
        self.number = number

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AccountId) and other.number == self.number

    def __hash__(self) -> int:
        return hash(self.number)

    def __str__(self) -> str:
        return f"acct-{self.number}"

    @classmethod
    def parse(cls, text: str) -> AccountId:
        prefix, _, digits = text.partition("-")
        if prefix != "acct" or not digits.isdigit() or str(int(digits)) != digits:
            raise ValueError(f"not an account id: {text!r}")
        return cls(int(digits))


class AccountIdType(TypeDecorator[AccountId]):
    """Stores an :class:`AccountId` as its number."""

    impl = Integer
    cache_ok = True

    @property
    def python_type(self) -> type[AccountId]:
        return AccountId

    def process_bind_param(self, value: Any, dialect: Any) -> int | None:
        return None if value is None else int(value.number)

    def process_result_value(self, value: Any, dialect: Any) -> AccountId | None:
        return None if value is None else AccountId(int(value))


class Ledger(SQLModel, table=True):
    """A row owned through a custom column type."""

    __tablename__ = "isolation_types_ledger"
    id: int | None = Field(default=None, primary_key=True)
    title: str = Field(max_length=255)
    owner: Any = Field(sa_type=AccountIdType, nullable=False)


TABLES = [t.__table__ for t in (User, Item, Counter, Ledger)]  # type: ignore[attr-defined]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db(request: pytest.FixtureRequest) -> AsyncIterator[OrmDatabase]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    async with open_orm_database(request.param, url) as database:
        async with database.engine.begin() as conn:
            await conn.run_sync(lambda c: SQLModel.metadata.create_all(c, tables=TABLES))
            await conn.execute(
                insert(User),
                [{"id": ALICE, "email": "alice@example.com"}, {"id": BOB, "email": "b@x.org"}],
            )
            await conn.execute(
                insert(Item),
                [
                    {"id": uuid.uuid4(), "title": "alice's", "owner_id": ALICE},
                    {"id": uuid.uuid4(), "title": "bob's", "owner_id": BOB},
                ],
            )
            await conn.execute(
                insert(Counter),
                [
                    {"id": 101, "title": "alice's", "owner_id": 42},
                    {"id": 102, "title": "bob's", "owner_id": 7},
                ],
            )
            await conn.execute(
                insert(Ledger),
                [
                    {"id": 101, "title": "alice's", "owner": AccountId(42)},
                    {"id": 102, "title": "bob's", "owner": AccountId(7)},
                ],
            )
        yield database


@pytest.fixture
def manager(db: OrmDatabase) -> SessionManager:
    manager = SessionManager(db.engine)
    manager.protect(Item, user_column="owner_id")
    manager.protect(Counter, user_column=Counter.owner_id)
    manager.protect(Ledger, user_column=OwnerColumn("owner", converter=AccountId.parse))
    return manager


async def titles(db: OrmDatabase, model: Any) -> list[tuple[str, Any]]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            select(model.title, model.owner_id if model is not Ledger else model.owner)
        )
        return sorted((t, o) for t, o in rows)


class TestUuidOwner:
    """The template's ``Item`` protected by its UUID ``owner_id``."""

    async def test_own_insert_is_stamped_with_a_uuid(
        self, db: OrmDatabase, manager: SessionManager
    ) -> None:
        """The issue's blocker: the owner's own insert passes, given or stamped, and the
        stamp is a ``uuid.UUID``, not a ``str``."""
        async with isolation.scope(UserContext.new(str(ALICE))), manager.session() as s:
            s.add(Item(title="given", owner_id=ALICE))
            stamped = Item(title="stamped")
            s.add(stamped)
            await s.flush()
            assert type(stamped.owner_id) is uuid.UUID
            assert stamped.owner_id == ALICE
            mine = (await s.scalars(select(Item.title).order_by(Item.title))).all()
            assert mine == ["alice's", "given", "stamped"]
            assert (await s.execute(update(Item).values(title="renamed"))).rowcount == 3
        assert await titles(db, Item) == [
            ("bob's", BOB),
            ("renamed", ALICE),
            ("renamed", ALICE),
            ("renamed", ALICE),
        ]

    async def test_exists_oracle_and_count_see_own_rows_only(self, manager: SessionManager) -> None:
        async with isolation.scope(UserContext.new(str(ALICE))), manager.session() as s:
            for prefix, expected in (("bob", False), ("alice", True)):
                oracle = select(exists().where(Item.title.startswith(prefix)))
                assert (await s.execute(oracle)).scalar() is expected
            assert (await s.execute(select(func.count()).select_from(Item))).scalar() == 1

    async def test_foreign_owner_is_refused_with_types_shown(
        self, db: OrmDatabase, manager: SessionManager
    ) -> None:
        """A forged owner is refused; the message shows both values as UUIDs, so two ids
        that print alike cannot hide a type mismatch."""
        with pytest.raises(CrossContextAccessError) as refused:
            async with isolation.scope(UserContext.new(str(ALICE))), manager.session() as s:
                s.add(Item(title="planted", owner_id=BOB))
        message = str(refused.value)
        assert f"owner_id=UUID('{BOB}')" in message
        assert f"whose owner_id is UUID('{ALICE}')" in message
        assert ("planted", BOB) not in await titles(db, Item)

    async def test_id_that_is_no_uuid_is_refused_naming_the_column(
        self, manager: SessionManager
    ) -> None:
        with pytest.raises(InvalidContextError) as refused:
            async with isolation.scope(UserContext.new("alice")), manager.session() as s:
                await s.execute(select(Item))
        message = str(refused.value)
        assert "the owner column is Item.owner_id (Uuid, values uuid.UUID), the id a str" in message


class TestIntegerOwner:
    """An integer owner column: ids are the canonical decimal text of the integer."""

    async def test_own_rows_stamped_and_filtered(
        self, db: OrmDatabase, manager: SessionManager
    ) -> None:
        async with isolation.scope(UserContext.new("42")), manager.session() as s:
            stamped = Counter(title="stamped")
            s.add(stamped)
            await s.flush()
            assert type(stamped.owner_id) is int
            assert stamped.owner_id == 42
            assert (await s.scalars(select(Counter.title).order_by(Counter.title))).all() == [
                "alice's",
                "stamped",
            ]
            oracle = select(exists().where(Counter.title.startswith("bob")))
            assert (await s.execute(oracle)).scalar() is False
        assert await titles(db, Counter) == [("alice's", 42), ("bob's", 7), ("stamped", 42)]

    async def test_non_canonical_id_is_refused(self, manager: SessionManager) -> None:
        """ "042" would be user 42 to the database: refused, naming the column."""
        with pytest.raises(
            InvalidContextError, match=r"owner column is Counter\.owner_id \(Integer, values int\)"
        ):
            async with isolation.scope(UserContext.new("042")), manager.session() as s:
                await s.execute(select(Counter))


class TestConverter:
    """A custom column type, its ids converted by ``OwnerColumn(..., converter=...)``."""

    async def test_own_rows_stamped_and_filtered(
        self, db: OrmDatabase, manager: SessionManager
    ) -> None:
        async with isolation.scope(UserContext.new("acct-42")), manager.session() as s:
            stamped = Ledger(title="stamped")
            s.add(stamped)
            await s.flush()
            assert stamped.owner == AccountId(42)
            assert (await s.scalars(select(Ledger.title).order_by(Ledger.title))).all() == [
                "alice's",
                "stamped",
            ]
            oracle = select(exists().where(Ledger.title.startswith("bob")))
            assert (await s.execute(oracle)).scalar() is False
        with pytest.raises(CrossContextAccessError) as refused:
            async with isolation.scope(UserContext.new("acct-42")), manager.session() as s:
                s.add(Ledger(title="planted", owner=AccountId(7)))
        assert "owner=AccountId('acct-7')" in str(refused.value)
        assert "whose owner is AccountId('acct-42')" in str(refused.value)
        assert await titles(db, Ledger) == [
            ("alice's", AccountId(42)),
            ("bob's", AccountId(7)),
            ("stamped", AccountId(42)),
        ]

    async def test_unconvertible_id_is_refused_naming_column_and_types(
        self, manager: SessionManager
    ) -> None:
        with pytest.raises(InvalidContextError) as refused:
            async with isolation.scope(UserContext.new("bob")), manager.session() as s:
                await s.execute(select(Ledger))
        message = str(refused.value)
        assert "owner column Ledger.owner (AccountIdType, values " in message
        assert "AccountId.parse raised ValueError on this str" in message

    async def test_converter_of_the_wrong_type_is_refused(self, db: OrmDatabase) -> None:
        manager = SessionManager(db.engine)
        manager.protect(Ledger, user_column=OwnerColumn(Ledger.owner, converter=int))
        with pytest.raises(InvalidContextError, match="was converted by int to a int"):
            async with isolation.scope(UserContext.new("42")), manager.session() as s:
                await s.execute(select(Ledger))

    def test_custom_type_without_converter_is_a_configuration_error(self) -> None:
        manager = SessionManager(create_async_engine("sqlite+aiosqlite://"))
        with pytest.raises(ConfigurationError, match=r"OwnerColumn\('owner', converter=\.\.\.\)"):
            manager.protect(Ledger, user_column="owner")

    def test_converter_must_be_callable(self) -> None:
        with pytest.raises(TypeError):
            OwnerColumn("owner", converter="AccountId")  # type: ignore[arg-type]


class Memo(SQLModel, table=True):
    """A row owned by a ``str`` user id: SQLModel declares it ``AutoString``."""

    __tablename__ = "isolation_types_memo"
    id: int | None = Field(default=None, primary_key=True)
    owner_id: str


def test_a_str_owner_of_sqlmodel_is_text() -> None:
    """SQLModel's ``AutoString`` says ``object`` as its Python type; its impl says ``str``
    (protect() refused such a model before, asking for a converter)."""
    manager = SessionManager(create_async_engine("sqlite+aiosqlite://"))
    manager.protect(Memo, user_column="owner_id")
