"""FM8, validation skipped under load: no invalid context is accepted; confusable ids are refused, never folded.

One module per face or backend; each defines ``register(registry)``, called here
in the order the report lists the checks.
"""

from __future__ import annotations

from isolation.report._modes._support.registration import register_parts
from isolation.report._modes.fm08_validation import confusable_ids, validation
from isolation.report._registry import ModeRegistry

__all__ = ["register"]


def register(registry: ModeRegistry) -> None:
    """Register mode 8's checks."""
    register_parts(registry, validation, confusable_ids)
