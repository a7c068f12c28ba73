"""FM1, DB sessions not isolated between users: one session per scope and own rows only (async and sync faces, SQLite and PostgreSQL),
the ORM's bulk and relationship paths, a leaked session, the row-level security policies.

One module per face or backend; each defines ``register(registry)``, called here
in the order the report lists the checks.
"""

from __future__ import annotations

from isolation.report._modes._support.registration import register_parts
from isolation.report._modes.fm01_sessions import (
    async_face,
    leaked_session,
    orm_paths,
    rls_policies,
    sync_face,
)
from isolation.report._registry import ModeRegistry

__all__ = ["register"]


def register(registry: ModeRegistry) -> None:
    """Register mode 1's checks."""
    register_parts(registry, async_face, sync_face, orm_paths, leaked_session, rls_policies)
