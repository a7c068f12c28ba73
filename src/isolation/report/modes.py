"""Deprecated: the failure modes' checks moved to the private ``isolation.report._modes``.

Their only interface was ``register(registry)``; use
:func:`isolation.report.default_registry` for the library's checks. Until the next
release, ``isolation.report.modes.default_registry``, ``MODULES`` and the old mode
modules' names (``from isolation.report.modes import fm10_routing``) still resolve,
with a :class:`DeprecationWarning`, to what replaced them.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

__all__: list[str] = []

# Old module name -> the private module that holds its checks now (each has register()).
_MOVED = {
    "fm01_sessions": "fm01_sessions.async_face",
    "fm01_sync_sessions": "fm01_sessions.sync_face",
    "fm01_orm_paths": "fm01_sessions.orm_paths",
    "fm01_leaked_session": "fm01_sessions.leaked_session",
    "fm01_rls_policies": "fm01_sessions.rls_policies",
    "fm02_pool": "fm02_pool.async_face",
    "fm02_sync_pool": "fm02_pool.sync_face",
    "fm03_expiry": "fm03_expiry.async_face",
    "fm03_sync_expiry": "fm03_expiry.sync_face",
    "fm04_rollback": "fm04_rollback.async_face",
    "fm04_sync_rollback": "fm04_rollback.sync_face",
    "fm05_shared_state": "fm05_shared_state.shared_state",
    "fm05_sampling": "fm05_shared_state.sampling",
    "fm06_lifetime": "fm06_lifetime",
    "fm07_exactly_once": "fm07_exactly_once.exactly_once",
    "fm07_ids": "fm07_exactly_once.ids",
    "fm07_providers": "fm07_exactly_once.providers",
    "fm08_validation": "fm08_validation.validation",
    "fm08_confusable_ids": "fm08_validation.confusable_ids",
    "fm09_state": "fm09_state.state",
    "fm09_owned_members": "fm09_state.owned_members",
    "fm09_scope_yield": "fm09_state.scope_yield",
    "fm10_routing": "fm10_routing.routing",
    "fm10_redis": "fm10_routing.redis",
    "fm10_payload_snapshot": "fm10_routing.payload_snapshot",
    "fm11_engine_ownership": "fm11_engine_ownership",
    "fm12_threads": "fm12_threads",
    "fm13_binding": "fm13_binding.memory",
    "fm_events_redis": "fm13_binding.redis",
    "fm14_corruption": "fm14_corruption.memory",
    "fm15_overflow": "fm15_overflow.memory",
    "fm15_redis": "fm15_overflow.redis",
    "fm16_tokens": "fm16_tokens.tokens",
    "fm16_token_expiry": "fm16_tokens.token_expiry",
    "fm16_ticket_expiry": "fm16_tokens.ticket_expiry",
}


def __getattr__(name: str) -> Any:
    if name in ("default_registry", "MODULES"):
        target = importlib.import_module("isolation.report._modes")
        value = getattr(target, name)
        where = f"isolation.report.{name}" if name == "default_registry" else "nothing public"
    elif name in _MOVED:
        value = importlib.import_module(f"isolation.report._modes.{_MOVED[name]}")
        where = "isolation.report.default_registry() (its checks are registered there)"
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"isolation.report.modes.{name} is deprecated and will be removed in the next "
        f"release: the failure modes' checks are private now; use {where}",
        DeprecationWarning,
        stacklevel=2,
    )
    return value
