"""FM1 on the async runner: requests of several principals, interleaved step by step.

A :class:`SessionMachine` drives a session manager (the library's, or a
mutant) over a real database of its own (a SQLite file, or a PostgreSQL
sandbox). Each open request is a task of the run that holds a scope and one
``async with manager.session()`` block open across steps, and executes what
the machine asks: insert a row, read rows, end cleanly (commit) or with an
error (rollback). Principals include one user id in two tenants.

Properties: the sets of session objects per principal are disjoint, and two
live requests never share one; every row a request reads is its own (and it
sees its own uncommitted rows, and no row that was never committed); after
each request ends the database holds exactly the committed work.

Imported only by FM1's checks and the session tests: it needs Hypothesis and
SQLAlchemy. Sessions run on asyncio only.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Final, NoReturn

import anyio
import anyio.from_thread
from hypothesis import HealthCheck, Phase, Verbosity
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import create_async_engine

from isolation._counters import counted, open_resources
from isolation.context._model import Principal, UserContext
from isolation.context._scope import Scope
from isolation.report._modes._support.faces import SessionSubject
from isolation.report._modes._support.sessions import (
    TABLE,
    Database,
    Note,
    Sandbox,
    open_database,
    pg_sandbox,
    role_bypasses_rls,
)
from isolation.report._modes.fm01_sessions.async_face import PRINCIPALS
from isolation.testing._machine import AsyncRuleBasedStateMachine

__all__ = ["SessionMachine", "machine_for", "run_machine", "run_script"]

STEPS: Final = 25
"""Steps per drawn example of the registered check."""
TIMEOUT: Final = 60.0
"""Seconds any one step may wait for a request (a hang guard, never reached when correct)."""

Row = tuple[str | None, str, str]  # tenant, owner, body


class _PlannedError(Exception):
    """Raised inside a request's block to end it with an error (a rollback)."""


class _Command:
    __slots__ = ("done", "error", "kind", "result")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = anyio.Event()


class _Request:
    """One request: a task holding a scope and a session block open, and its model."""

    __slots__ = (
        "closed",
        "done",
        "error",
        "inbox",
        "name",
        "outbox",
        "pending",
        "principal",
        "ready",
        "session",
        "snapshot",
    )

    def __init__(self, principal: Principal, name: str) -> None:
        self.principal = principal
        self.name = name
        self.session: Any = None
        self.pending: list[str] = []  # bodies inserted, not committed yet
        self.snapshot: int | None = None  # commits seen when its transaction began
        self.closed = False
        self.error: BaseException | None = None
        self.ready = anyio.Event()
        self.done = anyio.Event()
        self.outbox, self.inbox = anyio.create_memory_object_stream[_Command](math.inf)

    def __repr__(self) -> str:
        tenant, user = self.principal
        return f"<{self.name} of {user!r} in {tenant!r}>"


@contextlib.asynccontextmanager
async def _in_sandbox(box: Sandbox) -> AsyncIterator[Database]:
    """The sandbox's table, emptied, through engines of this event loop (engines are loop-bound)."""
    engine = create_async_engine(box.engine.url)
    raw = create_async_engine(box.admin.url)
    try:
        async with raw.begin() as conn:
            await conn.exec_driver_sql(f"TRUNCATE {box.table}")
        yield Database(engine=engine, raw=raw, backend="postgres", table=box.table)
    finally:
        await engine.dispose()
        await raw.dispose()


def _fail(machine: SessionMachine, text: str) -> NoReturn:
    machine._failed = True
    raise AssertionError(text)


class SessionMachine(AsyncRuleBasedStateMachine):
    """FM1's agreement machine: a session manager against a model of committed rows.

    Set :attr:`subject` (and :attr:`database`, :attr:`postgres_url`) on a
    subclass, or use :func:`machine_for`.
    """

    subject: ClassVar[SessionSubject]
    database: ClassVar[str] = "sqlite"
    postgres_url: ClassVar[str | None] = None
    sandbox: ClassVar[Sandbox | None] = None
    """A PostgreSQL sandbox shared by the runs (each empties its table first), or
    ``None``: each run makes its own database."""
    max_open: ClassVar[int] = 4
    per_principal: ClassVar[int] = 2

    requests = Bundle("requests")

    def __init__(self) -> None:
        super().__init__()
        self._db: Database | None = None
        self._manager: Any = None
        self._db_exit = anyio.Event()
        self._db_done = anyio.Event()
        self._requests: list[_Request] = []
        self._committed: set[Row] = set()
        self._sessions: dict[int, set[Principal]] = {}
        self._keep: list[Any] = []  # every session object, so that ids stay unique
        self._commits = 0
        self._bodies = 0
        self._violations: list[str] = []
        self._failed = False
        self._baseline = open_resources()
        try:
            self.portal.call(self._setup)
        except BaseException:
            self.teardown()
            raise

    async def _setup(self) -> None:
        await self.task_group.start(self._hold_database)
        self._manager = self.subject.make(self._db)

    async def _hold_database(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        database = (
            open_database(self.database, self.postgres_url, policy_sql=self.subject.policy_sql)
            if self.sandbox is None
            else _in_sandbox(self.sandbox)
        )
        self._db = await database.__aenter__()
        try:
            task_status.started()
            await self._db_exit.wait()
        finally:
            # Shielded: a PostgreSQL sandbox must be dropped even when the run is cancelled.
            with anyio.CancelScope(shield=True), anyio.move_on_after(TIMEOUT):
                await database.__aexit__(None, None, None)
            self._db_done.set()

    def _open(self) -> list[_Request]:
        return [r for r in self._requests if not r.closed]

    def _violation(self, text: str) -> None:
        self._violations.append(text)

    # -- the task of one request -----------------------------------------------------

    async def _serve(self, r: _Request) -> None:
        tenant, user = r.principal
        try:
            async with (
                Scope(UserContext.new(user, tenant_id=tenant)),
                self._manager.session() as session,
                r.inbox,
            ):
                r.session = session
                r.ready.set()
                async for command in r.inbox:
                    if command.kind == "fail":
                        raise _PlannedError
                    if command.kind == "end":
                        break
                    try:
                        command.result = await self._execute(command.kind, session, r)
                    except Exception as exc:
                        command.error = exc
                    finally:
                        command.done.set()
        except _PlannedError:
            pass
        except Exception as exc:
            r.error = exc
        finally:
            r.inbox.close()
            r.ready.set()
            r.done.set()

    async def _execute(self, kind: str, session: Any, r: _Request) -> Any:
        tenant, user = r.principal
        if kind == "insert":
            self._bodies += 1
            body = f"{r.name}-{self._bodies}"
            session.add(Note(body=body, tenant=tenant, owner=user))
            await session.flush()
            return body
        assert self._db is not None
        if self._db.backend == "postgres":  # raw SQL: row-level security does the filtering
            result = await session.execute(text(f"SELECT tenant, owner, body FROM {TABLE}"))  # noqa: S608 - our own table
            return [(row[0], row[1], row[2]) for row in result]
        notes = (await session.scalars(select(Note))).all()  # the ORM filter does it
        return [(n.tenant, n.owner, n.body) for n in notes]

    async def _ask(self, r: _Request, kind: str) -> Any:
        command = _Command(kind)
        r.outbox.send_nowait(command)
        with anyio.fail_after(TIMEOUT):
            await command.done.wait()
        if command.error is not None:
            self._violation(
                f"{kind} in {r!r} raised {type(command.error).__name__}: {command.error}"[:300]
            )
        return command.result

    async def _end(self, r: _Request, *, ok: bool) -> None:
        r.closed = True
        with r.outbox:
            r.outbox.send_nowait(_Command("end" if ok else "fail"))
        with anyio.fail_after(TIMEOUT):
            await r.done.wait()
        if r.error is not None:
            self._violation(f"ending {r!r} raised {type(r.error).__name__}: {r.error}"[:300])
        elif ok:
            tenant, user = r.principal
            self._committed |= {(tenant, user, body) for body in r.pending}
            if r.pending:
                self._commits += 1
        r.pending = []
        await self._check_database(f"after {r!r} ended")

    async def _check_database(self, when: str) -> None:
        assert self._db is not None
        async with self._db.raw.connect() as conn:
            result = await conn.execute(
                text(f"SELECT tenant, owner, body FROM {self._db.table}")  # noqa: S608 - our own table
            )
            rows = {(row[0], row[1], row[2]) for row in result}
        if rows != self._committed:
            extra = sorted(rows - self._committed, key=str)[:3]
            missing = sorted(self._committed - rows, key=str)[:3]
            self._violation(
                f"{when}: the database does not hold exactly the committed work "
                f"(uncommitted rows present: {extra}, committed rows missing: {missing})"
            )

    # -- rules --------------------------------------------------------------------

    @precondition(lambda self: len(self._open()) < self.max_open)
    @rule(target=requests, principal=st.sampled_from(PRINCIPALS))
    def open_request(self, principal: Principal) -> Any:
        """Open a request: a scope and a session block, held open by a task."""
        return self._call(self._open_request, principal)

    async def _open_request(self, principal: Principal) -> Any:
        if sum(r.principal == principal for r in self._open()) >= self.per_principal:
            return multiple()
        r = _Request(principal, f"request {len(self._requests)}")
        self.task_group.start_soon(self._serve, r)
        with anyio.fail_after(TIMEOUT):
            await r.ready.wait()
        self._requests.append(r)
        if r.error is not None or r.session is None:
            r.closed = True
            r.outbox.close()
            self._violation(f"opening {r!r} raised {type(r.error).__name__}: {r.error}"[:300])
            return r
        session = r.session
        self._keep.append(session)
        owners = self._sessions.setdefault(id(session), set())
        owners.add(principal)
        if len(owners) > 1:
            self._violation(
                f"one session object was handed to {len(owners)} principals: {sorted(owners, key=str)}"
            )
        elif any(o.session is session for o in self._open() if o is not r):
            self._violation(f"{r!r} got the session of another live request")
        return r

    @rule(principal=st.sampled_from(PRINCIPALS))
    def write(self, principal: Principal) -> None:
        """A whole short request in one step: open, insert a row, end cleanly."""
        self._call(self._write, principal)

    async def _write(self, principal: Principal) -> None:
        if len(self._open()) >= self.max_open:
            return
        r = await self._open_request(principal)
        if isinstance(r, _Request) and not r.closed:
            await self._insert(r)
            await self._end(r, ok=True)

    @rule(r=requests)
    def insert(self, r: _Request) -> None:
        """Insert a row of the request's principal (flushed, not committed)."""
        self._call(self._insert, r)

    async def _insert(self, r: _Request) -> None:
        # SQLite has one writer, and a transaction that has read cannot write
        # after another committed: only such inserts are made (on both databases).
        if r.closed or any(o.pending for o in self._open() if o is not r):
            return
        if r.snapshot is not None and r.snapshot != self._commits:
            return
        r.snapshot = self._commits
        body = await self._ask(r, "insert")
        if body is not None:
            r.pending.append(body)

    @rule(r=requests)
    def read(self, r: _Request) -> None:
        """Read every row the request may see: they must all be its principal's."""
        self._call(self._read, r)

    async def _read(self, r: _Request) -> None:
        if r.closed:
            return
        if r.snapshot is None:
            r.snapshot = self._commits
        rows = await self._ask(r, "read")
        if rows is None:
            return
        mine = set()
        for tenant, owner, body in rows:
            if (tenant, owner) != r.principal:
                self._violation(f"{r!r} read a row of {owner!r} in {tenant!r}")
            else:
                mine.add(body)
        committed = {b for t, u, b in self._committed if (t, u) == r.principal}
        if not set(r.pending) <= mine:
            self._violation(f"{r!r} did not see its own uncommitted rows")
        never = mine - committed - set(r.pending)
        if never:
            self._violation(f"{r!r} read rows that were never committed: {sorted(never)[:3]}")

    @rule(r=requests, ok=st.booleans())
    def end(self, r: _Request, ok: bool) -> None:
        """End the request: cleanly (its block commits) or with an error (it rolls back)."""
        self._call(self._end_open, r, ok)

    async def _end_open(self, r: _Request, ok: bool) -> None:
        if not r.closed:
            await self._end(r, ok=ok)

    # -- invariants ---------------------------------------------------------------

    @invariant()
    def agrees_with_the_model(self) -> None:
        """Sessions disjoint per principal, own rows only, exactly the committed work."""
        if self._violations:
            _fail(self, "\n".join(self._violations[:10]))

    async def ateardown(self) -> None:
        """End every request cleanly, check the database and the manager, drop the database."""
        failed = self._failed
        try:
            if self._manager is not None:
                for r in self._open():
                    await self._end(r, ok=True)
                await self._check_database("at the end")
                stats = getattr(self._manager, "stats", None)
                if stats is not None:
                    now = stats()
                    if now.open_sessions or now.checked_out:
                        self._violation(
                            f"after every request ended: {now.open_sessions} open sessions, "
                            f"{now.checked_out} checked-out slots"
                        )
                aclose = getattr(self._manager, "aclose", None)
                if aclose is not None:
                    await aclose()
            for name, count in open_resources().items():
                if count > self._baseline.get(name, 0):
                    self._violation(
                        f"{counted(count - self._baseline.get(name, 0), name)} left open"
                    )
        finally:
            self._db_exit.set()
            if self._db is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(TIMEOUT):
                    await self._db_done.wait()
        if self._violations and not failed:
            _fail(self, "\n".join(self._violations[:10]))


def machine_for(
    subject: SessionSubject,
    database: str = "sqlite",
    postgres_url: str | None = None,
    *,
    sandbox: Sandbox | None = None,
) -> type[SessionMachine]:
    """A :class:`SessionMachine` subclass over ``subject`` on ``database``."""
    return type(
        "FM1SessionMachine",
        (SessionMachine,),
        {
            "subject": subject,
            "database": database,
            "postgres_url": postgres_url,
            "sandbox": sandbox,
        },
    )


def run_script(machine: type[SessionMachine]) -> list[str]:
    """Run the fixed first example; return its violations.

    Each principal writes a row in its own request and commits; then every
    principal has a request open at once, each reads, and all end. The same
    user id in two tenants is among them, so the mutants are caught every run.
    """
    m = machine()
    found: list[str] = []
    try:
        for principal in PRINCIPALS:
            r = m.open_request(principal=principal)
            m.insert(r=r)
            m.end(r=r, ok=True)
            m.agrees_with_the_model()
        together = [m.open_request(principal=principal) for principal in PRINCIPALS]
        m.agrees_with_the_model()
        for r in together:
            m.read(r=r)
            m.agrees_with_the_model()
        for r in together:
            m.end(r=r, ok=True)
            m.agrees_with_the_model()
    except AssertionError as exc:
        found = str(exc).splitlines()
    finally:
        try:
            m.teardown()
        except AssertionError as exc:
            found = found or str(exc).splitlines()
    return found


def run_machine(
    subject: SessionSubject,
    database: str,
    postgres_url: str | None,
    *,
    examples: int,
    steps: int = STEPS,
) -> list[str]:
    """The fixed example, then ``examples`` drawn ones; the violations of the first failure.

    On PostgreSQL every run shares one sandbox (a schema and a restricted
    role), made here and dropped at the end.
    """
    if database != "postgres":
        return _run_machine(machine_for(subject, database), examples, steps)
    if postgres_url is None:
        raise RuntimeError("a PostgreSQL check needs settings.postgres_url")
    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        sandbox = pg_sandbox(postgres_url, policy_sql=subject.policy_sql)
        with portal.wrap_async_context_manager(sandbox) as box:
            reason = portal.call(role_bypasses_rls, box.engine)
            if reason is not None:
                raise RuntimeError(f"refusing to run: {reason}")
            machine = machine_for(subject, database, postgres_url, sandbox=box)
            return _run_machine(machine, examples, steps)


def _run_machine(machine: type[SessionMachine], examples: int, steps: int) -> list[str]:
    found = run_script(machine)
    if found:
        return found
    try:
        run_state_machine_as_test(
            machine,
            settings=hypothesis_settings(
                max_examples=examples,
                stateful_step_count=steps,
                derandomize=True,
                database=None,
                deadline=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
                verbosity=Verbosity.quiet,
                report_multiple_bugs=False,
            ),
        )
    except AssertionError as exc:
        return [line for line in str(exc).splitlines() if line.strip()][:20]
    return []
