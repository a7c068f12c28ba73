"""A managed session is its scope's on every path: every method refuses another scope first."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import ForeignKey, String, event, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

import isolation
from isolation import CrossContextAccessError, ScopeEndedError, UserContext
from isolation.report._modes._support.sessions import Database, Note, library_manager, open_database
from isolation.report._modes.fm01_sessions.leaked_session import (
    ASYNC_CALLS,
    NOT_BOUND,
    SYNC_CALLS,
    Leaked,
    leaked_session_scenario,
    probe,
    public_members,
)
from isolation.sessions import SessionManager

pytestmark = pytest.mark.anyio

ALICE = UserContext.new("alice", tenant_id="t1")
BOB = UserContext.new("bob", tenant_id="t1")

# The attack's cache: a module global where alice's request keeps its session (and a
# row it loaded).
KEPT: list[tuple[AsyncSession, Note]] = []


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A fresh database: a SQLite file (protect()), or a PostgreSQL sandbox whose role is
    neither owner nor superuser (row-level security)."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    async with open_database(request.param, url) as database:
        yield database


@pytest.fixture(autouse=True)
def _clear_kept() -> None:
    KEPT.clear()


async def _raw_sql_on_connection(s: AsyncSession, db: Database) -> Any:
    conn = await s.connection()
    return (await conn.execute(text(f"SELECT body FROM {db.table}"))).all()


# The shapes of the attack review: each returned alice's data, or ended her work.
Attack = Callable[[AsyncSession, Database, Note], Any]
ATTACKS: dict[str, Attack] = {
    "get-from-identity-map": lambda s, db, note: s.get(Note, note.id),
    "iterate": lambda s, db, note: [obj.body for obj in s],
    "contains": lambda s, db, note: note in s,
    "connection-raw-sql": lambda s, db, note: _raw_sql_on_connection(s, db),
    "run-sync": lambda s, db, note: s.run_sync(
        lambda sync: [obj.body for obj in sync.identity_map.values()]
    ),
    "sync-session-get": lambda s, db, note: s.sync_session.get(Note, note.id),
    "identity-map": lambda s, db, note: list(s.identity_map.values()),
    "scalars": lambda s, db, note: s.scalars(select(Note)),
    "merge": lambda s, db, note: s.merge(Note(id=note.id, body="x", owner="bob", tenant="t1")),
    "refresh": lambda s, db, note: s.refresh(note),
    "add": lambda s, db, note: s.add(Note(body="planted", owner="bob", tenant="t1")),
    "delete": lambda s, db, note: s.delete(note),
    "expunge": lambda s, db, note: s.expunge(note),
    "flush": lambda s, db, note: s.flush(),
    "commit": lambda s, db, note: s.commit(),
    "rollback": lambda s, db, note: s.rollback(),
    "invalidate": lambda s, db, note: s.invalidate(),
    "close": lambda s, db, note: s.close(),
}


async def _bodies(db: Database) -> list[str]:
    async with db.raw.connect() as conn:
        rows = await conn.execute(text(f"SELECT body FROM {db.table} ORDER BY id"))
        return [str(r[0]) for r in rows]


class TestConcurrentRequest:
    @pytest.mark.parametrize("attack", list(ATTACKS))
    async def test_kept_session_refuses_a_concurrent_request(
        self, db: Database, attack: str
    ) -> None:
        """Alice's request keeps its session in a global; Bob's concurrent request calling
        it is refused before anything returns, no SQL is sent, and her work commits."""
        manager = library_manager(db)
        stored, probed = anyio.Event(), anyio.Event()
        outcome: list[BaseException | str] = []
        statements: list[str] = []

        async def alice() -> None:
            async with isolation.scope(ALICE), manager.session() as s:
                s.add(Note(body="alice-secret", owner="alice", tenant="t1"))
                await s.flush()
                KEPT.append((s, (await s.scalars(select(Note))).one()))
                stored.set()
                await probed.wait()
                s.add(Note(body="alice-after", owner="alice", tenant="t1"))

        async def bob() -> None:
            await stored.wait()
            s, note = KEPT[0]

            def record(*args: Any) -> None:
                statements.append(args[2])

            async with isolation.scope(BOB), manager.session():
                listen = (db.engine.sync_engine, "before_cursor_execute")
                event.listen(*listen, record)
                try:
                    result = ATTACKS[attack](s, db, note)
                    if isinstance(result, Awaitable):
                        result = await result
                    outcome.append(f"returned {result!r}")
                except Exception as raised:
                    outcome.append(raised)
                finally:
                    event.remove(*listen, record)
                    probed.set()

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(alice)
                tg.start_soon(bob)
        assert len(outcome) == 1
        assert isinstance(outcome[0], CrossContextAccessError), outcome[0]
        assert "alice" in str(outcome[0])
        assert statements == []
        assert await _bodies(db) == ["alice-secret", "alice-after"]

    async def test_every_method_of_both_sessions_is_refused(self, db: Database) -> None:
        """Every public method and property of the kept AsyncSession and of its Session
        is refused while alice's block is open, after her scope ended, and with no scope."""
        assert await leaked_session_scenario(library_manager(db), db) == []


class _KeptMethods:
    """Bound methods looked up in the owner's scope, handed out later by name."""

    def __init__(self, target: object, names: list[str]) -> None:
        self._methods = {name: getattr(target, name) for name in names}

    def __getattr__(self, name: str) -> Any:
        return self._methods[name]


def _plain_methods(cls: type) -> list[str]:
    return [
        name
        for name in public_members(cls)
        if not name.startswith("_") and inspect.isfunction(inspect.getattr_static(cls, name, None))
    ]


class TestKeptBoundMethods:
    async def test_bound_methods_kept_from_the_owner_scope_are_refused(
        self, engine: AsyncEngine
    ) -> None:
        """Alice's request keeps bound methods (s.rollback, s.sync_session.add, ...), not
        the session: each is refused when Bob's concurrent request calls it, and her work
        commits intact."""
        db = _sqlite(engine)
        manager = library_manager(db)
        stored, probed = anyio.Event(), anyio.Event()
        kept: list[Leaked] = []
        found: list[str] = []
        async_names, sync_names = _plain_methods(AsyncSession), _plain_methods(Session)

        async def alice() -> None:
            async with isolation.scope(ALICE), manager.session() as s:
                s.add(Note(body="alice-kept", owner="alice", tenant="t1"))
                await s.flush()
                note = (await s.scalars(select(Note))).one()
                kept.append(
                    Leaked(
                        session=_KeptMethods(s, async_names),
                        sync=_KeptMethods(s.sync_session, sync_names),
                        note=note,
                        note_id=note.id,
                        engine=engine,
                        model=Note,
                        table=db.table,
                    )
                )
                stored.set()
                await probed.wait()

        async def bob() -> None:
            await stored.wait()
            try:
                async with isolation.scope(BOB):
                    found.extend(
                        await probe(kept[0], only=lambda n: n in set(async_names) | set(sync_names))
                    )
            finally:
                probed.set()

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(alice)
                tg.start_soon(bob)
        assert found == []
        assert await _bodies(db) == ["alice-kept"]


class TestEnumeration:
    @pytest.mark.parametrize(
        ("cls", "calls"),
        [(AsyncSession, ASYNC_CALLS), (Session, SYNC_CALLS)],
        ids=["AsyncSession", "Session"],
    )
    def test_every_public_member_is_probed(self, cls: type, calls: dict[str, Any]) -> None:
        """Each public member of SQLAlchemy's class is probed, or listed as class-level:
        a member added upstream fails here, by name, until it is."""
        missing = [name for name in public_members(cls) if name not in calls]
        assert missing == [], f"{cls.__name__} members the guard test does not probe: {missing}"

    @pytest.mark.parametrize("cls", [AsyncSession, Session], ids=["AsyncSession", "Session"])
    def test_not_bound_members_are_class_level(self, cls: type) -> None:
        """The members left out are not bound to one session: classmethods, classes,
        class-level constants (each would otherwise be probed)."""
        for name in NOT_BOUND[cls.__name__]:
            if not hasattr(cls, name):
                continue  # not in this SQLAlchemy version
            raw = inspect.getattr_static(cls, name)
            assert not inspect.isfunction(raw), name
            assert not isinstance(raw, property), name


class TestScopeEnd:
    async def test_after_the_scope_every_call_is_refused_and_the_finalizer_closed_it(
        self, engine: AsyncEngine
    ) -> None:
        """A session kept past its scope: close(), rollback() and get() from no scope and
        from another scope are refused; the scope's end had already closed it."""
        manager = library_manager(_sqlite(engine))
        async with isolation.scope(ALICE), manager.session() as s:
            s.add(Note(body="kept", owner="alice", tenant="t1"))
        assert manager.stats().open_sessions == 0
        for name, args in (("close", ()), ("rollback", ()), ("get", (Note, 1))):
            with pytest.raises(CrossContextAccessError, match="no scope bound"):
                await getattr(s, name)(*args)
            async with isolation.scope(BOB):
                with pytest.raises(CrossContextAccessError, match="another scope"):
                    await getattr(s, name)(*args)

    async def test_own_scope_is_not_refused(self, engine: AsyncEngine) -> None:
        """In its own scope the session answers after its block (empty: the block's end
        closed it) and the user's own close() inside a block is allowed."""
        manager = library_manager(_sqlite(engine))
        async with isolation.scope(ALICE):
            async with manager.session() as s:
                mine = Note(body="mine", owner="alice", tenant="t1")
                s.add(mine)
                await s.flush()
                assert list(s) == [mine]
            assert list(s) == []
            assert not s.in_transaction()
            async with manager.session() as again:
                await again.close()
        assert manager.stats().open_sessions == 0

    async def test_escaped_task_is_refused_with_scope_ended(self, engine: AsyncEngine) -> None:
        """A task that escaped alice's scope still holds it; her ended session refuses it
        with ScopeEndedError, for iteration and rollback() too."""
        manager = library_manager(_sqlite(engine))
        ended = anyio.Event()
        errors: list[BaseException] = []

        async def escaped(s: AsyncSession) -> None:
            await ended.wait()
            for name, args in (("__iter__", ()), ("get", (Note, 1)), ("rollback", ())):
                try:
                    result = getattr(s, name)(*args)
                    if isinstance(result, Awaitable):
                        await result
                except ScopeEndedError as exc:
                    errors.append(exc)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                async with isolation.scope(ALICE):
                    async with manager.session() as s:
                        s.add(Note(body="mine", owner="alice", tenant="t1"))
                    tg.start_soon(escaped, s)
                ended.set()
        assert len(errors) == 3


class _Base(DeclarativeBase):
    pass


class _Folder(_Base):
    __tablename__ = "guard_folders"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class _Page(_Base):
    __tablename__ = "guard_pages"
    id: Mapped[int] = mapped_column(primary_key=True)
    folder_id: Mapped[int] = mapped_column(ForeignKey("guard_folders.id"))
    folder: Mapped[_Folder] = relationship()


async def test_lazy_load_from_the_identity_map_is_refused(engine: AsyncEngine) -> None:
    """A lazy many-to-one load answered from the identity map (no SQL) is refused for
    another scope: the object alice's session loaded does not reach her other rows."""
    async with engine.begin() as conn:
        await conn.run_sync(_Base.metadata.create_all)
    manager = SessionManager(engine)
    async with isolation.scope(ALICE), manager.session() as s:
        s.add(_Folder(id=1, name="alice-private"))
        s.add(_Page(id=1, folder_id=1))
        await s.flush()
        s.expunge_all()
        page = (await s.scalars(select(_Page))).one()
        folder = await s.get(_Folder, 1)  # in the identity map while referenced
        assert folder is not None
        async with isolation.scope(BOB, allow_switch=True):
            with pytest.raises(CrossContextAccessError):
                _ = page.folder.name


def _sqlite(engine: AsyncEngine) -> Database:
    return Database(engine=engine, raw=engine, backend="sqlite", table="isolation_notes")


class TestKeptConnection:
    """The connection ``await s.connection()`` hands out is the transaction's: kept, it
    refuses SQL from another scope (the attack review's follow-up to finding 5)."""

    async def test_kept_connection_refuses_a_concurrent_request(self, db: Database) -> None:
        """Alice's request keeps its session's connection in a global; Bob's concurrent
        request reading and writing through it is refused before any SQL runs, and her
        work commits as she left it (on PostgreSQL, under her row-level security binding)."""
        manager = library_manager(db)
        kept: list[Any] = []
        stored, probed = anyio.Event(), anyio.Event()
        refused: list[BaseException] = []

        async def alice() -> None:
            async with isolation.scope(ALICE), manager.session() as s:
                s.add(Note(body="alice-secret", owner="alice", tenant="t1"))
                await s.flush()
                conn = await s.connection()
                assert len((await conn.execute(text(f"SELECT body FROM {db.table}"))).all()) == 1
                kept.append(conn)
                stored.set()
                await probed.wait()

        async def bob() -> None:
            await stored.wait()
            conn = kept[0]
            async with isolation.scope(BOB):
                for sql in (
                    f"SELECT body FROM {db.table}",
                    f"UPDATE {db.table} SET body = 'written by bob'",
                ):
                    with pytest.raises(CrossContextAccessError, match="another scope") as caught:
                        await conn.execute(text(sql))
                    refused.append(caught.value)
            probed.set()

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(alice)
                tg.start_soon(bob)
        assert len(refused) == 2
        assert await _bodies(db) == ["alice-secret"]
        assert manager.stats().open_sessions == 0

    async def test_the_next_borrower_of_the_connection_is_not_refused(
        self, engine: AsyncEngine
    ) -> None:
        """The owner mark ends with the transaction: the pooled connection serves the
        next request, and plain engine use, as usual."""
        manager = library_manager(_sqlite(engine))
        async with isolation.scope(ALICE), manager.session() as s:
            s.add(Note(body="mine", owner="alice", tenant="t1"))
            await (await s.connection()).execute(text("SELECT 1"))
        async with isolation.scope(BOB), manager.session() as s:
            assert (await s.scalars(select(Note))).all() == []
        async with engine.connect() as conn:  # no manager, no scope: untouched
            assert (await conn.execute(text("SELECT count(*) FROM isolation_notes"))).scalar() == 1


async def test_session_used_from_a_worker_thread_is_a_typed_refusal(engine: AsyncEngine) -> None:
    """The scope's own session driven from isolation.to_thread (no event loop there) is
    refused with SessionInUseError, not an untyped RuntimeError from asyncio."""
    manager = library_manager(_sqlite(engine))
    async with isolation.scope(ALICE), manager.session() as s:
        with pytest.raises(isolation.SessionInUseError):
            await isolation.to_thread(lambda: s.sync_session.execute(text("SELECT 1")))


async def test_session_of_a_generator_held_scope_is_refused_outside_it(
    engine: AsyncEngine,
) -> None:
    """A session opened in a scope an async generator holds across a yield works in the
    generator, and is refused in its consumer between items (it passed: the held scope
    is still the bound one there)."""
    manager = library_manager(_sqlite(engine))

    async def sessions() -> AsyncIterator[AsyncSession]:
        async with isolation.scope(ALICE), manager.session() as s:
            await s.execute(text("SELECT 1"))
            yield s
            await s.execute(text("SELECT 1"))
            yield s

    gen = sessions()
    s = await gen.__anext__()
    with pytest.raises(CrossContextAccessError, match="holds its scope across a yield"):
        await s.execute(text("SELECT 1"))
    assert await gen.__anext__() is s
    await gen.aclose()
