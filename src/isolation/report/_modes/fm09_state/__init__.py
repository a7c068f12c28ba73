"""FM9, agent execution state bleeds between users: per-scope state, ``@owned`` members, no scope across a yield.

One module per face or backend; each defines ``register(registry)``, called here
in the order the report lists the checks.
"""

from __future__ import annotations

from isolation.report._modes._support.registration import register_parts
from isolation.report._modes.fm09_state import owned_members, scope_yield, state
from isolation.report._registry import ModeRegistry

__all__ = ["register"]


def register(registry: ModeRegistry) -> None:
    """Register mode 9's checks."""
    register_parts(registry, state, owned_members, scope_yield)
