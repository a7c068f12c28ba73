"""Two test modules, each with a module-scoped ``TestClient`` of one app whose
manager, registry and router are made once at module level: each module starts
the app on its own event loop, and both pass (before, the second module got
``UsageError: this SessionManager is closed``, then loop-bound pooled connections)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="needs FastAPI (the fastapi extra)")
pytest.importorskip("aiosqlite", reason="needs the sqlalchemy extra")

APP = """
import os
import tempfile
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import Depends, FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

import isolation
from isolation import Registry, UserContext
from isolation.events import EventRouter
from isolation.integrations.fastapi import from_scope
from isolation.integrations.starlette import IsolationMiddleware, lifespan
from _support.databases import Note, create_tables, sqlite_engine
from isolation.sessions import SessionManager

DIRECTORY = tempfile.mkdtemp()
engine = sqlite_engine(str(Path(DIRECTORY) / "app.sqlite"))
anyio.run(create_tables, engine)
manager = SessionManager(engine)
manager.protect(Note, user_column="owner")
router = EventRouter()
registry = Registry()
manager.provide_to(registry)
Session = Annotated[AsyncSession, Depends(from_scope(AsyncSession))]


def authenticate(conn):
    user = conn.headers.get("x-user")
    return None if user is None else UserContext.new(user)


app = FastAPI(lifespan=lifespan(registry, manager, router))
app.add_middleware(IsolationMiddleware, authenticate=authenticate, registry=registry)


@app.post("/notes/{body}")
async def post(body: str, session: Session) -> dict:
    session.add(Note(body=body))
    return {"created": True}


@app.get("/notes")
async def notes(session: Session) -> list:
    return list((await session.scalars(select(Note.body).order_by(Note.id))).all())
"""

CONFTEST = """
import pytest
from starlette.testclient import TestClient

from app_module import app


@pytest.fixture(scope="module")
def client():
    with TestClient(app) as c:
        yield c
"""

MODULE = """
def test_write_and_read(client):
    alice = {{"x-user": "alice"}}
    assert client.post("/notes/{name}", headers=alice).json() == {{"created": True}}
    assert "{name}" in client.get("/notes", headers=alice).json()
    assert client.get("/notes", headers={{"x-user": "bob"}}).json() == []
"""


def test_two_modules_each_with_a_module_scoped_client(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The app module imports the tests' database fixtures (tests/_support/).
    tests_dir = str(Path(__file__).resolve().parents[1])
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")]))
    )
    pytester.makepyfile(app_module=APP)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        test_first=MODULE.format(name="first"), test_second=MODULE.format(name="second")
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:asyncio")
    result.assert_outcomes(passed=2)
