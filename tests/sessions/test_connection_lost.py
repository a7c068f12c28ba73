"""A session block whose connection the server closed gets a typed error, then the pool recovers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

import isolation
from _support.databases import Note, Sandbox, pg_sandbox
from isolation import DatabaseConnectionLostError, SessionError, UserContext
from isolation.sessions import SessionManager

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

ALICE = UserContext.new("alice", tenant_id="t1")


@pytest.fixture
async def box(postgres_url: str) -> AsyncIterator[Sandbox]:
    async with pg_sandbox(postgres_url, pool_size=1, max_overflow=0) as sandbox:
        yield sandbox


async def _terminate(box: Sandbox, pid: int) -> None:
    async with box.admin.connect() as admin:
        await admin.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        await admin.commit()


@pytest.mark.parametrize("rls", [True, False], ids=["rls", "plain"])
async def test_killed_idle_pooled_backend(box: Sandbox, rls: bool) -> None:
    """The idle pooled connection's backend is terminated between requests: the next
    request gets DatabaseConnectionLostError (a SessionError and a ConnectionError,
    the driver's error as its cause), and the one after it works."""
    manager = SessionManager(
        box.engine, row_level_security=rls, rls_tables=[box.table] if rls else ()
    )
    async with isolation.scope(ALICE), manager.session() as s:
        pid = (await s.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    await _terminate(box, pid)
    with pytest.raises(DatabaseConnectionLostError) as caught:
        async with isolation.scope(ALICE), manager.session() as s:
            await s.execute(select(Note))
    error = caught.value
    assert isinstance(error, SessionError)
    assert isinstance(error, ConnectionError)
    assert isinstance(error.__cause__, DBAPIError)
    assert "lost inside the block" in str(error)
    assert "SELECT" not in str(error)  # neither the SQL nor its parameters
    async with isolation.scope(ALICE), manager.session() as s:
        assert (await s.execute(select(Note))).all() == []
    assert manager.stats().checked_out == 0
