"""`isolation report --postgres URL --redis URL` against the machine's services."""

from __future__ import annotations

import json

import pytest

from isolation._cli import main
from isolation.report import Settings, default_registry, run_report
from isolation.report._registry import Backend


def test_postgres_session_modes(postgres_url: str) -> None:
    """The session modes run their PostgreSQL checks (as a non-owner role) and pass."""
    report = run_report(
        default_registry(), Settings(quick=True, postgres_url=postgres_url), modes=[1, 2, 3, 4]
    )
    for mode in report.modes:
        postgres = [c for c in mode.checks if c.backend == Backend.POSTGRES]
        assert postgres, f"mode {mode.id} has no PostgreSQL check"
        assert all(c.status == "passed" for c in postgres), mode
        assert mode.status == "passed"
    assert report.exit_code == 0


def test_cli_with_services(
    postgres_url: str, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command line takes both URLs and runs every check it can with them."""
    code = main(
        [
            "report",
            "--json",
            "--quick",
            "--postgres",
            postgres_url,
            "--redis",
            redis_url,
            "--mode",
            "4",
        ]
    )
    data = json.loads(capsys.readouterr().out)
    (mode,) = data["modes"]
    assert code == 0
    assert {c["backend"] for c in mode["checks"]} == {"sqlite", "postgres"}
    assert all(c["status"] == "passed" for c in mode["checks"])


def test_cli_event_modes_across_routers_on_redis(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--redis`` runs every event mode across two routers on the given Redis: each
    Redis check passes and, with ``--check-mutants``, catches its mutant."""
    event_modes = [10, 13, 14, 15, 16]
    args = ["report", "--json", "--quick", "--check-mutants", "--redis", redis_url]
    for mode_id in event_modes:
        args += ["--mode", str(mode_id)]
    code = main(args)
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [mode["id"] for mode in data["modes"]] == event_modes
    for mode in data["modes"]:
        redis = [c for c in mode["checks"] if c["backend"] == "redis"]
        assert redis, f"mode {mode['id']} ran no Redis check"
        for check in mode["checks"]:
            assert check["status"] == "passed", (mode["id"], check)
            assert check["mutant_caught"] is True, (mode["id"], check)
    names = {c["name"] for mode in data["modes"] for c in mode["checks"]}
    assert {"overflow-exact", "overflow-exact-redis"} <= names
