"""A report CI can trust about its servers: a missing driver is "not run" (exit 3), a server
that does not answer or refuses the connection is an error (exit 5), never a violation or 0."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import pytest

import isolation
from isolation._cli import main
from isolation.report import Settings, run_report
from isolation.report._registry import Backend, Check, ModeRegistry
from isolation.report._render import render_table
from isolation.report._servers import is_connection_failure, probe_server

CheckFactory = Callable[..., Check]  # the `make_check` fixture of conftest.py
RegistryFactory = Callable[[dict[int, Iterable[Check]]], ModeRegistry]

URLS = Settings(postgres_url="postgresql://db", redis_url="redis://r")
DOWN = "PostgreSQL at db did not answer: ConnectionRefusedError: refused"


def down(probed: list[tuple[Backend, str]]) -> Callable[[Backend, str], str | None]:
    """A probe that records its calls and finds PostgreSQL down and Redis answering."""

    def probe(backend: Backend, url: str) -> str | None:
        probed.append((backend, url))
        return DOWN if backend is Backend.POSTGRES else None

    return probe


def closed_port() -> int:
    """A loopback port that refuses connections: bound by us, then closed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def with_netloc(url: str, netloc: str) -> str:
    """``url`` with its user, password, host and port replaced by ``netloc``."""
    return urlunsplit(urlsplit(url)._replace(netloc=netloc))


class TestMissingDriver:
    def test_requested_server_without_its_driver_is_not_run(
        self, make_check: CheckFactory, make_registry: RegistryFactory
    ) -> None:
        """With --postgres given, a check whose driver is missing keeps its mode from passing."""
        registry = make_registry(
            {
                1: [
                    make_check("embedded"),
                    make_check(
                        "pg", backend=Backend.POSTGRES, requires=("isolation_no_such_driver",)
                    ),
                ]
            }
        )
        probed: list[tuple[Backend, str]] = []
        not_given = run_report(registry, modes=[1], probe=down(probed))
        assert not_given.modes[0].status == "passed"
        assert not_given.exit_code == 0
        given = run_report(registry, URLS, modes=[1], probe=down(probed))
        mode = given.modes[0]
        assert mode.status == "not_run"
        assert mode.passed is None
        assert "isolation_no_such_driver" in (mode.reason or "")
        assert [c.status for c in mode.checks] == ["passed", "not_run"]
        assert given.exit_code == 3
        assert probed == []  # no driver, nothing to probe with


class TestServerDown:
    def test_checks_of_a_server_that_does_not_answer_are_errors(
        self, make_check: CheckFactory, make_registry: RegistryFactory
    ) -> None:
        """The server is probed once; its checks do not run, are errors, and the exit code is 5."""
        seen: list[Settings] = []
        probed: list[tuple[Backend, str]] = []
        registry = make_registry(
            {
                1: [make_check("a"), make_check("pg-a", backend=Backend.POSTGRES, seen=seen)],
                2: [make_check("pg-b", backend=Backend.POSTGRES, seen=seen)],
                3: [make_check("bus", backend=Backend.REDIS)],
            }
        )
        report = run_report(registry, URLS, modes=[1, 2, 3], check_mutants=True, probe=down(probed))
        one, two, three = report.modes
        assert seen == []
        assert probed == [(Backend.POSTGRES, "postgresql://db"), (Backend.REDIS, "redis://r")]
        assert (one.status, two.status, three.status) == ("error", "error", "passed")
        assert one.passed is None
        assert one.violations == 0
        assert one.reason == DOWN
        assert [(c.status, c.reason) for c in one.checks] == [("passed", None), ("error", DOWN)]
        assert one.checks[1].mutant_caught is None
        assert report.exit_code == 5
        data = report.to_json()
        assert data["exit_code"] == 5
        assert data["modes"][0]["status"] == "error"
        assert data["modes"][0]["reason"] == DOWN
        assert data["modes"][0]["checks"][1]["reason"] == DOWN
        lines = render_table(report).splitlines()
        assert " error " in lines[1]
        assert lines[1].endswith(f"({DOWN})")
        assert not lines[2].startswith("      ")  # the row said it for its one failing check
        assert lines[-1] == (
            "summary: 1 modes passed, 0 failed, 0 not run, 2 errors, 0 mutants missed (exit code 5)"
        )

    @pytest.mark.parametrize(
        "cause",
        [
            ConnectionRefusedError(111, "Connect call failed"),
            ConnectionResetError(104, "Connection reset by peer"),
            socket.gaierror(-2, "Name or service not known"),
            isolation.BackendUnavailableError("Redis did not answer"),
        ],
        ids=lambda exc: type(exc).__name__,
    )
    def test_a_connection_lost_mid_check_is_an_error(
        self, make_check: CheckFactory, make_registry: RegistryFactory, cause: Exception
    ) -> None:
        """A server check crashing on a lost connection (wrapped, as SQLAlchemy does) is an error;
        the same crash of an embedded check is a violation."""
        try:
            try:
                raise cause
            except Exception as exc:
                raise RuntimeError("(driver) the statement failed") from exc
        except RuntimeError as wrapped:
            crash = wrapped
        registry = make_registry(
            {
                1: [make_check("pg", backend=Backend.POSTGRES, raises=crash)],
                2: [make_check("mem", raises=crash)],
            }
        )
        report = run_report(registry, URLS, modes=[1, 2], probe=lambda backend, url: None)
        server, embedded = report.modes
        assert server.status == "error"
        assert "lost the connection to postgres" in (server.reason or "")
        assert embedded.status == "failed"
        assert report.exit_code == 1

    @pytest.mark.parametrize(
        "crash",
        [
            TimeoutError("the check's hang guard fired"),
            AssertionError("alice saw bob's row"),
            ExceptionGroup("tasks", [ConnectionResetError(), AssertionError("leak")]),
        ],
        ids=["timeout", "assertion", "group-with-a-finding"],
    )
    def test_other_crashes_of_server_checks_stay_violations(
        self, make_check: CheckFactory, make_registry: RegistryFactory, crash: Exception
    ) -> None:
        """A hang guard, an assertion, or a group holding any finding is a violation."""
        registry = make_registry({1: [make_check("pg", backend=Backend.POSTGRES, raises=crash)]})
        report = run_report(registry, URLS, modes=[1], probe=lambda backend, url: None)
        assert report.modes[0].status == "failed"
        assert report.exit_code == 1

    def test_exit_code_precedence(
        self, make_check: CheckFactory, make_registry: RegistryFactory
    ) -> None:
        """1 a violation, else 5 a server error, else 4 a mutant missed, else 3 not run."""
        error = make_check("pg", backend=Backend.POSTGRES)
        violation = make_check("leak", found=["bob saw alice"])
        missed = make_check("blind", mutant_found=())
        probe = down([])
        with_violation = make_registry({1: [error], 2: [violation]})
        assert run_report(with_violation, URLS, probe=probe).exit_code == 1
        with_missed = make_registry({1: [error], 2: [missed]})  # modes 3.. not delivered
        assert run_report(with_missed, URLS, check_mutants=True, probe=probe).exit_code == 5


class TestCommandLine:
    def test_error_reason_on_stderr(
        self,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
        make_check: CheckFactory,
        make_registry: RegistryFactory,
    ) -> None:
        """--json or not, the command says on stderr why it exits 5."""
        registry = make_registry({1: [make_check("pg", backend=Backend.POSTGRES)]})
        monkeypatch.setattr(isolation.report, "default_registry", lambda: registry)
        monkeypatch.setattr("isolation.report._servers.probe_server", down([]))
        assert main(["report", "--json", "--mode", "1", "--postgres", "postgresql://db"]) == 5
        out, err = capsys.readouterr()
        assert json.loads(out)["modes"][0]["status"] == "error"
        assert f"isolation report: error: {DOWN}" in err.splitlines()


@pytest.mark.postgres
class TestRealPostgres:
    def test_closed_port_is_an_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--postgres to a port nobody listens on: exit 5; the SQLite checks still ran."""
        url = f"postgresql://postgres@127.0.0.1:{closed_port()}/test"
        assert main(["report", "--json", "--quick", "--mode", "2", "--postgres", url]) == 5
        out, err = capsys.readouterr()
        (mode,) = json.loads(out)["modes"]
        assert mode["status"] == "error"
        assert mode["violations"] == 0
        by_backend = {c["backend"]: c for c in mode["checks"]}
        assert by_backend["sqlite"]["status"] == "passed"
        assert by_backend["postgres"]["status"] == "error"
        assert "did not answer" in by_backend["postgres"]["reason"]
        assert urlsplit(url).netloc.partition("@")[2] in by_backend["postgres"]["reason"]
        assert "isolation report: error: PostgreSQL at 127.0.0.1:" in err

    def test_refused_role_is_an_error(self, postgres_url: str) -> None:
        """A server that refuses the role (it does not exist) does not answer the probe."""
        parts = urlsplit(postgres_url)
        refused = with_netloc(postgres_url, f"isolation_no_such_role@{parts.hostname}:{parts.port}")
        reason = probe_server(Backend.POSTGRES, refused) or ""
        assert "did not answer" in reason
        assert "isolation_no_such_role" in reason
        assert probe_server(Backend.POSTGRES, postgres_url) is None

    def test_probe_with_psycopg_when_asyncpg_is_missing(
        self, postgres_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without asyncpg (a sync-face-only install), the probe connects with psycopg."""
        find_spec = importlib.util.find_spec

        def without_asyncpg(name: str, *args: Any) -> Any:
            return None if name == "asyncpg" else find_spec(name, *args)

        monkeypatch.setattr(importlib.util, "find_spec", without_asyncpg)
        reason = probe_server(
            Backend.POSTGRES, f"postgresql://postgres@127.0.0.1:{closed_port()}/t"
        )
        assert "did not answer: OperationalError" in (reason or "")
        assert probe_server(Backend.POSTGRES, postgres_url) is None

    def test_password_never_printed(self) -> None:
        """The reason names where the server is, never the URL's password."""
        url = f"postgresql://postgres:s3cret-pw@127.0.0.1:{closed_port()}/test"
        reason = probe_server(Backend.POSTGRES, url) or ""
        assert "did not answer" in reason
        assert "s3cret-pw" not in reason

    def test_sqlalchemy_wrapped_refusal_is_a_connection_failure(self) -> None:
        """What SQLAlchemy raises for a refused connection is recognised through its causes."""
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        async def connect() -> None:
            engine = create_async_engine(
                f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port()}/test"
            )
            try:
                async with engine.connect() as connection:
                    await connection.execute(text("SELECT 1"))
            finally:
                await engine.dispose()

        with pytest.raises(Exception) as info:
            anyio.run(connect, backend="asyncio")
        assert is_connection_failure(info.value)


@pytest.mark.redis
class TestRealRedis:
    def test_closed_port_is_an_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--redis to a port nobody listens on: exit 5 (it was a violation, exit 1)."""
        url = f"redis://127.0.0.1:{closed_port()}/0"
        assert main(["report", "--json", "--quick", "--mode", "13", "--redis", url]) == 5
        (mode,) = json.loads(capsys.readouterr().out)["modes"]
        assert mode["status"] == "error"
        assert {c["backend"]: c["status"] for c in mode["checks"]} == {
            "memory": "passed",
            "redis": "error",
        }

    def test_refused_password_is_an_error(self, redis_url: str) -> None:
        """A server that refuses the user and password does not answer the probe."""
        parts = urlsplit(redis_url)
        refused = with_netloc(
            redis_url, f"isolation_no_such_user:wrong-pw@{parts.hostname}:{parts.port}"
        )
        reason = probe_server(Backend.REDIS, refused) or ""
        assert "did not answer" in reason
        assert "wrong-pw" not in reason
        assert probe_server(Backend.REDIS, redis_url) is None


# Runs `isolation report` in a fresh interpreter whose import system refuses the
# drivers named in argv[1] (as when the extra is not installed); prints its result.
BLOCKED_DRIVERS = textwrap.dedent(
    """
    import contextlib, importlib.abc, io, json, sys

    BLOCKED = set(sys.argv[1].split(","))

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked by the test")
            return None

    sys.meta_path.insert(0, Blocker())
    from isolation._cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(sys.argv[2:])
    print(json.dumps({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}))
    """
)


def _report_without(drivers: str, *argv: str) -> dict[str, object]:
    src = Path(isolation.__file__).resolve().parent.parent  # the code under test
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED_DRIVERS, drivers, "report", "--json", "--quick", *argv],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(
    ("drivers", "option", "mode", "module", "extra"),
    [
        pytest.param(
            "asyncpg,psycopg", "--postgres", "2", "asyncpg", "postgres", marks=pytest.mark.postgres
        ),
        pytest.param("redis", "--redis", "13", "redis", "redis", marks=pytest.mark.redis),
    ],
    ids=["postgres", "redis"],
)
def test_missing_driver_is_not_run(
    request: pytest.FixtureRequest, drivers: str, option: str, mode: str, module: str, extra: str
) -> None:
    """A server given without its driver installed: exit 3 (it was 0), the reason printed."""
    url = request.getfixturevalue("postgres_url" if option == "--postgres" else "redis_url")
    result = _report_without(drivers, "--mode", mode, option, url)
    assert result["code"] == 3
    (data,) = json.loads(str(result["stdout"]))["modes"]
    assert data["status"] == "not_run"
    assert f"needs '{module}'" in data["reason"]
    assert f"isolation-primitives[{extra}]" in data["reason"]
    assert f"isolation report: not run: {data['reason']}" in str(result["stderr"])
