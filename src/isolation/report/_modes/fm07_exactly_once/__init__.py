"""FM7, races in concurrent factory use, duplicate context ids: ``@request_scoped`` and the Registry build once per scope; ids are unique.

One module per face or backend; each defines ``register(registry)``, called here
in the order the report lists the checks.
"""

from __future__ import annotations

from isolation.report._modes.fm07_exactly_once import exactly_once, ids, providers
from isolation.report._registry import ModeRegistry

__all__ = ["register"]


def register(registry: ModeRegistry) -> None:
    """Register mode 7's checks."""
    exactly_once.register(registry)
    ids.register(registry)
    providers.register(registry)
