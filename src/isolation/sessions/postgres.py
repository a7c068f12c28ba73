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

Any SQL of the transaction can call ``set_config`` too, so with plain settings
app SQL can re-bind the user (``set_config('isolation.user_id', 'bob', true)``).
``row_level_security="signed"`` closes that: the transaction begins with
``SELECT <schema>.isolation_bind($1, $2, $3)``, a ``SECURITY DEFINER`` function
that checks the application's proof (an HMAC of the principal under a key the
application holds) and stores, next to the settings, an HMAC of the principal
and the transaction (backend pid and start time) under the same key, kept in a
table the application role cannot read. The signed policies
(``rls_policy_sql(..., signed=True)``) compare the owner columns with
``isolation_user_id()`` / ``isolation_tenant_id()``, which answer ``NULL``
unless that HMAC verifies: re-bound settings match no row.
:func:`rls_signing_sql` and :func:`rls_signing_key_sql` write the functions and
the key.

Row-level security does not apply to superusers, to roles with ``BYPASSRLS``,
or to a table's owner unless the table has ``FORCE ROW LEVEL SECURITY``. The
manager checks all three before its first session, for the role and for every
role it could ``SET ROLE`` to, on the tables and on the partitions and
inheritance children the role can name, and reads the tables' policies: a
permissive policy that binds no principal setting (policies are OR-ed, so
``USING (true)`` opens the table) is refused, and so is a case-insensitive
owner column (:func:`check_role`). On every return to the pool, a connection
left with a setting, another role, temporary objects or held cursors is
invalidated (the manager's return check, ``return_check_rate=``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, final

import attrs

from isolation._compat import connect_isolation_level
from isolation._deprecated import moved as _moved
from isolation._errors import ConfigurationError, CrossContextAccessError
from isolation._redact import redact_principal

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "check_role",
    "check_role_sync",
    "quote_identifier",
    "rls_policy_sql",
    "rls_signing_key_sql",
    "rls_signing_sql",
]

# Names that left the surface (issue 19): the manager's internals (it binds, checks
# and hooks the pool itself). They warn for one release.
__getattr__ = _moved(
    __name__,
    {
        name: ("isolation.sessions.postgres", f"_{name}")
        for name in (
            "Binding",
            "PolicyRow",
            "SET_CONFIG_SQL",
            "binding_for",
            "check_policies",
            "install_pool_hooks",
            "install_return_check",
            "owner_columns",
        )
    },
)

logger = logging.getLogger("isolation.sessions")

USER_SETTING: Final = "isolation.user_id"
TENANT_SETTING: Final = "isolation.tenant_id"
BINDING_SETTING: Final = "isolation.binding"
UNRESTRICTED_SETTING: Final = "isolation.unrestricted"
UNRESTRICTED_POLICY_NAME: Final = "isolation_unrestricted"

_SET_CONFIG_SQL: Final = (
    f"SELECT set_config('{USER_SETTING}', :user_id, true), "
    f"set_config('{TENANT_SETTING}', :tenant_id, true)"
)
"""The statement that binds the principal to the current transaction."""

# One round trip: the principal settings, then what else a session can leave on the
# connection for the next borrower: a role switched with SET ROLE, temporary
# objects (whatever depends on the backend's temporary schema: one index probe of
# pg_depend), and WITH HOLD cursors (both hold rows read under the previous principal).
_RETURN_CHECK_SQL: Final = (
    f"SELECT current_setting('{USER_SETTING}', true), current_setting('{TENANT_SETTING}', true), "  # noqa: S608 - our own constants
    f"current_setting('{BINDING_SETTING}', true), "
    f"current_setting('{UNRESTRICTED_SETTING}', true), "
    "current_user <> session_user, "
    "EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.refclassid = "
    "'pg_catalog.pg_namespace'::pg_catalog.regclass "
    "AND d.refobjid = pg_catalog.pg_my_temp_schema()), "
    "EXISTS (SELECT 1 FROM pg_catalog.pg_cursors k WHERE k.is_holdable)"
)
_SETTINGS_CHECKED: Final = 4
_LEFTOVERS: Final = (
    "a role set with SET ROLE",
    "temporary tables or other objects",
    "WITH HOLD cursors",
)

# Type names are inlined into the policy, so only plain type names pass.
_TYPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*( [A-Za-z_][A-Za-z0-9_]*)*(\(\d+\))?(\[\])?")

POLICY_NAME: Final = "isolation_principal"
DEFAULT_SIGNING_SCHEMA: Final = "isolation"
KEY_TABLE: Final = "isolation_key"
_KEY_SIZES: Final = range(32, 65)
_BLOCK: Final = 64  # SHA-256's block size: HMAC pads the key to it

# Characters an identifier must not hold: controls, format characters (bidi
# overrides, zero-width), surrogates, private use, unassigned, line separators.
_REFUSED_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def quote_identifier(name: str) -> str:
    """Quote one SQL identifier (double quotes, doubled inside).

    Raises:
        ConfigurationError: Not a non-empty string, or holding a control, bidi or
            zero-width character (a name that reads differently from what it is).
    """
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"not a usable SQL identifier: {name!r}")
    bad = [ch for ch in name if unicodedata.category(ch) in _REFUSED_CATEGORIES]
    if bad:
        raise ConfigurationError(
            f"not a usable SQL identifier: {name!r} holds "
            + ", ".join(sorted({f"U+{ord(ch):04X}" for ch in bad}))
            + " (control, bidi or zero-width characters)",
            hint="Use a name made of visible characters",
        )
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


_UNRESTRICTED_CONDITION: Final = f"current_setting('{UNRESTRICTED_SETTING}', true) = 'on'"
#: Run in an unrestricted session's transaction, after the principal's binding.
UNRESTRICT_SQL: Final = f"SELECT set_config('{UNRESTRICTED_SETTING}', 'on', true)"


def _setting_sql(setting: str, type_name: str) -> str:
    return f"NULLIF(current_setting('{setting}', true), '')::{type_name}"


def rls_policy_sql(
    table: str,
    *,
    user_column: str | None = None,
    tenant_column: str | None = None,
    user_type: str = "text",
    tenant_type: str = "text",
    signed: bool = False,
    schema: str = DEFAULT_SIGNING_SCHEMA,
    stamp: bool = True,
    unrestricted: bool = False,
) -> list[str]:
    """Return the DDL that enables, **forces** and defines row-level security on ``table``.

    One statement per item (SQLAlchemy's asyncpg driver prepares each
    statement, and PostgreSQL refuses several in one prepared statement). The
    policy covers reads and writes (``USING`` and ``WITH CHECK``): a row is
    visible and writable only when its ``user_column`` equals
    ``NULLIF(current_setting('isolation.user_id', true), '')::user_type``, and
    the same for the tenant when ``tenant_column`` is given. With no principal
    bound the settings are empty, the comparison is ``NULL``, and no row matches.
    With ``signed=True`` the columns are compared with
    ``(SELECT <schema>.isolation_user_id())`` (and ``isolation_tenant_id()``),
    which answer only for a binding made by ``row_level_security="signed"``
    (install :func:`rls_signing_sql` first).

    With ``stamp`` (the default) the owner columns also get the bound principal
    as their ``DEFAULT``: an insert that leaves them out (raw SQL, or an ORM
    model without ``protect()``) is stamped with the current principal instead
    of failing the policy.

    Args:
        table: The table, optionally schema-qualified (``"app.notes"``).
        user_column: The column holding the owner's user id.
        tenant_column: The column holding the owner's tenant id.
        user_type: The SQL type of ``user_column`` (the setting is cast to it).
        tenant_type: The SQL type of ``tenant_column``.
        signed: Write the policy of the signed binding.
        schema: Where :func:`rls_signing_sql` put the functions (``signed`` only).
        stamp: Give the owner columns the bound principal as their default.
        unrestricted: Also create the ``isolation_unrestricted`` policy, which
            admits every row to a transaction with ``isolation.unrestricted``
            set to ``on``: what ``manager.session(unrestricted=True)`` sets for a
            context with one of the manager's ``admin_roles`` (the start check
            refuses this policy for a manager without them). Without it, that
            policy is dropped.

    Returns:
        The statements, in order: enable, force, drop the old policies, create the
        policy (and the unrestricted one), then (with ``stamp``) one ``ALTER
        COLUMN ... SET DEFAULT`` per column.

    Raises:
        ConfigurationError: No column given, or a name or type that cannot be used.

    Example::

        for statement in rls_policy_sql("notes", user_column="owner", tenant_column="tenant"):
            await conn.exec_driver_sql(statement)
    """
    if user_column is None and tenant_column is None:
        raise ConfigurationError("rls_policy_sql() needs user_column=, tenant_column= or both")
    quoted = _quote_table(table)
    functions = quote_identifier(schema) if signed else ""
    conditions: list[str] = []
    defaults: list[str] = []
    for column, setting, type_name, parameter, function in (
        (tenant_column, TENANT_SETTING, tenant_type, "tenant_type", "isolation_tenant_id"),
        (user_column, USER_SETTING, user_type, "user_type", "isolation_user_id"),
    ):
        if column is None:
            continue
        name = _type_name(type_name, parameter)
        q_column = quote_identifier(column)
        if signed:
            bound = f"(SELECT {functions}.{function}())::{name}"
            default = f"{functions}.{function}()::{name}"
        else:
            bound = default = _setting_sql(setting, name)
        conditions.append(f"{q_column} = {bound}")
        defaults.append(f"ALTER TABLE {quoted} ALTER COLUMN {q_column} SET DEFAULT {default}")
    condition = " AND ".join(conditions)
    policy = quote_identifier(POLICY_NAME)
    admin = quote_identifier(UNRESTRICTED_POLICY_NAME)
    admitted = (
        f"(SELECT {functions}.isolation_unrestricted())" if signed else _UNRESTRICTED_CONDITION
    )
    return [
        f"ALTER TABLE {quoted} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {quoted} FORCE ROW LEVEL SECURITY",
        f"DROP POLICY IF EXISTS {policy} ON {quoted}",
        f"DROP POLICY IF EXISTS {admin} ON {quoted}",
        f"CREATE POLICY {policy} ON {quoted} AS PERMISSIVE FOR ALL "
        f"USING ({condition}) WITH CHECK ({condition})",
        *(
            [
                f"CREATE POLICY {admin} ON {quoted} AS PERMISSIVE FOR ALL "
                f"USING ({admitted}) WITH CHECK ({admitted})"
            ]
            if unrestricted
            else []
        ),
        *(defaults if stamp else ()),
    ]


# -- the signed binding -----------------------------------------------------------


def _frame_sql(expression: str) -> str:
    """A value as ``<length>:<value>`` (SQL side of :func:`_frame`): unambiguous concatenation."""
    return f"length({expression})::text || ':' || {expression}"


def _frame(value: str) -> str:
    return f"{len(value)}:{value}"


def _mac_sql(message: str) -> str:
    """HMAC-SHA256 of ``message`` (UTF-8) with the key row ``k``, in hex, from built-ins.

    The key table holds the key already XOR-ed with HMAC's two pads, so
    ``sha256(outer || sha256(inner || m))`` is the HMAC, without pgcrypto.
    """
    return (
        "pg_catalog.encode(pg_catalog.sha256(k.outer_pad || pg_catalog.sha256(k.inner_pad || "
        f"pg_catalog.convert_to({message}, 'UTF8'))), 'hex')"
    )


def _same_sql(left: str, right: str) -> str:
    # Hashing both sides first: the comparison's timing says nothing about either.
    return (
        f"pg_catalog.sha256(pg_catalog.convert_to({left}, 'UTF8')) = "
        f"pg_catalog.sha256(pg_catalog.convert_to({right}, 'UTF8'))"
    )


_TXN_SQL: Final = (
    "'txn|' || pg_catalog.pg_backend_pid()::text || ':' || "
    "pg_catalog.floor(pg_catalog.date_part('epoch', pg_catalog.transaction_timestamp()) "
    "* 1000000)::bigint::text || '|'"
)


def rls_signing_sql(*, schema: str = DEFAULT_SIGNING_SCHEMA) -> list[str]:
    """Return the DDL of the signed binding: its schema, key table and functions.

    Run it as the migration role (the tables' owner), never as the application
    role, then install the key with :func:`rls_signing_key_sql` and write the
    policies with ``rls_policy_sql(..., signed=True)``. It creates, in ``schema``:

    - ``isolation_key``: one row, the key XOR-ed with HMAC's pads; ``REVOKE ALL
      FROM PUBLIC``, so the application role can neither read nor write it.
    - ``isolation_bind(user_id, tenant_id, proof)``: ``SECURITY DEFINER``;
      checks ``proof`` (an HMAC of the principal that only the key's holder can
      compute), then sets the two settings and ``isolation.binding``, an HMAC of
      the principal, the backend's pid and the transaction's start time, all
      transaction-local. A wrong proof raises ``insufficient_privilege``.
    - ``isolation_bound()``: whether ``isolation.binding`` verifies for the
      current settings and transaction.
    - ``isolation_user_id()``, ``isolation_tenant_id()``: the settings when the
      binding verifies, else ``NULL`` (so a re-bound setting matches no row).

    Every function runs with ``search_path = pg_catalog, pg_temp`` and names
    everything it uses, so the caller's ``search_path`` cannot redirect it.

    Raises:
        ConfigurationError: A schema name that cannot be used.
    """
    s = quote_identifier(schema)
    key = f"{s}.{KEY_TABLE}"
    header = "SECURITY DEFINER SET search_path = pg_catalog, pg_temp"
    principal = f"{_frame_sql('p_tenant')} || {_frame_sql('p_user')}"
    user_now = f"pg_catalog.current_setting('{USER_SETTING}', true)"
    tenant_now = f"pg_catalog.current_setting('{TENANT_SETTING}', true)"
    principal_now = f"{_frame_sql(tenant_now)} || {_frame_sql(user_now)}"
    proof_ok = _same_sql("p_proof", _mac_sql(f"'bind|' || {principal}"))
    binding = _mac_sql(f"{_TXN_SQL} || {principal}")
    binding_ok = _same_sql(
        f"pg_catalog.current_setting('{BINDING_SETTING}', true)",
        _mac_sql(f"{_TXN_SQL} || {principal_now}"),
    )
    # Every name below is quoted by quote_identifier() or is our own constant.
    bind = (
        f"CREATE OR REPLACE FUNCTION {s}.isolation_bind(p_user text, p_tenant text, "  # noqa: S608 - quoted names
        f"p_proof text) RETURNS boolean LANGUAGE plpgsql VOLATILE {header} AS $isolation$\n"
        "DECLARE k record;\n"
        "BEGIN\n"
        f"  SELECT inner_pad, outer_pad INTO k FROM {key} WHERE id = 1;\n"
        "  IF NOT FOUND OR p_user IS NULL OR p_user = '' OR p_tenant IS NULL "
        f"OR p_proof IS NULL OR NOT ({proof_ok}) THEN\n"
        "    RAISE EXCEPTION 'isolation: the principal binding was refused'\n"
        "      USING ERRCODE = 'insufficient_privilege';\n"
        "  END IF;\n"
        f"  PERFORM pg_catalog.set_config('{USER_SETTING}', p_user, true),\n"
        f"    pg_catalog.set_config('{TENANT_SETTING}', p_tenant, true),\n"
        f"    pg_catalog.set_config('{BINDING_SETTING}', {binding}, true);\n"
        "  RETURN true;\n"
        "END\n$isolation$"
    )
    bound = (
        f"CREATE OR REPLACE FUNCTION {s}.isolation_bound() RETURNS boolean "  # noqa: S608 - quoted names
        f"LANGUAGE sql STABLE {header} AS $isolation$\n"
        f"  SELECT COALESCE((SELECT {binding_ok} FROM {key} k WHERE k.id = 1), false)\n"
        "$isolation$"
    )
    # The getters repeat the check rather than call isolation_bound() (a SECURITY
    # DEFINER function calling another costs several times as much), in PL/pgSQL,
    # whose plans a session keeps (a SQL function's body is planned per statement).
    unrestricted_mac = _mac_sql(f"{_TXN_SQL} || 'unrestricted|' || {principal_now}")
    unrestrict_ok = _same_sql("p_proof", _mac_sql(f"'unrestrict|' || {principal_now}"))
    unrestrict = (
        f"CREATE OR REPLACE FUNCTION {s}.isolation_unrestrict(p_proof text) "  # noqa: S608 - quoted names
        f"RETURNS boolean LANGUAGE plpgsql VOLATILE {header} AS $isolation$\n"
        "DECLARE k record;\n"
        "BEGIN\n"
        f"  SELECT inner_pad, outer_pad INTO k FROM {key} WHERE id = 1;\n"
        f"  IF NOT FOUND OR p_proof IS NULL OR NOT ({binding_ok}) OR NOT ({unrestrict_ok}) THEN\n"
        "    RAISE EXCEPTION 'isolation: the unrestricted binding was refused'\n"
        "      USING ERRCODE = 'insufficient_privilege';\n"
        "  END IF;\n"
        f"  PERFORM pg_catalog.set_config('{UNRESTRICTED_SETTING}', {unrestricted_mac}, true);\n"
        "  RETURN true;\n"
        "END\n$isolation$"
    )
    unrestricted = (
        f"CREATE OR REPLACE FUNCTION {s}.isolation_unrestricted() RETURNS boolean "  # noqa: S608 - quoted names
        f"LANGUAGE plpgsql STABLE {header} AS $isolation$\n"
        "DECLARE k record;\n"
        "BEGIN\n"
        f"  SELECT inner_pad, outer_pad INTO k FROM {key} WHERE id = 1;\n"
        f"  RETURN FOUND AND ({binding_ok}) AND ("
        + _same_sql(f"pg_catalog.current_setting('{UNRESTRICTED_SETTING}', true)", unrestricted_mac)
        + ");\n"
        "END\n$isolation$"
    )
    getters = [
        f"CREATE OR REPLACE FUNCTION {s}.{function}() RETURNS text "  # noqa: S608 - quoted names
        f"LANGUAGE plpgsql STABLE {header} AS $isolation$\n"
        "DECLARE k record;\n"
        "BEGIN\n"
        f"  SELECT inner_pad, outer_pad INTO k FROM {key} WHERE id = 1;\n"
        f"  IF FOUND AND {binding_ok} THEN\n"
        f"    RETURN NULLIF({now}, '');\n"
        "  END IF;\n"
        "  RETURN NULL;\n"
        "END\n$isolation$"
        for function, now in (("isolation_user_id", user_now), ("isolation_tenant_id", tenant_now))
    ]
    return [
        f"CREATE SCHEMA IF NOT EXISTS {s}",
        f"CREATE TABLE IF NOT EXISTS {key} (id integer PRIMARY KEY CHECK (id = 1), "
        f"inner_pad bytea NOT NULL CHECK (length(inner_pad) = {_BLOCK}), "
        f"outer_pad bytea NOT NULL CHECK (length(outer_pad) = {_BLOCK}))",
        f"REVOKE ALL ON {key} FROM PUBLIC",
        bind,
        bound,
        *getters,
        unrestrict,
        unrestricted,
        f"GRANT USAGE ON SCHEMA {s} TO PUBLIC",
    ]


def _signing_key(key: object) -> bytes:
    if not isinstance(key, bytes | bytearray) or len(key) not in _KEY_SIZES:
        raise ConfigurationError(
            "the row-level security signing key must be 32 to 64 random bytes",
            hint="Generate one with secrets.token_bytes(32) and keep it with your other secrets",
        )
    if len(set(key)) < 8:
        raise ConfigurationError(
            "the row-level security signing key has too few distinct bytes to be random",
            hint="Generate one with secrets.token_bytes(32)",
        )
    return bytes(key)


def rls_signing_key_sql(
    key: bytes, *, schema: str = DEFAULT_SIGNING_SCHEMA
) -> tuple[str, dict[str, bytes]]:
    """Return the statement (with bind parameters) that installs or replaces the signing key.

    The key travels as parameters, never in the statement's text (which logs and
    ``pg_stat_statements`` may keep). Run it as the migration role::

        statement, params = rls_signing_key_sql(key)
        await conn.execute(sqlalchemy.text(statement), params)
        # Alembic: op.execute(sa.text(statement).bindparams(**params))

    Raises:
        ConfigurationError: A key that is not 32 to 64 random bytes, or a bad schema name.
    """
    padded = _signing_key(key).ljust(_BLOCK, b"\x00")
    inner = bytes(b ^ 0x36 for b in padded)
    outer = bytes(b ^ 0x5C for b in padded)
    table = f"{quote_identifier(schema)}.{KEY_TABLE}"
    return (
        f"INSERT INTO {table} (id, inner_pad, outer_pad) VALUES (1, :inner_pad, :outer_pad) "  # noqa: S608 - a quoted name
        "ON CONFLICT (id) DO UPDATE SET inner_pad = EXCLUDED.inner_pad, "
        "outer_pad = EXCLUDED.outer_pad",
        {"inner_pad": inner, "outer_pad": outer},
    )


def _binding_for(
    row_level_security: bool | Literal["signed"], key: bytes | None, schema: str
) -> _Binding | None:
    """The binding of a manager's ``row_level_security`` option, or ``None`` when off.

    Raises:
        ConfigurationError: An unknown option, a key without the signed mode (or
            the reverse), a bad key or schema name.
    """
    if row_level_security is False:
        if key is not None:
            raise ConfigurationError('rls_key= is used only with row_level_security="signed"')
        return None
    return _Binding(row_level_security, key=key, schema=schema)


class _Proof(str):
    """The bind proof: a ``str`` for the driver, redacted wherever it is printed
    (SQLAlchemy's ``echo`` and the parameters an error message shows)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'<isolation: redacted proof>'"


@final
class _Binding:
    """How a :class:`~isolation.sessions.SessionManager` binds the principal to a transaction.

    Built from the manager's ``row_level_security`` option: plain settings
    (``True``) or the signed binding (``"signed"``, with the key). The startup
    check records the tables whose policies bind the user alone; a context with
    a tenant is then refused at the start of each transaction, as ``protect()``
    refuses it.
    """

    __slots__ = (
        "_key",
        "_statement",
        "owner_columns",
        "schema",
        "signed",
        "statement_sql",
        "unrestricted",
        "user_only_tables",
    )

    def __init__(self, mode: bool | Literal["signed"], *, key: bytes | None, schema: str) -> None:
        if mode == "signed":
            if key is None:
                raise ConfigurationError(
                    'row_level_security="signed" needs rls_key=, the key installed with '
                    "rls_signing_key_sql()"
                )
            self._key: bytes | None = _signing_key(key)
            self.signed = True
            self.statement_sql = (
                f"SELECT {quote_identifier(schema)}.isolation_bind(:user_id, :tenant_id, :proof)"
            )
        elif mode is True:
            if key is not None:
                raise ConfigurationError('rls_key= is used only with row_level_security="signed"')
            self._key = None
            self.signed = False
            self.statement_sql = _SET_CONFIG_SQL
        else:
            raise ConfigurationError(
                'row_level_security takes False, True or "signed", got ' + repr(mode)
            )
        quote_identifier(schema)
        self.schema = schema
        self.user_only_tables: tuple[str, ...] = ()
        # The manager has admin_roles: the start check accepts the unrestricted policy.
        self.unrestricted = False
        # Per table name (unqualified, as PostgreSQL's errors give it): the owner
        # columns its policies bind, read by the startup check.
        self.owner_columns: dict[str, tuple[str, ...]] = {}
        self._statement: Any = None

    def __repr__(self) -> str:
        return f"<isolation.sessions.postgres.Binding {'signed' if self.signed else 'plain'}>"

    @property
    def statement(self) -> Any:
        """The binding statement, compiled once (a SQLAlchemy ``text()``)."""
        statement = self._statement
        if statement is None:
            from sqlalchemy import text

            statement = self._statement = text(self.statement_sql)
        return statement

    def proof(self, tenant: str, user: str) -> str:
        """The HMAC that ``isolation_bind`` checks for this principal (signed mode)."""
        key = self._key
        if key is None:
            raise ConfigurationError("a plain binding has no proof")
        message = f"bind|{_frame(tenant)}{_frame(user)}".encode()
        return hmac.new(key, message, hashlib.sha256).hexdigest()

    def unrestrict(self, connection: Any, principal: tuple[str | None, str]) -> None:
        """Make the bound transaction unrestricted (an admin's session, after the binding).

        Plain: ``isolation.unrestricted`` set to ``on``. Signed: through
        ``isolation_unrestrict(proof)``, which sets it to an HMAC of this
        transaction that only the key's holder could have asked for.
        """
        if not self.signed:
            connection.exec_driver_sql(UNRESTRICT_SQL)
            return
        from sqlalchemy import text

        tenant, user = principal
        key = self._key
        assert key is not None  # signed
        message = f"unrestrict|{_frame('' if tenant is None else tenant)}{_frame(user)}".encode()
        proof = _Proof(hmac.new(key, message, hashlib.sha256).hexdigest())
        connection.execute(
            text(f"SELECT {quote_identifier(self.schema)}.isolation_unrestrict(:proof)"),
            {"proof": proof},
        )

    def params(self, principal: tuple[str | None, str]) -> dict[str, str]:
        """The binding statement's parameters for ``principal``.

        Raises:
            ConfigurationError: The context has a tenant, and the policies of
                some table bind the user alone (the same user id in another
                tenant would see those rows).
        """
        tenant, user = principal
        if tenant is not None and self.user_only_tables:
            raise ConfigurationError(
                "the row-level security policies of "
                + ", ".join(self.user_only_tables)
                + f" bind the user alone, but the bound context of {redact_principal(principal)} "
                "has a tenant: the same user id in another tenant would see these rows",
                hint="Bind the tenant column too: rls_policy_sql(table, user_column=..., "
                "tenant_column=...)",
            )
        tenant_value = "" if tenant is None else tenant
        if not self.signed:
            return {"user_id": user, "tenant_id": tenant_value}
        proof = _Proof(self.proof(tenant_value, user))
        return {"user_id": user, "tenant_id": tenant_value, "proof": proof}


# -- reading the policies --------------------------------------------------------


@attrs.frozen(kw_only=True)
class _PolicyRow:
    """One policy of a table, as ``pg_policy`` holds it (expressions deparsed).

    Attributes:
        name: The policy's name.
        permissive: ``PERMISSIVE`` (OR-ed with the others) or ``RESTRICTIVE`` (AND-ed).
        command: ``"r"`` SELECT, ``"a"`` INSERT, ``"w"`` UPDATE, ``"d"`` DELETE, ``"*"`` ALL.
        using: The ``USING`` expression, or ``None``.
        check: The ``WITH CHECK`` expression, or ``None``.
    """

    name: str
    permissive: bool
    command: str
    using: str | None
    check: str | None


_COMMANDS: Final = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE"}
_USER: Final = "user"
_TENANT: Final = "tenant"

# Casts pg_get_expr writes (``''::text``, ``(owner)::character varying``).
_CAST = re.compile(
    r"::(?:\"[^\"]+\"|(?:character varying|double precision|bit varying|"
    r"timestamp with(?:out)? time zone|time with(?:out)? time zone|[a-z_][a-z0-9_]*)"
    r"(?:\(\d+(?:,\s*\d+)?\))?(?:\[\])?)"
)
_COLUMN = re.compile(r'[a-z_][a-z0-9_$]*|"(?:[^"]|"")+"')
_SIGNED_FUNCTION = re.compile(
    r'(?:(?:[a-z_][a-z0-9_$]*|"(?:[^"]|"")+")\.)?isolation_(user|tenant)_id\(\)'
)


def _plain_forms(setting: str) -> frozenset[str]:
    read = f"current_setting('{setting}'"
    return frozenset({f"{read})", f"{read},true)", f"{read},false)", f"NULLIF({read},true),'')"})


_PLAIN_FORMS: Final = {_USER: _plain_forms(USER_SETTING), _TENANT: _plain_forms(TENANT_SETTING)}


def _scan(text: str) -> list[tuple[int, int]]:
    """``(index, depth)`` of every character outside quotes (depth of parentheses)."""
    out: list[tuple[int, int]] = []
    depth = 0
    quote: str | None = None
    i = 0
    while i < len(text):
        ch = text[i]
        if quote is not None:
            if ch == quote:
                if i + 1 < len(text) and text[i + 1] == quote:
                    i += 2
                    continue
                quote = None
        elif ch in "'\"":
            quote = ch
        else:
            if ch == ")":
                depth -= 1
            out.append((i, depth))
            if ch == "(":
                depth += 1
        i += 1
    return out


def _split(text: str, separator: str) -> list[str]:
    """``text`` split at ``separator`` where it stands outside parentheses and quotes."""
    parts: list[str] = []
    start = 0
    skip_to = -1
    for i, depth in _scan(text):
        if i < skip_to or depth != 0:
            continue
        if text.startswith(separator, i):
            parts.append(text[start:i])
            start = skip_to = i + len(separator)
    parts.append(text[start:])
    return parts


def _unwrap(text: str) -> str:
    """``text`` without the parentheses that enclose all of it."""
    text = text.strip()
    while text.startswith("(") and text.endswith(")"):
        scanned = _scan(text)
        # The opening parenthesis closes only at the very end: it wraps everything.
        if any(depth == 0 and text[i] == ")" for i, depth in scanned[:-1]):
            break
        text = text[1:-1].strip()
    return text


def _squash(text: str) -> str:
    """A side of a comparison reduced to compare with the known forms: no casts, no
    enclosing parentheses, no scalar ``SELECT ... AS x`` wrapper, no blanks."""
    text = _unwrap(_CAST.sub("", _unwrap(text)))
    if text.startswith("SELECT "):
        body = _split(text[len("SELECT ") :], " AS ")
        if len(body) == 2:
            text = _unwrap(body[0])
    return re.sub(r"\s", "", text)


_SIGNED_UNRESTRICTED = re.compile(
    r'(?:(?:[a-z_][a-z0-9_$]*|"(?:[^"]|"")+")\.)?isolation_unrestricted\(\)'
)


def _admits_unrestricted(expression: str | None) -> str | None:
    """``"plain"`` or ``"signed"`` when ``expression`` is exactly the unrestricted
    policy's condition of that mode, else ``None``."""
    if expression is None:
        return None
    if _SIGNED_UNRESTRICTED.fullmatch(_squash(expression)):
        return "signed"
    sides = _split(_unwrap(expression), " = ")
    plain = len(sides) == 2 and {_squash(side) for side in sides} == {
        f"current_setting('{UNRESTRICTED_SETTING}',true)",
        "'on'",
    }
    return "plain" if plain else None


def _binds(expression: str | None) -> tuple[frozenset[str], frozenset[str]]:
    """What an expression binds: the principal parts compared with the raw settings,
    and those compared with the signed binding's functions.

    A part is bound when a conjunct at the top level compares a column with
    the part's setting (``col = NULLIF(current_setting('isolation.user_id',
    true), '')`` and its casts), or with ``isolation_user_id()``. A
    disjunction, a ``CASE`` or anything else binds nothing.
    """
    if expression is None:
        return frozenset(), frozenset()
    raw: set[str] = set()
    functions: set[str] = set()
    for conjunct in _split(_unwrap(expression), " AND "):
        sides = _split(_unwrap(conjunct), " = ")
        if len(sides) != 2:
            continue
        left, right = (_squash(side) for side in sides)
        for column, value in ((left, right), (right, left)):
            if not _COLUMN.fullmatch(column):
                continue
            signed_match = _SIGNED_FUNCTION.fullmatch(value)
            if signed_match is not None:
                functions.add(signed_match.group(1))
                continue
            for part, forms in _PLAIN_FORMS.items():
                if value in forms:
                    raw.add(part)
    return frozenset(raw), frozenset(functions)


def _owner_columns(rows: Sequence[_PolicyRow]) -> tuple[str, ...]:
    """The columns the permissive policies compare with a principal setting, sorted."""
    columns: set[str] = set()
    for row in rows:
        if not row.permissive:
            continue
        for expression in (row.using, row.check):
            if expression is None:
                continue
            for conjunct in _split(_unwrap(expression), " AND "):
                sides = [_squash(side) for side in _split(_unwrap(conjunct), " = ")]
                if len(sides) != 2:
                    continue
                for column, value in (sides, sides[::-1]):
                    bound = _SIGNED_FUNCTION.fullmatch(value) is not None or any(
                        value in forms for forms in _PLAIN_FORMS.values()
                    )
                    if bound and _COLUMN.fullmatch(column):
                        columns.add(column.strip('"').replace('""', '"'))
    return tuple(sorted(columns))


def _expressions(row: _PolicyRow, command: str) -> list[str | None] | None:
    """The expressions of ``row`` that apply to ``command``, or ``None`` if it does not."""
    if row.command not in (command, "*"):
        return None
    if command in ("r", "d"):
        return [row.using]
    if command == "a":
        return [row.check if row.check is not None else row.using]
    return [row.using, row.check if row.check is not None else row.using]


def _names(parts: frozenset[str]) -> str:
    return (
        " and ".join(
            setting
            for part, setting in ((_USER, USER_SETTING), (_TENANT, TENANT_SETTING))
            if part in parts
        )
        or "no principal setting"
    )


def _check_policies(
    table: str, rows: Sequence[_PolicyRow], *, signed: bool = False, unrestricted: bool = False
) -> tuple[list[str], bool]:
    """Decide whether the policies that apply to the role confine it to its principal.

    Per command (SELECT, INSERT, UPDATE, DELETE): restrictive policies AND
    their bindings onto every permissive one; permissive policies are OR-ed, so
    each must bind all that the table's policies bind (user and tenant, the
    user alone, or the tenant alone for a tenant-shared table), whatever its
    command. Refused: a permissive policy that binds no principal setting
    (``USING (true)``, a disjunction), one that binds less than the table's
    level (it widens it, or plants rows), and, when ``signed``, one that reads
    the raw settings (app SQL can re-bind them). A permissive policy that
    admits exactly the unrestricted sessions (``rls_policy_sql(...,
    unrestricted=True)``) is accepted when ``unrestricted`` (the manager has
    ``admin_roles``), and refused otherwise.

    Returns:
        The problems found (one line each, naming the table and the policy),
        and whether the table binds the user without the tenant (a context
        with a tenant must then be refused).
    """
    problems: list[str] = []
    named: set[str] = set()
    by_command: dict[str, list[tuple[_PolicyRow, frozenset[str]]]] = {}

    def problem(policy: str, text: str) -> None:
        if policy not in named:
            named.add(policy)
            problems.append(f"the policy {policy!r} on {table!r} {text}")

    kept: list[_PolicyRow] = []
    for row in rows:
        forms = {_admits_unrestricted(e) for e in (row.using, row.check) if e is not None}
        if not row.permissive or not forms or None in forms:
            kept.append(row)
            continue
        if not unrestricted:
            problem(
                row.name,
                "admits every row to unrestricted sessions, but this manager has no admin_roles",
            )
        elif signed and forms != {"signed"}:
            problem(
                row.name,
                "admits unrestricted sessions through the raw setting isolation.unrestricted, "
                'which app SQL can set: with row_level_security="signed" use '
                "rls_policy_sql(..., signed=True, unrestricted=True)",
            )
        elif not signed and forms != {"plain"}:
            problem(
                row.name,
                "compares with isolation_unrestricted(), which answers false here: connect "
                'with row_level_security="signed"',
            )
    rows = kept

    for command, verb in _COMMANDS.items():
        floor: set[str] = set()
        permissive: list[tuple[_PolicyRow, frozenset[str]]] = []
        for row in rows:
            expressions = _expressions(row, command)
            if expressions is None:
                continue
            bound: frozenset[str] | None = None
            for expression in expressions:
                raw, functions = _binds(expression)
                verified, other = (functions, raw) if signed else (raw, functions)
                # A restrictive policy on the raw settings only narrows: harmless when signed.
                if other and signed and row.permissive:
                    problem(
                        row.name,
                        f"reads {_names(other)} directly: with row_level_security="
                        '"signed" the policy must compare with isolation_user_id() / '
                        "isolation_tenant_id() (rls_policy_sql(..., signed=True)), or app "
                        "SQL can re-bind the setting",
                    )
                elif other and not signed:
                    problem(
                        row.name,
                        "compares with the signed binding's functions, which answer NULL "
                        'here: connect with row_level_security="signed"',
                    )
                bound = verified if bound is None else bound & verified
            if row.permissive:
                permissive.append((row, bound or frozenset()))
            else:
                floor |= bound or frozenset()
        # No permissive policy: this command reaches no row.
        by_command[verb] = [(row, bound | floor) for row, bound in permissive]
    # Per user or per tenant, the table has one level: every command's policies bind
    # all of it (reads bound to the user, inserts to the tenant alone, plant rows).
    strongest = frozenset[str]().union(
        *(bound for effective in by_command.values() for _, bound in effective)
    )
    for verb, effective in by_command.items():
        for row, bound in effective:
            if not bound:
                problem(
                    row.name,
                    f"lets {verb} reach rows without binding {USER_SETTING}: permissive "
                    "policies are OR-ed, so it opens the table to every principal",
                )
            elif bound != strongest:
                problem(
                    row.name,
                    f"binds only {_names(bound)} for {verb}, while the table's policies "
                    f"bind {_names(strongest)}: permissive policies are OR-ed, so it "
                    "widens them",
                )
    user_only = strongest == {_USER}
    return problems, user_only


_POLICIES_SQL: Final = (
    "SELECT p.polname, p.polpermissive, p.polcmd, pg_get_expr(p.polqual, p.polrelid), "
    "pg_get_expr(p.polwithcheck, p.polrelid) FROM pg_policy p "
    "WHERE p.polrelid = to_regclass(:name) AND (0 = ANY(p.polroles) OR EXISTS "
    "(SELECT 1 FROM unnest(p.polroles) r WHERE pg_has_role(current_user, r, 'MEMBER'))) "
    "ORDER BY p.polname"
)


def _signing_problems(conn: Any, binding: _Binding, role: str) -> list[str]:
    """Why the signed binding would not hold for this role (functions, key, key table)."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    schema = quote_identifier(binding.schema)
    problems: list[str] = []
    row = (
        conn.execute(
            text(
                "SELECT k.oid IS NOT NULL, "
                "k.oid IS NOT NULL AND (pg_has_role(current_user, k.relowner, 'MEMBER') "
                "OR has_table_privilege(current_user, k.oid, "
                "'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')), "
                "b.oid IS NOT NULL AND u.oid IS NOT NULL AND t.oid IS NOT NULL "
                "AND v.oid IS NOT NULL, "
                "COALESCE(bp.prosecdef AND vp.prosecdef AND up.prosecdef AND tp.prosecdef, false), "
                "COALESCE(pg_has_role(current_user, bp.proowner, 'MEMBER') "
                "OR pg_has_role(current_user, vp.proowner, 'MEMBER') "
                "OR pg_has_role(current_user, up.proowner, 'MEMBER') "
                "OR pg_has_role(current_user, tp.proowner, 'MEMBER') "
                "OR pg_has_role(current_user, n.nspowner, 'MEMBER') "
                "OR has_schema_privilege(current_user, n.oid, 'CREATE'), false) "
                "FROM (SELECT to_regclass(:key) AS oid) k0 "
                "LEFT JOIN pg_class k ON k.oid = k0.oid "
                "CROSS JOIN (SELECT to_regprocedure(:bind) AS oid) b "
                "CROSS JOIN (SELECT to_regprocedure(:bound) AS oid) v "
                "CROSS JOIN (SELECT to_regprocedure(:user) AS oid) u "
                "CROSS JOIN (SELECT to_regprocedure(:tenant) AS oid) t "
                "LEFT JOIN pg_proc bp ON bp.oid = b.oid LEFT JOIN pg_proc vp ON vp.oid = v.oid "
                "LEFT JOIN pg_proc up ON up.oid = u.oid LEFT JOIN pg_proc tp ON tp.oid = t.oid "
                "LEFT JOIN pg_namespace n ON n.nspname = :schema"
            ),
            {
                "key": f"{schema}.{KEY_TABLE}",
                "bind": f"{schema}.isolation_bind(text,text,text)",
                "bound": f"{schema}.isolation_bound()",
                "user": f"{schema}.isolation_user_id()",
                "tenant": f"{schema}.isolation_tenant_id()",
                "schema": binding.schema,
            },
        )
    ).one()
    has_key_table, key_reachable, has_functions, definer, owns = (bool(v) for v in row)
    where = f"schema {binding.schema!r}"
    if not has_key_table or not has_functions:
        return [
            f"the signed binding is not installed in the {where} (run rls_signing_sql() "
            "and rls_signing_key_sql() as the migration role)"
        ]
    if key_reachable:
        problems.append(
            f"the role {role!r} can read, write or owns the signing key table of the {where}"
        )
    if not definer:
        problems.append(f"the signed binding's functions in the {where} are not SECURITY DEFINER")
    if owns:
        problems.append(
            f"the role {role!r} owns or may create in the {where}, or owns the signed "
            "binding's functions, so it could replace or shadow them"
        )
    if binding.unrestricted:
        problems += _unrestricted_problems(conn, binding, role, where)
    if problems:
        return problems
    # The application's key must be the database's: bind a probe principal once.
    probe = binding.params((None, "isolation-startup-probe"))
    try:
        with conn.begin_nested():
            conn.execute(text(binding.statement_sql), probe)
            bound = (conn.execute(text(f"SELECT {schema}.isolation_user_id()"))).scalar()
    except DBAPIError:
        bound = None
    if bound != "isolation-startup-probe":
        problems.append(
            f"the rls_key given does not match the signing key installed in the {where}"
        )
    return problems


def _unrestricted_problems(conn: Any, binding: _Binding, role: str, where: str) -> list[str]:
    """Why the signed unrestricted functions would not hold (a manager with admin_roles)."""
    from sqlalchemy import text

    schema = quote_identifier(binding.schema)
    rows = conn.execute(
        text(
            "SELECT p.prosecdef, pg_has_role(current_user, p.proowner, 'MEMBER') "
            "FROM unnest(ARRAY[to_regprocedure(:a), to_regprocedure(:b)]) f(oid) "
            "LEFT JOIN pg_proc p ON p.oid = f.oid"
        ),
        {
            "a": f"{schema}.isolation_unrestrict(text)",
            "b": f"{schema}.isolation_unrestricted()",
        },
    ).all()
    if any(definer is None for definer, _ in rows):
        return [
            f"the signed binding's unrestricted functions are not installed in the {where} "
            "(run rls_signing_sql() again as the migration role: admin_roles needs "
            "isolation_unrestrict() and isolation_unrestricted())"
        ]
    problems = []
    if not all(definer for definer, _ in rows):
        problems.append(f"the unrestricted functions in the {where} are not SECURITY DEFINER")
    if any(owns for _, owns in rows):
        problems.append(
            f"the role {role!r} owns the unrestricted functions in the {where}, so it could "
            "replace them"
        )
    return problems


_ROLE_SQL: Final = (
    "SELECT current_user, r.rolsuper, r.rolbypassrls, r.rolcreaterole, "
    "ARRAY(SELECT o.rolname || CASE WHEN o.rolsuper THEN ' (a superuser)' "
    "WHEN o.rolbypassrls THEN ' (BYPASSRLS)' ELSE ' (CREATEROLE)' END "
    "FROM pg_catalog.pg_roles o WHERE o.oid <> r.oid "
    "AND (o.rolsuper OR o.rolbypassrls OR o.rolcreaterole) "
    "AND pg_catalog.pg_has_role(current_user, o.oid, 'MEMBER') ORDER BY o.rolname) "
    "FROM pg_catalog.pg_roles r WHERE r.rolname = current_user"
)

_TABLE_SQL: Final = (
    "SELECT c.relrowsecurity, c.relforcerowsecurity, "
    "pg_catalog.pg_has_role(current_user, c.relowner, 'MEMBER'), "
    "pg_catalog.pg_get_userbyid(c.relowner), "
    "c.relowner = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user) "
    "FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass(:name)"
)

# Partitions and inheritance children, at any depth, that the role can reach by
# name (a privilege on them, or membership in their owner): the parent's policies
# do not apply when a child is named in the query.
_CHILDREN_SQL: Final = (
    "WITH RECURSIVE tree(oid) AS (SELECT i.inhrelid FROM pg_catalog.pg_inherits i "
    "WHERE i.inhparent = pg_catalog.to_regclass(:name) UNION "
    "SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree t ON i.inhparent = t.oid) "
    "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) FROM tree t "
    "JOIN pg_catalog.pg_class c ON c.oid = t.oid "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE pg_catalog.has_table_privilege(current_user, c.oid, "
    "'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER') "
    "OR pg_catalog.has_any_column_privilege(current_user, c.oid, 'SELECT, INSERT, UPDATE') "
    "OR pg_catalog.pg_has_role(current_user, c.relowner, 'MEMBER') ORDER BY 1"
)

# Owner columns whose equality is not the text's: citext (through domains too) or a
# nondeterministic collation ("ALICE" = "alice"), so two principals would share rows.
_FOLDED_COLUMNS_SQL: Final = (
    "SELECT a.attname, COALESCE(NOT co.collisdeterministic, false), "
    "EXISTS (WITH RECURSIVE b(oid) AS (SELECT a.atttypid UNION ALL "
    "SELECT t.typbasetype FROM pg_catalog.pg_type t JOIN b ON t.oid = b.oid "
    "WHERE t.typtype = 'd') SELECT 1 FROM b JOIN pg_catalog.pg_type t ON t.oid = b.oid "
    "WHERE t.typname = 'citext'), co.collname "
    "FROM pg_catalog.pg_attribute a LEFT JOIN pg_catalog.pg_collation co "
    "ON co.oid = a.attcollation WHERE a.attrelid = pg_catalog.to_regclass(:name) "
    "AND a.attname = ANY(:columns) AND NOT a.attisdropped ORDER BY a.attname"
)


def _role_problems(conn: Any) -> tuple[str, bool, list[str]]:
    """The role's name, whether it is a superuser, and why RLS would not restrict it.

    Refused: a superuser, ``BYPASSRLS`` or ``CREATEROLE`` role (before PostgreSQL
    16, ``CREATEROLE`` may grant itself any non-superuser role), and a member of
    such a role, inherited or not: app SQL can ``SET ROLE`` to it.
    """
    from sqlalchemy import text

    row = (conn.execute(text(_ROLE_SQL))).one()
    role, superuser, bypass, createrole = str(row[0]), bool(row[1]), bool(row[2]), bool(row[3])
    problems: list[str] = []
    if superuser:
        return role, True, [f"the role {role!r} is a superuser"]
    if bypass:
        problems.append(f"the role {role!r} has BYPASSRLS")
    if createrole:
        problems.append(
            f"the role {role!r} has CREATEROLE (it can grant itself a role that bypasses "
            "row-level security)"
        )
    members_of = [str(name) for name in row[4] or ()]
    if members_of:
        problems.append(
            f"the role {role!r} is a member of "
            + ", ".join(members_of)
            + ": app SQL can SET ROLE to it and bypass row-level security"
        )
    return role, False, problems


def _table_problems(
    conn: Any, table: str, role: str, *, signed: bool, parent: str | None
) -> tuple[list[str], bool]:
    """Why ``table``'s row-level security would not restrict ``role``, and whether
    its policies and children are worth reading (it exists and has RLS enabled)."""
    from sqlalchemy import text

    label = (
        f"the table {table!r}"
        if parent is None
        else f"the partition or inheritance child {table!r} of {parent!r}"
    )
    found = (conn.execute(text(_TABLE_SQL), {"name": table})).one_or_none()
    if found is None:
        return [f"{label} does not exist for the role {role!r}"], False
    enabled, forced, member, owner, owns = (
        bool(found[0]),
        bool(found[1]),
        bool(found[2]),
        str(found[3]),
        bool(found[4]),
    )
    problems: list[str] = []
    if not enabled:
        return [
            f"{label} does not have row-level security enabled"
            + ("" if parent is None else " (naming it in a query skips the parent's policies)")
        ], False
    whose = (
        f"the role {role!r} owns {label}"
        if owns
        else f"the role {role!r} is a member of {owner!r}, the owner of {label}"
    )
    if member and not forced:
        problems.append(f"{whose}, which does not FORCE row-level security")
    elif member and signed:
        problems.append(
            f"{whose}: the owner can ALTER TABLE ... NO FORCE ROW LEVEL SECURITY or "
            'replace the policies, which row_level_security="signed" must not allow app '
            "SQL to do"
        )
    return problems, True


def _folded_owner_columns(conn: Any, table: str, columns: Sequence[str]) -> list[str]:
    """Owner columns of ``table`` whose equality folds spellings together, named."""
    from sqlalchemy import text

    if not columns:
        return []
    problems: list[str] = []
    rows = (
        conn.execute(text(_FOLDED_COLUMNS_SQL), {"name": table, "columns": list(columns)})
    ).all()
    for name, nondeterministic, citext, collation in rows:
        if citext:
            why = "is of type citext"
        elif nondeterministic:
            why = f"has the nondeterministic collation {str(collation)!r}"
        else:
            continue
        problems.append(
            f"the owner column {str(name)!r} of {table!r} {why}: two spellings of a user or "
            'tenant id ("ALICE", "alice") would be one owner'
        )
    return problems


async def check_role(
    engine: AsyncEngine, tables: Iterable[str], *, binding: _Binding | None = None
) -> tuple[str, ...]:
    """Refuse a connecting role, or policies, that row-level security would not restrict.

    Checks that the engine is PostgreSQL and not in autocommit; that its role
    is neither a superuser, ``BYPASSRLS`` nor ``CREATEROLE``, nor a member of
    such a role (it could ``SET ROLE`` to it); and that every table in
    ``tables``, and every partition or inheritance child of it that the role
    can reach by name, exists, has row-level security enabled, and is not
    owned by the role or by a role it is a member of unless the table forces
    row-level security (signed: not at all, the owner could un-force it).
    Then reads the policies that apply to the role (``pg_policy``) and refuses
    those that do not confine it to its principal,
    and owner columns that compare case- or accent-insensitively (``citext``,
    a nondeterministic collation).
    With a signed ``binding``, also checks that the functions and the key are
    installed, the key table is out of the role's reach, and the key matches.
    :func:`check_role_sync` is the same check on a sync ``Engine``.

    Returns:
        The tables whose policies bind the user without the tenant.

    Raises:
        ConfigurationError: Naming every problem found.
    """
    _check_engine(engine.sync_engine, binding)
    async with engine.connect() as conn:
        return await conn.run_sync(_check_role_on, tables, binding)


def check_role_sync(
    engine: Engine, tables: Iterable[str], *, binding: _Binding | None = None
) -> tuple[str, ...]:
    """:func:`check_role` on a sync ``sqlalchemy.Engine`` (a sync :class:`SessionManager`)."""
    _check_engine(engine, binding)
    with engine.connect() as conn:
        return _check_role_on(conn, tables, binding)


def _check_engine(engine: Engine, binding: _Binding | None) -> None:
    signed = binding is not None and binding.signed
    option = 'row_level_security="signed"' if signed else "row_level_security=True"
    if engine.dialect.name != "postgresql":
        raise ConfigurationError(
            f"{option} needs PostgreSQL, this engine is {engine.dialect.name!r}",
            hint="Use protect() for the ORM filter on other databases",
        )
    if (
        connect_isolation_level(engine.dialect) == "AUTOCOMMIT"
        or engine.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
    ):
        raise ConfigurationError(
            f"{option} refuses an AUTOCOMMIT engine: transaction-local "
            "settings would last one statement",
            hint="Create the engine without isolation_level='AUTOCOMMIT'",
        )


def _check_role_on(conn: Any, tables: Iterable[str], binding: _Binding | None) -> tuple[str, ...]:
    """The checks of :func:`check_role`, on one (sync) connection, rolled back."""
    from sqlalchemy import text

    signed = binding is not None and binding.signed
    user_only: list[str] = []
    role, superuser, problems = _role_problems(conn)
    queue: list[tuple[str, str | None]] = [(table, None) for table in sorted(set(tables))]
    seen: set[str] = set()
    while queue:
        table, parent = queue.pop(0)
        if table in seen:
            continue
        seen.add(table)
        found, usable = _table_problems(conn, table, role, signed=signed, parent=parent)
        problems += found
        if not usable:
            continue
        children = (conn.execute(text(_CHILDREN_SQL), {"name": table})).scalars()
        queue += [(str(child), table) for child in children]
        rows = [
            _PolicyRow(
                name=str(r[0]),
                permissive=bool(r[1]),
                command=r[2].decode() if isinstance(r[2], bytes) else str(r[2]),
                using=None if r[3] is None else str(r[3]),
                check=None if r[4] is None else str(r[4]),
            )
            for r in (conn.execute(text(_POLICIES_SQL), {"name": table})).all()
        ]
        policy_problems, binds_user_only = _check_policies(
            table, rows, signed=signed, unrestricted=binding is not None and binding.unrestricted
        )
        columns = _owner_columns(rows)
        if binding is not None:
            binding.owner_columns[table.rsplit(".", 1)[-1]] = columns
        problems += policy_problems
        problems += _folded_owner_columns(conn, table, columns)
        if binds_user_only:
            user_only.append(table)
    if signed and binding is not None and not superuser:
        problems += _signing_problems(conn, binding, role)
    conn.rollback()
    if problems:
        raise ConfigurationError(
            "row-level security would not restrict this engine's role: " + "; ".join(problems),
            hint=(
                "Connect as a LOGIN role that is not a superuser, has NOBYPASSRLS and "
                "NOCREATEROLE, is a member of no such role and of no table owner; apply "
                "rls_policy_sql() to each table and to each partition the role can reach "
                "(or revoke its privileges on them); drop or narrow (TO another_role) the "
                "permissive policies named; keep owner columns text with a deterministic "
                "collation"
            ),
        )
    return tuple(user_only)


def _install_return_check(
    engine: AsyncEngine | Engine, rate: float, on_dirty: Callable[[tuple[Any, ...]], None]
) -> Callable[[], None]:
    """Check, on a sample of returns to the pool, that nothing of the session is left on it.

    A connection that comes back with ``isolation.user_id``,
    ``isolation.tenant_id`` or ``isolation.binding`` still set (a plain ``SET``
    somewhere, or a transaction left open), with another role than its login
    role (a session-level ``SET ROLE``: the next borrower would run as that
    role, perhaps one row-level security does not restrict), or holding
    temporary tables or ``WITH HOLD`` cursors (rows read under the previous
    principal) is invalidated, never reused, and reported to ``on_dirty``. The
    check costs one round trip per sampled return (it runs outside a
    transaction where the driver adapter has ``autocommit``).

    Returns:
        A function that removes the check.
    """
    from sqlalchemy import event
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.util.concurrency import in_greenlet

    is_async = isinstance(engine, AsyncEngine)
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine

    def on_checkin(dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is None or (rate < 1.0 and random.random() >= rate):  # noqa: S311 - sampling, not security
            return
        if is_async and not in_greenlet():
            # Returned by the garbage collector, outside any await: cannot query here.
            return
        try:
            # Outside a transaction: one round trip, not BEGIN + SELECT + ROLLBACK.
            autocommit = getattr(dbapi_connection, "autocommit", None)
            if autocommit is False:
                dbapi_connection.autocommit = True
            try:
                cursor = dbapi_connection.cursor()
                cursor.execute(_RETURN_CHECK_SQL)
                found = cursor.fetchone()
                cursor.close()
            finally:
                if autocommit is False:
                    dbapi_connection.autocommit = False
            if autocommit is not False:
                dbapi_connection.rollback()
        except Exception:
            logger.warning("the row-level security return check failed", exc_info=True)
            record.invalidate()
            return
        if found is None:
            return
        values = tuple(found)
        left = [
            f"the setting {name}"
            for name, value in zip(
                (USER_SETTING, TENANT_SETTING, BINDING_SETTING, UNRESTRICTED_SETTING),
                values[:_SETTINGS_CHECKED],
                strict=True,
            )
            if value not in (None, "")
        ]
        left += [
            what for what, flag in zip(_LEFTOVERS, values[_SETTINGS_CHECKED:], strict=True) if flag
        ]
        if left:
            logger.error(
                "a connection returned to the pool with %s left on it: invalidated",
                ", ".join(left),
                extra={"event": "rls_dirty_return", "left": tuple(left)},
            )
            on_dirty(values)
            record.invalidate()

    event.listen(sync_engine.pool, "checkin", on_checkin)

    def remove() -> None:
        event.remove(sync_engine.pool, "checkin", on_checkin)

    return remove


# PostgreSQL's wordings: "... policy for table", "... policy \"name\" for table",
# "... policy (USING expression) for table".
_POLICY_VIOLATION = re.compile(
    r'violates row-level security policy(?: "[^"]*")?(?: \(USING expression\))? '
    r'for table "([^"]+)"'
)


def _policy_violation(
    context: Any, columns: Mapping[str, tuple[str, ...]]
) -> CrossContextAccessError | None:
    """A typed error for PostgreSQL's refusal of a written row (``WITH CHECK``), else ``None``."""
    error: BaseException | None = context.original_exception
    while error is not None:
        found = _POLICY_VIOLATION.search(str(error))
        if found is not None:
            table = found.group(1)
            owners = columns.get(table, ())
            which = (
                "its owner columns (" + ", ".join(owners) + ")" if owners else "its owner columns"
            )
            return CrossContextAccessError(
                f"a row written to {table!r} does not belong to the bound principal, so its "
                f"row-level security policy refused it: {which} were left NULL or set to "
                "another user or tenant",
                hint=(
                    "Leave the owner columns out of the INSERT (rls_policy_sql() makes the bound "
                    "principal their default; in an ORM model declare them with "
                    "server_default=FetchedValue()), or protect() the model to stamp them"
                ),
            )
        error = error.__cause__
    return None


def _install_pool_hooks(
    engine: AsyncEngine | Engine,
    rate: float,
    on_dirty: Callable[[tuple[Any, ...]], None],
    binding: _Binding | None = None,
) -> Callable[[], None]:
    """Install what a row-level security manager adds to its engine; return the remover.

    The return check (:func:`_install_return_check`, when ``rate > 0``), and the
    translation of PostgreSQL's refusal of a written row into
    :class:`~isolation.CrossContextAccessError`, naming the table and (from
    ``binding``, once the startup check has read the policies) its owner columns.
    """
    from sqlalchemy import event
    from sqlalchemy.ext.asyncio import AsyncEngine

    remove_check = _install_return_check(engine, rate, on_dirty) if rate > 0 else None
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine

    def on_error(context: Any) -> BaseException | None:
        return _policy_violation(context, {} if binding is None else binding.owner_columns)

    event.listen(sync_engine, "handle_error", on_error)

    def remove() -> None:
        event.remove(sync_engine, "handle_error", on_error)
        if remove_check is not None:
            remove_check()

    return remove
