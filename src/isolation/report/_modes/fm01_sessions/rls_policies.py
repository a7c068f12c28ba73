"""FM1 under row-level security: neither app SQL nor an extra policy reaches another's rows.

PostgreSQL only (``--postgres``): each scenario makes its own sandbox (a
schema, the notes table, a LOGIN role that is neither owner nor superuser)
and connects as that role.

``signed-binding``: the rows of four principals (one user id in two tenants);
each reader's raw SQL re-binds the settings to every other principal, in every
form app SQL has (``set_config`` local and session-wide, ``SET LOCAL``,
``SET``), then reads; then one request leaves a session-level ``SET ROLE`` to a
``BYPASSRLS`` role (granted after the start check) on its pooled connection, and
the next principal reads. Property: every row read is the reader's own. Subject: an
:class:`RlsSubject` whose ``install`` writes the signed binding's functions
into a schema and whose ``make`` builds a ``row_level_security="signed"``
manager. Mutant: the same install with getters that answer the settings
without verifying the binding (so the re-bound setting is believed).

``opening-policies``: the library's policy plus one extra policy of the shapes
a careless migration adds (``USING (true)``, an ``OR``, a tenant-only policy,
``FOR INSERT WITH CHECK (true)``, and the library's policy on the user column
alone under tenant contexts). Property: the manager refuses to start or to
bind (``ConfigurationError``), or else alice of tenant t1 reads and writes
only her own rows. Subject: ``make(engine, table)`` builds a manager. Mutant:
a manager that checks nothing and binds the settings (a start check blind to
``pg_policy``).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final

import attrs

from isolation.report._modes._support.registration import add_check
from isolation.report._registry import Backend, ModeRegistry, Settings

__all__ = ["RlsSubject", "register"]

PRINCIPALS: Final[tuple[tuple[str, str], ...]] = (
    ("t1", "alice"),
    ("t2", "alice"),
    ("t1", "bob"),
    ("t2", "carol"),
)

# How app SQL can re-bind the settings: {user} and {tenant} are the victim's.
INJECTIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        "SELECT set_config('isolation.user_id', '{user}', true), "
        "set_config('isolation.tenant_id', '{tenant}', true)",
    ),
    (
        "SELECT set_config('isolation.user_id', '{user}', false), "
        "set_config('isolation.tenant_id', '{tenant}', false)",
    ),
    ("SET LOCAL isolation.user_id = '{user}'", "SET LOCAL isolation.tenant_id = '{tenant}'"),
    ("SET isolation.user_id = '{user}'", "SET isolation.tenant_id = '{tenant}'"),
)

# Extra permissive policies a migration may add beside the library's ({table}).
OPENING_POLICIES: Final[tuple[tuple[str, str], ...]] = (
    ("true", "CREATE POLICY reporting ON {table} FOR SELECT USING (true)"),
    (
        "disjunction",
        "CREATE POLICY reporting ON {table} FOR SELECT USING "
        "(owner = current_setting('isolation.user_id', true) OR tenant = 't1')",
    ),
    (
        "tenant-only",
        "CREATE POLICY reporting ON {table} FOR SELECT USING "
        "(tenant = NULLIF(current_setting('isolation.tenant_id', true), ''))",
    ),
    ("insert-anything", "CREATE POLICY reporting ON {table} FOR INSERT WITH CHECK (true)"),
    ("user-only", ""),  # the library's policy on the user column alone, no extra
)


@attrs.frozen(kw_only=True)
class RlsSubject:
    """What the signed-binding check drives.

    Attributes:
        install: ``install(schema)``: the statements that put the signed
            binding's functions and key table into ``schema``.
        make: ``make(engine, table, key, schema)``: a manager with ``session()``.
    """

    install: Callable[[str], Sequence[str]]
    make: Callable[[Any, str, bytes, str], Any]


async def _write_rows(box: Any) -> None:
    from sqlalchemy import text

    async with box.admin.begin() as conn:
        for tenant, user in PRINCIPALS:
            await conn.execute(
                text(f"INSERT INTO {box.table} (tenant, owner, body) VALUES (:t, :o, :b)"),  # noqa: S608 - the sandbox's own table
                {"t": tenant, "o": user, "b": f"{user}@{tenant}"},
            )


async def _read(manager: Any, principal: tuple[str, str], before: Sequence[str]) -> list[Any]:
    """``principal``'s raw SQL: the statements ``before``, then a read of every row it sees."""
    from sqlalchemy import text

    import isolation
    from isolation.context._model import UserContext

    tenant, user = principal
    async with isolation.scope(UserContext.new(user, tenant_id=tenant)), manager.session() as s:
        for statement in before:
            await s.execute(text(statement))
        rows = await s.execute(text("SELECT tenant, owner FROM isolation_notes"))
        return [tuple(r) for r in rows]


async def _close(manager: Any) -> None:
    aclose = getattr(manager, "aclose", None)
    if aclose is not None:
        await aclose()


# -- signed binding ------------------------------------------------------------------


class _ExpectedDirtyReturns(logging.Filter):
    """Drops the return check's report of the session-wide SETs this scenario makes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "event", None) != "rls_dirty_return"


async def check_signed_binding(subject: RlsSubject, settings: Settings) -> list[str]:
    """Every reader re-binds to every other principal, in every form: no foreign row read."""
    from sqlalchemy import text

    from isolation.report._modes._support.sessions import pg_sandbox
    from isolation.sessions.postgres import rls_policy_sql, rls_signing_key_sql

    if settings.postgres_url is None:
        raise RuntimeError("a PostgreSQL check needs settings.postgres_url")

    def policy(table: str, **kwargs: Any) -> list[str]:
        schema = table.split(".", maxsplit=1)[0]
        return [
            *subject.install(schema),
            *rls_policy_sql(table, signed=True, schema=schema, **kwargs),
        ]

    found: list[str] = []
    key = secrets.token_bytes(32)
    async with pg_sandbox(settings.postgres_url, policy_sql=policy) as box:
        statement, params = rls_signing_key_sql(key, schema=box.schema)
        async with box.admin.begin() as conn:
            await conn.execute(text(statement), params)
        await _write_rows(box)
        manager = subject.make(box.engine, box.table, key, box.schema)
        quiet = _ExpectedDirtyReturns()
        logging.getLogger("isolation.sessions").addFilter(quiet)
        try:
            for reader in PRINCIPALS:
                for victim in PRINCIPALS:
                    if victim == reader:
                        continue
                    for injection in INJECTIONS:
                        tenant, user = victim
                        before = [s.format(user=user, tenant=tenant) for s in injection]
                        rows = await _read(manager, reader, before)
                        foreign = [r for r in rows if r != reader]
                        if foreign:
                            found.append(
                                f"{reader[1]!r} of {reader[0]!r} ran {before[0]!r} and read "
                                f"{len(foreign)} rows of others, e.g. {foreign[0]!r}"
                            )
                            return found
            found += await _set_role_round(box, manager)
        finally:
            logging.getLogger("isolation.sessions").removeFilter(quiet)
            await _close(manager)
    return found


async def _set_role_round(box: Any, manager: Any) -> list[str]:
    """A session-level ``SET ROLE`` to a ``BYPASSRLS`` role (granted after the start
    check read the roles) in one request: the next principal's request must not run
    as that role on the pooled connection."""
    from isolation.sessions.postgres import quote_identifier

    admin = quote_identifier(f"{box.role}_admin")
    async with box.admin.begin() as conn:
        for statement in (
            f"CREATE ROLE {admin} NOLOGIN BYPASSRLS",
            f"GRANT USAGE ON SCHEMA {quote_identifier(box.schema)} TO {admin}",
            f"GRANT SELECT ON {box.table} TO {admin}",
            f"GRANT {admin} TO {quote_identifier(box.role)}",
        ):
            await conn.exec_driver_sql(statement)
    try:
        await _read(manager, PRINCIPALS[0], (f"SET ROLE {admin}",))
        reader = PRINCIPALS[2]
        foreign = [r for r in await _read(manager, reader, ()) if r != reader]
    finally:
        async with box.admin.begin() as conn:
            await conn.exec_driver_sql(f"DROP OWNED BY {admin}")
            await conn.exec_driver_sql(f"DROP ROLE {admin}")
    if foreign:
        return [
            f"a SET ROLE left on the pooled connection by {PRINCIPALS[0][1]!r}'s request let "
            f"{reader[1]!r} of {reader[0]!r} read {len(foreign)} rows of others, "
            f"e.g. {foreign[0]!r}"
        ]
    return []


def _signed_manager(engine: Any, table: str, key: bytes, schema: str) -> Any:
    from isolation.sessions import SessionManager

    return SessionManager(
        engine,
        row_level_security="signed",
        rls_key=key,
        rls_schema=schema,
        rls_tables=[table],
    )


def _library_signed() -> RlsSubject:
    from isolation.sessions.postgres import rls_signing_sql

    return RlsSubject(install=lambda schema: rls_signing_sql(schema=schema), make=_signed_manager)


def _trusting_install(schema: str) -> list[str]:
    """Mutant install: the library's, then getters that believe the settings unverified."""
    from isolation.sessions.postgres import quote_identifier, rls_signing_sql

    s = quote_identifier(schema)
    return [
        *rls_signing_sql(schema=schema),
        *(
            f"CREATE OR REPLACE FUNCTION {s}.isolation_{part}_id() RETURNS text "
            "LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS "
            f"$$ SELECT NULLIF(pg_catalog.current_setting('isolation.{part}_id', true), '') $$"
            for part in ("user", "tenant")
        ),
    ]


def _mutant_signed() -> RlsSubject:
    return RlsSubject(install=_trusting_install, make=_signed_manager)


# -- opening policies ---------------------------------------------------------------------


async def check_opening_policies(make: Callable[[Any, str], Any], settings: Settings) -> list[str]:
    """Each opening policy: refused by the manager, or alice of t1 confined to her rows."""
    from sqlalchemy.exc import DBAPIError

    from isolation._errors import ConfigurationError, CrossContextAccessError
    from isolation.report._modes._support.sessions import pg_sandbox
    from isolation.sessions.postgres import rls_policy_sql

    if settings.postgres_url is None:
        raise RuntimeError("a PostgreSQL check needs settings.postgres_url")

    def user_only(table: str, **kwargs: Any) -> list[str]:
        return rls_policy_sql(table, user_column=kwargs["user_column"])

    alice = PRINCIPALS[0]
    found: list[str] = []
    for name, extra in OPENING_POLICIES:
        policy_sql = user_only if name == "user-only" else None
        async with pg_sandbox(settings.postgres_url, policy_sql=policy_sql) as box:
            await _write_rows(box)
            if extra:
                async with box.admin.begin() as conn:
                    await conn.exec_driver_sql(extra.format(table=box.table))
            manager = make(box.engine, box.table)
            try:
                with contextlib.suppress(ConfigurationError):
                    rows = await _read(manager, alice, ())
                    foreign = [r for r in rows if r != alice]
                    if foreign:
                        found.append(
                            f"with the {name!r} policy, alice of 't1' read {len(foreign)} "
                            f"rows of others, e.g. {foreign[0]!r}"
                        )
                    planted = (
                        "INSERT INTO isolation_notes (tenant, owner, body) "
                        "VALUES ('t1', 'bob', 'planted')"
                    )
                    try:
                        await _read(manager, alice, (planted,))
                    except (DBAPIError, CrossContextAccessError):
                        pass
                    else:
                        found.append(f"with the {name!r} policy, alice wrote a row of bob")
            finally:
                await _close(manager)
        if found:
            break
    return found


def _plain_manager(engine: Any, table: str) -> Any:
    from isolation.sessions import SessionManager

    return SessionManager(engine, row_level_security=True, rls_tables=[table])


class _PolicyBlindManager:
    """Mutant: binds the principal like the library, but never reads the policies."""

    def __init__(self, engine: Any, table: str) -> None:
        self._engine = engine

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Any]:
        from sqlalchemy.ext.asyncio import AsyncSession

        from isolation.report._modes._support.sessions import bind_principal

        async with AsyncSession(self._engine, expire_on_commit=False) as s:
            await bind_principal(s)
            yield s
            await s.commit()


def _library_opening() -> Callable[[Any, str], Any]:
    return _plain_manager


def _mutant_opening() -> Callable[[Any, str], Any]:
    return _PolicyBlindManager


def register(registry: ModeRegistry) -> None:
    """Register FM1's row-level security checks (PostgreSQL only)."""
    add_check(
        registry,
        1,
        "signed-binding-postgres",
        check_signed_binding,
        library=_library_signed,
        mutant=_mutant_signed,
        backend=Backend.POSTGRES,
        requires=("sqlalchemy", "asyncpg"),
        description=(
            "4 principals, each re-binding to every other with set_config / SET, and a "
            "SET ROLE left on a pooled connection: signed row-level security reads own "
            "rows only"
        ),
    )
    add_check(
        registry,
        1,
        "opening-policies-postgres",
        check_opening_policies,
        library=_library_opening,
        mutant=_mutant_opening,
        backend=Backend.POSTGRES,
        requires=("sqlalchemy", "asyncpg"),
        description=(
            "an extra permissive policy (true, OR, tenant-only, INSERT anything) or a "
            "user-only one: refused, or alice reads and writes her own rows only"
        ),
    )
