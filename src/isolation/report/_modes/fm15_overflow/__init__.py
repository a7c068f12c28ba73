"""FM15, queue overflow drops or misroutes messages: what a full queue keeps is as published; per-policy counts exact, in memory and on Redis.

One module per face or backend; each defines ``register(registry)``, called here
in the order the report lists the checks.
"""

from __future__ import annotations

from isolation.report._modes._support.registration import register_parts
from isolation.report._modes.fm15_overflow import memory, payload_queued, redis
from isolation.report._registry import ModeRegistry

__all__ = ["register"]


def register(registry: ModeRegistry) -> None:
    """Register mode 15's checks."""
    register_parts(registry, payload_queued, memory, redis)
