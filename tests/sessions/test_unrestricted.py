"""The audited admin path: ``manager.session(unrestricted=True)``, for a context with
one of the manager's ``admin_roles`` only, logged and counted at every block."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DBAPIError

import isolation
from _support.databases import (
    Note,
    pg_sandbox,
    sync_sqlite_engine,
    sync_twin,
)
from isolation import ConfigurationError, CrossContextAccessError, UserContext
from isolation.sessions import SessionManager
from isolation.sessions.postgres import (
    _check_policies,
    _PolicyRow,
    quote_identifier,
    rls_policy_sql,
    rls_signing_key_sql,
    rls_signing_sql,
)

ADMIN = UserContext.new("root", tenant_id="t1", roles=["admin"])


def user(name: str) -> UserContext:
    return UserContext.new(name, tenant_id="t1")


@pytest.fixture
def sync_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = sync_sqlite_engine(str(tmp_path / "db.sqlite"))
    try:
        yield engine
    finally:
        engine.dispose()


def seed(manager: SessionManager) -> None:
    for name in ("alice", "bob", "root"):
        with isolation.scope(user(name)), manager.session() as s:
            s.add(Note(body=f"{name}'s", owner=name, tenant="t1"))


class TestProtect:
    def test_admin_sees_every_row_and_is_logged_each_time(
        self, sync_engine: Engine, caplog: pytest.LogCaptureFixture
    ) -> None:
        manager = SessionManager(sync_engine, admin_roles=["admin"])
        manager.protect(Note, user_column="owner", tenant_column="tenant")
        seed(manager)
        with caplog.at_level(logging.WARNING, "isolation.sessions"), isolation.scope(ADMIN):
            for _ in range(2):
                with manager.session(unrestricted=True) as admin:
                    assert sorted(n.owner for n in admin.scalars(select(Note))) == [
                        "alice",
                        "bob",
                        "root",
                    ]
            with manager.session() as own:  # the same scope's ordinary session: filtered
                assert [n.owner for n in own.scalars(select(Note))] == ["root"]
                assert own is not admin
        events = [getattr(r, "event", None) for r in caplog.records]
        assert events.count("unrestricted_session") == 2
        assert manager.stats().unrestricted == 2

    def test_a_context_without_an_admin_role_is_refused(
        self, sync_engine: Engine, caplog: pytest.LogCaptureFixture
    ) -> None:
        manager = SessionManager(sync_engine, admin_roles=["admin"])
        manager.protect(Note, user_column="owner", tenant_column="tenant")
        seed(manager)
        other_role = UserContext.new("mallory", tenant_id="t1", roles=["support"])
        with caplog.at_level(logging.WARNING, "isolation.sessions"):
            for ctx in (user("alice"), other_role):
                with isolation.scope(ctx):
                    with pytest.raises(CrossContextAccessError, match="admin_roles"):
                        with manager.session(unrestricted=True):
                            pass
        assert [getattr(r, "event", None) for r in caplog.records].count(
            "unrestricted_session_refused"
        ) == 2
        stats = manager.stats()
        assert (stats.unrestricted, stats.unrestricted_refused, stats.checked_out) == (0, 2, 0)

    def test_a_manager_without_admin_roles_refuses_everyone(self, sync_engine: Engine) -> None:
        manager = SessionManager(sync_engine)
        with isolation.scope(ADMIN):
            with pytest.raises(CrossContextAccessError, match="was given none"):
                with manager.session(unrestricted=True):
                    pass

    def test_the_unrestricted_session_is_still_the_scopes(self, sync_engine: Engine) -> None:
        manager = SessionManager(sync_engine, admin_roles=["admin"])
        kept: list[Any] = []
        with isolation.scope(ADMIN), manager.session(unrestricted=True) as s:
            kept.append(s)
        with isolation.scope(user("alice")):
            with pytest.raises(CrossContextAccessError):
                kept[0].execute(select(Note))

    def test_async_face(self, tmp_path: Path) -> None:
        from _support.databases import create_tables, sqlite_engine

        async def main() -> None:
            engine = sqlite_engine(str(tmp_path / "a.sqlite"))
            await create_tables(engine)
            manager = SessionManager(engine, admin_roles=["admin"])
            manager.protect(Note, user_column="owner", tenant_column="tenant")
            for name in ("alice", "bob"):
                async with isolation.scope(user(name)), manager.session() as s:
                    s.add(Note(body=name, owner=name, tenant="t1"))
            async with isolation.scope(ADMIN):
                async with manager.session(unrestricted=True) as s:
                    assert len((await s.scalars(select(Note))).all()) == 2
                async with manager.session() as s:
                    assert (await s.scalars(select(Note))).all() == []
            await engine.dispose()

        anyio.run(main)

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"admin_roles": "admin"}, "not one string"),
            ({"admin_roles": [""]}, "non-empty strings"),
        ],
    )
    def test_bad_admin_roles(self, sync_engine: Engine, kwargs: Any, match: str) -> None:
        with pytest.raises(ConfigurationError, match=match):
            SessionManager(sync_engine, **kwargs)


def unrestricted_policy(table: str, **kwargs: Any) -> list[str]:
    return rls_policy_sql(table, unrestricted=True, **kwargs)


@pytest.mark.postgres
class TestRowLevelSecurity:
    def test_the_policy_admits_only_unrestricted_sessions(self, postgres_url: str) -> None:
        async def main() -> None:
            async with pg_sandbox(postgres_url, policy_sql=unrestricted_policy) as box:
                engine = sync_twin(box.engine)
                try:
                    await anyio.to_thread.run_sync(run, engine, box.table)
                finally:
                    engine.dispose()

        def run(engine: Engine, table: str) -> None:
            # Without admin_roles the start check refuses the unrestricted policy.
            plain = SessionManager(engine, row_level_security=True, rls_tables=[table])
            with pytest.raises(ConfigurationError, match="has no admin_roles"):
                with plain:
                    pass
            manager = SessionManager(
                engine, row_level_security=True, rls_tables=[table], admin_roles=["admin"]
            )
            with manager:
                seed(manager)
                raw = text("SELECT owner FROM isolation_notes ORDER BY owner")
                with isolation.scope(ADMIN):
                    with manager.session(unrestricted=True) as s:
                        assert s.execute(raw).scalars().all() == ["alice", "bob", "root"]
                    with manager.session() as s:
                        assert s.execute(raw).scalars().all() == ["root"]
                with isolation.scope(user("alice")), manager.session() as s:
                    assert s.execute(raw).scalars().all() == ["alice"]
            assert manager.stats().dirty_returns == 0

        anyio.run(main)

    def test_signed_unrestricted_binding(self, postgres_url: str) -> None:
        """Signed: only the manager's proof makes a transaction unrestricted; app SQL that
        sets isolation.unrestricted, or calls isolation_unrestrict() without the proof,
        reads its own rows only."""

        async def main() -> None:
            async with pg_sandbox(postgres_url, policy_sql=signed_unrestricted_policy) as box:
                key = secrets.token_bytes(32)
                statement, params = rls_signing_key_sql(key, schema=box.schema)
                async with box.admin.begin() as conn:
                    await conn.execute(text(statement), params)
                signed = {"row_level_security": "signed", "rls_key": key, "rls_schema": box.schema}
                plain_admin = SessionManager(box.engine, rls_tables=[box.table], **signed)
                with pytest.raises(ConfigurationError, match="has no admin_roles"):
                    await plain_admin.start()
                manager = SessionManager(
                    box.engine, rls_tables=[box.table], admin_roles=["admin"], **signed
                )
                await manager.start()
                for name in ("alice", "bob", "root"):
                    async with isolation.scope(user(name)), manager.session() as s:
                        s.add(Note(body=name, owner=name, tenant="t1"))
                raw = text("SELECT owner FROM isolation_notes ORDER BY owner")
                async with isolation.scope(ADMIN):
                    async with manager.session(unrestricted=True) as s:
                        assert (await s.execute(raw)).scalars().all() == ["alice", "bob", "root"]
                schema = quote_identifier(box.schema)
                async with isolation.scope(user("alice")), manager.session() as s:
                    await s.execute(text("SELECT set_config('isolation.unrestricted', 'on', true)"))
                    assert (await s.execute(raw)).scalars().all() == ["alice"]
                with pytest.raises(DBAPIError, match="unrestricted binding was refused"):
                    async with isolation.scope(user("alice")), manager.session() as s:
                        await s.execute(text(f"SELECT {schema}.isolation_unrestrict('x')"))
                await manager.aclose()

        anyio.run(main)

    def test_a_plain_unrestricted_policy_is_refused_under_the_signed_binding(self) -> None:
        rows = [
            _PolicyRow(
                name="isolation_unrestricted",
                permissive=True,
                command="*",
                using="(current_setting('isolation.unrestricted'::text, true) = 'on'::text)",
                check="(current_setting('isolation.unrestricted'::text, true) = 'on'::text)",
            )
        ]
        problems, _ = _check_policies("notes", rows, signed=True, unrestricted=True)
        assert len(problems) == 1
        assert "app SQL can set" in problems[0]
        assert _check_policies("notes", rows, signed=False, unrestricted=True)[0] == []


def signed_unrestricted_policy(table: str, **kwargs: Any) -> list[str]:
    schema = table.split(".", maxsplit=1)[0]
    return [
        *rls_signing_sql(schema=schema),
        *rls_policy_sql(table, signed=True, schema=schema, unrestricted=True, **kwargs),
    ]
