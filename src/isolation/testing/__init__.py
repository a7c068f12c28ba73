"""Tools to test your own service for isolation (extra ``testing``).

* :class:`FakeClock` and :func:`use_clock` (core only): expire contexts,
  tokens and connections without sleeping.
* :class:`AsyncRuleBasedStateMachine` (Hypothesis): state machines whose rules
  may be ``async def``, on one event loop.
* :mod:`isolation.testing.strategies` (Hypothesis): ids, hostile ids, contexts.
* :class:`RouterMachine` and :class:`RegistryMachine` (Hypothesis), in
  :mod:`isolation.testing.machines`: ready state machines to point at your own
  event router and registry.
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
    from isolation.testing import machines as machines
    from isolation.testing import strategies as strategies
    from isolation.testing._machine import AsyncRuleBasedStateMachine as AsyncRuleBasedStateMachine
    from isolation.testing.machines import RegistryMachine as RegistryMachine
    from isolation.testing.machines import RouterMachine as RouterMachine

__all__ = [
    "AsyncRuleBasedStateMachine",
    "FakeClock",
    "RegistryMachine",
    "RouterMachine",
    "assert_exactly_once",
    "assert_no_shared_state",
    "machines",
    "strategies",
    "unsafe_corrupt_routing",
    "use_clock",
]

_LAZY = {
    "AsyncRuleBasedStateMachine": ("isolation.testing._machine", "AsyncRuleBasedStateMachine"),
    "RegistryMachine": ("isolation.testing.machines", "RegistryMachine"),
    "RouterMachine": ("isolation.testing.machines", "RouterMachine"),
    "machines": ("isolation.testing.machines", None),
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
