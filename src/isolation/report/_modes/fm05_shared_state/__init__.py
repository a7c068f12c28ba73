"""FM5, factory instances share internal state: the walk finds any hidden shared object; a sampled walk reaches every provider.

One module per face or backend; each defines ``register(registry)``, called here
in the order the report lists the checks.
"""

from __future__ import annotations

from isolation.report._modes._support.registration import register_parts
from isolation.report._modes.fm05_shared_state import sampling, shared_state
from isolation.report._registry import ModeRegistry

__all__ = ["register"]


def register(registry: ModeRegistry) -> None:
    """Register mode 5's checks."""
    register_parts(registry, shared_state, sampling)
