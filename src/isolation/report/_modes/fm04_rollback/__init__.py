"""FM4, transactions not rolled back on user-context errors: exactly the clean work stays, on the async and sync faces, SQLite and PostgreSQL.

One module per face or backend; each defines ``register(registry)``, called here
in the order the report lists the checks.
"""

from __future__ import annotations

from isolation.report._modes._support.registration import register_parts
from isolation.report._modes.fm04_rollback import async_face, sync_face
from isolation.report._registry import ModeRegistry

__all__ = ["register"]


def register(registry: ModeRegistry) -> None:
    """Register mode 4's checks."""
    register_parts(registry, async_face, sync_face)
