"""Canaries of ``isolation._compat``'s reaches into SQLAlchemy's internals.

Each builds the statement, pool or engine the library reads and checks that the
private attribute still holds what ``protect()``, the manager and the row-level
security check assume, so that an upgrade that moves one fails here, by name,
instead of letting a statement through unchecked. CI runs these on the oldest
SQLAlchemy the extra allows (its oldest-sqlalchemy phase runs ``tests/sessions``)
and on the newest.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import (
    ForeignKey,
    Table,
    create_engine,
    delete,
    insert,
    inspect,
    select,
    true,
    union,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    aliased,
    load_only,
    mapped_column,
    relationship,
)
from sqlalchemy.pool import QueuePool
from sqlalchemy.sql.elements import BinaryExpression, BindParameter
from sqlalchemy.sql.visitors import cloned_traverse

from isolation import _compat
from isolation.sessions._coverage import _levels

VERSION = sqlalchemy.__version__


class Base(DeclarativeBase):
    pass


class Parent(Base):
    __tablename__ = "compat_parent"
    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str]
    children: Mapped[list[Child]] = relationship(back_populates="parent")


class Child(Base):
    __tablename__ = "compat_child"
    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str]
    parent_id: Mapped[int] = mapped_column(ForeignKey("compat_parent.id"))
    parent: Mapped[Parent] = relationship(back_populates="children")


PARENT: Table = Parent.__table__  # type: ignore[assignment]
CHILD: Table = Child.__table__  # type: ignore[assignment]


def _same(left: Any, right: Any) -> bool:
    return bool(left.compare(right))


def test_where_criteria_holds_each_where_term() -> None:
    """_where_criteria: one entry per where() term, on SELECT, UPDATE and DELETE."""
    for statement in (
        select(Parent).where(Parent.id == 1, Parent.owner == "a"),
        update(Parent).where(Parent.id == 1).where(Parent.owner == "a").values(owner="b"),
        delete(Parent).where(Parent.id == 1, Parent.owner == "a"),
    ):
        found = _compat.where_criteria(statement)
        assert isinstance(found, tuple), f"SQLAlchemy {VERSION}: _where_criteria moved"
        assert len(found) == 2
        assert _same(found[0], Parent.id == 1)
        assert _same(found[1], Parent.owner == "a")
    assert _compat.where_criteria(select(Parent)) == ()


def test_add_where_criteria_extends_a_clone_only() -> None:
    """Extending _where_criteria of a clone made by cloned_traverse() adds to its WHERE
    clause (as protect()'s repair does) and leaves the original alone."""
    original = select(Parent).where(Parent.id == 1)

    def visit_select(element: Any) -> None:
        _compat.add_where_criteria(element, [Parent.owner == "a"])

    copy = cloned_traverse(original, {}, {"select": visit_select})
    assert len(_compat.where_criteria(copy)) == 2
    assert len(_compat.where_criteria(original)) == 1
    rendered = str(copy.compile(dialect=postgresql.dialect()))
    assert "compat_parent.owner = %(owner_1)s" in rendered
    assert "compat_parent.id = %(id_1)s" in rendered


def test_raw_columns_and_their_parent_entity() -> None:
    """_raw_columns: what select() was given; the ORM's parententity annotation names
    the mapper, or the aliased class, each came from."""
    alias = aliased(Child)
    columns = _compat.raw_columns(select(Parent, alias, Child.owner))
    assert len(columns) == 3, f"SQLAlchemy {VERSION}: _raw_columns moved"
    assert _compat.parent_entity(columns[0]) is inspect(Parent)
    entity = _compat.parent_entity(columns[1])
    assert entity is not None
    assert entity.is_aliased_class
    assert entity.entity is alias
    assert _compat.parent_entity(columns[2]) is inspect(Child)
    assert _compat.deannotate(columns[0]) is PARENT
    # A statement kind without them is not a moved attribute.
    assert _compat.raw_columns(union(select(PARENT.c.id), select(CHILD.c.id))) == ()


def test_from_obj_holds_select_from() -> None:
    alias = aliased(Child)
    found = _compat.from_obj(select(Parent.id).select_from(alias))
    assert len(found) == 1, f"SQLAlchemy {VERSION}: _from_obj moved"
    entity = _compat.parent_entity(found[0])
    assert entity is not None
    assert entity.entity is alias
    assert _compat.from_obj(select(Parent)) == ()


def test_setup_joins_and_of_type() -> None:
    """_setup_joins: one (target, onclause, from, flags) per join(); a relationship's
    of_type() target is in _of_type."""
    alias = aliased(Child)
    joins = _compat.setup_joins(select(Parent).join(alias, Parent.id == alias.parent_id))
    assert len(joins) == 1, f"SQLAlchemy {VERSION}: _setup_joins moved"
    target = _compat.parent_entity(joins[0][0])
    assert target is not None
    assert target.entity is alias
    assert _same(joins[0][1], Parent.id == alias.parent_id)

    other = aliased(Child)
    joins = _compat.setup_joins(select(Parent).join(Parent.children.of_type(other)))
    assert len(joins) == 1
    target = _compat.of_type(joins[0][0])
    assert target is not None, f"SQLAlchemy {VERSION}: _of_type moved"
    assert inspect(target) is inspect(other)
    assert _compat.of_type(Parent.children) is None


def test_with_options_holds_loader_options() -> None:
    option = load_only(Parent.owner)
    assert _compat.with_options(select(Parent).options(option)) == (option,), (
        f"SQLAlchemy {VERSION}: _with_options moved"
    )
    assert _compat.with_options(select(Parent)) == ()


def test_from_objects_names_the_tables_of_a_clause() -> None:
    found = _compat.from_objects(Parent.id == Child.parent_id)
    assert {_compat.deannotate(table) for table in found} == {PARENT, CHILD}, (
        f"SQLAlchemy {VERSION}: _from_objects moved"
    )
    assert _compat.from_objects(true()) == ()


def test_deannotate_gives_the_plain_element() -> None:
    annotated = Parent.owner.__clause_element__()
    assert annotated is not PARENT.c.owner
    assert _compat.deannotate(annotated) is PARENT.c.owner
    assert _compat.deannotate(PARENT) is PARENT


def test_cache_key_is_per_shape() -> None:
    """_generate_cache_key(): equal for statements of one shape (other literals),
    different for another shape; memoized on the statement."""
    first = select(Parent).where(Parent.id == 1)
    key = _compat.cache_key(first)
    assert key is not None, f"SQLAlchemy {VERSION}: _generate_cache_key moved"
    assert key.key == _compat.cache_key(select(Parent).where(Parent.id == 2)).key
    assert key.key != _compat.cache_key(select(Parent).where(Parent.owner == "a")).key
    assert _compat.cache_key(first) is key


def test_dml_values_and_set_clause() -> None:
    """_values (and on 2.0 _ordered_values): the columns an UPDATE sets and their binds."""
    statement = update(Parent).where(Parent.id == 1).values(owner="b")
    values = _compat.dml_values(statement)
    assert list(values) == [PARENT.c.owner], f"SQLAlchemy {VERSION}: _values moved"
    bind = values[PARENT.c.owner]
    assert isinstance(bind, BindParameter)
    assert bind.value == "b"
    pairs = _compat.set_clause(statement)
    assert pairs is not None
    assert [(column, value.value) for column, value in pairs] == [(PARENT.c.owner, "b")]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ordered_values(), 2.1
        ordered = update(Parent).ordered_values((Parent.owner, "c"), (Parent.id, 2))
    pairs = _compat.set_clause(ordered)
    assert pairs is not None, f"SQLAlchemy {VERSION}: ordered_values() moved"
    assert [(column, value.value) for column, value in pairs] == [
        (PARENT.c.owner, "c"),
        (PARENT.c.id, 2),
    ]
    assert _compat.dml_values(insert(Parent).values(id=1, owner="a")).keys() == {
        PARENT.c.id,
        PARENT.c.owner,
    }
    assert _compat.dml_values(delete(Parent)) == {}


def test_multi_values_holds_the_rows() -> None:
    statement = insert(Parent).values([{"id": 1, "owner": "a"}, {"id": 2, "owner": "b"}])
    found = _compat.multi_values(statement)
    assert len(found) == 1, f"SQLAlchemy {VERSION}: _multi_values moved"
    rows = found[0]
    assert [{column.name: value for column, value in row.items()} for row in rows] == [
        {"id": 1, "owner": "a"},
        {"id": 2, "owner": "b"},
    ]
    assert _compat.multi_values(insert(Parent).values(id=1, owner="a")) == ()


def test_max_overflow_of_a_queue_pool() -> None:
    for given in (0, 7, -1):
        engine = create_engine("sqlite://", poolclass=QueuePool, pool_size=3, max_overflow=given)
        try:
            assert _compat.max_overflow(engine.pool) == given, (
                f"SQLAlchemy {VERSION}: QueuePool._max_overflow moved"
            )
        finally:
            engine.dispose()


@pytest.mark.parametrize("level", ["AUTOCOMMIT", "SERIALIZABLE", None])
def test_connect_isolation_level(level: str | None) -> None:
    kwargs = {} if level is None else {"isolation_level": level}
    engine = create_engine("sqlite://", **kwargs)
    try:
        expected = None if level is None else level
        assert _compat.connect_isolation_level(engine.dialect) == expected, (
            f"SQLAlchemy {VERSION}: dialect._on_connect_isolation_level moved"
        )
    finally:
        engine.dispose()


def test_compiler_hooks_record_every_level() -> None:
    """protect()'s recording compiler overrides SQLCompiler._compose_select_body,
    update_from_clause and delete_extra_from_clause: each SELECT level, and the extra
    FROMs of an UPDATE and a DELETE, are recorded with their WHERE criteria."""
    dialect = postgresql.dialect()
    inner = select(Child.id).where(Child.owner == "a").scalar_subquery()
    levels = _levels(select(Parent).where(Parent.id == inner), dialect)
    assert len(levels) == 2, f"SQLAlchemy {VERSION}: SQLCompiler._compose_select_body moved"
    froms = [{_compat.deannotate(found) for found in level[1]} for level in levels]
    assert {PARENT} in froms
    assert {CHILD} in froms

    for statement in (
        update(Parent).where(Parent.id == Child.parent_id).values(owner="b"),
        delete(Parent).where(Parent.id == Child.parent_id),
    ):
        recorded = _levels(statement, dialect)
        assert len(recorded) == 1, f"SQLAlchemy {VERSION}: the DML FROM hooks moved"
        where, extra = recorded[0]
        assert [_compat.deannotate(found) for found in extra] == [CHILD]
        assert len(where) == 1
        assert isinstance(where[0], BinaryExpression)
