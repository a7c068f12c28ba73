"""PostgreSQL row-level security for the session manager (extra ``postgres``).

With ``row_level_security=True`` every transaction of a managed session begins
with one parameterised statement::

    SELECT set_config('isolation.user_id', $1, true), set_config('isolation.tenant_id', $2, true)

``is_local => true`` makes both settings transaction-local: PostgreSQL drops
them at COMMIT or ROLLBACK, so nothing survives on a pooled connection into the
next borrower (the leak of a plain ``SET``), and a savepoint or a new
transaction of the same session sets them again. The policies that
:func:`rls_policy_sql` writes compare the owner columns with these settings;
with nothing bound they match no row.

Row-level security does not apply to superusers, to roles with ``BYPASSRLS``,
or to a table's owner unless the table has ``FORCE ROW LEVEL SECURITY``. The
manager checks all three before its first session and refuses to start
otherwise (:func:`check_role`).
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

from isolation._errors import ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "SET_CONFIG_SQL",
    "check_role",
    "install_return_check",
    "quote_identifier",
    "rls_policy_sql",
]

logger = logging.getLogger("isolation.sessions")

USER_SETTING: Final = "isolation.user_id"
TENANT_SETTING: Final = "isolation.tenant_id"

SET_CONFIG_SQL: Final = (
    f"SELECT set_config('{USER_SETTING}', :user_id, true), "
    f"set_config('{TENANT_SETTING}', :tenant_id, true)"
)
"""The statement that binds the principal to the current transaction."""

_RETURN_CHECK_SQL: Final = (
    f"SELECT current_setting('{USER_SETTING}', true), current_setting('{TENANT_SETTING}', true)"
)

# Type names are inlined into the policy, so only plain type names pass.
_TYPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*( [A-Za-z_][A-Za-z0-9_]*)*(\(\d+\))?(\[\])?")

POLICY_NAME: Final = "isolation_principal"


def quote_identifier(name: str) -> str:
    """Quote one SQL identifier (double quotes, doubled inside)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ConfigurationError(f"not a usable SQL identifier: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def _quote_table(table: str) -> str:
    if not isinstance(table, str) or not table:
        raise ConfigurationError(f"rls_policy_sql() takes a table name, got {table!r}")
    return ".".join(quote_identifier(part) for part in table.split("."))


def _type_name(value: str, parameter: str) -> str:
    if not isinstance(value, str) or not _TYPE_NAME.fullmatch(value):
        raise ConfigurationError(
            f"rls_policy_sql({parameter}=...) takes a plain type name such as 'text', "
            f"'uuid' or 'bigint', got {value!r}"
        )
    return value


def rls_policy_sql(
    table: str,
    *,
    user_column: str | None = None,
    tenant_column: str | None = None,
    user_type: str = "text",
    tenant_type: str = "text",
) -> list[str]:
    """Return the DDL that enables, **forces** and defines row-level security on ``table``.

    One statement per item (SQLAlchemy's asyncpg driver prepares each
    statement, and PostgreSQL refuses several in one prepared statement). The
    policy covers reads and writes (``USING`` and ``WITH CHECK``): a row is
    visible and writable only when its ``user_column`` equals
    ``NULLIF(current_setting('isolation.user_id', true), '')::user_type``, and
    the same for the tenant when ``tenant_column`` is given. With no principal
    bound the settings are empty, the comparison is ``NULL``, and no row matches.

    Args:
        table: The table, optionally schema-qualified (``"app.notes"``).
        user_column: The column holding the owner's user id.
        tenant_column: The column holding the owner's tenant id.
        user_type: The SQL type of ``user_column`` (the setting is cast to it).
        tenant_type: The SQL type of ``tenant_column``.

    Returns:
        The statements, in order: enable, force, drop the old policy, create the policy.

    Raises:
        ConfigurationError: No column given, or a name or type that cannot be used.

    Example::

        for statement in rls_policy_sql("notes", user_column="owner", tenant_column="tenant"):
            await conn.exec_driver_sql(statement)
    """
    if user_column is None and tenant_column is None:
        raise ConfigurationError("rls_policy_sql() needs user_column=, tenant_column= or both")
    quoted = _quote_table(table)
    conditions = []
    if tenant_column is not None:
        conditions.append(
            f"{quote_identifier(tenant_column)} = NULLIF(current_setting('{TENANT_SETTING}', "
            f"true), '')::{_type_name(tenant_type, 'tenant_type')}"
        )
    if user_column is not None:
        conditions.append(
            f"{quote_identifier(user_column)} = NULLIF(current_setting('{USER_SETTING}', "
            f"true), '')::{_type_name(user_type, 'user_type')}"
        )
    condition = " AND ".join(conditions)
    policy = quote_identifier(POLICY_NAME)
    return [
        f"ALTER TABLE {quoted} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {quoted} FORCE ROW LEVEL SECURITY",
        f"DROP POLICY IF EXISTS {policy} ON {quoted}",
        f"CREATE POLICY {policy} ON {quoted} AS PERMISSIVE FOR ALL "
        f"USING ({condition}) WITH CHECK ({condition})",
    ]


async def check_role(engine: AsyncEngine, tables: Iterable[str]) -> None:
    """Refuse a connecting role that row-level security would not restrict.

    Checks that the engine is PostgreSQL and not in autocommit, that its role
    is neither a superuser nor ``BYPASSRLS``, and that every table in
    ``tables`` exists, has row-level security enabled, and is not owned by the
    role (or by a role it inherits) unless the table forces row-level security.

    Raises:
        ConfigurationError: Naming every problem found.
    """
    from sqlalchemy import text

    if engine.dialect.name != "postgresql":
        raise ConfigurationError(
            f"row_level_security=True needs PostgreSQL, this engine is {engine.dialect.name!r}",
            hint="Use protect() for the ORM filter on other databases",
        )
    if (
        getattr(engine.dialect, "_on_connect_isolation_level", None) == "AUTOCOMMIT"
        or engine.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
    ):
        raise ConfigurationError(
            "row_level_security=True refuses an AUTOCOMMIT engine: transaction-local "
            "settings would last one statement",
            hint="Create the engine without isolation_level='AUTOCOMMIT'",
        )
    problems: list[str] = []
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT current_user, r.rolsuper, r.rolbypassrls FROM pg_roles r "
                    "WHERE r.rolname = current_user"
                )
            )
        ).one()
        role, superuser, bypass = str(row[0]), bool(row[1]), bool(row[2])
        if superuser:
            problems.append(f"the role {role!r} is a superuser")
        if bypass:
            problems.append(f"the role {role!r} has BYPASSRLS")
        for table in sorted(set(tables)):
            found = (
                await conn.execute(
                    text(
                        "SELECT c.relrowsecurity, c.relforcerowsecurity, "
                        "pg_has_role(current_user, c.relowner, 'USAGE') "
                        "FROM pg_class c WHERE c.oid = to_regclass(:name)"
                    ),
                    {"name": table},
                )
            ).one_or_none()
            if found is None:
                problems.append(f"the table {table!r} does not exist for the role {role!r}")
                continue
            enabled, forced, owns = bool(found[0]), bool(found[1]), bool(found[2])
            if not enabled:
                problems.append(f"the table {table!r} does not have row-level security enabled")
            elif owns and not forced:
                problems.append(
                    f"the role {role!r} owns the table {table!r}, which does not FORCE "
                    "row-level security"
                )
        await conn.rollback()
    if problems:
        raise ConfigurationError(
            "row-level security would not restrict this engine's role: " + "; ".join(problems),
            hint=(
                "Connect as a LOGIN role that is not a superuser, has NOBYPASSRLS and does "
                "not own the tables, and apply rls_policy_sql() to each table"
            ),
        )


def install_return_check(
    engine: AsyncEngine, rate: float, on_dirty: Callable[[tuple[Any, Any]], None]
) -> Callable[[], None]:
    """Check, on a sample of returns to the pool, that both settings are empty.

    A connection that comes back with ``isolation.user_id`` or
    ``isolation.tenant_id`` still set (a plain ``SET`` somewhere, or a
    transaction left open) is invalidated, never reused, and reported to
    ``on_dirty``. The check costs one round trip per sampled return.

    Returns:
        A function that removes the check.
    """
    from sqlalchemy import event
    from sqlalchemy.util.concurrency import in_greenlet

    def on_checkin(dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is None or (rate < 1.0 and random.random() >= rate):  # noqa: S311 - sampling, not security
            return
        if not in_greenlet():
            # Returned by the garbage collector, outside any await: cannot query here.
            return
        try:
            cursor = dbapi_connection.cursor()
            cursor.execute(_RETURN_CHECK_SQL)
            found = cursor.fetchone()
            cursor.close()
            dbapi_connection.rollback()
        except Exception:
            logger.warning("the row-level security return check failed", exc_info=True)
            record.invalidate()
            return
        if found is None:
            return
        values = (found[0], found[1])
        if any(value not in (None, "") for value in values):
            logger.error(
                "a connection returned to the pool with row-level security settings still set",
                extra={"event": "rls_dirty_return"},
            )
            on_dirty(values)
            record.invalidate()

    event.listen(engine.sync_engine.pool, "checkin", on_checkin)

    def remove() -> None:
        event.remove(engine.sync_engine.pool, "checkin", on_checkin)

    return remove
