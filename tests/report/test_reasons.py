"""Why a check did not run: the server not asked for first, then the missing extra."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from isolation.report import Settings, run_report
from isolation.report._registry import Backend, Check, ModeRegistry


def _registry(backend: Backend, requires: tuple[str, ...]) -> ModeRegistry:
    registry = ModeRegistry([(1, "a mode", "a scenario")])
    registry.register(
        1,
        Check(
            name="needs-a-server",
            backend=backend,
            run=lambda subject, settings: [],
            library=lambda: "library",
            mutant=lambda: "mutant",
            requires=requires,
        ),
    )
    return registry


def test_server_not_given_explains_before_a_missing_client() -> None:
    """Without --redis, the reason is the missing URL, not the missing redis client."""
    report = run_report(_registry(Backend.REDIS, ("isolation_no_such_client",)))
    assert report.modes[0].checks[0].reason == "no Redis URL given (--redis)"


def test_missing_client_names_its_extra() -> None:
    """With the URL given, a missing client names the extra that installs it."""
    report = run_report(
        _registry(Backend.POSTGRES, ("asyncpg", "isolation_no_such_client")),
        Settings(postgres_url="postgresql://unused"),
    )
    reason = report.modes[0].checks[0].reason or ""
    assert "isolation_no_such_client" in reason
    assert "isolation-primitives[report]" in reason


def test_missing_psycopg_names_the_postgres_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sync face's PostgreSQL checks need psycopg: missing, it names the postgres extra."""
    find_spec = importlib.util.find_spec

    def without_psycopg(name: str, *args: Any) -> Any:
        return None if name == "psycopg" else find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_psycopg)
    report = run_report(
        _registry(Backend.POSTGRES, ("asyncpg", "psycopg")),
        Settings(postgres_url="postgresql://unused"),
    )
    reason = report.modes[0].checks[0].reason or ""
    assert "'psycopg'" in reason
    assert "isolation-primitives[postgres]" in reason
