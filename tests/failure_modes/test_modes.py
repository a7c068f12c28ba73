"""Every registered failure-mode check: silent on the library, loud on its mutant.

The cases are computed at collection from ``isolation.report.default_registry()``,
so a check registered by any module listed in ``MODULES`` is tested here
without further work.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

from isolation.report import Settings, default_registry
from isolation.report._registry import Backend, Check, FailureMode
from isolation.report._runner import run_check

REGISTRY = default_registry()
MODES = REGISTRY.modes()

CASES = [
    pytest.param(mode, check, id=f"fm{mode.id:02d}-{check.name}")
    for mode in MODES
    for check in mode.checks
]


def _settings(request: pytest.FixtureRequest, check: Check) -> Settings:
    """Quick settings; a server backend takes its URL through the conftest rule."""
    for module in check.requires:
        if importlib.util.find_spec(module.partition(".")[0]) is None:
            pytest.skip(f"check {check.name!r} needs {module!r}, which is not installed")
    postgres_url = os.environ.get("ISOLATION_TEST_POSTGRES_URL") or None
    redis_url = os.environ.get("ISOLATION_TEST_REDIS_URL") or None
    if check.backend is Backend.POSTGRES:
        postgres_url = request.getfixturevalue("postgres_url")  # skips, or fails in CI
    if check.backend is Backend.REDIS:
        redis_url = request.getfixturevalue("redis_url")
    return Settings(quick=True, postgres_url=postgres_url, redis_url=redis_url)


def test_sixteen_modes() -> None:
    """The default registry holds the sixteen modes of the contract, numbered 1 to 16."""
    assert [mode.id for mode in MODES] == list(range(1, 17))


@pytest.mark.parametrize("mode", MODES, ids=lambda m: f"fm{m.id:02d}")
def test_meta_every_mode_checked_with_mutants_and_tests(mode: FailureMode) -> None:
    """The meta-test: each of the sixteen modes has a check that runs on the embedded
    defaults, every check has a mutant distinct from the library, and every check is
    a case of the library and mutant tests below (so its mutant is shown caught)."""
    embedded = [c for c in mode.checks if c.backend in (Backend.MEMORY, Backend.SQLITE)]
    assert embedded, f"mode {mode.id} ({mode.name}) has no check on the embedded defaults"
    case_ids = {case.id for case in CASES}
    for check in mode.checks:
        assert f"fm{mode.id:02d}-{check.name}" in case_ids
        # Factories taking the settings only read them: nothing connects here.
        settings = Settings(
            quick=True,
            redis_url="redis://unused.invalid/0",
            postgres_url="postgresql://unused.invalid/x",
        )
        library, mutant = check.subject("library", settings), check.subject("mutant", settings)
        assert library is not mutant, f"{check.name}: the mutant is the library"


EVENT_MODES = (10, 13, 14, 15, 16)


def test_event_modes_run_across_two_routers_on_redis() -> None:
    """Issue 11: with ``--redis`` every event mode, and no other, has a check on the
    Redis backend (each builds two routers on one namespace)."""
    for mode in MODES:
        redis = [c for c in mode.checks if c.backend is Backend.REDIS]
        if mode.id in EVENT_MODES:
            assert redis, f"event mode {mode.id} has no Redis check"
            assert all(c.requires == ("redis",) for c in redis)
        else:
            assert not redis, f"mode {mode.id} is not an event mode"


@pytest.mark.parametrize(("mode", "check"), CASES)
def test_check_is_well_formed(mode: FailureMode, check: Check) -> None:
    """A registered check names its backend and has a library and a mutant to build."""
    assert check.name
    assert isinstance(check.backend, Backend)
    assert callable(check.run)
    assert callable(check.library)
    assert callable(check.mutant)
    assert check.library is not check.mutant


@pytest.mark.parametrize(("mode", "check"), CASES)
def test_library_has_no_violation(
    mode: FailureMode, check: Check, request: pytest.FixtureRequest
) -> None:
    """The library's real code path passes the check."""
    assert run_check(check, _settings(request, check)) == []


@pytest.mark.parametrize(("mode", "check"), CASES)
def test_mutant_is_caught(mode: FailureMode, check: Check, request: pytest.FixtureRequest) -> None:
    """The deliberately broken mutant makes the check report at least one violation."""
    found = run_check(check, _settings(request, check), target="mutant")
    assert found, f"the mutant of {check.name!r} (mode {mode.id}) was not caught"
    assert all(isinstance(line, str) and line for line in found)
