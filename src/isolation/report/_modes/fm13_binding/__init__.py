"""FM13, connection pooling mixes events between connections: a connection is bound for life, in memory and across two routers on Redis.

One module per face or backend; each defines ``register(registry)``, called here
in the order the report lists the checks.
"""

from __future__ import annotations

from isolation.report._modes._support.registration import register_parts
from isolation.report._modes.fm13_binding import memory, redis
from isolation.report._registry import ModeRegistry

__all__ = ["register"]


def register(registry: ModeRegistry) -> None:
    """Register mode 13's checks."""
    register_parts(registry, memory, redis)
