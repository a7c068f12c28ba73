"""Row-level security against the attacks of the session review: what a session leaves on
a pooled connection (a role, temporary tables, held cursors) and what the start check must
refuse (roles it could switch to, unprotected partitions, case-insensitive owner columns).

Every database test runs as a fresh LOGIN role that is neither owner nor superuser
(:func:`isolation.report.modes._sessions.pg_sandbox`), on ``pool_size=1`` so the next
request gets the same connection unless the return check invalidated it.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

import isolation
from isolation import UserContext
from isolation.report.modes._sessions import Sandbox, pg_sandbox
from isolation.sessions import SessionManager
from isolation.sessions.postgres import (
    quote_identifier,
    rls_policy_sql,
    rls_signing_key_sql,
    rls_signing_sql,
)

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

ALICE = UserContext.new("alice", tenant_id="t1")
BOB = UserContext.new("bob", tenant_id="t1")
CAROL = UserContext.new("carol", tenant_id="t1")
ROWS = [("t1", "alice", "ALICE-SECRET"), ("t1", "bob", "BOB-SECRET")]


def _signed_policy(table: str, **kwargs: Any) -> list[str]:
    schema = table.split(".", maxsplit=1)[0]
    return [
        *rls_signing_sql(schema=schema),
        *rls_policy_sql(table, signed=True, schema=schema, **kwargs),
    ]


@pytest.fixture(params=["plain", "signed"])
async def armed(postgres_url: str, request: Any) -> AsyncIterator[tuple[Sandbox, SessionManager]]:
    """A sandbox with alice's and bob's rows and a started manager (plain or signed)."""
    signed = request.param == "signed"
    async with pg_sandbox(
        postgres_url,
        policy_sql=_signed_policy if signed else None,
        pool_size=1,
        max_overflow=0,
    ) as box:
        async with box.admin.begin() as conn:
            for tenant, owner, body in ROWS:
                await conn.execute(
                    text(f"INSERT INTO {box.table} (tenant, owner, body) VALUES (:t, :o, :b)"),
                    {"t": tenant, "o": owner, "b": body},
                )
        kwargs: dict[str, Any] = {"row_level_security": True}
        if signed:
            key = secrets.token_bytes(32)
            statement, params = rls_signing_key_sql(key, schema=box.schema)
            async with box.admin.begin() as conn:
                await conn.execute(text(statement), params)
            kwargs = {"row_level_security": "signed", "rls_key": key, "rls_schema": box.schema}
        manager = SessionManager(box.engine, rls_tables=[box.table], **kwargs)
        await manager.start()
        try:
            yield box, manager
        finally:
            await manager.aclose()


async def run(manager: SessionManager, ctx: UserContext, *statements: str) -> list[tuple[Any, ...]]:
    """Raw SQL in ``ctx``'s session; the rows of the last statement."""
    async with isolation.scope(ctx), manager.session() as s:
        result: Any = None
        for statement in statements:
            result = await s.execute(text(statement))
        return [tuple(r) for r in result] if result is not None and result.returns_rows else []


class TestReturnCheckLeftovers:
    """What a session leaves on its pooled connection never reaches the next borrower."""

    async def test_set_role_is_not_left_for_the_next_request(
        self, armed: tuple[Sandbox, SessionManager]
    ) -> None:
        """H4: alice's request runs a plain ``SET ROLE`` to a BYPASSRLS role the app role
        was granted (after the start check read the roles); carol's next request, on the
        same connection of a one-connection pool, must not run as that role."""
        box, manager = armed
        admin_role = f"isolation_admin_{uuid.uuid4().hex[:12]}"
        q_admin, q_schema = quote_identifier(admin_role), quote_identifier(box.schema)
        async with box.admin.begin() as conn:
            for statement in (
                f"CREATE ROLE {q_admin} NOLOGIN BYPASSRLS",
                f"GRANT USAGE ON SCHEMA {q_schema} TO {q_admin}",
                f"GRANT SELECT ON {box.table} TO {q_admin}",
                f"GRANT {q_admin} TO {quote_identifier(box.role)}",
            ):
                await conn.exec_driver_sql(statement)
        try:
            await run(manager, ALICE, f"SET ROLE {q_admin}")
            rows = await run(
                manager,
                CAROL,
                f"SELECT current_user, (SELECT count(*) FROM {box.table})",
            )
            assert rows == [(box.role, 0)]
            assert manager.stats().dirty_returns == 1
        finally:
            async with box.admin.begin() as conn:
                await conn.exec_driver_sql(f"DROP OWNED BY {q_admin}")
                await conn.exec_driver_sql(f"DROP ROLE {q_admin}")

    async def test_temp_table_is_not_left_for_the_next_request(
        self, armed: tuple[Sandbox, SessionManager]
    ) -> None:
        """H5: alice stages her rows in a temporary table; bob's next request, staging
        his own the same way (``IF NOT EXISTS``), must read his rows only."""
        box, manager = armed
        stage = (
            "CREATE TEMP TABLE IF NOT EXISTS export_stage (owner text, body text)",
            f"INSERT INTO export_stage SELECT owner, body FROM {box.table}",
            "SELECT owner, body FROM export_stage ORDER BY body",
        )
        assert await run(manager, ALICE, *stage) == [("alice", "ALICE-SECRET")]
        assert await run(manager, BOB, *stage) == [("bob", "BOB-SECRET")]
        assert manager.stats().dirty_returns == 2  # bob's table is left too

    async def test_held_cursor_is_not_left_for_the_next_request(
        self, armed: tuple[Sandbox, SessionManager]
    ) -> None:
        """A ``WITH HOLD`` cursor keeps alice's rows past her commit: bob cannot fetch them."""
        box, manager = armed
        await run(
            manager, ALICE, f"DECLARE export CURSOR WITH HOLD FOR SELECT body FROM {box.table}"
        )
        with pytest.raises(DBAPIError, match="export"):
            await run(manager, BOB, "FETCH ALL FROM export")
        assert manager.stats().dirty_returns == 1

    async def test_a_clean_session_is_not_counted(
        self, armed: tuple[Sandbox, SessionManager]
    ) -> None:
        """``SET LOCAL ROLE``, ``ON COMMIT DROP`` temp tables and plain reads leave nothing."""
        box, manager = armed
        for _ in range(2):
            assert await run(manager, ALICE, f"SELECT body FROM {box.table}") == [("ALICE-SECRET",)]
            await run(
                manager,
                ALICE,
                "CREATE TEMP TABLE scratch (x int) ON COMMIT DROP",
                f"SET LOCAL ROLE {quote_identifier(box.role)}",
            )
        assert manager.stats().dirty_returns == 0
