"""Row-level security against the attacks of the session review: what a session leaves on
a pooled connection (a role, temporary tables, held cursors) and what the start check must
refuse (roles it could switch to, unprotected partitions, case-insensitive owner columns).

Every database test runs as a fresh LOGIN role that is neither owner nor superuser
(:func:`_support.databases.pg_sandbox` (tests/_support/databases.py)), on ``pool_size=1`` so the next
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
from _support.databases import Sandbox, pg_sandbox
from isolation import ConfigurationError, UserContext
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


# -- the start check -----------------------------------------------------------------


@pytest.fixture
async def box(postgres_url: str) -> AsyncIterator[Sandbox]:
    async with pg_sandbox(postgres_url, pool_size=1, max_overflow=0) as sandbox:
        async with sandbox.admin.begin() as conn:
            for tenant, owner, body in ROWS:
                await conn.execute(
                    text(f"INSERT INTO {sandbox.table} (tenant, owner, body) VALUES (:t, :o, :b)"),
                    {"t": tenant, "o": owner, "b": body},
                )
        yield sandbox


@pytest.fixture
async def roles(box: Sandbox) -> AsyncIterator[list[str]]:
    """Names of extra roles a test creates; dropped (with what they own) after it."""
    made: list[str] = []
    try:
        yield made
    finally:
        async with box.admin.begin() as conn:
            for role in made:
                await conn.exec_driver_sql(f"DROP OWNED BY {quote_identifier(role)}")
                await conn.exec_driver_sql(f"DROP ROLE {quote_identifier(role)}")


async def admin_sql(box: Sandbox, *statements: str) -> None:
    """Run ``statements`` as the administrator; ``{schema}``, ``{table}``, ``{role}``
    are the sandbox's (quoted)."""
    names = {
        "schema": quote_identifier(box.schema),
        "table": f"{quote_identifier(box.schema)}.isolation_notes",
        "role": quote_identifier(box.role),
    }
    async with box.admin.begin() as conn:
        for statement in statements:
            await conn.exec_driver_sql(statement.format(**names))


def new_role(roles: list[str], kind: str) -> str:
    name = f"isolation_{kind}_{uuid.uuid4().hex[:12]}"
    roles.append(name)
    return name


def plain_manager(box: Sandbox, *tables: str) -> SessionManager:
    return SessionManager(
        box.engine, row_level_security=True, rls_tables=list(tables) or [box.table]
    )


async def install_signed(box: Sandbox) -> bytes:
    """The signing functions and a key in the sandbox's schema, and the signed policy."""
    key = secrets.token_bytes(32)
    async with box.admin.begin() as conn:
        for statement in _signed_policy(box.table, user_column="owner", tenant_column="tenant"):
            await conn.exec_driver_sql(statement)
        statement, params = rls_signing_key_sql(key, schema=box.schema)
        await conn.execute(text(statement), params)
    return key


class TestRolesTheAppCanBecome:
    """H3: a role the app role may SET ROLE to is as good as the app role itself."""

    @pytest.mark.parametrize(
        ("attribute", "inherit", "named"),
        [
            ("BYPASSRLS", True, "BYPASSRLS"),
            ("BYPASSRLS", False, "BYPASSRLS"),
            ("SUPERUSER", False, "a superuser"),
            ("CREATEROLE", True, "CREATEROLE"),
        ],
        ids=["bypassrls", "bypassrls-noinherit", "superuser-noinherit", "createrole"],
    )
    async def test_a_member_of_a_bypassing_role_is_refused(
        self, box: Sandbox, roles: list[str], attribute: str, inherit: bool, named: str
    ) -> None:
        """The review's attack: the app role is granted a BYPASSRLS (superuser,
        CREATEROLE) role, through a group in between; ``SET LOCAL ROLE`` would read
        bob's rows. The start check refuses, naming the role."""
        target, group = new_role(roles, "admin"), new_role(roles, "group")
        await admin_sql(
            box,
            f"CREATE ROLE {target} NOLOGIN {attribute}",
            f"GRANT USAGE ON SCHEMA {{schema}} TO {target}",
            f"GRANT SELECT ON {{table}} TO {target}",
            f"CREATE ROLE {group} NOLOGIN",
            f"GRANT {target} TO {group}",
            f"GRANT {group} TO {{role}}",
            *(() if inherit else ("ALTER ROLE {role} NOINHERIT",)),
        )
        manager = plain_manager(box)
        with pytest.raises(
            ConfigurationError, match=f"member of {target} \\({named}\\)"
        ) as refused:
            await manager.start()
        assert "SET ROLE" in str(refused.value)

    async def test_the_role_itself_with_createrole_is_refused(self, box: Sandbox) -> None:
        """CREATEROLE lets the role grant itself a BYPASSRLS role (PostgreSQL 15)."""
        await admin_sql(box, "ALTER ROLE {role} CREATEROLE")
        with pytest.raises(ConfigurationError, match="has CREATEROLE"):
            await plain_manager(box).start()

    @pytest.mark.parametrize("inherit", [True, False], ids=["inherit", "noinherit"])
    async def test_a_member_of_the_owner_is_refused_without_force(
        self, box: Sandbox, roles: list[str], inherit: bool
    ) -> None:
        """A member of the table's owner (NOINHERIT too: it can SET ROLE to it) of a
        table without FORCE would bypass its policies: refused, naming the owner."""
        owner = new_role(roles, "owner")
        await admin_sql(
            box,
            f"CREATE ROLE {owner} NOLOGIN",
            f"GRANT USAGE, CREATE ON SCHEMA {{schema}} TO {owner}",
            f"ALTER TABLE {{table}} OWNER TO {owner}",
            "ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY",
            f"GRANT {owner} TO {{role}}",
            *(() if inherit else ("ALTER ROLE {role} NOINHERIT",)),
        )
        with pytest.raises(ConfigurationError, match=f"member of '{owner}', the owner of"):
            await plain_manager(box).start()

    async def test_a_member_of_the_owner_of_a_forced_table(
        self, box: Sandbox, roles: list[str]
    ) -> None:
        """With FORCE the owner is subject to the policies: plain mode accepts it (app SQL
        can re-bind plain settings anyway); signed mode refuses (the owner could un-force)."""
        owner = new_role(roles, "owner")
        await admin_sql(
            box,
            f"CREATE ROLE {owner} NOLOGIN",
            f"GRANT USAGE, CREATE ON SCHEMA {{schema}} TO {owner}",
            f"GRANT {owner} TO {{role}}",
            "ALTER ROLE {role} NOINHERIT",
        )
        await admin_sql(box, f"ALTER TABLE {{table}} OWNER TO {owner}")
        plain = plain_manager(box)
        await plain.start()
        await plain.aclose()
        key = await install_signed(box)
        manager = SessionManager(
            box.engine,
            row_level_security="signed",
            rls_key=key,
            rls_schema=box.schema,
            rls_tables=[box.table],
        )
        with pytest.raises(ConfigurationError, match="NO FORCE ROW LEVEL SECURITY"):
            await manager.start()

    async def test_harmless_memberships_pass(self, box: Sandbox, roles: list[str]) -> None:
        """A group role that only holds grants (NOBYPASSRLS) keeps the start check green,
        and the role reads its own rows only."""
        group = new_role(roles, "readers")
        await admin_sql(
            box,
            f"CREATE ROLE {group} NOLOGIN NOBYPASSRLS",
            f"GRANT SELECT ON {{table}} TO {group}",
            f"GRANT {group} TO {{role}}",
        )
        manager = plain_manager(box)
        await manager.start()
        try:
            rows = await run(manager, ALICE, f"SELECT owner FROM {box.table}")
            assert rows == [("alice",)]
        finally:
            await manager.aclose()


PARTS = "isolation_parts"


async def partitioned(box: Sandbox, *, inherit: bool) -> tuple[str, list[str]]:
    """A protected parent with two children the role may read (partitions, or
    inheritance children), alice's and bob's rows in both; the library's policy on
    the parent only. Returns the parent and the children, schema-qualified."""
    schema = quote_identifier(box.schema)
    parent = f"{box.schema}.{PARTS}"
    children = [f"{box.schema}.{PARTS}_0", f"{box.schema}.{PARTS}_1"]
    columns = "(id int NOT NULL, tenant varchar(100), owner varchar(100) NOT NULL, body text)"
    if inherit:
        statements = [
            f"CREATE TABLE {schema}.{PARTS} {columns}",
            *(f"CREATE TABLE {schema}.{PARTS}_{i} () INHERITS ({schema}.{PARTS})" for i in (0, 1)),
        ]
    else:
        statements = [
            f"CREATE TABLE {schema}.{PARTS} {columns} PARTITION BY HASH (id)",
            *(
                f"CREATE TABLE {schema}.{PARTS}_{i} PARTITION OF {schema}.{PARTS} "
                f"FOR VALUES WITH (MODULUS 2, REMAINDER {i})"
                for i in (0, 1)
            ),
        ]
    await admin_sql(
        box,
        *statements,
        *rls_policy_sql(parent, user_column="owner", tenant_column="tenant"),
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {{role}}",
    )
    async with box.admin.begin() as conn:
        for i, (tenant, owner, body) in enumerate(ROWS * 2):
            target = children[i % 2] if inherit else parent
            await conn.execute(
                text(f"INSERT INTO {target} (id, tenant, owner, body) VALUES (:i, :t, :o, :b)"),
                {"i": i, "t": tenant, "o": owner, "b": body},
            )
    return parent, children


class TestPartitions:
    """M2: a partition or inheritance child named in a query skips the parent's policies."""

    @pytest.mark.parametrize("inherit", [False, True], ids=["partitions", "inheritance"])
    async def test_unprotected_children_are_refused(self, box: Sandbox, inherit: bool) -> None:
        """The review's attack: RLS on the parent only; alice's raw SQL naming a
        partition would read bob's rows. The start check refuses, naming the child."""
        parent, children = await partitioned(box, inherit=inherit)
        with pytest.raises(ConfigurationError, match="inheritance child") as refused:
            await plain_manager(box, parent).start()
        for child in children:
            assert f"{child}' of '{parent}' does not have row-level security" in str(refused.value)

    async def test_a_child_with_an_opening_policy_is_refused(self, box: Sandbox) -> None:
        """A child's own policies are checked as the parent's are."""
        parent, children = await partitioned(box, inherit=False)
        for child in children:
            await admin_sql(
                box, *rls_policy_sql(child, user_column="owner", tenant_column="tenant")
            )
        await admin_sql(box, f"CREATE POLICY reporting ON {children[1]} FOR SELECT USING (true)")
        with pytest.raises(ConfigurationError, match=f"'reporting' on '{children[1]}'"):
            await plain_manager(box, parent).start()

    @pytest.mark.parametrize("fix", ["protected", "revoked"])
    async def test_protected_or_unreachable_children_pass(self, box: Sandbox, fix: str) -> None:
        """Children with the library's policy, or that the role holds no privilege on
        (it reads them through the parent), pass; alice reads her rows only."""
        parent, children = await partitioned(box, inherit=False)
        for child in children:
            if fix == "protected":
                await admin_sql(
                    box, *rls_policy_sql(child, user_column="owner", tenant_column="tenant")
                )
            else:
                await admin_sql(box, f"REVOKE ALL ON {child} FROM {{role}}")
        manager = plain_manager(box, parent)
        await manager.start()
        try:
            rows = await run(manager, ALICE, f"SELECT owner FROM {parent}")
            assert rows == [("alice",), ("alice",)]
            if fix == "protected":
                named = [
                    row
                    for child in children
                    for row in await run(manager, ALICE, f"SELECT owner FROM {child}")
                ]
                assert named == [("alice",), ("alice",)]
        finally:
            await manager.aclose()


class TestFoldedOwnerColumns:
    """M3: an owner column whose equality folds case makes "ALICE" and "alice" one owner."""

    async def folded_table(self, box: Sandbox, column_type: str) -> str:
        table = f"{box.schema}.isolation_folded"
        await admin_sql(
            box,
            f"CREATE TABLE {table} (id serial PRIMARY KEY, owner {column_type} NOT NULL, "
            "body text NOT NULL)",
            "INSERT INTO " + table + " (owner, body) VALUES ('alice', 'ALICE-SECRET')",
            *rls_policy_sql(table, user_column="owner"),
            f"GRANT SELECT ON {table} TO {{role}}",
        )
        return table

    async def test_a_nondeterministic_collation_is_refused(self, box: Sandbox) -> None:
        """The review's attack: a case-insensitive ICU collation; "ALICE" would read
        alice's rows. Refused, naming the table, the column and the collation."""
        collation = f"{quote_identifier(box.schema)}.ci"
        await admin_sql(
            box,
            f"CREATE COLLATION {collation} (provider = icu, "
            "locale = 'und-u-ks-level2', deterministic = false)",
        )
        table = await self.folded_table(box, f"text COLLATE {collation}")
        with pytest.raises(
            ConfigurationError,
            match=f"'owner' of '{table}' has the nondeterministic collation 'ci'",
        ):
            await plain_manager(box, table).start()

    async def test_citext_is_refused(self, box: Sandbox) -> None:
        """citext (here through a domain) compares case-insensitively: refused."""
        async with box.admin.begin() as conn:
            await conn.exec_driver_sql(
                f"CREATE EXTENSION IF NOT EXISTS citext SCHEMA {quote_identifier(box.schema)}"
            )
            where = (
                await conn.execute(
                    text(
                        "SELECT extnamespace::regnamespace::text FROM pg_extension "
                        "WHERE extname = 'citext'"
                    )
                )
            ).scalar_one()
        domain = f"{quote_identifier(box.schema)}.owner_id"
        await admin_sql(box, f"CREATE DOMAIN {domain} AS {where}.citext")
        table = await self.folded_table(box, domain)
        with pytest.raises(ConfigurationError, match=f"'owner' of '{table}' is of type citext"):
            await plain_manager(box, table).start()

    async def test_a_deterministic_collation_passes(self, box: Sandbox) -> None:
        """An explicit deterministic collation ("C") is fine."""
        table = await self.folded_table(box, 'text COLLATE "C"')
        manager = plain_manager(box, table)
        await manager.start()
        try:
            alice = UserContext.new("alice")
            assert await run(manager, alice, f"SELECT owner FROM {table}") == [("alice",)]
            upper = UserContext.new("ALICE")
            assert await run(manager, upper, f"SELECT owner FROM {table}") == []
        finally:
            await manager.aclose()
