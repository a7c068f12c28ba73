"""The tests' databases: a notes model, real SQLite files and a PostgreSQL sandbox.

The same module as the report's session checks use (:mod:`isolation.testing._databases`,
one copy), imported from here so that tests do not take their fixtures from the report
(issue 19, item 8).
"""

from __future__ import annotations

from isolation.testing._databases import (
    TABLE,
    Base,
    Note,
    PolicySql,
    Sandbox,
    checked_out,
    create_tables,
    generate,
    pg_sandbox,
    role_bypasses_rls,
    sqlite_engine,
    sync_sqlite_engine,
    sync_twin,
)

__all__ = [
    "Base",
    "Note",
    "PolicySql",
    "Sandbox",
    "TABLE",
    "checked_out",
    "create_tables",
    "generate",
    "pg_sandbox",
    "role_bypasses_rls",
    "sqlite_engine",
    "sync_sqlite_engine",
    "sync_twin",
]
