"""Issue 17: modes 1 to 4 check the sync face too (a sync Engine, threads), and catch its mutants.

Each sync-face check runs on SQLite and, given a PostgreSQL URL, under
row-level security through psycopg; its mutant must be caught for the reason
the mode is about, not by accident.
"""

from __future__ import annotations

import pytest

from isolation.report import Settings, default_registry
from isolation.report._registry import Backend, Check
from isolation.report._runner import run_check

SYNC_CHECKS = {
    1: "session-per-scope-sync",
    2: "bounded-admission-sync",
    3: "expiry-closes-sync",
    4: "exactly-clean-work-sync",
}

# What each mutant must be caught for: its mode's property, in the check's words.
MUTANT_CAUGHT_FOR = {
    1: "one session object was handed to 2 principals",
    2: "the greedy user held 5 sessions at once (limit 2)",
    3: "expired, but its block ended with None",
    4: "the database holds other work than the clean blocks'",
}

REGISTRY = default_registry()


def _check(mode_id: int, backend: Backend) -> Check:
    name = SYNC_CHECKS[mode_id] + ("-postgres" if backend is Backend.POSTGRES else "")
    (check,) = [c for c in REGISTRY.mode(mode_id).checks if c.name == name]
    return check


@pytest.mark.parametrize("mode_id", sorted(SYNC_CHECKS))
def test_registered_on_sqlite_and_postgres(mode_id: int) -> None:
    """Each of modes 1 to 4 has its sync-face check on both databases; PostgreSQL's
    needs psycopg (the sync driver) besides asyncpg (the sandbox's)."""
    sqlite, postgres = _check(mode_id, Backend.SQLITE), _check(mode_id, Backend.POSTGRES)
    assert sqlite.backend is Backend.SQLITE
    assert "psycopg" not in sqlite.requires
    assert postgres.backend is Backend.POSTGRES
    assert {"asyncpg", "psycopg"} <= set(postgres.requires)
    assert "sync face" in sqlite.description


@pytest.mark.parametrize("mode_id", sorted(SYNC_CHECKS))
def test_sqlite_passes_and_catches_its_mutant(mode_id: int) -> None:
    check = _check(mode_id, Backend.SQLITE)
    assert run_check(check, Settings(quick=True)) == []
    found = run_check(check, Settings(quick=True), target="mutant")
    assert any(MUTANT_CAUGHT_FOR[mode_id] in line for line in found), found


@pytest.mark.parametrize("mode_id", sorted(SYNC_CHECKS))
def test_postgres_passes_and_catches_its_mutant(mode_id: int, postgres_url: str) -> None:
    check = _check(mode_id, Backend.POSTGRES)
    settings = Settings(quick=True, postgres_url=postgres_url)
    assert run_check(check, settings) == []
    found = run_check(check, settings, target="mutant")
    assert any(MUTANT_CAUGHT_FOR[mode_id] in line for line in found), found
