"""Every ORM read shape of a protected table, each with the boolean-oracle attack.

Alice and bob each own one ``Secret``; each shape asks "is there a secret with
this id whose title starts with this prefix?" (issue 17: ``select(exists()...)``
answered ``True`` for bob's row, so a loop over prefixes read it a character at
a time). Under alice's scope, for bob's row each shape must answer no (``False``,
``0``, nothing) or be refused with :class:`~isolation.UsageError`; for her own
row it must answer yes, so the filter does not just break the shape. Without
``protect()`` every shape answers yes for bob's row: the attack is real. Run on
SQLite and PostgreSQL, ``protect()`` alone (no row-level security).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import (
    ForeignKey,
    Integer,
    String,
    and_,
    column,
    delete,
    exists,
    false,
    func,
    insert,
    literal,
    select,
    table,
    union,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import (
    DeclarativeBase,
    aliased,
    joinedload,
    mapped_column,
    relationship,
    selectinload,
    subqueryload,
)

import isolation
from isolation import ConfigurationError, UsageError, UserContext
from isolation.report._modes.fm01_sessions._orm_paths import OrmDatabase, open_orm_database
from isolation.sessions import SessionManager

pytestmark = pytest.mark.anyio


class ReadsBase(DeclarativeBase):
    """Models of these tests only."""


class Pin(ReadsBase):
    """An unprotected row (a board, a tag) that protected secrets hang from."""

    __tablename__ = "isolation_reads_pins"
    # Not annotated: `from __future__ import annotations` and a test module's classes.
    id = mapped_column(Integer, primary_key=True)
    secrets = relationship("Secret", viewonly=True, lazy="select")


class Secret(ReadsBase):
    """A principal's row, protected by ``owner``."""

    __tablename__ = "isolation_reads_secrets"
    id = mapped_column(Integer, primary_key=True)
    owner = mapped_column(String(100), nullable=False)
    title = mapped_column(String(100), nullable=False)
    pin_id = mapped_column(ForeignKey("isolation_reads_pins.id"))
    pin = relationship(Pin, viewonly=True)


class Mark(ReadsBase):
    """An unprotected table nothing refers to: the target of the writes that read secrets."""

    __tablename__ = "isolation_reads_marks"
    id = mapped_column(Integer, primary_key=True)


SECRETS = Secret.__table__
# Each principal's secret (its id, the start of its title) and the pin it hangs from.
ROWS = {"alice": (1, "alice"), "bob": (2, "bob")}
PIN_OF = {1: 10, 2: 20}

Shape = Callable[[AsyncSession, int, str], Awaitable[Any]]


def _found(secret: int, prefix: str) -> tuple[Any, ...]:
    return (Secret.id == secret, Secret.title.startswith(prefix))


async def _scalar(s: AsyncSession, stmt: Any) -> Any:
    return (await s.execute(stmt)).scalar()


async def _rows(s: AsyncSession, stmt: Any) -> list[Any]:
    return list((await s.execute(stmt)).all())


async def _loaded(s: AsyncSession, stmt: Any, secret: int, prefix: str) -> bool:
    pins = (await s.scalars(stmt)).unique().all()
    titles = await s.run_sync(lambda _: [x.title for p in pins for x in p.secrets])
    return any(t.startswith(prefix) for t in titles)


def _cte(secret: int, prefix: str) -> Any:
    cte = select(Secret.id, Secret.title).cte("visible")
    return select(cte.c.id).where(cte.c.id == secret, cte.c.title.startswith(prefix))


def _subquery(secret: int, prefix: str) -> Any:
    sub = select(Secret).subquery()
    return select(sub.c.id).where(sub.c.id == secret, sub.c.title.startswith(prefix))


def _aliased(secret: int, prefix: str) -> Any:
    alias = aliased(Secret)
    return select(alias.id).where(alias.id == secret, alias.title.startswith(prefix))


def _recursive_cte(secret: int, prefix: str) -> Any:
    start = select(Secret.id, Secret.title).where(Secret.id == secret).cte(recursive=True)
    walk = start.union_all(select(Secret.id, Secret.title).where(Secret.id == start.c.id + 100))
    return select(walk.c.id).where(walk.c.title.startswith(prefix))


async def _update_where_exists(s: AsyncSession, secret: int, prefix: str) -> int:
    stmt = update(Mark).where(Mark.id == PIN_OF[secret], exists().where(*_found(secret, prefix)))
    result: Any = await s.execute(stmt.values(id=Mark.id))
    return int(result.rowcount)


async def _update_from(s: AsyncSession, secret: int, prefix: str) -> int:
    # UPDATE ... FROM: the protected table is an extra FROM of the UPDATE.
    stmt = update(Mark).where(Mark.id == Secret.pin_id, *_found(secret, prefix))
    result: Any = await s.execute(stmt.values(id=Mark.id))
    return int(result.rowcount)


async def _delete_where_in(s: AsyncSession, secret: int, prefix: str) -> int:
    stmt = delete(Mark).where(Mark.id.in_(select(Secret.pin_id).where(*_found(secret, prefix))))
    result: Any = await s.execute(stmt)
    await s.rollback()
    return int(result.rowcount)


async def _insert_from_select(s: AsyncSession, secret: int, prefix: str) -> int:
    stmt = insert(Pin).from_select(["id"], select(Secret.id + 1000).where(*_found(secret, prefix)))
    await s.execute(stmt)
    copied = await _scalar(s, select(func.count()).select_from(Pin).where(Pin.id > 1000))
    await s.rollback()
    return int(copied)


async def _get(s: AsyncSession, secret: int, prefix: str) -> bool:
    found = await s.get(Secret, secret)
    return found is not None and found.title.startswith(prefix)


async def _lazy(s: AsyncSession, secret: int, prefix: str) -> bool:
    return await _loaded(s, select(Pin).where(Pin.id == PIN_OF[secret]), secret, prefix)


async def _many_to_one(s: AsyncSession, secret: int, prefix: str) -> bool:
    pin = await s.get(Pin, PIN_OF[secret])
    assert pin is not None
    # The reverse direction: a secret reached from the unprotected side's foreign key.
    stmt = select(Secret).where(Secret.pin_id == pin.id)
    return any(x.title.startswith(prefix) for x in (await s.scalars(stmt)).all())


def _bare(secret: int, prefix: str) -> Any:
    return select(SECRETS.c.id).where(SECRETS.c.id == secret, SECRETS.c.title.startswith(prefix))


def _core_alias(secret: int, prefix: str) -> Any:
    alias = SECRETS.alias()
    return select(alias.c.id).where(alias.c.id == secret, alias.c.title.startswith(prefix))


def _lightweight(secret: int, prefix: str) -> Any:
    named = table(SECRETS.name, column("id"), column("title"))
    return select(named.c.id).where(named.c.id == secret, named.c.title.startswith(prefix))


def _statement(build: Callable[[int, str], Any], rows: bool = False) -> Shape:
    async def run(s: AsyncSession, secret: int, prefix: str) -> Any:
        stmt = build(secret, prefix)
        return await (_rows(s, stmt) if rows else _scalar(s, stmt))

    return run


SHAPES: dict[str, tuple[Shape, str]] = {
    # The oracle, and exists() in all its spellings.
    "select_exists": (
        _statement(lambda i, p: select(exists().where(Secret.id == i, Secret.title.startswith(p)))),
        "filtered",
    ),
    "select_exists_method": (
        _statement(lambda i, p: select(select(Secret.id).where(*_found(i, p)).exists())),
        "filtered",
    ),
    "exists_select_from": (
        _statement(lambda i, p: select(exists().select_from(Secret).where(*_found(i, p)))),
        "filtered",
    ),
    "exists_in_where": (
        _statement(
            lambda i, p: select(Pin.id).where(
                exists().where(Secret.pin_id == Pin.id, *_found(i, p))
            ),
            rows=True,
        ),
        "filtered",
    ),
    "exists_of_literal": (
        _statement(lambda i, p: select(literal(1)).where(exists().where(*_found(i, p))), rows=True),
        "filtered",
    ),
    "exists_in_having": (
        _statement(
            lambda i, p: (
                select(Pin.id)
                .group_by(Pin.id)
                .having(exists().where(Secret.pin_id == Pin.id, *_found(i, p)))
            ),
            rows=True,
        ),
        "filtered",
    ),
    "any": (
        _statement(
            lambda i, p: select(Pin.id).where(Pin.secrets.any(and_(*_found(i, p)))), rows=True
        ),
        "filtered",
    ),
    "has_from_protected": (
        _statement(
            lambda i, p: select(Secret.id).where(
                Secret.pin.has(Pin.id == PIN_OF[i]), *_found(i, p)
            ),
            rows=True,
        ),
        "filtered",
    ),
    # Scalar subqueries, in the columns and in the WHERE clause.
    "scalar_subquery_column": (
        _statement(
            lambda i, p: select(select(Secret.title).where(*_found(i, p)).scalar_subquery())
        ),
        "filtered",
    ),
    "scalar_subquery_where": (
        _statement(
            lambda i, p: select(Pin.id).where(
                select(Secret.title).where(Secret.id == i).scalar_subquery().startswith(p)
            ),
            rows=True,
        ),
        "filtered",
    ),
    "in_subquery": (
        _statement(
            lambda i, p: select(Pin.id).where(
                Pin.id.in_(select(Secret.pin_id).where(*_found(i, p)))
            ),
            rows=True,
        ),
        "filtered",
    ),
    # Counts.
    "count_select_from": (
        _statement(lambda i, p: select(func.count()).select_from(Secret).where(*_found(i, p))),
        "filtered",
    ),
    "count_column": (
        _statement(lambda i, p: select(func.count(Secret.id)).where(*_found(i, p))),
        "filtered",
    ),
    "count_implicit_from": (
        _statement(lambda i, p: select(func.count()).where(*_found(i, p))),
        "filtered",
    ),
    "count_implicit_from_and": (
        # and_() carries no ORM plugin to the statement: SQLAlchemy adds no criteria.
        _statement(lambda i, p: select(func.count()).where(and_(*_found(i, p)))),
        "filtered",
    ),
    "literal_implicit_from": (
        _statement(lambda i, p: select(literal(1)).where(*_found(i, p)), rows=True),
        "filtered",
    ),
    # Joins, from the unprotected side and to it.
    "join_from_unprotected": (
        _statement(
            lambda i, p: select(Pin.id).join(Secret, Secret.pin_id == Pin.id).where(*_found(i, p)),
            rows=True,
        ),
        "filtered",
    ),
    "join_relationship": (
        _statement(lambda i, p: select(Pin.id).join(Pin.secrets).where(*_found(i, p)), rows=True),
        "filtered",
    ),
    "join_to_unprotected": (
        _statement(
            lambda i, p: select(Secret.id).join(Pin, Secret.pin_id == Pin.id).where(*_found(i, p)),
            rows=True,
        ),
        "filtered",
    ),
    "outer_join_from_unprotected": (
        _statement(
            lambda i, p: (
                select(Secret.title)
                .select_from(Pin)
                .outerjoin(Secret, and_(Secret.pin_id == Pin.id, *_found(i, p)))
                .where(Secret.title.is_not(None))
            )
        ),
        "filtered",
    ),
    "outer_join_to_unprotected": (
        _statement(
            lambda i, p: (
                select(Secret.id).outerjoin(Pin, Secret.pin_id == Pin.id).where(*_found(i, p))
            ),
            rows=True,
        ),
        "filtered",
    ),
    "implicit_join": (
        _statement(
            lambda i, p: select(Pin.id).where(Secret.pin_id == Pin.id, *_found(i, p)), rows=True
        ),
        "filtered",
    ),
    "full_outer_join": (
        _statement(
            lambda i, p: (
                select(Secret.title)
                .select_from(Pin)
                .join(Secret, Secret.pin_id == Pin.id, full=True)
                .where(*_found(i, p))
            ),
            rows=True,
        ),
        "refused",
    ),
    # CTEs, unions, subqueries, aliases.
    "cte": (_statement(_cte, rows=True), "filtered"),
    "recursive_cte": (_statement(_recursive_cte, rows=True), "filtered"),
    "union": (
        _statement(
            lambda i, p: union(
                select(Secret.id).where(*_found(i, p)), select(Secret.id).where(false())
            ),
            rows=True,
        ),
        "filtered",
    ),
    "union_all_method": (
        _statement(
            lambda i, p: (
                select(Secret.id).where(false()).union_all(select(Secret.id).where(*_found(i, p)))
            ),
            rows=True,
        ),
        "filtered",
    ),
    "union_all_in_subquery": (
        _statement(
            lambda i, p: select(func.count()).select_from(
                union_all(
                    select(Secret.id).where(*_found(i, p)), select(Pin.id).where(false())
                ).subquery()
            )
        ),
        "filtered",
    ),
    "subquery": (_statement(_subquery, rows=True), "filtered"),
    "aliased": (_statement(_aliased, rows=True), "filtered"),
    # Writes and inserts that read a protected table (rowcount as the oracle).
    "update_where_exists": (_update_where_exists, "filtered"),
    "update_from": (_update_from, "filtered"),
    "delete_where_in": (_delete_where_in, "filtered"),
    "insert_from_select": (_insert_from_select, "filtered"),
    # get() and relationship loads of every strategy.
    "get": (_get, "filtered"),
    "lazy_load": (_lazy, "filtered"),
    "selectin_load": (
        lambda s, i, p: _loaded(
            s, select(Pin).where(Pin.id == PIN_OF[i]).options(selectinload(Pin.secrets)), i, p
        ),
        "filtered",
    ),
    "joined_load": (
        lambda s, i, p: _loaded(
            s, select(Pin).where(Pin.id == PIN_OF[i]).options(joinedload(Pin.secrets)), i, p
        ),
        "filtered",
    ),
    "subquery_load": (
        lambda s, i, p: _loaded(
            s, select(Pin).where(Pin.id == PIN_OF[i]).options(subqueryload(Pin.secrets)), i, p
        ),
        "filtered",
    ),
    "by_foreign_key": (_many_to_one, "filtered"),
    # Core on the bare Table: filtered where it stands alone in a FROM list; joined,
    # or a lightweight table() of the same name: refused.
    "core_table": (_statement(_bare, rows=True), "filtered"),
    "core_count": (
        _statement(
            lambda i, p: (
                select(func.count())
                .select_from(SECRETS)
                .where(SECRETS.c.id == i, SECRETS.c.title.startswith(p))
            )
        ),
        "filtered",
    ),
    "core_alias": (_statement(_core_alias, rows=True), "filtered"),
    "lightweight_table": (_statement(_lightweight, rows=True), "refused"),
    "core_in_orm_join": (
        _statement(
            lambda i, p: (
                select(Pin.id)
                .join(SECRETS, SECRETS.c.pin_id == Pin.id)
                .where(SECRETS.c.id == i, SECRETS.c.title.startswith(p))
            ),
            rows=True,
        ),
        "refused",
    ),
}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db(request: pytest.FixtureRequest) -> AsyncIterator[OrmDatabase]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    async with open_orm_database(request.param, url) as database:
        async with database.engine.begin() as conn:
            await conn.run_sync(ReadsBase.metadata.create_all)
            await conn.execute(insert(Pin.__table__), [{"id": 10}, {"id": 20}])
            await conn.execute(insert(Mark.__table__), [{"id": 10}, {"id": 20}])
            await conn.execute(
                insert(SECRETS),
                [
                    {"id": i, "owner": owner, "title": f"{prefix}-secret", "pin_id": PIN_OF[i]}
                    for owner, (i, prefix) in ROWS.items()
                ],
            )
        yield database


def protected(db: OrmDatabase) -> SessionManager:
    manager = SessionManager(db.engine)
    manager.protect(Secret, user_column="owner")
    return manager


async def ask(manager: SessionManager, shape: Shape, whose: str) -> Any:
    """Run ``shape`` as alice about ``whose`` secret."""
    secret, prefix = ROWS[whose]
    async with isolation.scope(UserContext.new("alice")), manager.session() as s:
        return await shape(s, secret, prefix)


@pytest.mark.parametrize("name", sorted(SHAPES))
async def test_shape_answers_no_for_bobs_row(db: OrmDatabase, name: str) -> None:
    """Alice's question about bob's row: no, or refused; about her own: yes (or refused
    alike, for the shapes protect() cannot filter)."""
    shape, expected = SHAPES[name]
    manager = protected(db)
    if expected == "refused":
        for whose in ("bob", "alice"):
            with pytest.raises(UsageError, match="protected table 'isolation_reads_secrets'"):
                await ask(manager, shape, whose)
        return
    assert not await ask(manager, shape, "bob")
    assert await ask(manager, shape, "alice")


@pytest.mark.parametrize("name", sorted(SHAPES))
async def test_shape_finds_bobs_row_without_protect(db: OrmDatabase, name: str) -> None:
    """The attack is real: unprotected, every shape answers yes about bob's row."""
    shape, _ = SHAPES[name]
    assert await ask(SessionManager(db.engine), shape, "bob")


async def test_refusal_keeps_the_session_usable(db: OrmDatabase) -> None:
    """A refused statement raises before anything is sent; the next one runs."""
    manager = protected(db)
    async with isolation.scope(UserContext.new("alice")), manager.session() as s:
        with pytest.raises(UsageError, match="Core"):
            await s.execute(update(SECRETS).values(title="pwned"))
        with pytest.raises(UsageError, match="Core"):
            await s.execute(delete(SECRETS))
        assert (await s.scalars(select(Secret.title))).all() == ["alice-secret"]
    async with db.engine.connect() as conn:
        titles = (await conn.execute(select(SECRETS.c.title).order_by(SECRETS.c.id))).all()
    assert [t for (t,) in titles] == ["alice-secret", "bob-secret"]


async def test_unprotected_core_statements_still_run(db: OrmDatabase) -> None:
    """Core on an unprotected table is not refused."""
    manager = protected(db)
    marks = Mark.__table__
    async with isolation.scope(UserContext.new("alice")), manager.session() as s:
        assert (await s.execute(select(func.count()).select_from(marks))).scalar() == 2
        await s.execute(update(marks).where(marks.c.id == 10).values(id=11))
        assert sorted((await s.scalars(select(marks.c.id))).all()) == [11, 20]


async def test_rule_refusals_reach_models_named_only_in_exists(db: OrmDatabase) -> None:
    """A model protected by its user column alone refuses a context with a tenant (alice
    of t1 would read alice of t2), also when it is named only inside exists(), where it
    is not among the statement's mappers."""
    manager = protected(db)
    oracle = select(exists().where(Secret.id == ROWS["alice"][0]))
    async with isolation.scope(UserContext.new("alice", tenant_id="t1")), manager.session() as s:
        with pytest.raises(ConfigurationError, match="user column alone"):
            await s.execute(oracle)


def test_a_shape_is_compiled_for_the_check_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The verdict is kept per statement shape: two statements of one shape with other
    values are compiled for the check once (SQLAlchemy's cache key, which it reuses)."""
    from sqlalchemy.dialects.sqlite.base import SQLiteDialect

    from isolation.sessions import _coverage

    compiled: list[object] = []
    levels = _coverage._levels

    def counted(statement: Any, dialect: Any) -> Any:
        compiled.append(statement)
        return levels(statement, dialect)

    monkeypatch.setattr(_coverage, "_levels", counted)
    coverage = _coverage.Coverage(())
    dialect = SQLiteDialect()
    for secret in (1, 2):
        assert coverage.verdict(select(Secret).where(Secret.id == secret), dialect)[0] is None
    assert len(compiled) == 1


def test_the_check_fails_closed_if_the_compiler_hook_moved() -> None:
    """A SQLAlchemy whose compiler no longer renders a SELECT's FROM list where the check
    records it: every statement is refused rather than passed unchecked."""
    from sqlalchemy.dialects.sqlite.base import SQLiteCompiler, SQLiteDialect

    from isolation.sessions import _coverage

    class Moved(SQLiteCompiler):
        def visit_select(self, *args: Any, **kwargs: Any) -> str:
            return "SELECT 1"

    dialect = SQLiteDialect()
    dialect.statement_compiler = Moved
    with pytest.raises(UsageError, match="cannot see the FROM list"):
        _coverage.Coverage(()).verdict(select(literal(1)), dialect)
