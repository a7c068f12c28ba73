"""No unguarded path inside a user scope: an engine given to a manager serves only the
manager's sessions there (the app's old ``Session(engine)``, ``engine.connect()``, a
plain session's ``text()`` are refused), and everything outside any scope."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

import isolation
import isolation.logging
from _support.databases import Note, sqlite_engine, sync_sqlite_engine
from isolation import ConfigurationError, CrossContextAccessError, UserContext
from isolation.sessions import SessionManager


@pytest.fixture
def sync_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = sync_sqlite_engine(str(tmp_path / "db.sqlite"), pool_size=2, max_overflow=0)
    try:
        yield engine
    finally:
        engine.dispose()


def checked_out(engine: Engine) -> int:
    pool: Any = engine.pool
    return int(pool.checkedout())


def ctx(user: str = "alice") -> UserContext:
    return UserContext.new(user)


UNMANAGED_SHAPES = {
    "Session(engine).execute(text())": lambda e: Session(e).execute(text("SELECT 1")),
    "Session(engine).scalars(select())": lambda e: Session(e).scalars(select(Note)).all(),
    "engine.connect()": lambda e: e.connect(),
    "engine.begin()": lambda e: e.begin().__enter__(),
    "an option engine": lambda e: e.execution_options(isolation_level="SERIALIZABLE").connect(),
}


class TestSyncEngine:
    @pytest.mark.parametrize("shape", list(UNMANAGED_SHAPES))
    def test_unmanaged_connections_in_a_scope_are_refused(
        self, sync_engine: Engine, shape: str
    ) -> None:
        manager = SessionManager(sync_engine)
        with isolation.scope(ctx()):
            with pytest.raises(CrossContextAccessError, match="other than its SessionManager"):
                UNMANAGED_SHAPES[shape](sync_engine)
            assert checked_out(sync_engine) == 0  # returned to the pool, nothing sent
            with manager.session() as s:  # the manager's own sessions pass
                s.add(Note(body="managed", owner="alice"))
                assert s.connection().execute(text("SELECT 1")).scalar() == 1
        assert manager.stats().unmanaged == 1
        with sync_engine.connect() as conn:  # outside every scope: migrations, admin work
            assert conn.execute(text("SELECT body FROM isolation_notes")).scalars().all() == [
                "managed"
            ]

    def test_warn_logs_and_counts(
        self, sync_engine: Engine, caplog: pytest.LogCaptureFixture
    ) -> None:
        manager = SessionManager(sync_engine, unmanaged="warn")
        previous = isolation.logging.set_redactor(lambda _: "<redacted>")
        try:
            with isolation.scope(ctx()), caplog.at_level(logging.WARNING, "isolation.sessions"):
                with Session(sync_engine) as session:  # closed: its connection goes back
                    assert session.execute(text("SELECT 1")).scalar() == 1
        finally:
            isolation.logging.set_redactor(previous)
        assert manager.stats().unmanaged == 1
        [record] = [r for r in caplog.records if getattr(r, "event", "") == "unmanaged_connection"]
        assert "<redacted>" in record.getMessage()
        assert "alice" not in record.getMessage()

    def test_two_managers_on_one_engine_the_stricter_mode_holds(self, sync_engine: Engine) -> None:
        SessionManager(sync_engine, unmanaged="allow")
        second = SessionManager(sync_engine)  # refuse
        SessionManager(sync_engine, unmanaged="warn")
        with isolation.scope(ctx()):
            with pytest.raises(CrossContextAccessError):
                sync_engine.connect()
            with second.session() as s:
                s.execute(select(Note))

    def test_bad_mode_is_refused(self, sync_engine: Engine) -> None:
        with pytest.raises(ConfigurationError, match="unmanaged must be one of"):
            SessionManager(sync_engine, unmanaged="off")  # type: ignore[arg-type]


class TestAsyncEngine:
    def test_plain_async_session_and_connect_are_refused(self, tmp_path: Path) -> None:
        async def main() -> None:
            engine = sqlite_engine(str(tmp_path / "a.sqlite"))
            async with engine.begin() as conn:
                await conn.run_sync(Note.metadata.create_all)
            manager = SessionManager(engine)
            try:
                async with isolation.scope(ctx()):
                    with pytest.raises(CrossContextAccessError):
                        await AsyncSession(engine).execute(text("SELECT 1"))
                    with pytest.raises(CrossContextAccessError):
                        async with engine.connect():
                            pass
                    async with manager.session() as s:
                        assert (await s.execute(text("SELECT 1"))).scalar() == 1
                assert manager.stats().unmanaged == 2
            finally:
                await engine.dispose()

        anyio.run(main)
