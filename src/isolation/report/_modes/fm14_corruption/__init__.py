"""FM14, corrupted session/routing state misroutes messages: a corrupted route is refused at delivery, in memory and across two routers on Redis.

One module per face or backend; each defines ``register(registry)``, called here
in the order the report lists the checks.
"""

from __future__ import annotations

from isolation.report._modes._support.registration import register_parts
from isolation.report._modes.fm14_corruption import memory, redis
from isolation.report._registry import ModeRegistry

__all__ = ["register"]


def register(registry: ModeRegistry) -> None:
    """Register mode 14's checks."""
    register_parts(registry, memory, redis)
