"""FM1 on the async state-machine runner: interleaved requests against a model of committed rows."""

from __future__ import annotations

import pytest
from hypothesis import Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from isolation.report._modes._support.faces import session_library
from isolation.report._modes.fm01_sessions import async_face as fm01_sessions
from isolation.report._modes.fm01_sessions._machine import SessionMachine, machine_for, run_script

LIBRARY = session_library()
CACHED = fm01_sessions._mutant_cached()
USER_ONLY = fm01_sessions._mutant_user_only()

HUNT = settings(
    max_examples=100,
    stateful_step_count=15,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
)


def _shrunk_steps(machine: type[SessionMachine], *, shrink: bool = True) -> tuple[str, list[str]]:
    hunt = HUNT if shrink else settings(HUNT, phases=[Phase.explicit, Phase.generate])
    with pytest.raises(AssertionError) as info:
        run_state_machine_as_test(machine, settings=hunt)
    notes = getattr(info.value, "__notes__", [])
    steps = [n for n in notes if "state." in n and "teardown" not in n and "agrees" not in n]
    return str(info.value), steps


class TestOnSQLite:
    def test_principals_include_one_user_id_in_two_tenants(self) -> None:
        """The machine draws from principals that hold 'alice' in two tenants."""
        assert {("t1", "alice"), ("t2", "alice")} <= set(fm01_sessions.PRINCIPALS)

    def test_library_passes(self) -> None:
        """The library's manager agrees with the model under drawn interleavings."""
        run_state_machine_as_test(
            machine_for(LIBRARY), settings=settings(max_examples=15, stateful_step_count=20)
        )

    def test_fixed_example_catches_each_mutant_and_not_the_library(self) -> None:
        """The fixed first example of the registered check is silent on the library, loud on both mutants."""
        assert run_script(machine_for(LIBRARY)) == []
        assert any("handed to 2 principals" in v for v in run_script(machine_for(CACHED)))
        assert any("read a row of 'alice'" in v for v in run_script(machine_for(USER_ONLY)))

    def test_a_session_per_process_is_found_and_shrunk(self) -> None:
        """Drawn sequences find the cached session, shrunk to two requests."""
        message, steps = _shrunk_steps(machine_for(CACHED))
        assert "handed to 2 principals" in message or "the session of another live" in message
        assert len(steps) <= 2, steps

    def test_a_filter_on_the_user_column_alone_is_found(self) -> None:
        """Drawn sequences find alice of one tenant reading alice of the other.

        Not shrunk here, to keep the test quick: each example is a new database.
        """
        message, steps = _shrunk_steps(machine_for(USER_ONLY), shrink=False)
        assert "read a row of 'alice'" in message
        assert any("read" in step for step in steps)


@pytest.mark.postgres
def test_library_passes_and_mutants_fail_on_postgres(postgres_url: str) -> None:
    """Under row-level security, as a restricted role: the library passes, both mutants fail
    (the user-only policy is now refused by the manager itself under tenant contexts)."""
    run_state_machine_as_test(
        machine_for(LIBRARY, "postgres", postgres_url),
        settings=settings(max_examples=5, stateful_step_count=15),
    )
    assert run_script(machine_for(CACHED, "postgres", postgres_url))
    assert any(
        "read a row of 'alice'" in v or "bind the user alone" in v
        for v in run_script(machine_for(USER_ONLY, "postgres", postgres_url))
    )
