"""`isolation audit MODULE:ATTR`: overlapping users, the full walk, exit codes 0, 1 and 2."""

from __future__ import annotations

import itertools
import json
import re
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import isolation
from isolation import Scope, UserContext
from isolation._cli import main
from isolation.factories._audit import (
    AuditUsageError,
    _FactoryRun,
    _Outcome,
    audit,
    audit_contexts,
    default_principal,
)
from isolation.testing import assert_no_shared_state

_names = itertools.count()

SERVICE = '''
import uuid

import isolation
from isolation import UserContext


class Engine:
    def __init__(self, ctx: UserContext):
        self.user = ctx.user_id
        self.history = []


class LeakyEngine:
    cache = {}

    def __init__(self):
        self.history = []


@isolation.request_scoped(check="sampled")
async def make_async(ctx: UserContext) -> Engine:
    return Engine(ctx)


@isolation.request_scoped
async def make_async_leaky() -> LeakyEngine:
    return LeakyEngine()


_pool = []


def pooled():
    """The seed's bug: three engines, handed out again and again."""
    if len(_pool) < 3:
        _pool.append(Engine(UserContext.new("nobody")))
        return _pool[-1]
    _pool.append(_pool.pop(0))
    return _pool[-1]


_per_user = {}


def cached_per_user(ctx: UserContext):
    """An engine per user, kept across requests."""
    return _per_user.setdefault(ctx.principal, Engine(ctx))


def broken():
    raise RuntimeError("no database configured")


def needs_args(size):
    return size


@isolation.owned
class Owned:
    def __init__(self):
        self.items = []

    def run(self):
        return len(self.items)


class Big:
    def __init__(self):
        self.rows = [[i] for i in range(10_050)]


class Registry:
    def __isolation_factories__(self):
        return [("engine", Engine), ("async engine", make_async)]


registry = Registry()
not_a_factory = [1, 2, 3]


class UuidEngine:
    """A service whose ids are UUIDs: it parses them."""

    def __init__(self, ctx: UserContext):
        self.user = uuid.UUID(ctx.user_id)
        self.tenant = uuid.UUID(ctx.tenant_id)
        self.history = []


class IntEngine:
    """A service whose ids are integers."""

    def __init__(self, ctx: UserContext):
        self.user = int(ctx.user_id)
        self.history = []


def int_ids(index):
    return (None, str(index + 1))


def int_ids_in_tenants(index):
    return (str(index % 3 + 1), str(index + 1))


def same_id(index):
    return "7"


def fails(index):
    raise LookupError("no fixture user")
'''


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module of factories on sys.path, under a fresh name; returns its name."""
    name = f"audited_service_{next(_names)}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(SERVICE))
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the command line; return the exit code, stdout and stderr."""
    code = main(["audit", *args])
    out, err = capsys.readouterr()
    return code, out, err


class TestClean:
    """A clean factory exits 0 with a report of what was built and walked."""

    def test_clean_class(self, service: str, capsys: pytest.CaptureFixture[str]) -> None:
        """Defaults: 20 users over 4 threads, two requests each; progress on stderr."""
        code, out, err = run(capsys, f"{service}:Engine")
        assert code == 0
        assert "20 users over 4 threads" in out
        assert "built:   40 instances of Engine in 40 scopes" in out
        assert "result: clean" in out
        assert "request 1 of 2" in err
        assert "result" not in err

    def test_async_factory_declared_sampled(
        self, service: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An async @request_scoped factory is audited in full whatever it declares."""
        code, out, _ = run(capsys, f"{service}:make_async", "--users", "6", "--threads", "3")
        assert code == 0
        assert "(async function) (declared check='sampled'; audited in full)" in out

    def test_owned_class(self, service: str, capsys: pytest.CaptureFixture[str]) -> None:
        """An @owned class is reported as owned, each instance by its scope."""
        code, out, _ = run(capsys, f"{service}:Owned", "--users", "4")
        assert code == 0
        assert "owned:   yes" in out

    def test_registry_plugs_in(self, service: str, capsys: pytest.CaptureFixture[str]) -> None:
        """An object with __isolation_factories__() is audited factory by factory."""
        code, out, _ = run(capsys, f"{service}:registry", "--users", "3")
        assert code == 0
        assert "factory engine (class)" in out
        assert "factory async engine (async function)" in out

    def test_truncation_is_reported(self, service: str, capsys: pytest.CaptureFixture[str]) -> None:
        """A walk stopped by its bound is a line of the report, not a warning."""
        code, out, _ = run(capsys, f"{service}:Big", "--users", "2", "--threads", "1")
        assert code == 0
        assert "truncated: the walk of the Big built for" in out
        assert "10000 objects" in out


class TestViolations:
    """Shared state, instances that outlive their scope, and failing factories exit 1."""

    def test_class_level_cache(self, service: str, capsys: pytest.CaptureFixture[str]) -> None:
        """The class-level cache is found, with both paths."""
        code, out, _ = run(capsys, f"{service}:LeakyEngine", "--users", "4")
        assert code == 1
        assert "VIOLATION [shared-state]" in out
        assert "LeakyEngine.cache (this build) is LeakyEngine.cache (theirs)" in out
        assert "result: 1 violation" in out

    def test_json(self, service: str, capsys: pytest.CaptureFixture[str]) -> None:
        """--json prints one object with the violations, principals and paths."""
        code, out, _ = run(capsys, f"{service}:make_async_leaky", "--users", "4", "--json")
        assert code == 1
        report = json.loads(out)
        assert report["exit_code"] == 1
        assert report["users"] == 4
        (factory,) = report["factories"]
        (violation,) = factory["violations"]
        assert violation["kind"] == "shared-state"
        assert violation["paths"] == ["LeakyEngine.cache", "LeakyEngine.cache"]
        assert len(violation["principals"]) == 2

    def test_pool_of_engines(self, service: str, capsys: pytest.CaptureFixture[str]) -> None:
        """A pool handing engines out again: the same object for two users."""
        code, out, _ = run(capsys, f"{service}:pooled", "--users", "6")
        assert code == 1
        assert "the same Engine object" in out

    def test_instance_kept_across_requests(
        self, service: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An instance handed to a later request of the same user outlived its scope."""
        code, out, _ = run(capsys, f"{service}:cached_per_user", "--users", "3")
        assert code == 1
        assert "VIOLATION [outlived-scope]" in out

    def test_factory_that_raises(self, service: str, capsys: pytest.CaptureFixture[str]) -> None:
        """A factory that fails is reported, and the audit is not clean."""
        code, out, _ = run(capsys, f"{service}:broken", "--users", "2")
        assert code == 1
        assert "RuntimeError: no database configured" in out

    def test_exactly_once_and_ownership_verdicts(self) -> None:
        """A scope whose factory ran twice, or whose instance another scope owns, is reported."""

        @isolation.owned
        class Tool:
            pass

        with isolation.scope(UserContext.new("bob")):
            foreign = Tool()
        run_ = _FactoryRun("f", object, audit_contexts(2), 2, lambda line: None)
        scope = Scope(UserContext.new("alice"))
        run_._judge([_Outcome((None, "alice"), scope, [foreign, object()], [], runs=2)])
        kinds = sorted(v.kind for v in run_.violations)
        assert kinds == ["exactly-once", "exactly-once", "ownership"]


class TestUsage:
    """What the audit cannot do exits 2 with a message on stderr."""

    @pytest.mark.parametrize(
        ("target", "message"),
        [
            ("no_colon", "expected MODULE:ATTR"),
            ("no_such_module_here:x", "no module named 'no_such_module_here'"),
            ("{service}:missing", "has no attribute 'missing'"),
            ("{service}:not_a_factory", "is not a factory"),
            ("{service}:needs_args", "'size' is required"),
        ],
    )
    def test_usage_errors(
        self, service: str, capsys: pytest.CaptureFixture[str], target: str, message: str
    ) -> None:
        """A bad target exits 2 and says why."""
        code, out, err = run(capsys, target.format(service=service))
        assert code == 2
        assert out == ""
        assert message in err

    def test_module_that_fails_to_import(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A module raising at import is a usage error naming the exception."""
        (tmp_path / "audit_broken_module.py").write_text("raise ValueError('bad config')\n")
        (tmp_path / "audit_missing_dep.py").write_text("import no_such_dependency_xyz\n")
        monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
        code, _, err = run(capsys, "audit_broken_module:x")
        assert code == 2
        assert "ValueError: bad config" in err
        code, _, err = run(capsys, "audit_missing_dep:x")
        assert code == 2
        assert "no_such_dependency_xyz" in err

    def test_too_few_users(self, service: str, capsys: pytest.CaptureFixture[str]) -> None:
        """One user cannot overlap with anyone."""
        code, _, err = run(capsys, f"{service}:Engine", "--users", "1")
        assert code == 2
        assert "at least 2" in err
        with pytest.raises(AuditUsageError, match="threads"):
            audit(f"{service}:Engine", threads=0)

    def test_registry_without_factories(self) -> None:
        """A registry that declares nothing is a usage error."""

        class Empty:
            def __isolation_factories__(self) -> list[object]:
                return []

        with pytest.raises(AuditUsageError, match="declares no factories"):
            audit(Empty())


def test_audit_function_takes_objects() -> None:
    """audit() takes the factory itself, and returns the report."""

    class Clean:
        def __init__(self) -> None:
            self.items: list[int] = []

    report = audit(Clean, users=3, threads=2)
    assert report.exit_code == 0
    assert report.factories[0].built == 6
    assert report.to_json()["violations"] == 0


class Tool:
    """A class whose instances a registry provides (and which a factory may hand out itself)."""

    def __init__(self) -> None:
        self.items: list[int] = []


class Gauge:
    def __init__(self) -> None:
        self.readings: list[float] = []


class Pool:
    def __init__(self) -> None:
        self.free: list[int] = []


def make_gauge() -> Gauge:
    return Gauge()


def make_pool() -> Iterator[Pool]:
    yield Pool()


class TestNamesAClassAsAClass:
    def test_registry_providers_by_their_kind(self) -> None:
        """A registry's class provider is a class, a generator one a generator (not functions)."""
        registry = isolation.Registry()
        registry.provide(Tool, lifetime=isolation.Lifetime.REQUEST)
        registry.provide(make_gauge, lifetime=isolation.Lifetime.REQUEST)
        registry.provide(make_pool, lifetime=isolation.Lifetime.REQUEST)
        report = audit(registry, users=2, threads=1)
        assert report.exit_code == 0
        kinds = {f.name: f.kind for f in report.factories}
        assert kinds == {
            "Tool": "class",
            "make_gauge": "sync function",
            "make_pool": "generator function",
        }
        text = report.render()
        assert "factory Tool (class)" in text
        assert "factory make_pool (generator function)" in text

    def test_a_class_handed_out_is_named_as_a_class(self) -> None:
        """A factory returning a class itself names it "class Tool", not its type "type"."""

        def tool_class() -> type[Tool]:
            return Tool

        report = audit(tool_class, users=2, threads=1)
        (factory,) = report.factories
        assert factory.instance_types == ("class Tool",)
        assert report.exit_code == 1  # the same object for every request: it outlives its scope
        assert factory.violations
        assert all(
            v.message.startswith("the same class Tool was handed to two requests")
            for v in factory.violations
        )
        assert "instances of class Tool in" in report.render()


SESSION_SERVICE = """
from collections.abc import Iterator

from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

import isolation
from isolation.sessions import SessionManager

# NullPool: the audit runs each factory on an event loop of its own.
engine = create_async_engine("sqlite+aiosqlite:///{db}", poolclass=NullPool)
sync_engine = create_engine("sqlite:///{db}", poolclass=NullPool)
manager = SessionManager(engine)
registry = isolation.Registry()
manager.provide_to(registry)


class Repo:
    def __init__(self, session):
        self.session = session


class SyncRepo:
    def __init__(self, session):
        self.session = session


@registry.provide
async def repo(session: AsyncSession) -> Repo:
    await session.execute(text("select 1"))
    return Repo(session)


@registry.provide
def sync_session() -> Iterator[Session]:
    with Session(sync_engine) as opened:
        yield opened


@registry.provide
def sync_repo(session: Session) -> SyncRepo:
    session.execute(text("select 1"))
    return SyncRepo(session)
"""


def test_repositories_holding_sessions_audit_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A registry whose providers keep the scope's AsyncSession or Session: clean, not truncated."""
    pytest.importorskip("aiosqlite", reason="needs the sqlalchemy extra")
    name = f"audited_sessions_{next(_names)}"
    source = SESSION_SERVICE.replace("{db}", str(tmp_path / "audit.sqlite"))
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    try:
        code, out, _ = run(capsys, f"{name}:registry", "--users", "4", "--threads", "2")
    finally:
        module = sys.modules.pop(name, None)
        if module is not None:
            anyio.run(module.manager.aclose)
            anyio.run(module.engine.dispose)
            module.sync_engine.dispose()
    assert "VIOLATION" not in out
    assert "truncated:" not in out
    assert out.count("built:   8 instances of ") == 4  # both sessions, both repositories
    assert code == 0
    assert "result: clean" in out


class TestPrincipals:
    """The synthetic users' ids: UUID strings by default, or made by the service's own function."""

    def test_default_ids_are_distinct_uuids_in_two_tenants(self) -> None:
        """UUID strings (version 4 layout) that every user and tenant keeps apart."""
        contexts = audit_contexts(20)
        users = {uuid.UUID(ctx.user_id) for ctx in contexts}
        tenants = {uuid.UUID(ctx.tenant_id or "") for ctx in contexts}
        assert len(users) == 20
        assert len(tenants) == 2
        assert not users & tenants
        assert {u.version for u in users | tenants} == {4}
        assert [default_principal(i) for i in range(20)] == [c.principal for c in contexts]

    def test_factory_parsing_uuids_audits_clean(
        self, service: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A factory doing uuid.UUID(ctx.user_id) is built for every user, by default."""
        code, out, _ = run(capsys, f"{service}:UuidEngine", "--users", "6")
        assert "VIOLATION" not in out
        assert code == 0
        assert "built:   12 instances of UuidEngine in 12 scopes" in out

    def test_integer_ids_from_the_command_line(
        self, service: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--principals MODULE:CALLABLE makes the ids: an int-parsing factory audits clean."""
        code, out, _ = run(capsys, f"{service}:IntEngine", "--users", "4")
        assert code == 1  # the default UUIDs are not integers
        assert "ValueError: invalid literal for int()" in out
        for maker in ("int_ids", "int_ids_in_tenants"):
            code, out, _ = run(
                capsys, f"{service}:IntEngine", "--users", "4", "--principals", f"{service}:{maker}"
            )
            assert "VIOLATION" not in out
            assert code == 0

    def test_integer_ids_from_python(self) -> None:
        """audit(principals=...) and assert_no_shared_state(principals=...) take a function."""

        class Account:
            def __init__(self, ctx: UserContext) -> None:
                self.number = int(ctx.user_id)
                self.role = ctx.roles
                self.items: list[int] = []

        report = audit(Account, users=3, threads=2, principals=lambda i: str(1000 + i))
        assert report.exit_code == 0
        assert report.factories[0].built == 6
        assert_no_shared_state(
            Account,
            users=3,
            threads=2,
            principals=lambda i: UserContext.new(str(i + 1), roles=("admin",)),
        )

    @pytest.mark.parametrize(
        ("maker", "message"),
        [
            (lambda i: 42, "returned a int for user 0: expected a UserContext"),
            (lambda i: (1, "x"), "returned a tuple of (int, str) for user 0"),
            (lambda i: ("t", "u", "x"), "returned a tuple of (str, str, str) for user 0"),
            (lambda i: "" if i == 2 else str(i), "returned an invalid user_id for user 2"),
            (lambda i: "same", "returned the same principal, 'same', for users 0 and 1"),
            (lambda i: str(1 // (i - 1)), "raised for user 1: ZeroDivisionError"),
            (42, "principals must be a function of the user's index, got int"),
        ],
    )
    def test_bad_principals_are_a_typed_error(self, maker: Any, message: str) -> None:
        """A maker that raises, returns the wrong shape, an invalid id or one id twice."""

        class Plain:
            pass

        with pytest.raises(AuditUsageError, match=re.escape(message)) as caught:
            audit(Plain, users=3, threads=1, principals=maker)
        assert isinstance(caught.value, isolation.ConfigurationError)
        with pytest.raises(isolation.ConfigurationError, match=re.escape(message)):
            assert_no_shared_state(Plain, users=3, threads=1, principals=maker)

    @pytest.mark.parametrize(
        ("maker", "message"),
        [
            ("same_id", "returned the same principal, '7', for users 0 and 1"),
            ("fails", "raised for user 0: LookupError: no fixture user"),
            ("not_a_factory", "principals must be a function of the user's index, got list"),
            ("no_such_maker", "has no attribute 'no_such_maker'"),
        ],
    )
    def test_bad_principals_exit_2(
        self, service: str, capsys: pytest.CaptureFixture[str], maker: str, message: str
    ) -> None:
        """On the command line, a bad --principals is a usage error naming what was wrong."""
        code, out, err = run(capsys, f"{service}:Engine", "--principals", f"{service}:{maker}")
        assert code == 2
        assert out == ""
        assert message in err
