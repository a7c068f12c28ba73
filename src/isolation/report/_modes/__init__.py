"""The registered checks of the sixteen failure modes: one private module or package per mode.

Each mode's module (``fm06_lifetime``) or package (``fm01_sessions``) holds its
memory, SQLite, PostgreSQL and Redis checks with their mutants, and defines
``register(registry)``; what several modes share is in :mod:`._support`. Modules
import optional extras only inside their checks, so the registry loads with no
extra installed and a missing extra shows as "not run" with its reason.
"""

from __future__ import annotations

import importlib

from isolation.report._registry import ModeRegistry

__all__ = ["MODULES", "default_registry"]

MODULES = (
    "isolation.report._modes.fm01_sessions",
    "isolation.report._modes.fm02_pool",
    "isolation.report._modes.fm03_expiry",
    "isolation.report._modes.fm04_rollback",
    "isolation.report._modes.fm05_shared_state",
    "isolation.report._modes.fm06_lifetime",
    "isolation.report._modes.fm07_exactly_once",
    "isolation.report._modes.fm08_validation",
    "isolation.report._modes.fm09_state",
    "isolation.report._modes.fm10_routing",
    "isolation.report._modes.fm11_engine_ownership",
    "isolation.report._modes.fm12_threads",
    "isolation.report._modes.fm13_binding",
    "isolation.report._modes.fm14_corruption",
    "isolation.report._modes.fm15_overflow",
    "isolation.report._modes.fm16_tokens",
)


def default_registry() -> ModeRegistry:
    """A registry with the sixteen modes and every check the library delivers."""
    registry = ModeRegistry()
    for name in MODULES:
        importlib.import_module(name).register(registry)
    return registry
