"""Focused tests of the session checks (the generic runner covers library and mutant)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from isolation.report._modes._support.sessions import open_database, pg_sandbox, role_bypasses_rls
from isolation.report._modes.fm03_expiry import async_face as fm03_expiry
from isolation.report._modes.fm04_rollback import async_face as fm04_rollback


def test_fm3_and_fm4_plans_cover_every_point_and_kind() -> None:
    """The explicit first examples expire at every point and inject every failure kind."""
    first_round = fm03_expiry._rounds(5)[0]
    assert {point for expires, point in first_round if expires} == set(fm03_expiry.POINTS)
    first_plans = fm04_rollback._plans(5)[0]
    kinds = {plan[3][0] for plan in first_plans if plan[3] is not None}
    assert kinds == set(fm04_rollback.KINDS)


@pytest.mark.anyio
@pytest.mark.postgres
async def test_sandbox_role_is_restricted_and_dropped(postgres_url: str) -> None:
    """The sandbox role is not superuser nor BYPASSRLS; schema and role are gone afterwards."""
    async with open_database("postgres", postgres_url) as db:
        assert await role_bypasses_rls(db.engine) is None
        async with db.engine.connect() as conn:
            role = (await conn.execute(text("SELECT current_user"))).scalar()
    admin = create_async_engine(make_url(postgres_url).set(drivername="postgresql+asyncpg"))
    try:
        assert await role_bypasses_rls(admin) == "the check's role is a superuser"
        async with admin.connect() as conn:
            left = (
                await conn.execute(
                    text("SELECT count(*) FROM pg_roles WHERE rolname = :r"), {"r": role}
                )
            ).scalar()
        assert left == 0
    finally:
        await admin.dispose()


@pytest.mark.anyio
@pytest.mark.postgres
async def test_sandbox_refuses_a_bypassing_role(postgres_url: str) -> None:
    """A check whose role could bypass RLS refuses to run."""
    async with pg_sandbox(postgres_url) as box:
        async with box.admin.begin() as conn:
            await conn.exec_driver_sql(f'ALTER ROLE "{box.role}" BYPASSRLS')
        assert await role_bypasses_rls(box.engine) == "the check's role has BYPASSRLS"
