"""Tools to test your own service for isolation (extra ``testing``).

* :class:`FakeClock` and :func:`use_clock` (core only): expire contexts,
  tokens and connections without sleeping.
* :class:`AsyncRuleBasedStateMachine` (Hypothesis): state machines whose rules
  may be ``async def``, on one event loop.
* :mod:`isolation.testing.strategies` (Hypothesis): ids, hostile ids, contexts.
* :class:`RouterMachine` and :class:`RegistryMachine` (Hypothesis): ready state
  machines to point at your own event router and registry, drawing principals
  from :data:`DEFAULT_PRINCIPALS` unless told otherwise.
* :func:`assert_exactly_once`: a factory runs once per scope under threads and tasks.
* :func:`unsafe_corrupt_routing` (core only): corrupt an event router's routing
  on purpose, to show the last-step check refuses and counts what it misroutes.

Names that need Hypothesis load on first use, so ``import isolation.testing``
works without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from isolation._clock import FakeClock as FakeClock
from isolation._clock import use_clock as use_clock
from isolation.testing._assertions import assert_exactly_once as assert_exactly_once
from isolation.testing._assertions import assert_no_shared_state as assert_no_shared_state
from isolation.testing._unsafe import unsafe_corrupt_routing as unsafe_corrupt_routing

if TYPE_CHECKING:
    from isolation.testing import strategies as strategies
    from isolation.testing._machine import AsyncRuleBasedStateMachine as AsyncRuleBasedStateMachine
    from isolation.testing._machines import DEFAULT_PRINCIPALS as DEFAULT_PRINCIPALS
    from isolation.testing._machines import RegistryMachine as RegistryMachine
    from isolation.testing._machines import RouterMachine as RouterMachine

__all__ = [
    "AsyncRuleBasedStateMachine",
    "DEFAULT_PRINCIPALS",
    "FakeClock",
    "RegistryMachine",
    "RouterMachine",
    "assert_exactly_once",
    "assert_no_shared_state",
    "unsafe_corrupt_routing",
    "use_clock",
]

_LAZY = {
    "AsyncRuleBasedStateMachine": ("isolation.testing._machine", "AsyncRuleBasedStateMachine"),
    "DEFAULT_PRINCIPALS": ("isolation.testing._machines", "DEFAULT_PRINCIPALS"),
    "RegistryMachine": ("isolation.testing._machines", "RegistryMachine"),
    "RouterMachine": ("isolation.testing._machines", "RouterMachine"),
    "strategies": ("isolation.testing.strategies", None),
}


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'isolation.testing' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


FakeClock.__module__ = "isolation.testing"
