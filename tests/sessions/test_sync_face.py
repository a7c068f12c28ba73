"""The sync face of ``SessionManager``: a sync ``Engine``, ``with manager.session()``, threads.

What FastAPI does with a sync app: the request's scope is entered by the
middleware on the event loop, and every sync dependency and endpoint runs in a
thread of its pool with a copy of the request's context, the dependency's
setup, the endpoint and the dependency's teardown each in a thread of their own.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import isolation
from _support.databases import (
    Note,
    pg_sandbox,
    sync_sqlite_engine,
    sync_twin,
)
from isolation import (
    ConfigurationError,
    ContextExpiredError,
    CrossContextAccessError,
    PoolExhaustedError,
    Registry,
    ScopeEndedError,
    UsageError,
    UserContext,
)
from isolation.sessions import SessionManager
from isolation.testing import FakeClock

HANG = 30  # seconds: a hang guard only


def ctx(user: str = "alice", *, ttl: float = 300) -> UserContext:
    return UserContext.new(user, ttl=ttl)


@pytest.fixture
def sync_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = sync_sqlite_engine(str(tmp_path / "sync.sqlite"), pool_size=5, max_overflow=0)
    try:
        yield engine
    finally:
        engine.dispose()


def bodies(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [
            str(r[0]) for r in conn.execute(text("SELECT body FROM isolation_notes ORDER BY body"))
        ]


def checked_out(engine: Engine) -> int:
    pool: Any = engine.pool
    return int(pool.checkedout())


def note(body: str, owner: str = "alice") -> Note:
    return Note(body=body, owner=owner)


def in_thread(fn: Any, *args: Any) -> Any:
    """Run ``fn`` in a new thread with a copy of this context (as FastAPI's pool does)."""
    result: list[Any] = []
    errors: list[BaseException] = []
    copied = contextvars.copy_context()

    def run() -> None:
        try:
            result.append(copied.run(fn, *args))
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(HANG)
    assert not thread.is_alive()
    if errors:
        raise errors[0]
    return result[0]


class TestBlocks:
    def test_commits_on_clean_exit_and_rolls_back_on_error(self, sync_engine: Engine) -> None:
        manager = SessionManager(sync_engine)
        with isolation.scope(ctx()):
            with manager.session() as s:
                assert isinstance(s, Session)
                s.add(note("kept"))
            with pytest.raises(RuntimeError), manager.session() as s:
                s.add(note("lost"))
                s.flush()
                raise RuntimeError("boom")
        assert bodies(sync_engine) == ["kept"]
        stats = manager.stats()
        assert (stats.commits, stats.rollbacks, stats.open_sessions, stats.checked_out) == (
            1,
            1,
            0,
            0,
        )
        assert checked_out(sync_engine) == 0

    def test_one_session_per_scope_and_nested_blocks_are_savepoints(
        self, sync_engine: Engine
    ) -> None:
        manager = SessionManager(sync_engine)
        with isolation.scope(ctx()), manager.session() as outer:
            outer.add(note("outer"))
            with pytest.raises(RuntimeError), manager.session() as inner:
                assert inner is outer
                inner.add(note("inner"))
                inner.flush()
                raise RuntimeError("inner fails")
            with manager.session() as again:
                assert again is outer
                again.add(note("inner kept"))
        assert bodies(sync_engine) == ["inner kept", "outer"]

    def test_async_with_on_a_sync_manager_is_refused(self, sync_engine: Engine) -> None:
        manager = SessionManager(sync_engine)

        async def main() -> None:
            async with isolation.scope(ctx()):
                with pytest.raises(UsageError, match="sync Engine"):
                    async with manager.session():
                        pass

        anyio.run(main)

    def test_bad_session_class_is_refused(self, sync_engine: Engine) -> None:
        from sqlalchemy.ext.asyncio import AsyncSession

        with pytest.raises(ConfigurationError, match="subclass of sqlalchemy's Session"):
            SessionManager(sync_engine, session_class=AsyncSession)
        with pytest.raises(ConfigurationError, match="session_class"):
            SessionManager(sync_engine, session_class=dict)

    def test_no_scope_is_refused(self, sync_engine: Engine) -> None:
        manager = SessionManager(sync_engine)
        with pytest.raises(isolation.NoContextError), manager.session():
            pass


class TestKeptSession:
    """A session kept past its request (a global, a cache) refuses every other caller."""

    def test_other_scope_no_scope_and_ended_scope_are_refused(self, sync_engine: Engine) -> None:
        manager = SessionManager(sync_engine)
        kept: list[Session] = []
        with isolation.scope(ctx("alice")), manager.session() as s:
            s.add(note("alice's"))
            s.flush()
            kept.append(s)

            def as_bob() -> None:
                with isolation.scope(ctx("bob")):
                    session = kept[0]
                    attempts = [
                        lambda: session.execute(select(Note)),
                        lambda: session.get(Note, 1),
                        lambda: list(session),
                        session.connection,
                        session.rollback,
                        session.commit,
                        lambda: session.add(note("planted", "bob")),
                    ]
                    for attempt in attempts:
                        with pytest.raises(CrossContextAccessError):
                            attempt()

            # Another thread, another request: its own context, not a copy of alice's.
            thread = threading.Thread(target=contextvars.Context().run, args=(as_bob,))
            thread.start()
            thread.join(HANG)
            assert not thread.is_alive()
        with pytest.raises(CrossContextAccessError):
            kept[0].execute(select(Note))
        assert bodies(sync_engine) == ["alice's"]

    def test_use_outside_the_block_is_refused(self, sync_engine: Engine) -> None:
        manager = SessionManager(sync_engine)
        with isolation.scope(ctx()):
            with manager.session() as s:
                pass
            with pytest.raises(UsageError, match=r"outside its `with manager.session\(\)` block"):
                s.execute(select(Note))


class TestThreads:
    def test_fastapi_shape_dependency_endpoint_and_teardown_in_three_threads(
        self, sync_engine: Engine
    ) -> None:
        """A sync dependency with ``yield`` opens the block in one pool thread, the
        endpoint uses it in another, its teardown commits in a third."""
        manager = SessionManager(sync_engine)

        def get_db() -> Iterator[Session]:
            with manager.session() as s:
                yield s

        def endpoint(s: Session) -> int:
            s.add(note("from the endpoint"))
            s.flush()
            return int(s.scalar(select(func.count()).select_from(Note)) or 0)

        def teardown(dependency: Iterator[Session]) -> bool:
            try:
                next(dependency)
            except StopIteration:
                return True
            return False

        async def request() -> None:
            async with isolation.scope(ctx()):
                dependency = get_db()
                session = await anyio.to_thread.run_sync(next, dependency)
                assert await anyio.to_thread.run_sync(endpoint, session) == 1
                assert await anyio.to_thread.run_sync(teardown, dependency)

        anyio.run(request)
        assert bodies(sync_engine) == ["from the endpoint"]
        assert manager.stats().commits == 1

    def test_many_users_in_threads_see_only_their_rows(self, sync_engine: Engine) -> None:
        """16 threads, 4 users, each request writes then reads under ``protect()``."""
        manager = SessionManager(sync_engine)
        manager.protect(Note, user_column="owner")
        users = [f"user-{i}" for i in range(4)]

        def request(i: int) -> list[str]:
            user = users[i % len(users)]
            with isolation.scope(ctx(user)), manager.session() as s:
                s.add(Note(body=f"{user}/{i}"))
                s.flush()
                return [n.owner for n in s.scalars(select(Note))]

        with ThreadPoolExecutor(8) as pool:
            seen = list(pool.map(lambda i: contextvars.Context().run(request, i), range(16)))
        for i, owners in enumerate(seen):
            assert set(owners) == {users[i % len(users)]}
        assert len(bodies(sync_engine)) == 16
        assert manager.stats().checked_out == 0

    def test_per_user_limit_across_threads(self, sync_engine: Engine) -> None:
        """Two blocks of alice are held: her third waits and times out; bob's is admitted;
        a waiter is admitted as soon as one of hers ends."""
        manager = SessionManager(sync_engine, per_user_limit=2, acquire_timeout=0.5)
        inside, release = threading.Barrier(3), threading.Event()

        def hold() -> None:
            with isolation.scope(ctx("alice")), manager.session() as s:
                s.execute(select(1))
                inside.wait(HANG)
                assert release.wait(HANG)

        holders = [threading.Thread(target=contextvars.Context().run, args=(hold,)) for _ in "ab"]
        for t in holders:
            t.start()
        inside.wait(HANG)
        try:
            with isolation.scope(ctx("alice")):
                with pytest.raises(PoolExhaustedError, match="per-user limit of 2"):
                    with manager.session():
                        pass
            with isolation.scope(ctx("bob")), manager.session() as s:
                assert s.execute(select(1)).scalar() == 1
        finally:
            release.set()
            for t in holders:
                t.join(HANG)
        assert manager.stats().exhausted == 1
        assert manager.stats().checked_out == 0

    def test_a_waiter_is_admitted_when_a_block_ends(self, sync_engine: Engine) -> None:
        manager = SessionManager(sync_engine, per_user_limit=1, acquire_timeout=HANG)
        entered, waiting_started = threading.Event(), threading.Event()
        order: list[str] = []

        def first() -> None:
            with isolation.scope(ctx("alice")), manager.session():
                entered.set()
                assert waiting_started.wait(HANG)
                # The second is queued (enqueue happens before its wait): end now.
                order.append("first ends")

        def second() -> None:
            assert entered.wait(HANG)
            with isolation.scope(ctx("alice")):
                waiting_started.set()
                with manager.session():
                    order.append("second admitted")

        threads = [
            threading.Thread(target=contextvars.Context().run, args=(f,)) for f in (first, second)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(HANG)
        assert order == ["first ends", "second admitted"]
        assert manager.stats().exhausted == 0


class TestExpiryAndScopeEnd:
    def test_a_statement_after_the_deadline_is_refused_and_rolled_back(
        self, sync_engine: Engine, fake_clock: FakeClock
    ) -> None:
        manager = SessionManager(sync_engine)
        with pytest.raises(ContextExpiredError):
            with isolation.scope(ctx(ttl=10)), manager.session() as s:
                s.add(note("lost"))
                s.flush()
                fake_clock.advance(11)
                s.execute(select(Note))
        assert bodies(sync_engine) == []
        assert (manager.stats().rollbacks, checked_out(sync_engine)) == (1, 0)

    def test_a_block_ending_after_the_deadline_does_not_commit(
        self, sync_engine: Engine, fake_clock: FakeClock
    ) -> None:
        manager = SessionManager(sync_engine)
        raised: list[ContextExpiredError] = []
        with pytest.raises(ContextExpiredError, match="expired inside its scope"):
            with isolation.scope(ctx(ttl=10)):
                try:
                    with manager.session() as s:
                        s.add(note("lost"))
                        s.flush()
                        fake_clock.advance(11)
                except ContextExpiredError as error:
                    raised.append(error)
        assert len(raised) == 1
        assert "work was rolled back" in str(raised[0])
        assert bodies(sync_engine) == []

    def test_a_refused_statement_in_a_nested_block_rolls_its_savepoint_back_quietly(
        self, sync_engine: Engine, fake_clock: FakeClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """After the deadline, a statement in a nested block is refused; the block's
        SAVEPOINT is rolled back by the manager itself (no cleanup failure logged)."""
        manager = SessionManager(sync_engine)
        with caplog.at_level(logging.ERROR, logger="isolation"):
            with pytest.raises(ContextExpiredError):
                with isolation.scope(ctx(ttl=10)), manager.session() as s:
                    s.add(note("outer"))
                    s.flush()
                    with manager.session() as inner:
                        inner.add(note("inner"))
                        inner.flush()
                        fake_clock.advance(11)
                        inner.execute(select(Note))
        assert bodies(sync_engine) == []
        assert checked_out(sync_engine) == 0
        failed = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert failed == []

    def test_scope_ending_while_a_thread_is_in_a_block(self, sync_engine: Engine) -> None:
        """The thread's next statement is refused and its block rolls back."""
        manager = SessionManager(sync_engine)
        flushed, scope_ended = threading.Event(), threading.Event()
        outcome: list[BaseException] = []

        def worker() -> None:
            try:
                with manager.session() as s:
                    s.add(note("lost"))
                    s.flush()
                    flushed.set()
                    assert scope_ended.wait(HANG)
                    s.execute(select(Note))
            except BaseException as error:
                outcome.append(error)

        with isolation.scope(ctx()):
            thread = threading.Thread(target=contextvars.copy_context().run, args=(worker,))
            thread.start()
            assert flushed.wait(HANG)
        scope_ended.set()
        thread.join(HANG)
        assert len(outcome) == 1
        assert isinstance(outcome[0], ScopeEndedError)
        assert bodies(sync_engine) == []
        stats = manager.stats()
        assert (stats.open_sessions, stats.checked_out, checked_out(sync_engine)) == (0, 0, 0)


class TestRegistry:
    def test_provide_to_gives_the_scope_its_session_and_commits_at_scope_end(
        self, sync_engine: Engine
    ) -> None:
        registry = Registry()
        manager = SessionManager(sync_engine)
        manager.provide_to(registry)
        with isolation.scope(ctx(), registry=registry) as scope:
            s = scope.get(Session)
            assert scope.get(Session) is s
            s.add(note("via the registry"))
        assert bodies(sync_engine) == ["via the registry"]

    def test_commit_failure_is_raised(self, sync_engine: Engine) -> None:
        manager = SessionManager(sync_engine)
        with isolation.scope(ctx()):
            with manager.session() as s:
                s.add(Note(id=1, body="one", owner="alice"))
            with pytest.raises(IntegrityError), manager.session() as s:
                s.add(Note(id=1, body="duplicate", owner="alice"))
        assert bodies(sync_engine) == ["one"]
        assert manager.stats().checked_out == 0


@pytest.fixture(scope="module")
def item_model() -> Any:
    """A SQLModel table with a UUID ``owner_id`` (the FastAPI template's ``Item``)."""
    sqlmodel = pytest.importorskip("sqlmodel")

    class Item(sqlmodel.SQLModel, table=True):  # type: ignore[call-arg]
        __tablename__ = f"item_{uuid.uuid4().hex[:8]}"
        id: uuid.UUID = sqlmodel.Field(default_factory=uuid.uuid4, primary_key=True)
        title: str
        owner_id: uuid.UUID = sqlmodel.Field(nullable=False)

    return Item


class TestSQLModel:
    """SQLModel's ``Session`` (``exec()``), a UUID ``owner_id``: the FastAPI template's shape."""

    def test_sqlmodel_session_with_a_uuid_owner(self, tmp_path: Path, item_model: Any) -> None:
        import sqlmodel

        engine = sync_sqlite_engine(str(tmp_path / "sqlmodel.sqlite"))
        item_model.metadata.create_all(engine, tables=[item_model.__table__])
        manager = SessionManager(engine, session_class=sqlmodel.Session)
        manager.protect(item_model, user_column="owner_id")
        alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
        for user in (alice, bob):
            with isolation.scope(ctx(user)), manager.session() as s:
                assert isinstance(s, sqlmodel.Session)
                s.add(item_model(title=f"{user[:4]} item"))
        kept: list[Any] = []
        with isolation.scope(ctx(alice)), manager.session() as s:
            items = s.exec(sqlmodel.select(item_model)).all()
            assert [i.owner_id for i in items] == [uuid.UUID(alice)]
            kept.append(s)
        with isolation.scope(ctx(bob)):
            with pytest.raises(CrossContextAccessError):
                kept[0].exec(sqlmodel.select(item_model))
        engine.dispose()

    def test_sqlmodel_async_session(self, tmp_path: Path, item_model: Any) -> None:
        import sqlmodel
        from sqlmodel.ext.asyncio.session import AsyncSession as SQLModelAsyncSession

        from _support.databases import sqlite_engine

        async def main() -> None:
            engine = sqlite_engine(str(tmp_path / "async.sqlite"))
            async with engine.begin() as conn:
                await conn.run_sync(item_model.metadata.create_all, tables=[item_model.__table__])
            manager = SessionManager(engine, session_class=SQLModelAsyncSession)
            manager.protect(item_model, user_column="owner_id")
            alice = str(uuid.uuid4())
            async with isolation.scope(ctx(alice)), manager.session() as s:
                assert isinstance(s, SQLModelAsyncSession)
                s.add(item_model(title="mine"))
                await s.flush()
                items = (await s.exec(sqlmodel.select(item_model))).all()
                assert [i.title for i in items] == ["mine"]
            await engine.dispose()

        anyio.run(main)


@pytest.mark.postgres
class TestPostgres:
    def test_row_level_security_on_the_sync_face(self, postgres_url: str) -> None:
        """psycopg, a restricted role: raw SQL sees only the principal's rows; threads."""

        async def main() -> None:
            async with pg_sandbox(postgres_url) as box:
                engine = sync_twin(box.engine)
                try:
                    await anyio.to_thread.run_sync(run, engine, box.table)
                finally:
                    engine.dispose()

        def run(engine: Engine, table: str) -> None:
            manager = SessionManager(engine, row_level_security=True, rls_tables=[table])

            def request(user: str) -> list[str]:
                with isolation.scope(UserContext.new(user, tenant_id="t1")), manager.session() as s:
                    s.add(Note(body=f"{user}'s", owner=user, tenant="t1"))
                    s.flush()
                    return [str(r[0]) for r in s.execute(text("SELECT owner FROM isolation_notes"))]

            with ThreadPoolExecutor(4) as pool:
                users = [f"u{i % 4}" for i in range(12)]
                seen = list(pool.map(lambda u: contextvars.Context().run(request, u), users))
            for user, owners in zip(users, seen, strict=True):
                assert set(owners) == {user}
            assert manager.stats().dirty_returns == 0

        anyio.run(main)

    def test_superuser_is_refused_at_start(self, postgres_url: str) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        engine = create_engine(make_url(postgres_url).set(drivername="postgresql+psycopg"))
        try:
            manager = SessionManager(engine, row_level_security=True)
            with pytest.raises(ConfigurationError, match="superuser"):
                with manager:
                    pass
            with isolation.scope(ctx()):
                with pytest.raises(ConfigurationError, match="superuser"):
                    with manager.session():
                        pass
        finally:
            engine.dispose()
