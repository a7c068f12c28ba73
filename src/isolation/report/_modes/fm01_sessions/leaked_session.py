"""FM1, DB sessions not isolated between users: a leaked session refuses every method.

Subject: a :class:`~isolation.report._modes._support.faces.SessionSubject` (a
manager factory). Alice's request opens its session block, writes and loads a
row, and keeps the session (and its ``sync_session``) in a global, as a cache
would; Bob's request, running concurrently in a task group with its own block
open, then calls **every public method and property** of the kept
``AsyncSession`` and of its ``Session``, enumerated from SQLAlchemy's classes
when the check runs (``get`` answered from the identity map, iteration,
``connection()`` and raw SQL, ``run_sync``, ``rollback``, ``invalidate``...).
Properties: each call is refused with :class:`~isolation.CrossContextAccessError`
before it returns anything, no SQL is sent while Bob probes, and Alice's work
is committed intact afterwards. After Alice's scope has ended, the same calls
from another scope and from no scope are refused too.

Mutant: ``leaked-session-refuses`` faces a manager whose sessions refuse
another scope only in ``do_orm_execute`` (the guard before this check existed):
``execute(select(...))`` is refused, ``get``, iteration and ``rollback`` are not.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final

import anyio
import attrs

from isolation.report._modes._support.faces import SessionSubject, register_face
from isolation.report._registry import ModeRegistry, Settings

__all__ = [
    "ASYNC_CALLS",
    "Leaked",
    "NOT_BOUND",
    "SYNC_CALLS",
    "leaked_session_scenario",
    "probe",
    "public_members",
    "register",
]

# Dunders that reach a session's contents or end its work: probed like public names.
DUNDERS: Final = frozenset(
    {"__contains__", "__iter__", "__enter__", "__exit__", "__aenter__", "__aexit__"}
)

# Public members not bound to one session, per class, with the reason they are not probed.
_CLASS_LEVEL: Final[Mapping[str, str]] = {
    "close_all": "a classmethod closing every session of the process (each close() checks)",
    "identity_key": "a classmethod computing a key from its arguments",
    "object_session": "a classmethod returning an object's session (which checks)",
}
NOT_BOUND: Final[Mapping[str, Mapping[str, str]]] = {
    "AsyncSession": {
        **_CLASS_LEVEL,
        "sync_session_class": "a class: builds a new, empty session",
    },
    "Session": {
        **_CLASS_LEVEL,
        "dispatch": "the class-level event dispatcher",
        "connection_callable": "a class-level hook, None",
        "execution_options": "default options, no data (the AsyncSession property is probed)",
    },
}

# Public instance attributes (not in ``dir()`` of the class) that hold the owner's data.
INSTANCE_ATTRIBUTES: Final = {"AsyncSession": ("sync_session",), "Session": ("identity_map",)}


@attrs.frozen(kw_only=True)
class Leaked:
    """What Alice's request kept, and what Bob's request reaches it with.

    Attributes:
        session: Alice's ``AsyncSession``.
        sync: Its ``sync_session``, kept too.
        note: A row the session loaded (in its identity map).
        note_id: That row's primary key.
        engine: The engine (a bind argument for ``bind_mapper``).
        model: The mapped class of ``note``.
        table: The raw notes table's name, for raw SQL.
    """

    session: Any
    sync: Any
    note: Any
    note_id: int
    engine: Any
    model: Any
    table: str


def _stranger(k: Leaked) -> Any:
    return k.model(body="planted", owner="bob", tenant="t1")


async def _raw_sql_on_connection(k: Leaked) -> Any:
    from sqlalchemy import text

    conn = await k.session.connection()
    return (await conn.execute(text(f"SELECT body FROM {k.table}"))).all()  # noqa: S608 - our own table


async def _stream(k: Leaked, scalars: bool) -> Any:
    from sqlalchemy import select

    result = await (k.session.stream_scalars if scalars else k.session.stream)(select(k.model))
    return await result.all()


def _sync_raw_sql(k: Leaked) -> Any:
    from sqlalchemy import text

    return k.sync.connection().execute(text(f"SELECT body FROM {k.table}")).all()  # noqa: S608 - our own table


def _select(k: Leaked) -> Any:
    from sqlalchemy import select

    return select(k.model)


# Each call returns a value or an awaitable (awaited by the probe). Read-only calls
# first, those that would end Alice's transaction last: a broken guard shows each.
ASYNC_CALLS: Final[Mapping[str, Callable[[Leaked], Any]]] = {
    "get": lambda k: k.session.get(k.model, k.note_id),
    "get_one": lambda k: k.session.get_one(k.model, k.note_id),
    "__iter__": lambda k: list(iter(k.session)),
    "__contains__": lambda k: k.note in k.session,
    "identity_map": lambda k: list(k.session.identity_map.values()),
    "sync_session": lambda k: k.session.sync_session,
    "new": lambda k: list(k.session.new),
    "dirty": lambda k: list(k.session.dirty),
    "deleted": lambda k: list(k.session.deleted),
    "info": lambda k: k.session.info,
    "is_active": lambda k: k.session.is_active,
    "autoflush": lambda k: k.session.autoflush,
    "no_autoflush": lambda k: k.session.no_autoflush,
    "bind": lambda k: k.session.bind,
    "binds": lambda k: k.session.binds,
    "execution_options": lambda k: k.session.execution_options,
    "in_transaction": lambda k: k.session.in_transaction(),
    "in_nested_transaction": lambda k: k.session.in_nested_transaction(),
    "get_transaction": lambda k: k.session.get_transaction(),
    "get_nested_transaction": lambda k: k.session.get_nested_transaction(),
    "get_bind": lambda k: k.session.get_bind(),
    "get_async_bind": lambda k: k.session.get_async_bind(),
    "is_modified": lambda k: k.session.is_modified(k.note),
    "execute": lambda k: k.session.execute(_select(k)),
    "scalar": lambda k: k.session.scalar(_select(k)),
    "scalars": lambda k: k.session.scalars(_select(k)),
    "stream": lambda k: _stream(k, scalars=False),
    "stream_scalars": lambda k: _stream(k, scalars=True),
    "connection": _raw_sql_on_connection,
    "run_sync": lambda k: k.session.run_sync(lambda s: list(s.identity_map.values())),
    "refresh": lambda k: k.session.refresh(k.note),
    "merge": lambda k: k.session.merge(k.note),
    "merge_all": lambda k: k.session.merge_all([k.note]),
    "add": lambda k: k.session.add(_stranger(k)),
    "add_all": lambda k: k.session.add_all([_stranger(k)]),
    "expire": lambda k: k.session.expire(k.note),
    "expire_all": lambda k: k.session.expire_all(),
    "bind_mapper": lambda k: k.session.bind_mapper(k.model, k.engine),
    "bind_table": lambda k: k.session.bind_table(k.model.__table__, k.engine),
    "begin": lambda k: k.session.begin(),
    "begin_nested": lambda k: k.session.begin_nested(),
    "__aenter__": lambda k: k.session.__aenter__(),
    "flush": lambda k: k.session.flush(),
    "delete": lambda k: k.session.delete(k.note),
    "delete_all": lambda k: k.session.delete_all([k.note]),
    "expunge": lambda k: k.session.expunge(k.note),
    "expunge_all": lambda k: k.session.expunge_all(),
    "commit": lambda k: k.session.commit(),
    "rollback": lambda k: k.session.rollback(),
    "reset": lambda k: k.session.reset(),
    "invalidate": lambda k: k.session.invalidate(),
    "close": lambda k: k.session.close(),
    "aclose": lambda k: k.session.aclose(),
    "__aexit__": lambda k: k.session.__aexit__(None, None, None),
}

SYNC_CALLS: Final[Mapping[str, Callable[[Leaked], Any]]] = {
    "get": lambda k: k.sync.get(k.model, k.note_id),
    "get_one": lambda k: k.sync.get_one(k.model, k.note_id),
    "__iter__": lambda k: list(iter(k.sync)),
    "__contains__": lambda k: k.note in k.sync,
    "identity_map": lambda k: list(k.sync.identity_map.values()),
    "new": lambda k: list(k.sync.new),
    "dirty": lambda k: list(k.sync.dirty),
    "deleted": lambda k: list(k.sync.deleted),
    "info": lambda k: k.sync.info,
    "is_active": lambda k: k.sync.is_active,
    "no_autoflush": lambda k: k.sync.no_autoflush,
    "in_transaction": lambda k: k.sync.in_transaction(),
    "in_nested_transaction": lambda k: k.sync.in_nested_transaction(),
    "get_transaction": lambda k: k.sync.get_transaction(),
    "get_nested_transaction": lambda k: k.sync.get_nested_transaction(),
    "get_bind": lambda k: k.sync.get_bind(),
    "is_modified": lambda k: k.sync.is_modified(k.note),
    "query": lambda k: k.sync.query(k.model),
    "execute": lambda k: k.sync.execute(_select(k)),
    "scalar": lambda k: k.sync.scalar(_select(k)),
    "scalars": lambda k: k.sync.scalars(_select(k)),
    "connection": _sync_raw_sql,
    "refresh": lambda k: k.sync.refresh(k.note),
    "merge": lambda k: k.sync.merge(k.note),
    "merge_all": lambda k: k.sync.merge_all([k.note]),
    "enable_relationship_loading": lambda k: k.sync.enable_relationship_loading(_stranger(k)),
    "add": lambda k: k.sync.add(_stranger(k)),
    "add_all": lambda k: k.sync.add_all([_stranger(k)]),
    "bulk_save_objects": lambda k: k.sync.bulk_save_objects([_stranger(k)]),
    "bulk_insert_mappings": lambda k: k.sync.bulk_insert_mappings(
        k.model, [{"body": "planted", "owner": "bob", "tenant": "t1"}]
    ),
    "bulk_update_mappings": lambda k: k.sync.bulk_update_mappings(
        k.model, [{"id": k.note_id, "body": "overwritten"}]
    ),
    "expire": lambda k: k.sync.expire(k.note),
    "expire_all": lambda k: k.sync.expire_all(),
    "bind_mapper": lambda k: k.sync.bind_mapper(k.model, k.engine.sync_engine),
    "bind_table": lambda k: k.sync.bind_table(k.model.__table__, k.engine.sync_engine),
    "begin": lambda k: k.sync.begin(),
    "begin_nested": lambda k: k.sync.begin_nested(),
    "__enter__": lambda k: k.sync.__enter__(),
    "flush": lambda k: k.sync.flush(),
    "delete": lambda k: k.sync.delete(k.note),
    "delete_all": lambda k: k.sync.delete_all([k.note]),
    "expunge": lambda k: k.sync.expunge(k.note),
    "expunge_all": lambda k: k.sync.expunge_all(),
    "prepare": lambda k: k.sync.prepare(),
    "commit": lambda k: k.sync.commit(),
    "rollback": lambda k: k.sync.rollback(),
    "reset": lambda k: k.sync.reset(),
    "invalidate": lambda k: k.sync.invalidate(),
    "close": lambda k: k.sync.close(),
    "__exit__": lambda k: k.sync.__exit__(None, None, None),
}


def public_members(cls: type) -> list[str]:
    """Every public member of ``cls`` (and the dunders that reach its contents), sorted.

    Callables, properties and SQLAlchemy's computed properties, plus the public
    instance attributes that hold the owner's data; :data:`NOT_BOUND` ones left out.
    """
    names = {name for name in dir(cls) if not name.startswith("_") or name in DUNDERS}
    for base in cls.__mro__:
        names.update(INSTANCE_ATTRIBUTES.get(base.__name__, ()))
        names.difference_update(NOT_BOUND.get(base.__name__, {}))
    return sorted(names)


async def _outcome(
    call: Callable[[Leaked], Any], leaked: Leaked, *, sync: bool
) -> BaseException | None:
    from sqlalchemy.util import greenlet_spawn

    try:
        # Sync calls run as inside run_sync(): where nothing refuses them, their SQL runs.
        result = await greenlet_spawn(call, leaked) if sync else call(leaked)
        if inspect.isawaitable(result):
            await result
    except Exception as raised:  # anything but a refusal is the finding itself
        return raised
    return None


async def probe(
    leaked: Leaked,
    *,
    only: Callable[[str], bool] | None = None,
) -> list[str]:
    """Call every public member of the kept session and its sync session; name those not refused.

    Members missing from :data:`ASYNC_CALLS` / :data:`SYNC_CALLS` (added by a newer
    SQLAlchemy) are called with no arguments: a checked method refuses first.
    A member is refused with ``CrossContextAccessError``; ``only`` keeps the members
    it accepts.
    """
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

    from isolation._errors import CrossContextAccessError

    expected = CrossContextAccessError
    found: list[str] = []
    for label, cls, calls, target in (
        ("AsyncSession", AsyncSession, ASYNC_CALLS, leaked.session),
        ("Session", Session, SYNC_CALLS, leaked.sync),
    ):
        members = [name for name in public_members(cls) if only is None or only(name)]
        # The table's order (reads first, endings last), then members it does not know;
        # table entries for members this SQLAlchemy lacks are skipped.
        for name in [*(n for n in calls if n in members), *(n for n in members if n not in calls)]:
            call = calls.get(name) or _bare_call(target, name)
            raised = await _outcome(call, leaked, sync=target is leaked.sync)
            if raised is None:
                found.append(f"{label}.{name} of a leaked session returned, not refused")
            elif not isinstance(raised, expected):
                found.append(
                    f"{label}.{name} of a leaked session raised {type(raised).__name__}, "
                    f"not {expected.__name__}"
                )
    return found


def _bare_call(target: Any, name: str) -> Callable[[Leaked], Any]:
    def call(leaked: Leaked) -> Any:
        member = getattr(target, name)
        return member() if callable(member) else member

    return call


# -- the scenario -------------------------------------------------------------------


def _check(backend: str) -> Callable[[SessionSubject, Settings], Any]:
    async def check(subject: SessionSubject, settings: Settings) -> list[str]:
        from isolation.report._modes._support.sessions import open_database

        async with open_database(
            backend, settings.postgres_url, policy_sql=subject.policy_sql
        ) as db:
            manager = subject.make(db)
            try:
                return await leaked_session_scenario(manager, db)
            finally:
                aclose = getattr(manager, "aclose", None)
                if aclose is not None:
                    await aclose()

    return check


async def leaked_session_scenario(manager: Any, db: Any) -> list[str]:
    """Alice keeps her session; Bob's concurrent request, then later ones, probe it."""
    from sqlalchemy import event

    import isolation
    from isolation.report._modes._support.sessions import Note, committed_bodies

    alice = isolation.UserContext.new("alice", tenant_id="t1")
    bob = isolation.UserContext.new("bob", tenant_id="t1")
    kept: list[Leaked] = []
    found: list[str] = []
    statements: list[str] = []
    stored, probed = anyio.Event(), anyio.Event()
    prefix = "fm01-leak-"

    def record(*args: Any) -> None:
        if stored.is_set() and not probed.is_set():
            statements.append(str(args[2]))

    async def alice_request() -> None:
        try:
            async with isolation.scope(alice), manager.session() as s:
                s.add(Note(body=f"{prefix}first", owner="alice", tenant="t1"))
                await s.flush()
                note = (await s.scalars(_select_notes(Note, prefix))).one()
                kept.append(
                    Leaked(
                        session=s,
                        sync=s.sync_session,
                        note=note,
                        note_id=note.id,
                        engine=db.engine,
                        model=Note,
                        table=db.table,
                    )
                )
                stored.set()
                await probed.wait()
                s.add(Note(body=f"{prefix}second", owner="alice", tenant="t1"))
        except Exception as failure:
            found.append(f"alice's request failed after the probe: {failure!r}")
        finally:
            stored.set()

    async def bob_request() -> None:
        await stored.wait()
        try:
            if kept:
                async with isolation.scope(bob), manager.session():
                    found.extend(f"concurrent: {line}" for line in await probe(kept[0]))
        finally:
            probed.set()

    event.listen(db.engine.sync_engine, "before_cursor_execute", record)
    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(alice_request)
                tg.start_soon(bob_request)
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", record)
    if statements:
        found.append(f"SQL was sent while bob probed alice's session: {statements[:3]}")
    bodies = await committed_bodies(db, prefix)
    if bodies != [f"{prefix}first", f"{prefix}second"]:
        found.append(f"alice's committed work is {bodies}, not her two rows")
    if kept and not found:
        # Her scope has ended: another request, and code with no scope, are refused too.
        async with isolation.scope(bob):
            found.extend(f"after her scope: {line}" for line in await probe(kept[0]))
        found.extend(f"no scope: {line}" for line in await probe(kept[0]))
    return found


def _select_notes(model: Any, prefix: str) -> Any:
    from sqlalchemy import select

    return select(model).where(model.body.startswith(prefix))


# -- the mutant: the guard in do_orm_execute only --------------------------------------


class _ExecuteGuardOnlyManager:
    """Mutant: a session per scope that refuses another scope in ``do_orm_execute`` only."""

    def __init__(self, db: Any) -> None:
        self._engine = db.engine
        self._rls = db.backend == "postgres"

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Any]:
        from sqlalchemy import event
        from sqlalchemy.ext.asyncio import AsyncSession

        from isolation._errors import CrossContextAccessError, IsolationError
        from isolation.context._scope import current_scope
        from isolation.report._modes._support.sessions import bind_principal

        owner = current_scope()
        session = AsyncSession(self._engine, expire_on_commit=False)

        @event.listens_for(session.sync_session, "do_orm_execute")
        def _guard(state: Any) -> None:
            try:
                current = current_scope()
            except IsolationError:
                current = None
            if current is not owner:
                raise CrossContextAccessError("a session was used from another scope")

        try:
            if self._rls:
                await bind_principal(session)
            yield session
            await session.commit()
        finally:
            with anyio.CancelScope(shield=True):
                await session.close()


def register(registry: ModeRegistry) -> None:
    """Register FM1's leaked-session check, on SQLite and on PostgreSQL."""
    register_face(
        registry,
        1,
        "leaked-session-refuses",
        _check,
        mutant=functools.partial(SessionSubject, make=_ExecuteGuardOnlyManager),
        requires=("sqlalchemy", "aiosqlite"),
        description=(
            "a session kept by alice's request, probed by bob's concurrent request and "
            "later ones: every public method refused before returning, her work intact"
        ),
    )
