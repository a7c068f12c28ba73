"""SessionManager.provide_to(registry): the scope's session as a registry product."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

import isolation
from _support.databases import Note, create_tables, sqlite_engine
from isolation import Registry, UserContext
from isolation.sessions import SessionManager


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_session_product_commits_and_rolls_back(tmp_path: Path) -> None:
    """aget(AsyncSession) gives the scope's session; a clean scope commits, a failing one rolls back."""
    engine = sqlite_engine(str(tmp_path / "db.sqlite"))
    await create_tables(engine)
    manager = SessionManager(engine)
    manager.protect(Note, user_column="owner", tenant_column="tenant")
    registry = Registry()
    manager.provide_to(registry)
    ctx = UserContext.new("alice", tenant_id="acme")
    try:
        async with isolation.scope(ctx, registry=registry) as s:
            session = await s.aget(AsyncSession)
            assert await s.aget(AsyncSession) is session
            session.add(Note(body="kept"))
        with pytest.raises(RuntimeError):
            async with isolation.scope(ctx, registry=registry) as s:
                (await s.aget(AsyncSession)).add(Note(body="dropped"))
                raise RuntimeError("the request failed")
        async with isolation.scope(ctx, registry=registry) as s:
            rows = (await (await s.aget(AsyncSession)).execute(select(Note.body))).scalars().all()
        assert rows == ["kept"]
        assert manager.stats().open_sessions == 0
    finally:
        await manager.aclose()
        await engine.dispose()
