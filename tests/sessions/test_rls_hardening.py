"""Row-level security that app SQL cannot switch: policies read at start, plain SETs
refused on return, the signed binding, and the policy helper's inputs and stamping.

Every database test runs as a fresh LOGIN role that is neither owner nor superuser
(:func:`_support.databases.pg_sandbox` (tests/_support/databases.py)).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from sqlalchemy import FetchedValue, String, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import isolation
from _support.databases import TABLE, Note, Sandbox, pg_sandbox
from isolation import ConfigurationError, CrossContextAccessError, UserContext
from isolation.sessions import SessionManager
from isolation.sessions.postgres import (
    _Binding,
    _check_policies,
    _PolicyRow,
    check_role,
    quote_identifier,
    rls_policy_sql,
    rls_signing_key_sql,
    rls_signing_sql,
)

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


class _StampedBase(DeclarativeBase):
    pass


class StampedNote(_StampedBase):
    """The notes table as the how-to maps it: the owner columns filled by the database."""

    __tablename__ = TABLE

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant: Mapped[str | None] = mapped_column(String(100), server_default=FetchedValue())
    owner: Mapped[str] = mapped_column(String(100), server_default=FetchedValue())
    body: Mapped[str] = mapped_column(String(200))


ALICE_T1 = UserContext.new("alice", tenant_id="t1")
ALICE_T2 = UserContext.new("alice", tenant_id="t2")
BOB_T1 = UserContext.new("bob", tenant_id="t1")


def signed_policy(table: str, **kwargs: Any) -> list[str]:
    """The signing functions in the sandbox's own schema, then the signed policy."""
    schema = table.split(".", maxsplit=1)[0]
    return [
        *rls_signing_sql(schema=schema),
        *rls_policy_sql(table, signed=True, schema=schema, **kwargs),
    ]


def user_only_policy(table: str, **kwargs: Any) -> list[str]:
    """The library's policy on the user column alone."""
    return rls_policy_sql(table, user_column=kwargs["user_column"])


@pytest.fixture
async def box(postgres_url: str) -> AsyncIterator[Sandbox]:
    async with pg_sandbox(postgres_url, pool_size=1, max_overflow=0) as sandbox:
        yield sandbox


@pytest.fixture
async def signed_box(postgres_url: str) -> AsyncIterator[tuple[Sandbox, bytes]]:
    key = secrets.token_bytes(32)
    async with pg_sandbox(
        postgres_url, policy_sql=signed_policy, pool_size=1, max_overflow=0
    ) as sandbox:
        statement, params = rls_signing_key_sql(key, schema=sandbox.schema)
        async with sandbox.admin.begin() as conn:
            await conn.execute(text(statement), params)
        yield sandbox, key


def manager_binding_proof(key: bytes, tenant: str, user: str) -> str:
    """The proof the manager sends for ``(tenant, user)``, computed as the tests' oracle."""
    import hashlib
    import hmac

    message = f"bind|{len(tenant)}:{tenant}{len(user)}:{user}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def plain_manager(box: Sandbox, **kwargs: Any) -> SessionManager:
    return SessionManager(box.engine, row_level_security=True, rls_tables=[box.table], **kwargs)


def signed_manager(box: Sandbox, key: bytes, **kwargs: Any) -> SessionManager:
    return SessionManager(
        box.engine,
        row_level_security="signed",
        rls_key=key,
        rls_schema=box.schema,
        rls_tables=[box.table],
        **kwargs,
    )


async def write_rows(box: Sandbox, rows: Sequence[tuple[str, str, str]]) -> None:
    """Insert ``(tenant, owner, body)`` rows as the administrator (no policy applies)."""
    async with box.admin.begin() as conn:
        for tenant, owner, body in rows:
            await conn.execute(
                text(f"INSERT INTO {box.table} (tenant, owner, body) VALUES (:t, :o, :b)"),
                {"t": tenant, "o": owner, "b": body},
            )


async def read_as(manager: SessionManager, ctx: UserContext, *before: str) -> list[tuple[Any, ...]]:
    """Raw SQL in ``ctx``'s session: the statements ``before`` (the injection), then a read."""
    async with isolation.scope(ctx), manager.session() as s:
        for statement in before:
            await s.execute(text(statement))
        rows = await s.execute(text("SELECT tenant, owner, body FROM isolation_notes ORDER BY id"))
        return [tuple(r) for r in rows]


async def add_policy(box: Sandbox, statement: str) -> None:
    async with box.admin.begin() as conn:
        await conn.exec_driver_sql(statement.format(table=box.table, role=box.role))


ROWS = [("t1", "alice", "alice@t1"), ("t2", "alice", "alice@t2"), ("t1", "bob", "bob@t1")]


class TestPolicyCheck:
    """The start check reads pg_policy: permissive policies must bind the principal."""

    @pytest.mark.parametrize(
        "policy",
        [
            "CREATE POLICY reporting ON {table} FOR SELECT USING (true)",
            "CREATE POLICY reporting ON {table} FOR SELECT "
            "USING (owner = current_setting('isolation.user_id', true) OR tenant = 't1')",
            "CREATE POLICY reporting ON {table} FOR SELECT "
            "USING (tenant = NULLIF(current_setting('isolation.tenant_id', true), ''))",
            "CREATE POLICY reporting ON {table} FOR INSERT WITH CHECK (true)",
            "CREATE POLICY reporting ON {table} FOR SELECT TO {role} USING (true)",
        ],
        ids=["true", "disjunction", "tenant-only-beside-user", "insert-anything", "to-the-role"],
    )
    async def test_an_opening_permissive_policy_is_refused(self, box: Sandbox, policy: str) -> None:
        """An extra permissive policy that binds less than the principal is refused at start,
        naming the table and the policy, and on every first use; bob's rows are never read."""
        await write_rows(box, ROWS)
        await add_policy(box, policy)
        manager = plain_manager(box)
        with pytest.raises(ConfigurationError, match="'reporting'") as refused:
            await manager.start()
        assert box.table in str(refused.value)
        for _ in range(2):
            with pytest.raises(ConfigurationError, match="'reporting'"):
                await read_as(manager, ALICE_T1)

    @pytest.mark.parametrize(
        "policy",
        [
            "CREATE POLICY reporting ON {table} FOR SELECT TO pg_monitor USING (true)",
            "CREATE POLICY narrow ON {table} AS RESTRICTIVE FOR ALL USING (true)",
            "CREATE POLICY reads ON {table} FOR SELECT USING ((owner)::text = "
            "(SELECT current_setting('isolation.user_id'::text) AS current_setting) "
            "AND tenant = NULLIF(current_setting('isolation.tenant_id', true), '')::text)",
        ],
        ids=["other-role", "restrictive", "equally-bound"],
    )
    async def test_harmless_policies_are_accepted(self, box: Sandbox, policy: str) -> None:
        """A policy for a role the app's role is not a member of, a restrictive one, and one
        that binds the same principal are accepted; alice reads her own rows only."""
        await write_rows(box, ROWS)
        await add_policy(box, policy)
        manager = plain_manager(box)
        await manager.start()
        try:
            assert await read_as(manager, ALICE_T1) == [("t1", "alice", "alice@t1")]
        finally:
            await manager.aclose()

    @pytest.mark.parametrize("signed", [False, True], ids=["plain", "signed"])
    @pytest.mark.parametrize(
        ("user_type", "tenant_type"),
        [("uuid", "bigint"), ("character varying(100)", "integer"), ("text", "text")],
    )
    async def test_typed_library_policies_pass(
        self, signed_box: tuple[Sandbox, bytes], user_type: str, tenant_type: str, signed: bool
    ) -> None:
        """The policies rls_policy_sql writes for other column types, as PostgreSQL
        deparses them, pass the check (plain and signed)."""
        box, key = signed_box
        table = f"{box.schema}.typed"
        async with box.admin.begin() as conn:
            await conn.exec_driver_sql(
                f"CREATE TABLE {table} (id int, owner {user_type}, tenant {tenant_type})"
            )
            for statement in rls_policy_sql(
                table,
                user_column="owner",
                tenant_column="tenant",
                user_type=user_type,
                tenant_type=tenant_type,
                signed=signed,
                schema=box.schema,
            ):
                await conn.exec_driver_sql(statement)
        binding = _Binding(
            "signed" if signed else True, key=key if signed else None, schema=box.schema
        )
        assert await check_role(box.engine, [table], binding=binding) == ()

    async def test_user_only_policy_under_a_tenant_context(self, postgres_url: str) -> None:
        """A policy on the user column alone: a context with a tenant is refused before any
        row is read (alice@t1 would read alice@t2); a context without a tenant works."""
        async with pg_sandbox(postgres_url, policy_sql=user_only_policy) as box:
            await write_rows(box, ROWS)
            manager = plain_manager(box)
            await manager.start()
            with pytest.raises(ConfigurationError, match="bind the user alone") as refused:
                await read_as(manager, ALICE_T1)
            assert box.table in str(refused.value)
            rows = await read_as(manager, UserContext.new("alice"))
            assert [r[2] for r in rows] == ["alice@t1", "alice@t2"]
            await manager.aclose()


class TestCheckPolicies:
    """The decision itself, on expressions as pg_get_expr writes them."""

    LIBRARY = (
        "((tenant = NULLIF(current_setting('isolation.tenant_id'::text, true), ''::text)) AND "
        "((owner)::text = NULLIF(current_setting('isolation.user_id'::text, true), ''::text)))"
    )
    SIGNED = (
        "((tenant = (( SELECT s.isolation_tenant_id() AS isolation_tenant_id))::text) AND "
        "((owner)::text = (( SELECT s.isolation_user_id() AS isolation_user_id))::text))"
    )

    def rows(self, *extra: _PolicyRow, signed: bool = False) -> list[_PolicyRow]:
        expression = self.SIGNED if signed else self.LIBRARY
        library = _PolicyRow(
            name="isolation_principal",
            permissive=True,
            command="*",
            using=expression,
            check=expression,
        )
        return [library, *extra]

    def test_the_library_policy_passes(self) -> None:
        """The policy rls_policy_sql writes binds user and tenant for every command."""
        assert _check_policies("t", self.rows()) == ([], False)
        assert _check_policies("t", self.rows(signed=True), signed=True) == ([], False)

    @pytest.mark.parametrize(
        "using",
        [
            "true",
            "(((owner)::text = current_setting('isolation.user_id'::text)) OR true)",
            "CASE WHEN true THEN true ELSE ((owner)::text = "
            "current_setting('isolation.user_id'::text)) END",
            "((owner)::text <> current_setting('isolation.user_id'::text))",
            "(body = 'isolation.user_id'::text)",
            "(upper((owner)::text) = NULLIF(current_setting('isolation.user_id'::text, true), "
            "''::text))",
            "((owner)::text = COALESCE(current_setting('isolation.user_id'::text, true), "
            "(owner)::text))",
            "((owner)::text IS NOT DISTINCT FROM current_setting('isolation.user_id'::text, true))",
        ],
    )
    def test_an_unbound_permissive_policy_is_refused(self, using: str) -> None:
        """Anything but a top-level comparison with the setting binds nothing."""
        extra = _PolicyRow(name="p", permissive=True, command="r", using=using, check=None)
        problems, _ = _check_policies("t", self.rows(extra))
        assert len(problems) == 1
        assert "'p'" in problems[0]
        assert "'t'" in problems[0]

    def test_a_weaker_command_is_refused(self) -> None:
        """Reads bound to user and tenant, inserts to the tenant alone: alice would plant
        rows of bob (found by the property below); refused."""
        tenant = "((tenant)::text = NULLIF(current_setting('isolation.tenant_id'::text, true), ''::text))"
        rows = [
            _PolicyRow(name="reads", permissive=True, command="r", using=self.LIBRARY, check=None),
            _PolicyRow(name="inserts", permissive=True, command="a", using=None, check=tenant),
        ]
        problems, _ = _check_policies("t", rows)
        assert len(problems) == 1
        assert "'inserts'" in problems[0]

    def test_an_unbound_restrictive_policy_is_fine(self) -> None:
        """Restrictive policies are AND-ed: they can only narrow."""
        extra = _PolicyRow(name="p", permissive=False, command="*", using="true", check=None)
        assert _check_policies("t", self.rows(extra)) == ([], False)

    def test_a_restrictive_binding_covers_permissive_ones(self) -> None:
        """A permissive USING (true) under a restrictive policy that binds both is safe."""
        rows = [
            _PolicyRow(name="open", permissive=True, command="*", using="true", check=None),
            _PolicyRow(
                name="bind",
                permissive=False,
                command="*",
                using=self.LIBRARY,
                check=self.LIBRARY,
            ),
        ]
        assert _check_policies("t", rows) == ([], False)

    def test_user_only(self) -> None:
        """A policy on the user column alone is reported as user-only, not refused."""
        using = (
            "((owner)::text = NULLIF(current_setting('isolation.user_id'::text, true), ''::text))"
        )
        rows = [_PolicyRow(name="u", permissive=True, command="*", using=using, check=None)]
        assert _check_policies("t", rows) == ([], True)

    def test_signed_mode_refuses_a_wrapped_function(self) -> None:
        """Signed, only the bare function binds: lower(isolation_user_id()) does not."""
        using = "((owner)::text = lower(( SELECT s.isolation_user_id() AS isolation_user_id)))"
        extra = _PolicyRow(name="p", permissive=True, command="r", using=using, check=None)
        problems, _ = _check_policies("t", self.rows(extra, signed=True), signed=True)
        assert len(problems) == 1
        assert "'p'" in problems[0]

    def test_signed_mode_refuses_raw_settings(self) -> None:
        """Signed, a policy that reads the settings directly is forgeable: refused."""
        problems, _ = _check_policies("t", self.rows(), signed=True)
        assert len(problems) == 1
        assert "directly" in problems[0]

    def test_signed_mode_accepts_a_restrictive_policy_on_raw_settings(self) -> None:
        """Signed, a restrictive policy on the raw settings only narrows: accepted."""
        extra = _PolicyRow(
            name="narrow", permissive=False, command="*", using=self.LIBRARY, check=None
        )
        assert _check_policies("t", self.rows(extra, signed=True), signed=True) == ([], False)

    def test_plain_mode_names_signed_functions(self) -> None:
        """Plain, a signed policy would match nothing: refused with the reason."""
        problems, _ = _check_policies("t", self.rows(signed=True))
        assert 'row_level_security="signed"' in problems[0]


class TestReturnCheck:
    async def test_a_plain_set_is_not_left_on_the_pool_by_default(self, box: Sandbox) -> None:
        """App SQL's session-level SET in alice's block: by default (no -X dev, no option)
        the connection is refused on return, so the next borrower of the pool (raw SQL on
        the engine) sees no setting and none of alice's rows."""
        await write_rows(box, ROWS)
        manager = plain_manager(box)
        await read_as(
            manager,
            ALICE_T1,
            "SET isolation.user_id = 'alice'",
            "SET isolation.tenant_id = 't1'",
        )
        assert manager.stats().dirty_returns == 1
        async with box.engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT current_setting('isolation.user_id', true), "
                        "(SELECT count(*) FROM isolation_notes)"
                    )
                )
            ).one()
        assert row[0] in (None, "")
        assert row[1] == 0
        await manager.aclose()


class TestSignedBinding:
    """row_level_security="signed": set_config from app SQL cannot re-bind the user."""

    async def test_injected_set_config_reads_none_of_bobs_rows(
        self, signed_box: tuple[Sandbox, bytes]
    ) -> None:
        """alice's raw SQL re-binds the user to bob: 0 of bob's rows (0 rows at all)."""
        box, key = signed_box
        await write_rows(box, ROWS)
        manager = signed_manager(box, key)
        assert await read_as(manager, ALICE_T1) == [("t1", "alice", "alice@t1")]
        assert await read_as(manager, BOB_T1) == [("t1", "bob", "bob@t1")]
        injected = await read_as(
            manager, ALICE_T1, "SELECT set_config('isolation.user_id', 'bob', true)"
        )
        assert injected == []
        # A plain SET of the session is no better.
        injected = await read_as(manager, ALICE_T1, "SET LOCAL isolation.user_id = 'bob'")
        assert injected == []
        await manager.aclose()

    async def test_the_same_injection_reads_bob_in_plain_mode(self, box: Sandbox) -> None:
        """The limit of row_level_security=True: the injected set_config reads bob's rows."""
        await write_rows(box, ROWS)
        manager = plain_manager(box)
        injected = await read_as(
            manager, ALICE_T1, "SELECT set_config('isolation.user_id', 'bob', true)"
        )
        assert injected == [("t1", "bob", "bob@t1")]
        await manager.aclose()

    async def test_a_binding_is_valid_in_its_own_transaction_only(
        self, signed_box: tuple[Sandbox, bytes]
    ) -> None:
        """bob's binding, taken from his transaction, re-bound in alice's: 0 rows."""
        box, key = signed_box
        await write_rows(box, ROWS)
        manager = signed_manager(box, key)
        async with isolation.scope(BOB_T1), manager.session() as s:
            stolen = (
                await s.execute(text("SELECT current_setting('isolation.binding', true)"))
            ).scalar()
        assert stolen
        injected = await read_as(
            manager,
            ALICE_T1,
            f"SELECT set_config('isolation.user_id', 'bob', true), "
            f"set_config('isolation.binding', '{stolen}', true)",
        )
        assert injected == []
        await manager.aclose()

    async def test_calling_the_bind_function_needs_the_key(
        self, signed_box: tuple[Sandbox, bytes]
    ) -> None:
        """App SQL calling isolation_bind for bob without the proof is refused by PostgreSQL,
        and the key table is out of the role's reach."""
        box, key = signed_box
        manager = signed_manager(box, key)
        schema = quote_identifier(box.schema)
        with pytest.raises(DBAPIError, match="binding was refused"):
            await read_as(manager, ALICE_T1, f"SELECT {schema}.isolation_bind('bob', 't1', 'x')")
        for statement in (
            f"SELECT * FROM {schema}.isolation_key",
            f"UPDATE {schema}.isolation_key SET inner_pad = inner_pad",
        ):
            with pytest.raises(DBAPIError, match="permission denied"):
                await read_as(manager, ALICE_T1, statement)
        await manager.aclose()

    async def test_writes_and_stamping(self, signed_box: tuple[Sandbox, bytes]) -> None:
        """Signed, ORM and raw inserts are stamped with the principal and read back."""
        box, key = signed_box
        manager = signed_manager(box, key)
        async with isolation.scope(ALICE_T1), manager.session() as s:
            s.add(StampedNote(body="orm"))
            await s.execute(text("INSERT INTO isolation_notes (body) VALUES ('raw')"))
        # Sorted: whether text() flushes the ORM row first differs between SQLAlchemy 2.0 and 2.1.
        assert sorted(await read_as(manager, ALICE_T1)) == [
            ("t1", "alice", "orm"),
            ("t1", "alice", "raw"),
        ]
        assert await read_as(manager, BOB_T1) == []
        await manager.aclose()

    async def test_a_wrong_key_is_refused_at_start(self, signed_box: tuple[Sandbox, bytes]) -> None:
        """A key that is not the database's is refused before any session."""
        box, _key = signed_box
        manager = signed_manager(box, secrets.token_bytes(32))
        with pytest.raises(ConfigurationError, match="does not match"):
            await manager.start()

    async def test_the_proof_is_never_printed(
        self, signed_box: tuple[Sandbox, bytes], caplog: pytest.LogCaptureFixture
    ) -> None:
        """The proof reaches the driver but not SQLAlchemy's echo log, nor the parameters
        an error shows (a key changed under a running manager makes the bind fail)."""
        box, key = signed_box
        manager = signed_manager(box, key)
        await manager.start()
        proof = manager_binding_proof(key, "t1", "alice")
        box.engine.sync_engine.echo = True
        try:
            with caplog.at_level("INFO", logger="sqlalchemy.engine"):
                assert await read_as(manager, ALICE_T1) == []
            statement, params = rls_signing_key_sql(secrets.token_bytes(32), schema=box.schema)
            async with box.admin.begin() as conn:
                await conn.execute(text(statement), params)
            with pytest.raises(DBAPIError, match="binding was refused") as refused:
                await read_as(manager, ALICE_T1)
        finally:
            box.engine.sync_engine.echo = False
        assert "redacted proof" in caplog.text
        assert proof not in caplog.text
        assert proof not in str(refused.value)
        assert proof not in repr(refused.value)
        await manager.aclose()

    async def test_signed_mode_refuses_plain_policies(self, box: Sandbox) -> None:
        """Signed mode on tables with plain policies (and no functions) is refused."""
        manager = signed_manager(box, secrets.token_bytes(32))
        with pytest.raises(ConfigurationError, match="directly") as refused:
            await manager.start()
        assert "not installed" in str(refused.value)

    def test_bad_options_are_refused(self) -> None:
        """A missing, short or constant key, a key without signed mode, an unknown mode."""
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine("postgresql+asyncpg://u@localhost/db")
        for kwargs in (
            {"row_level_security": "signed"},
            {"row_level_security": "signed", "rls_key": b"short"},
            {"row_level_security": "signed", "rls_key": bytes(32)},
            {"row_level_security": True, "rls_key": secrets.token_bytes(32)},
            {"rls_key": secrets.token_bytes(32)},
            {"row_level_security": "sign"},
        ):
            with pytest.raises(ConfigurationError):
                SessionManager(engine, **kwargs)  # type: ignore[arg-type]


class TestPolicySqlInputs:
    @pytest.mark.parametrize(
        "kwargs",
        [
            {"table": "notes\u202e", "user_column": "owner"},
            {"table": "app.no\u200btes", "user_column": "owner"},
            {"table": "notes", "user_column": "own\u2066er"},
            {"table": "notes", "tenant_column": "ten\x07ant"},
            {"table": "notes", "user_column": "owner", "signed": True, "schema": "is\u200dolation"},
        ],
        ids=["rlo", "zero-width-space", "lri", "bell", "zwj-schema"],
    )
    def test_bidi_and_control_characters_are_refused(self, kwargs: dict[str, Any]) -> None:
        """An identifier that reads differently from what it is gets a typed error."""
        table = kwargs.pop("table")
        with pytest.raises(ConfigurationError, match="control, bidi or zero-width"):
            rls_policy_sql(table, **kwargs)

    async def test_how_to_without_protect_stamps_inserts(self, box: Sandbox) -> None:
        """Following the how-to without protect(): a raw insert and an ORM insert (owner
        columns declared server_default=FetchedValue()) that leave out the owner columns
        are stamped with the principal, and read back from the ORM object."""
        manager = plain_manager(box)
        async with isolation.scope(ALICE_T1), manager.session() as s:
            note = StampedNote(body="orm")
            s.add(note)
            await s.flush()
            await s.execute(text("INSERT INTO isolation_notes (body) VALUES ('raw')"))
        assert (note.tenant, note.owner) == ("t1", "alice")
        assert await read_as(manager, ALICE_T1) == [
            ("t1", "alice", "orm"),
            ("t1", "alice", "raw"),
        ]
        await manager.aclose()

    @pytest.mark.parametrize(
        "row", [{}, {"owner": "bob", "tenant": "t1"}], ids=["owner-left-none", "foreign-owner"]
    )
    async def test_a_refused_row_gets_a_typed_error(
        self, box: Sandbox, row: dict[str, str]
    ) -> None:
        """An ORM model without the server default sends NULL owners, and a row of bob is
        written: PostgreSQL refuses both, and the error is CrossContextAccessError naming
        the table (not an untyped DBAPIError)."""
        manager = plain_manager(box)
        with pytest.raises(CrossContextAccessError, match=TABLE) as refused:
            async with isolation.scope(ALICE_T1), manager.session() as s:
                s.add(Note(body="orm", **row))
        assert "FetchedValue" in str(refused.value)
        assert "owner columns (owner, tenant)" in str(refused.value)
        await manager.aclose()

    def test_stamping_statements(self) -> None:
        """One DEFAULT per owner column, after the policy; stamp=False leaves them out."""
        statements = rls_policy_sql("notes", user_column="owner", tenant_column="tenant")
        assert statements[5:] == [
            'ALTER TABLE "notes" ALTER COLUMN "tenant" SET DEFAULT '
            "NULLIF(current_setting('isolation.tenant_id', true), '')::text",
            'ALTER TABLE "notes" ALTER COLUMN "owner" SET DEFAULT '
            "NULLIF(current_setting('isolation.user_id', true), '')::text",
        ]
        assert len(rls_policy_sql("notes", user_column="owner", stamp=False)) == 5


# -- property: whatever policy set the check accepts confines alice@t1 -------------------

_BOTH = (
    "owner = NULLIF(current_setting('isolation.user_id', true), '') "
    "AND tenant = NULLIF(current_setting('isolation.tenant_id', true), '')"
)
_EXPRESSIONS = {
    "both": _BOTH,
    "user": "owner = NULLIF(current_setting('isolation.user_id', true), '')",
    "tenant": "tenant = NULLIF(current_setting('isolation.tenant_id', true), '')",
    "true": "true",
    "or": "owner = current_setting('isolation.user_id', true) OR tenant = 't1'",
    "upper": "upper(owner) = upper(current_setting('isolation.user_id', true))",
    "coalesce": "owner = COALESCE(NULLIF(current_setting('isolation.user_id', true), ''), owner)",
    "subselect": "owner = (SELECT current_setting('isolation.user_id', true)) "
    "AND tenant = (SELECT current_setting('isolation.tenant_id', true))",
}
_COMMANDS = ("SELECT", "INSERT", "UPDATE", "DELETE", "ALL")


def _policy_sets() -> Any:
    from hypothesis import strategies as st

    names = st.sampled_from(sorted(_EXPRESSIONS))
    policy = st.tuples(st.booleans(), st.sampled_from(_COMMANDS), names, st.none() | names)
    return st.tuples(st.booleans(), st.lists(policy, min_size=0, max_size=3))


def _ddl(
    table: str, library: bool, extras: Sequence[tuple[bool, str, str, str | None]]
) -> list[str]:
    statements = [
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
    ]
    if library:
        statements.append(
            f"CREATE POLICY library ON {table} FOR ALL USING ({_BOTH}) WITH CHECK ({_BOTH})"
        )
    for number, (permissive, command, using, check) in enumerate(extras):
        kind = "PERMISSIVE" if permissive else "RESTRICTIVE"
        clauses = "" if command == "INSERT" else f" USING ({_EXPRESSIONS[using]})"
        if command != "SELECT" and command != "DELETE":
            expression = _EXPRESSIONS[check or using]
            if command == "INSERT" or check is not None:
                clauses += f" WITH CHECK ({expression})"
        statements.append(f"CREATE POLICY p{number} ON {table} AS {kind} FOR {command}{clauses}")
    return statements


async def _violations(box: Sandbox, number: int, example: Any) -> list[str]:
    """Apply the drawn policies to a fresh table; if the manager accepts them, alice@t1
    must read only her rows and write none of anyone else's."""
    library, extras = example
    table = f"{box.schema}.ex{number}"
    async with box.admin.begin() as conn:
        await conn.exec_driver_sql(
            f"CREATE TABLE {table} (id serial PRIMARY KEY, tenant text, owner text, body text)"
        )
        await conn.exec_driver_sql(f'GRANT ALL ON {table} TO "{box.role}"')
        await conn.exec_driver_sql(f'GRANT ALL ON SEQUENCE {table}_id_seq TO "{box.role}"')
        for statement in _ddl(table, library, extras):
            await conn.exec_driver_sql(statement)
        for tenant, owner, body in ROWS:
            await conn.execute(
                text(f"INSERT INTO {table} (tenant, owner, body) VALUES (:t, :o, :b)"),
                {"t": tenant, "o": owner, "b": body},
            )
    # A set with a permissive policy binding user and tenant makes a per-user table, whose
    # rows are alice@t1's own only. (Without one, the table is per tenant or user-only.)
    per_user = library or any(p and using in ("both", "subselect") for p, _, using, _ in extras)
    if not per_user:
        return []
    manager = SessionManager(box.engine, row_level_security=True, rls_tables=[table])
    found: list[str] = []
    try:
        try:
            await manager.start()
        except ConfigurationError:
            return []
        name = table.split(".", maxsplit=1)[1]
        writes = [
            f"INSERT INTO {name} (tenant, owner, body) VALUES ('t1', 'bob', 'x')",
            f"INSERT INTO {name} (tenant, owner, body) VALUES ('t2', 'alice', 'x')",
            f"UPDATE {name} SET body = 'hit' WHERE body <> 'alice@t1'",
            f"UPDATE {name} SET owner = 'bob' WHERE body = 'alice@t1'",
            f"DELETE FROM {name} WHERE body <> 'alice@t1'",
        ]
        try:
            async with isolation.scope(ALICE_T1), manager.session() as s:
                rows = (await s.execute(text(f"SELECT tenant, owner FROM {name}"))).all()
            found += [f"read {tuple(r)}" for r in rows if tuple(r) != ("t1", "alice")]
            for write in writes:
                try:
                    async with isolation.scope(ALICE_T1), manager.session() as s:
                        await s.execute(text(write))
                except (DBAPIError, CrossContextAccessError):
                    pass
        except ConfigurationError:
            return []  # refused at run time (a user-only policy under a tenant context)
        async with box.admin.connect() as conn:
            after = (await conn.execute(text(f"SELECT tenant, owner, body FROM {table}"))).all()
        expected = {
            ("t1", "alice", "alice@t1"),
            ("t2", "alice", "alice@t2"),
            ("t1", "bob", "bob@t1"),
        }
        found += [f"wrote {tuple(r)}" for r in after if tuple(r) not in expected]
        found += [f"deleted {row}" for row in expected if row not in {tuple(r) for r in after}]
    finally:
        await manager.aclose()
    return [f"{example}: {line}" for line in found]


def test_accepted_policy_sets_confine_the_principal(postgres_url: str) -> None:
    """Drawn policy sets (the library's or none, plus up to three permissive or
    restrictive policies of any command, binding both, one, nothing, an OR, a wrapped
    column, a COALESCE): whenever the start check accepts a set, alice of t1 reads only
    her rows and writes, moves or deletes none of anyone else's."""
    import anyio

    from _support.databases import generate

    examples = generate(_policy_sets(), 40, explicit=[(True, [(True, "SELECT", "true", None)])])

    async def run() -> list[str]:
        found: list[str] = []
        async with pg_sandbox(postgres_url) as box:
            for number, example in enumerate(examples):
                found += await _violations(box, number, example)
        return found

    assert anyio.run(run, backend="asyncio") == []
