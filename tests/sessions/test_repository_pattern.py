"""The repository pattern: a product holding the scope's SQLAlchemy session is not shared state.

A session (sync or asyncio) is a boundary of the shared-state walk: compared,
so two users reaching one session object are refused, but not entered, so
SQLAlchemy's own machinery behind it (the asyncio proxies' class-level
registry, the engine, pool, dialect, mappers) is neither reported as shared
nor runs the walk into its bounds. Warnings are recorded, not raised, where a
session is held, so that a false refusal shows as the SharedStateError it is;
none may be emitted.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.pool import AsyncAdaptedQueuePool

import isolation
from _support.databases import Note, create_tables, sqlite_engine
from isolation import Registry, SharedStateError, UserContext
from isolation.sessions import SessionManager

T = TypeVar("T")


class Repo:
    """The repository pattern: the scope's session, kept for the request."""

    def __init__(self, session: AsyncSession | Session) -> None:
        self.session = session


class SyncRepo:
    def __init__(self, session: Session) -> None:
        self.session = session


async def overlapping(
    registry: Registry, build: Callable[[isolation.Scope], Awaitable[T]]
) -> list[T]:
    """Build a product for two users whose scopes are both live until both have built.

    Each user uses its product before the rendezvous, and keeps it until both
    scopes have built, so the second build is compared with the first.
    """
    built: list[T] = []
    both_built = anyio.Event()

    async def user(name: str) -> None:
        async with isolation.scope(UserContext.new(name), registry=registry) as scope:
            built.append(await build(scope))
            if len(built) == 2:
                both_built.set()
            await both_built.wait()

    with anyio.fail_after(30):  # a hang guard only
        async with anyio.create_task_group() as tg:
            tg.start_soon(user, "alice")
            tg.start_soon(user, "bob")
    return built


@contextmanager
def no_warnings() -> Iterator[None]:
    """Record the warnings of the block (WalkTruncatedWarning among them); assert there were none."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        yield
    assert [f"{w.category.__name__}: {w.message}" for w in seen] == []


async def use(scope: isolation.Scope) -> Repo:
    repo = await scope.aget(Repo)
    assert isinstance(repo.session, AsyncSession)
    await repo.session.execute(select(Note.id))
    return repo


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """The notes database of the session tests, with its pool class named: aiosqlite's
    default for a file differs between 2.0 releases, and these tests run on the oldest too."""
    eng = sqlite_engine(
        str(tmp_path / "db.sqlite"), poolclass=AsyncAdaptedQueuePool, pool_size=5, max_overflow=0
    )
    await create_tables(eng)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
def sync_engine(tmp_path: Path) -> Iterator[Engine]:
    """A sync SQLite file database with the notes table."""
    engine = create_engine(f"sqlite:///{tmp_path / 'sync.sqlite'}")
    Note.metadata.create_all(engine)
    try:
        yield engine
    finally:
        engine.dispose()


class TestHeldSessionIsNotShared:
    """Two users overlapping, each with a repository over its own session: no refusal."""

    @pytest.mark.anyio
    async def test_async_session_from_provide_to(self, engine: AsyncEngine) -> None:
        """The session product of provide_to(), kept by a repository provider."""
        manager = SessionManager(engine)
        registry = Registry()
        manager.provide_to(registry)

        @registry.provide
        def repo(session: AsyncSession) -> Repo:
            return Repo(session)

        try:
            with no_warnings():
                alice, bob = await overlapping(registry, use)
        finally:
            await manager.aclose()
        assert alice.session is not bob.session
        assert registry.stats().violations == 0

    @pytest.mark.anyio
    async def test_async_session_from_a_manager_block(self, engine: AsyncEngine) -> None:
        """A provider opening the scope's session block itself and keeping the session."""
        manager = SessionManager(engine)
        registry = Registry()

        @registry.provide
        async def repo() -> AsyncIterator[Repo]:
            async with manager.session() as session:
                yield Repo(session)

        try:
            with no_warnings():
                alice, bob = await overlapping(registry, use)
        finally:
            await manager.aclose()
        assert alice.session is not bob.session
        assert registry.stats().violations == 0

    @pytest.mark.anyio
    async def test_sync_session(self, sync_engine: Engine) -> None:
        """A sync sqlalchemy.orm.Session product, and a repository keeping it."""
        registry = Registry()

        @registry.provide
        def session() -> Iterator[Session]:
            with Session(sync_engine) as opened:
                yield opened

        @registry.provide
        def repo(session: Session) -> SyncRepo:
            return SyncRepo(session)

        async def use_sync(scope: isolation.Scope) -> SyncRepo:
            repo = await scope.aget(SyncRepo)
            repo.session.execute(select(Note.id))
            return repo

        with no_warnings():
            alice, bob = await overlapping(registry, use_sync)
        assert alice.session is not bob.session
        assert registry.stats().violations == 0


class TestOneSessionForTwoUsersIsRefused:
    """The session is per-user state: the same session object reached by two users is sharing."""

    @pytest.mark.anyio
    @pytest.mark.parametrize("face", ["async", "sync"])
    async def test_same_session_instance(
        self, face: str, engine: AsyncEngine, sync_engine: Engine
    ) -> None:
        """A repository provider handing every user one module-level session is refused."""
        shared: Any = AsyncSession(engine) if face == "async" else Session(sync_engine)
        registry = Registry()

        @registry.provide
        def repo() -> Repo:
            return Repo(shared)

        async def build(scope: isolation.Scope) -> Repo:
            return await scope.aget(Repo)

        try:
            with pytest.raises(SharedStateError) as caught:
                try:
                    await overlapping(registry, build)
                except BaseExceptionGroup as group:
                    (only,) = group.exceptions
                    raise only from None
        finally:
            if face == "async":
                await shared.close()
            else:
                shared.close()
        assert caught.value.paths == (("Repo", "session"), ("Repo", "session"))
        assert registry.stats().violations == 1
