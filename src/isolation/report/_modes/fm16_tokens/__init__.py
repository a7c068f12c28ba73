"""FM16, auth tokens reused across users in WebSocket delivery: tickets bound to one user, single use, expiring; confusable ids stay two principals.

One module per face or backend; each defines ``register(registry)``, called here
in the order the report lists the checks.
"""

from __future__ import annotations

from isolation.report._modes.fm08_validation import confusable_ids
from isolation.report._modes.fm16_tokens import redis, ticket_expiry, token_expiry, tokens
from isolation.report._registry import ModeRegistry

__all__ = ["register"]


def register(registry: ModeRegistry) -> None:
    """Register mode 16's checks."""
    confusable_ids.register(registry, mode=16)  # one property, modes 8 and 16
    tokens.register(registry)
    token_expiry.register(registry)
    ticket_expiry.register(registry)
    redis.register(registry)
