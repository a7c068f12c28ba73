"""The registered checks of each failure mode, one module per mode or part.

Each module defines ``register(registry)``. Modules import optional extras only
inside their checks, so the registry loads with no extra installed and a
missing extra shows as "not run" with its reason.
"""

from __future__ import annotations

import importlib

from isolation.report._registry import ModeRegistry

__all__ = ["MODULES", "default_registry"]

MODULES = (
    "isolation.report.modes.fm01_sessions",
    "isolation.report.modes.fm01_sync_sessions",
    "isolation.report.modes.fm01_orm_paths",
    "isolation.report.modes.fm01_leaked_session",
    "isolation.report.modes.fm01_rls_policies",
    "isolation.report.modes.fm02_pool",
    "isolation.report.modes.fm02_sync_pool",
    "isolation.report.modes.fm03_expiry",
    "isolation.report.modes.fm03_sync_expiry",
    "isolation.report.modes.fm04_rollback",
    "isolation.report.modes.fm04_sync_rollback",
    "isolation.report.modes.fm05_shared_state",
    "isolation.report.modes.fm05_sampling",
    "isolation.report.modes.fm06_lifetime",
    "isolation.report.modes.fm07_exactly_once",
    "isolation.report.modes.fm07_ids",
    "isolation.report.modes.fm07_providers",
    "isolation.report.modes.fm08_validation",
    "isolation.report.modes.fm08_confusable_ids",
    "isolation.report.modes.fm09_state",
    "isolation.report.modes.fm09_owned_members",
    "isolation.report.modes.fm09_scope_yield",
    "isolation.report.modes.fm10_routing",
    "isolation.report.modes.fm10_redis",
    "isolation.report.modes.fm10_payload_snapshot",
    "isolation.report.modes.fm11_engine_ownership",
    "isolation.report.modes.fm12_threads",
    "isolation.report.modes.fm13_binding",
    "isolation.report.modes.fm14_corruption",
    "isolation.report.modes.fm15_overflow",
    "isolation.report.modes.fm15_redis",
    "isolation.report.modes.fm16_tokens",
    "isolation.report.modes.fm16_token_expiry",
    "isolation.report.modes.fm16_ticket_expiry",
    # After the modes it reuses: it registers Redis variants of their checks.
    "isolation.report.modes.fm_events_redis",
)


def default_registry() -> ModeRegistry:
    """A registry with the sixteen modes and every check the library delivers."""
    registry = ModeRegistry()
    for name in MODULES:
        importlib.import_module(name).register(registry)
    return registry
