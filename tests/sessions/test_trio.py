"""Sessions are asyncio-only: under trio they raise a typed error."""

from __future__ import annotations

from pathlib import Path

import pytest

import isolation
from _support.databases import sqlite_engine
from isolation import UnsupportedBackendError, UserContext
from isolation.sessions import SessionManager


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


@pytest.mark.anyio
async def test_trio_is_refused(tmp_path: Path) -> None:
    """Under trio, session() and start() raise UnsupportedBackendError."""
    manager = SessionManager(sqlite_engine(str(tmp_path / "db.sqlite")))
    async with isolation.scope(UserContext.new("alice")):
        with pytest.raises(UnsupportedBackendError, match="asyncio only"):
            async with manager.session():
                pass
    with pytest.raises(UnsupportedBackendError):
        await manager.start()
