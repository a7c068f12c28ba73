"""The ORM surface of ``protect()``: models, two principals' rows, drawn operations.

Shared by the failure-mode check :mod:`.orm_paths` and the tests. A
``Folder`` (UUID key) holds ``Item`` rows (integer key) through one
relationship per loader strategy (``select``, ``selectin``, ``joined``,
``subquery``); both are protected by their ``owner`` column. Each operation
runs as one principal in its own session block, aimed at a row of either
principal, through one shape of the SQLAlchemy 2 ORM: selects, ``get``,
relationship loads from loaded, merged and forged parents, ``refresh``,
detached objects, ORM ``update``/``delete`` (by criteria and in bulk by primary
key, the owner through a named bind), ``insert``, ``insert().from_select()``
into an unprotected table, ``from_statement()`` loads and their flushes, the
legacy bulk methods, ``merge`` and flushes, and the boolean oracle of reads
(``exists()``, ``any()``, counts, scalar subqueries, a bare ``Table``, a CTE
over a union). Afterwards
every value the operation returned must be the principal's, and the database
must hold exactly what a reference model says: the operation's effect on the
principal's own rows if it succeeded, nothing if it was refused.

Imported only inside the checks (it needs the ``sqlalchemy`` extra).
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import attrs
from sqlalchemy import (
    ForeignKey,
    String,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    literal,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    aliased,
    joinedload,
    make_transient_to_detached,
    mapped_column,
    relationship,
    selectinload,
    subqueryload,
)
from sqlalchemy.pool import NullPool

from isolation.report._modes._support.sessions import sqlite_engine

__all__ = [
    "OPS",
    "PRINCIPALS",
    "Export",
    "Folder",
    "Item",
    "Op",
    "attacks",
    "open_orm_database",
    "ops_strategy",
    "run_ops",
]

PRINCIPALS: Final = ("alice", "bob")
STRATEGIES: Final = ("select", "selectin", "joined", "subquery")
FOLDERS: Final = "isolation_orm_folders"
ITEMS: Final = "isolation_orm_items"
EXPORTS: Final = "isolation_orm_exports"


class OrmBase(DeclarativeBase):
    """The declarative base of the ORM-surface models."""


class Folder(OrmBase):
    """A principal's folder: a UUID key and one relationship per loader strategy."""

    __tablename__ = FOLDERS

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    items_select: Mapped[list[Item]] = relationship(lazy="select", viewonly=True)
    items_selectin: Mapped[list[Item]] = relationship(lazy="selectin", viewonly=True)
    items_joined: Mapped[list[Item]] = relationship(lazy="joined", viewonly=True)
    items_subquery: Mapped[list[Item]] = relationship(lazy="subquery", viewonly=True)


class Item(OrmBase):
    """A principal's item, possibly in another principal's folder."""

    __tablename__ = ITEMS

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(String(100))
    body: Mapped[str] = mapped_column(String(200))
    folder_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey(f"{FOLDERS}.id"))
    folder: Mapped[Folder | None] = relationship(lazy="select", viewonly=True)


class Export(OrmBase):
    """An unprotected table (an export, an audit log) that ORM inserts copy items into."""

    __tablename__ = EXPORTS

    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str | None] = mapped_column(String(200))


_FOLDERS: Final = OrmBase.metadata.tables[FOLDERS]
_ITEMS: Final = OrmBase.metadata.tables[ITEMS]
_EXPORTS: Final = OrmBase.metadata.tables[EXPORTS]

# -- seeds ---------------------------------------------------------------------

# Two folders per principal; two items in each, and one item in the other's folder.
SEED_FOLDERS: Final = tuple(
    (uuid.UUID(int=(p + 1) * 16 + k), owner, f"{owner}/folder/{k}")
    for p, owner in enumerate(PRINCIPALS)
    for k in range(2)
)
SEED_ITEMS: Final = tuple(
    [
        (1000 + 10 * p + 2 * k + j, owner, f"{owner}/item/{k}{j}", SEED_FOLDERS[2 * p + k][0])
        for p, owner in enumerate(PRINCIPALS)
        for k in range(2)
        for j in range(2)
    ]
    + [
        (1100 + p, owner, f"{owner}/item/cross", SEED_FOLDERS[2 * (1 - p)][0])
        for p, owner in enumerate(PRINCIPALS)
    ]
)

Rows = dict[tuple[str, Any], tuple[Any, ...]]
"""The database as the reference sees it: ``(table, key) -> values``; new items by content."""


def _seed_rows() -> Rows:
    rows: Rows = {("folder", f[0]): (f[1], f[2]) for f in SEED_FOLDERS}
    rows.update({("item", i[0]): (i[1], i[2], i[3]) for i in SEED_ITEMS})
    return rows


@attrs.frozen
class OrmDatabase:
    """The engine of one run (it sees every row) and its backend."""

    engine: AsyncEngine
    backend: str


@asynccontextmanager
async def open_orm_database(backend: str, postgres_url: str | None) -> AsyncIterator[OrmDatabase]:
    """A fresh SQLite file, or a fresh PostgreSQL schema (no row-level security), with
    the two tables; removed afterwards."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="isolation-orm-") as tmp:
            engine = sqlite_engine(str(Path(tmp) / "orm.sqlite"))
            try:
                async with engine.begin() as conn:
                    await conn.run_sync(OrmBase.metadata.create_all)
                yield OrmDatabase(engine=engine, backend=backend)
            finally:
                await engine.dispose()
        return
    if postgres_url is None:
        raise RuntimeError("a PostgreSQL check needs settings.postgres_url")
    from sqlalchemy.engine import make_url

    schema = f"isolation_orm_{uuid.uuid4().hex[:12]}"
    url = make_url(postgres_url).set(drivername="postgresql+asyncpg")
    admin = create_async_engine(url, poolclass=NullPool)
    engine = create_async_engine(
        url, connect_args={"server_settings": {"search_path": schema}}, pool_size=2
    )
    try:
        async with admin.begin() as conn:
            await conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        async with engine.begin() as conn:
            await conn.run_sync(OrmBase.metadata.create_all)
        yield OrmDatabase(engine=engine, backend=backend)
    finally:
        await engine.dispose()
        async with admin.begin() as conn:
            await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.dispose()


async def reset(db: OrmDatabase) -> None:
    """Put the seed rows back (and nothing else)."""
    async with db.engine.begin() as conn:
        await conn.execute(delete(_EXPORTS))
        await conn.execute(delete(_ITEMS))
        await conn.execute(delete(_FOLDERS))
        await conn.execute(
            insert(_FOLDERS),
            [{"id": f[0], "owner": f[1], "name": f[2]} for f in SEED_FOLDERS],
        )
        await conn.execute(
            insert(_ITEMS),
            [{"id": i[0], "owner": i[1], "body": i[2], "folder_id": i[3]} for i in SEED_ITEMS],
        )


async def snapshot(db: OrmDatabase) -> Rows:
    """Every row, as the reference model keys it (new items keyed by content)."""
    rows: Rows = {}
    seeded = {i[0] for i in SEED_ITEMS}
    async with db.engine.connect() as conn:
        for fid, owner, name in await conn.execute(select(_FOLDERS)):
            rows[("folder", fid)] = (owner, name)
        for iid, owner, body, folder in await conn.execute(select(_ITEMS)):
            key: Any = iid if iid in seeded else ("new", owner, body, folder)
            rows[("item", key)] = (owner, body, folder)
    return rows


# -- operations ------------------------------------------------------------------


@attrs.frozen
class Op:
    """One operation: its kind, the acting principal, the target rows, a variant."""

    kind: str
    actor: int
    item: int = 0
    folder: int = 0
    variant: int = 0

    def __str__(self) -> str:
        return (
            f"{self.kind}(as {PRINCIPALS[self.actor]}, item {SEED_ITEMS[self.item][0]}, "
            f"folder {self.folder}, variant {self.variant})"
        )


@attrs.frozen
class _Call:
    op: Op
    me: str
    other: str
    value: str

    @property
    def item_id(self) -> int:
        return int(SEED_ITEMS[self.op.item][0])

    @property
    def folder_id(self) -> uuid.UUID:
        return SEED_FOLDERS[self.op.folder][0]

    @property
    def owner(self) -> str | None:
        """The owner value the op writes: none, the principal's, the other's."""
        return (None, self.me, self.other)[self.op.variant % 3]


Runner = Callable[[Any, _Call], Any]
Effect = Callable[[Rows, _Call], None]


def _strategy(call: _Call) -> str:
    return STRATEGIES[call.op.variant % len(STRATEGIES)]


def _forged_item(call: _Call, **values: Any) -> Item:
    obj = Item(id=call.item_id, **values)
    make_transient_to_detached(obj)
    return obj


async def _select_all(s: Any, c: _Call) -> list[str]:
    return [i.body for i in (await s.scalars(select(Item))).all()]


async def _select_id(s: Any, c: _Call) -> list[str]:
    return [i.body for i in (await s.scalars(select(Item).where(Item.id == c.item_id))).all()]


async def _select_columns(s: Any, c: _Call) -> list[str]:
    return [f"{o}:{b}" for o, b in (await s.execute(select(Item.owner, Item.body))).all()]


async def _get(s: Any, c: _Call) -> list[str]:
    obj = await s.get(Item, c.item_id)
    folder = await s.get(Folder, c.folder_id)
    return [x for x in (obj and obj.body, folder and folder.name) if x]


async def _folder_strategy(s: Any, c: _Call) -> Any:
    strategy = _strategy(c)
    attr = getattr(Folder, f"items_{strategy}")
    loader = {"select": None, "selectin": selectinload, "joined": joinedload}.get(
        strategy, subqueryload
    )
    stmt = select(Folder) if loader is None else select(Folder).options(loader(attr))
    folders = (await s.scalars(stmt)).unique().all()
    return await s.run_sync(
        lambda _: (
            [f.name for f in folders] + [i.body for f in folders for i in getattr(f, attr.key)]
        )
    )


async def _merged_parent(s: Any, c: _Call) -> Any:
    forged = Folder(id=c.folder_id)
    if c.owner is not None:
        forged.owner = c.owner
    make_transient_to_detached(forged)
    parent = await s.merge(forged, load=False)
    key = f"items_{_strategy(c)}"
    return await s.run_sync(lambda _: [i.body for i in getattr(parent, key)])


async def _cached_parent(s: Any, c: _Call) -> Any:
    # SQLAlchemy's caching recipe: a detached object (here: as loaded by its
    # owner), merged with load=False, then its relationships lazy-loaded.
    forged = Folder(id=c.folder_id, owner=SEED_FOLDERS[c.op.folder][1], name="cached")
    make_transient_to_detached(forged)
    parent = await s.merge(forged, load=False)
    key = f"items_{_strategy(c)}"
    return await s.run_sync(lambda _: [i.body for i in getattr(parent, key)])


async def _merged_child(s: Any, c: _Call) -> Any:
    child = await s.merge(
        _forged_item(c, owner=c.me, body="forged", folder_id=c.folder_id), load=False
    )
    return await s.run_sync(lambda _: [child.folder.name] if child.folder else [])


async def _refresh(s: Any, c: _Call) -> list[str]:
    obj = await s.merge(_forged_item(c, owner=c.me, body="forged"), load=False)
    await s.refresh(obj)
    return [obj.body]


async def _detached_access(s: Any, c: _Call) -> Any:
    obj = _forged_item(c)
    s.add(obj)
    return await s.run_sync(lambda _: [obj.body, obj.owner])


async def _merged_attribute(s: Any, c: _Call) -> Any:
    obj = await s.merge(_forged_item(c, owner=c.me), load=False)
    return await s.run_sync(lambda _: [obj.body])


async def _from_text(s: Any, c: _Call) -> list[str]:
    stmt = select(Item).from_statement(text(f"SELECT * FROM {ITEMS}"))  # noqa: S608 - constant
    return [i.body for i in (await s.scalars(stmt)).all()]


async def _from_text_no_owner(s: Any, c: _Call) -> list[str]:
    # Rows without the owner column: protect() cannot check them.
    stmt = select(Item).from_statement(text(f"SELECT id, body, folder_id FROM {ITEMS}"))  # noqa: S608
    return [i.body for i in (await s.scalars(stmt)).all()]


async def _from_text_forged(s: Any, c: _Call) -> None:
    # A hand-written query claiming the principal owns the row, then a flush of it.
    stmt = select(Item).from_statement(
        text(f"SELECT id, :me AS owner, body, folder_id FROM {ITEMS} WHERE id = :i")  # noqa: S608
    )
    for obj in (await s.scalars(stmt, {"me": c.me, "i": c.item_id})).all():
        obj.body = c.value
    await s.flush()


async def _aliased_text_forged(s: Any, c: _Call) -> list[str]:
    # An entity aliased to a text subquery claiming the principal owns every row: the
    # criteria compare the forged column; a flush of what it loaded must be checked.
    forging = (
        text(f"SELECT id, :me AS owner, body, folder_id FROM {ITEMS}")  # noqa: S608
        .bindparams(me=c.me)
        .columns(Item.id, Item.owner, Item.body, Item.folder_id)
        .subquery()
    )
    entity = aliased(Item, forging)
    found = (await s.scalars(select(entity).where(entity.id == c.item_id))).all()
    for obj in found:
        obj.body = c.value
    await s.flush()
    return []


async def _oracle(s: Any, c: _Call) -> list[str]:
    # The boolean oracle (issue 17): "does a row with this id start with the other's
    # name?", asked through one statement shape per variant. Bodies start with their
    # owner's name, so any yes (or a body it returns) reads the other's row.
    hit = (Item.id == c.item_id, Item.body.startswith(c.other))
    table = Item.__table__
    shape = c.op.variant % 7
    if shape == 0:
        stmt: Any = select(exists().where(*hit))
    elif shape == 1:
        stmt = select(func.count()).where(and_(*hit))
    elif shape == 2:
        stmt = select(Folder.id).where(Folder.items_select.any(and_(*hit)))
    elif shape == 3:
        stmt = select(literal(1)).where(exists().where(*hit))
    elif shape == 4:
        stmt = select(select(Item.body).where(*hit).scalar_subquery())
    elif shape == 5:
        stmt = select(table.c.body).where(table.c.id == c.item_id)
    else:
        bodies = union_all(select(Item.body), select(Item.body).where(Item.id < 0)).cte()
        stmt = select(bodies.c.body).where(bodies.c.body.startswith(c.other))
    answers = (await s.execute(stmt)).scalars().all()
    found = [a for a in answers if a is not None and a is not False and a != 0]
    return [a if isinstance(a, str) else f"{c.other}'s row exists ({a!r})" for a in found]


async def _insert_from_select(s: Any, c: _Call) -> list[str]:
    # An ORM insert into an unprotected table reading items: from_select, a scalar
    # subquery, multi-row values, a union with an alias. What it copied is returned
    # (the export table is emptied first, so only this operation's copies are).
    await s.execute(delete(Export))
    alias = aliased(Item)
    shape = c.op.variant % 4
    body = select(Item.body).where(Item.id == c.item_id).scalar_subquery()
    if shape == 0:
        stmt = insert(Export).from_select(["body"], select(Item.body))
    elif shape == 1:
        stmt = insert(Export).values(body=body)
    elif shape == 2:
        stmt = insert(Export).values([{"body": body}, {"body": c.value}])
    else:
        both = select(Item.body).union_all(select(alias.body).where(alias.id == c.item_id))
        stmt = insert(Export).from_select(["body"], both)
    await s.execute(stmt)
    return [b for b in (await s.scalars(select(Export.body))).all() if b is not None]


async def _update_where(s: Any, c: _Call) -> None:
    await s.execute(update(Item).where(Item.id == c.item_id).values(body=c.value))


async def _update_all(s: Any, c: _Call) -> None:
    await s.execute(update(Item).values(body=c.value))


async def _bulk_pk(s: Any, c: _Call) -> None:
    await s.execute(update(Item), [{"id": c.item_id, "body": c.value}])


async def _bulk_pk_owner(s: Any, c: _Call) -> None:
    await s.execute(update(Item), [{"id": c.item_id, "owner": c.other, "body": c.value}])


async def _mass_assign(s: Any, c: _Call) -> None:
    owner = c.me if c.op.variant % 2 == 0 else c.other
    await s.execute(update(Item).where(Item.owner == c.me).values(owner=owner, body=c.value))


async def _owner_parameter(s: Any, c: _Call) -> None:
    await s.execute(update(Item).where(Item.id == c.item_id), {"owner": c.other})


async def _owner_bind(s: Any, c: _Call) -> None:
    # The owner set through a named bind whose execute parameter replaces its
    # default (the principal's): the parameter is the principal's (variant even)
    # or the other's.
    owner = c.me if c.op.variant % 2 == 0 else c.other
    stmt = update(Item).where(Item.id == c.item_id)
    await s.execute(stmt.values(owner=bindparam("o", c.me), body=c.value), {"o": owner})


async def _core_only(s: Any, c: _Call) -> None:
    # dml_strategy="core_only": SQLAlchemy runs the statement as Core, without
    # loader criteria; one statement, or an executemany (variant odd).
    options = {"dml_strategy": "core_only"}
    if c.op.variant % 2:
        stmt = update(Item).where(Item.id == bindparam("i")).values(body=bindparam("v"))
        await s.execute(stmt.execution_options(**options), [{"i": c.item_id, "v": c.value}])
    else:
        stmt = update(Item).where(Item.id == c.item_id).values(body=c.value)
        await s.execute(stmt.execution_options(**options))


async def _core_only_delete(s: Any, c: _Call) -> None:
    stmt = delete(Item).where(Item.id == bindparam("i"))
    await s.execute(stmt.execution_options(dml_strategy="core_only"), [{"i": c.item_id}])


async def _delete_where(s: Any, c: _Call) -> None:
    await s.execute(delete(Item).where(Item.id == c.item_id))


async def _bulk_pk_delete(s: Any, c: _Call) -> None:
    await s.execute(delete(Item), [{"id": c.item_id}])


async def _bulk_update_mappings(s: Any, c: _Call) -> None:
    await s.run_sync(lambda ss: ss.bulk_update_mappings(Item, [{"id": c.item_id, "body": c.value}]))


def _new_values(c: _Call) -> dict[str, Any]:
    values: dict[str, Any] = {"body": c.value, "folder_id": None}
    if c.owner is not None:
        values["owner"] = c.owner
    return values


async def _bulk_insert_mappings(s: Any, c: _Call) -> None:
    await s.run_sync(lambda ss: ss.bulk_insert_mappings(Item, [_new_values(c)]))


async def _bulk_save_new(s: Any, c: _Call) -> None:
    await s.run_sync(lambda ss: ss.bulk_save_objects([Item(**_new_values(c))]))


async def _bulk_save_forged(s: Any, c: _Call) -> None:
    obj = _forged_item(c, owner=c.me)
    obj.body = c.value
    await s.run_sync(lambda ss: ss.bulk_save_objects([obj]))


async def _add(s: Any, c: _Call) -> None:
    s.add(Item(**_new_values(c)))
    await s.flush()


async def _orm_insert(s: Any, c: _Call) -> None:
    await s.execute(insert(Item).values(owner=c.me, body=c.value, folder_id=None))


async def _merge_forged_modify(s: Any, c: _Call) -> None:
    obj = await s.merge(_forged_item(c, owner=c.me, body="forged"), load=False)
    obj.body = c.value
    await s.flush()


async def _merge_load(s: Any, c: _Call) -> None:
    await s.merge(Item(id=c.item_id, owner=c.me, body=c.value))
    await s.flush()


async def _forged_delete(s: Any, c: _Call) -> None:
    obj = _forged_item(c, owner=c.me, body="forged")
    s.add(obj)
    await s.delete(obj)
    await s.flush()


async def _set_owner(s: Any, c: _Call) -> None:
    obj = await s.get(Item, c.item_id)
    if obj is not None:
        obj.owner = c.other
        await s.flush()


async def _folder_bulk(s: Any, c: _Call) -> None:
    change = [{"id": c.folder_id, "name": c.value}]
    if c.op.variant % 2:
        await s.execute(update(Folder), change)
    else:
        await s.run_sync(lambda ss: ss.bulk_update_mappings(Folder, change))


async def _folder_update_where(s: Any, c: _Call) -> None:
    await s.execute(update(Folder).where(Folder.id == c.folder_id).values(name=c.value))


# -- effects on the reference (own rows only) ---------------------------------------


def _none(rows: Rows, c: _Call) -> None:
    return None


def _set_body(rows: Rows, c: _Call) -> None:
    key = ("item", c.item_id)
    if key not in rows:  # gone already (an earlier delete): the write changes nothing
        return
    owner, _, folder = rows[key]
    if owner == c.me:
        rows[key] = (owner, c.value, folder)


def _set_all_bodies(rows: Rows, c: _Call) -> None:
    for key, row in list(rows.items()):
        if key[0] == "item" and row[0] == c.me:
            rows[key] = (row[0], c.value, row[2])


def _mass(rows: Rows, c: _Call) -> None:
    if c.op.variant % 2 == 0:
        _set_all_bodies(rows, c)


def _bind(rows: Rows, c: _Call) -> None:
    if c.op.variant % 2 == 0:
        _set_body(rows, c)


def _delete(rows: Rows, c: _Call) -> None:
    key = ("item", c.item_id)
    if key in rows and rows[key][0] == c.me:
        del rows[key]


def _insert(rows: Rows, c: _Call) -> None:
    if c.owner != c.other:
        rows[("item", ("new", c.me, c.value, None))] = (c.me, c.value, None)


def _insert_own(rows: Rows, c: _Call) -> None:
    rows[("item", ("new", c.me, c.value, None))] = (c.me, c.value, None)


def _set_name(rows: Rows, c: _Call) -> None:
    key = ("folder", c.folder_id)
    if key in rows and rows[key][0] == c.me:
        rows[key] = (c.me, c.value)


OPS: Final[dict[str, tuple[Runner, Effect]]] = {
    "select_all": (_select_all, _none),
    "select_id": (_select_id, _none),
    "select_columns": (_select_columns, _none),
    "get": (_get, _none),
    "folder_strategy": (_folder_strategy, _none),
    "merged_parent": (_merged_parent, _none),
    "cached_parent": (_cached_parent, _none),
    "merged_child": (_merged_child, _none),
    "refresh": (_refresh, _none),
    "detached_access": (_detached_access, _none),
    "merged_attribute": (_merged_attribute, _none),
    "from_text": (_from_text, _none),
    "from_text_no_owner": (_from_text_no_owner, _none),
    "from_text_forged": (_from_text_forged, _set_body),
    "aliased_text_forged": (_aliased_text_forged, _set_body),
    "insert_from_select": (_insert_from_select, _none),
    "oracle": (_oracle, _none),
    "update_where": (_update_where, _set_body),
    "update_all": (_update_all, _set_all_bodies),
    "bulk_pk": (_bulk_pk, _set_body),
    "bulk_pk_owner": (_bulk_pk_owner, _none),
    "mass_assign": (_mass_assign, _mass),
    "owner_parameter": (_owner_parameter, _none),
    "owner_bind": (_owner_bind, _bind),
    "delete_where": (_delete_where, _delete),
    "core_only": (_core_only, _set_body),
    "core_only_delete": (_core_only_delete, _delete),
    "bulk_pk_delete": (_bulk_pk_delete, _delete),
    "bulk_update_mappings": (_bulk_update_mappings, _set_body),
    "bulk_insert_mappings": (_bulk_insert_mappings, _insert),
    "bulk_save_new": (_bulk_save_new, _insert),
    "bulk_save_forged": (_bulk_save_forged, _set_body),
    "add": (_add, _insert),
    "orm_insert": (_orm_insert, _insert_own),
    "merge_forged_modify": (_merge_forged_modify, _set_body),
    "merge_load": (_merge_load, _set_body),
    "forged_delete": (_forged_delete, _delete),
    "set_owner": (_set_owner, _none),
    "folder_bulk": (_folder_bulk, _set_name),
    "folder_update_where": (_folder_update_where, _set_name),
}


def attacks() -> list[list[Op]]:
    """The shapes of issue 16's findings 1 to 3, of the session review (a named bind
    of the owner, insert from select, from_statement) and of issue 17's boolean
    oracle (exists(), any(), a count, a scalar subquery, a bare Table, a CTE), each
    as alice against bob's rows."""
    bob_item = next(n for n, i in enumerate(SEED_ITEMS) if i[1] == "bob")
    alice_item = next(n for n, i in enumerate(SEED_ITEMS) if i[1] == "alice")
    bob_folder = next(n for n, f in enumerate(SEED_FOLDERS) if f[1] == "bob")
    shapes = [
        ("bulk_pk", 0),
        ("bulk_update_mappings", 0),
        ("mass_assign", 1),
        ("bulk_insert_mappings", 2),
        ("bulk_save_new", 2),
        ("cached_parent", 0),
        ("merged_parent", 1),
        ("refresh", 0),
        ("detached_access", 0),
        ("merged_attribute", 0),
        ("bulk_save_forged", 0),
        ("merge_forged_modify", 0),
        ("forged_delete", 0),
        ("folder_bulk", 0),
        ("insert_from_select", 0),
        ("insert_from_select", 1),
        ("insert_from_select", 2),
        ("insert_from_select", 3),
        ("from_text_no_owner", 0),
        ("from_text_forged", 0),
        ("aliased_text_forged", 0),
        *(("oracle", variant) for variant in range(7)),
    ]
    return [[Op(kind, 0, bob_item, bob_folder, variant)] for kind, variant in shapes] + [
        [Op("owner_bind", 0, alice_item, bob_folder, 1)]
    ]


def ops_strategy(max_size: int = 4) -> Any:
    """Hypothesis: short sequences of operations of either principal on any row."""
    from hypothesis import strategies as st

    op = st.builds(
        Op,
        kind=st.sampled_from(sorted(OPS)),
        actor=st.integers(0, 1),
        item=st.integers(0, len(SEED_ITEMS) - 1),
        folder=st.integers(0, len(SEED_FOLDERS) - 1),
        variant=st.integers(0, 11),
    )
    return st.lists(op, min_size=1, max_size=max_size)


async def run_ops(
    manager: Any, db: OrmDatabase, ops: Sequence[Op], refused: list[str] | None = None
) -> list[str]:
    """Run ``ops`` from the seed rows; the violations (foreign values read, writes the
    reference does not allow). Refusals are appended to ``refused`` when given."""
    import isolation
    from isolation import UserContext

    await reset(db)
    rows = _seed_rows()
    found: list[str] = []
    for number, op in enumerate(ops):
        me, other = PRINCIPALS[op.actor], PRINCIPALS[1 - op.actor]
        call = _Call(op=op, me=me, other=other, value=f"{me}/w/{number}")
        run, effect = OPS[op.kind]
        got: Any = None
        ok = True
        try:
            async with isolation.scope(UserContext.new(me)), manager.session() as s:
                got = await run(s, call)
        except Exception as exc:  # any refusal is allowed; its effect is checked
            ok = False
            if refused is not None:
                refused.append(f"{op}: {type(exc).__name__}: {str(exc)[:100]}")
        leaked = [v for v in got or () if isinstance(v, str) and other in v]
        if leaked:
            found.append(f"{op}: {me} read {other}'s values {leaked}")
        expected = dict(rows)
        if ok:
            effect(expected, call)
        actual = await snapshot(db)
        if actual != expected:
            changed = sorted(
                str(k) for k in set(actual) | set(expected) if actual.get(k) != expected.get(k)
            )
            found.append(
                f"{op}: {'succeeded' if ok else 'refused'} but the database differs from the "
                f"reference at {changed[:4]}"
            )
        rows = actual
    return found
