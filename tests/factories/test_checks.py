"""The failure-mode checks of this part: registered, silent on the library, loud on mutants."""

from __future__ import annotations

import pytest

from isolation.report import Settings, default_registry
from isolation.report._runner import run_check

CHECKS = [
    (5, "walk-finds-planted"),
    (5, "sampled-reaches-every-provider"),
    (7, "request-scoped-exactly-once"),
    (11, "walk-refuses"),
    (11, "owned-refuses"),
    (9, "owned-refuses-every-member"),
]


@pytest.mark.parametrize(("mode", "name"), CHECKS, ids=[f"fm{m:02d}-{n}" for m, n in CHECKS])
def test_check_holds_and_catches_its_mutant(mode: int, name: str) -> None:
    """The library passes the check, and the check catches the mutant."""
    (check,) = [c for c in default_registry().mode(mode).checks if c.name == name]
    settings = Settings(quick=True)
    assert run_check(check, settings) == []
    assert run_check(check, settings, target="mutant") != []
