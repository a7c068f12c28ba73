"""FM10's ``operations`` check: the shipped RouterMachine over 200 principals, with expiry.

(Moved from tests/events/test_event_modes.py, ``TestOperations`` and ``test_principals``.)
"""

from __future__ import annotations

import pytest
from hypothesis import Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from isolation.events import EventRouter
from isolation.report import Settings, default_registry
from isolation.report._modes.fm10_routing import routing as fm10_routing
from isolation.testing import RouterMachine

SETTINGS = Settings(quick=True)
CHECK = next(c for c in default_registry().mode(10).checks if c.name == "operations")
# As the check runs it (derandomized, no shrinking), with the quick setting's examples.
FEW = settings(
    max_examples=SETTINGS.examples,
    stateful_step_count=fm10_routing.STEPS_PER_RUN,
    derandomize=True,
    deadline=None,
    database=None,
    phases=[Phase.generate],
)


def test_library_passes() -> None:
    """Hypothesis sequences over 200 principals agree with the machine's model."""
    assert CHECK.run(CHECK.library(), SETTINGS) == []


def test_mutant_caught() -> None:
    """Routing by user id alone is caught through the initial connections, every run."""
    violations = CHECK.run(CHECK.mutant(), SETTINGS)
    assert violations
    assert any("user-0" in v for v in violations)  # type: ignore[union-attr]


def test_the_check_drives_the_shipped_machine() -> None:
    """The check's machine is RouterMachine with the initial pair and the ttls set."""
    machine = fm10_routing.operations_machine(EventRouter)
    assert issubclass(machine, RouterMachine)
    assert tuple(machine.initial_connections) == fm10_routing.SAME_USER_TWO_TENANTS
    assert {p.user_id for p in fm10_routing.SAME_USER_TWO_TENANTS} == {"user-0"}
    assert len({p.tenant_id for p in fm10_routing.SAME_USER_TWO_TENANTS}) == 2
    assert any(ttl is not None for ttl in machine.ttls)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_both_loops(backend: str) -> None:
    """The library passes and the mutant fails the check's machine on asyncio and trio
    (the mutant also ignores expiry when it publishes: either may be found first)."""
    run_state_machine_as_test(
        fm10_routing.operations_machine(EventRouter).on_backend(backend), settings=FEW
    )
    mutant = fm10_routing.operations_machine(CHECK.mutant()).on_backend(backend)
    with pytest.raises(AssertionError, match=r"live connection|was handed an event for"):
        run_state_machine_as_test(mutant, settings=FEW)


def test_principals() -> None:
    """FM10 runs over 200 principals, each user id in two tenants."""
    principals = fm10_routing.PRINCIPALS
    assert len(set(principals)) == 200
    assert len({user for _, user in principals}) == 100
