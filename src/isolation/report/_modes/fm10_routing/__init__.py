"""FM10, WebSocket events delivered to the wrong user under load: the router's operations (memory and two routers on Redis), payload aliasing.

One module per face or backend; each defines ``register(registry)``, called here
in the order the report lists the checks.
"""

from __future__ import annotations

from isolation.report._modes._support.registration import register_parts
from isolation.report._modes.fm10_routing import payload_snapshot, redis, routing
from isolation.report._registry import ModeRegistry

__all__ = ["register"]


def register(registry: ModeRegistry) -> None:
    """Register mode 10's checks."""
    register_parts(registry, routing, redis, payload_snapshot)
