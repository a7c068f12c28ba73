"""A session block opened in the app's own FastAPI dependency with ``yield`` commits
before the response's status: FastAPI ends such a dependency after the response is
sent, so without the scope's finish hook a failed commit would follow a 200."""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any

import anyio
import pytest

pytest.importorskip("fastapi", reason="needs fastapi (the tests extra)")

from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from starlette.requests import HTTPConnection

from _support.databases import (
    Note,
    create_tables,
    sqlite_engine,
    sync_sqlite_engine,
)
from isolation import UserContext
from isolation.integrations.starlette import IsolationMiddleware
from isolation.sessions import SessionManager


def authenticate(conn: HTTPConnection) -> UserContext | None:
    user = conn.headers.get("x-user")
    return None if user is None else UserContext.new(user)


def notes(engine: Any) -> list[str]:
    with engine.connect() as conn:
        return [str(r[0]) for r in conn.execute(text("SELECT body FROM isolation_notes"))]


def sync_app(manager: SessionManager) -> FastAPI:
    def get_db() -> Iterator[Session]:
        with manager.session() as session:
            yield session

    app = FastAPI()
    app.add_middleware(IsolationMiddleware, authenticate=authenticate)

    @app.post("/notes/{note_id}")
    def create(note_id: int, session: Annotated[Session, Depends(get_db)]) -> dict[str, bool]:
        session.add(Note(id=note_id, body=f"note {note_id}", owner="alice"))
        return {"created": True}  # flushed and committed after this returns

    return app


def test_sync_dependency_commits_before_the_response(tmp_path: Path) -> None:
    engine = sync_sqlite_engine(str(tmp_path / "db.sqlite"))
    manager = SessionManager(engine)
    alice = {"x-user": "alice"}
    with TestClient(sync_app(manager), raise_server_exceptions=False) as client:
        assert client.post("/notes/1", headers=alice).status_code == 200
        # The primary key is taken: the commit fails, and the client is told so.
        duplicate = client.post("/notes/1", headers=alice)
        assert duplicate.status_code == 500
        assert client.post("/notes/2", headers=alice).status_code == 200
    assert sorted(notes(engine)) == ["note 1", "note 2"]
    stats = manager.stats()
    assert (stats.open_sessions, stats.checked_out) == (0, 0)
    engine.dispose()


def test_async_dependency_commits_before_the_response(tmp_path: Path) -> None:
    engine = sqlite_engine(str(tmp_path / "a.sqlite"))
    anyio.run(create_tables, engine)
    manager = SessionManager(engine)

    async def get_db() -> AsyncIterator[AsyncSession]:
        async with manager.session() as session:
            yield session

    app = FastAPI()
    app.add_middleware(IsolationMiddleware, authenticate=authenticate)

    @app.post("/notes/{note_id}")
    async def create(
        note_id: int, session: Annotated[AsyncSession, Depends(get_db)]
    ) -> dict[str, bool]:
        session.add(Note(id=note_id, body=f"note {note_id}", owner="alice"))
        return {"created": True}

    alice = {"x-user": "alice"}
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/notes/1", headers=alice).status_code == 200
        assert client.post("/notes/1", headers=alice).status_code == 500

    async def bodies() -> list[str]:
        async with engine.connect() as conn:
            rows = await conn.execute(text("SELECT body FROM isolation_notes"))
            return [str(r[0]) for r in rows]

    assert anyio.run(bodies) == ["note 1"]
    assert manager.stats().checked_out == 0
    anyio.run(engine.dispose)
