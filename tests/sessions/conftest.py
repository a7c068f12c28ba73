"""Fixtures of the session tests: asyncio only, real SQLite files, real PostgreSQL roles."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy", reason="the session tests need the sqlalchemy extra")
pytest.importorskip("aiosqlite", reason="the session tests need the sqlalchemy extra")

from sqlalchemy.ext.asyncio import AsyncEngine

from _support.databases import create_tables, sqlite_engine


@pytest.fixture
def anyio_backend() -> str:
    """SQLAlchemy's asyncio layer runs on asyncio only."""
    return "asyncio"


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A SQLite file database (WAL, busy timeout) with the notes table; pool 5 + 0."""
    eng = sqlite_engine(str(tmp_path / "db.sqlite"), pool_size=5, max_overflow=0)
    await create_tables(eng)
    try:
        yield eng
    finally:
        await eng.dispose()
