"""What the sync-face session checks (modes 1 to 4) share: databases for a sync Engine, threads.

Imported only inside the checks (it needs the ``sqlalchemy`` extra). A check
opens a fresh database — a SQLite file, or a PostgreSQL sandbox reached as its
restricted role through psycopg (:func:`~.sessions.sync_twin`) — and runs its
scenario in a worker thread, which starts the requests' threads: each request
is a real thread with a context of its own, as a sync web app's thread pool
gives it. Every wait on another thread is bounded by :data:`HANG`, a hang
guard never reached when the subject is correct: a hang is reported as a
violation, never waited out.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Final

import anyio.to_thread
import attrs
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from isolation._clock import FakeClock, use_clock
from isolation.context._scope import current_context, current_scope
from isolation.report._modes._support.sessions import (
    TABLE,
    PolicySql,
    pg_sandbox,
    role_bypasses_rls,
    sync_sqlite_engine,
    sync_twin,
)
from isolation.report._registry import CheckFn, Settings

__all__ = [
    "HANG",
    "HungError",
    "ScopeSessions",
    "SyncDatabase",
    "Worker",
    "bind_principal_sync",
    "checked_out",
    "committed",
    "leftovers",
    "manager_of",
    "open_sync_database",
    "rounds_scenario",
    "run_all",
    "stop_all",
    "sync_check",
]

HANG: Final = 30.0
"""Seconds any wait on another thread may take (a hang guard, never reached when correct)."""


class HungError(Exception):
    """A thread did not reach its next step within the hang guard."""


@attrs.frozen(kw_only=True)
class SyncDatabase:
    """A database of one sync-face check run.

    Attributes:
        engine: The subject's sync engine (on PostgreSQL: psycopg, the restricted role).
        raw: An engine that sees every row, to seed it and verify what was committed.
        backend: ``"sqlite"`` or ``"postgres"``.
        table: The notes table's name for ``rls_tables``.
    """

    engine: Engine
    raw: Engine
    backend: str
    table: str


@contextlib.asynccontextmanager
async def open_sync_database(
    backend: str,
    postgres_url: str | None,
    *,
    policy_sql: PolicySql | None = None,
    **engine_kw: Any,
) -> AsyncIterator[SyncDatabase]:
    """A fresh SQLite file or PostgreSQL sandbox with the notes table, through sync engines.

    ``engine_kw`` go to the subject's engine (its pool's size and timeout).

    Raises:
        RuntimeError: On PostgreSQL, the sandbox role would bypass row-level security.
    """
    if backend == "sqlite":
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory(prefix="isolation-check-") as tmp:
            engine = sync_sqlite_engine(str(Path(tmp) / "check.sqlite"), **engine_kw)
            try:
                yield SyncDatabase(engine=engine, raw=engine, backend=backend, table=TABLE)
            finally:
                engine.dispose()
        return
    if postgres_url is None:
        raise RuntimeError("a PostgreSQL check needs settings.postgres_url")
    async with pg_sandbox(postgres_url, policy_sql=policy_sql) as box:
        reason = await role_bypasses_rls(box.engine)
        if reason is not None:
            raise RuntimeError(f"refusing to run: {reason}")
        engine = sync_twin(box.engine, **engine_kw)
        raw = create_engine(box.admin.url.set(drivername="postgresql+psycopg"), poolclass=NullPool)
        try:
            yield SyncDatabase(engine=engine, raw=raw, backend=backend, table=box.table)
        finally:
            engine.dispose()
            raw.dispose()


SyncScenario = Callable[[Any, SyncDatabase, Settings], list[str]]


def sync_check(backend: str, scenario: SyncScenario, **engine_kw: Any) -> CheckFn:
    """A check that runs ``scenario(subject, db, settings)`` in a thread, on a fresh database.

    The subject is a :class:`~isolation.report._modes._support.faces.SessionSubject`
    whose ``make(db)`` builds a manager on ``db.engine``, a sync ``Engine``.
    """

    async def check(subject: Any, settings: Settings) -> list[str]:
        async with open_sync_database(
            backend, settings.postgres_url, policy_sql=subject.policy_sql, **engine_kw
        ) as db:
            return await anyio.to_thread.run_sync(scenario, subject, db, settings)

    return check


RoundRunner = Callable[[Any, SyncDatabase, FakeClock, Any, str], list[str]]


def rounds_scenario(rounds: Callable[[int], Sequence[Any]], run_round: RoundRunner) -> SyncScenario:
    """A scenario that runs drawn rounds, under one fake clock, until one finds a violation.

    The sync twin of :func:`~isolation.report._modes.fm01_sessions.async_face.rounds_check`:
    ``run_round(manager, db, clock, round, tag)`` returns its violations.
    """

    def scenario(subject: Any, db: SyncDatabase, settings: Settings) -> list[str]:
        found: list[str] = []
        tag = uuid.uuid4().hex[:8]
        clock = FakeClock()
        with manager_of(subject, db) as manager, use_clock(clock):
            for number, scenario_round in enumerate(rounds(settings.examples)):
                found += run_round(manager, db, clock, scenario_round, f"{tag}-{number:03d}")
                if found:
                    break
        return found

    return scenario


@contextlib.contextmanager
def manager_of(subject: Any, db: SyncDatabase, **make_kw: Any) -> Iterator[Any]:
    """The subject's manager on ``db``, closed afterwards (when it has a ``close()``)."""
    manager = subject.make(db, **make_kw)
    try:
        yield manager
    finally:
        close = getattr(manager, "close", None)
        if close is not None:
            close()


class _Stopped(BaseException):
    """Unwinds a worker its driver stops: its blocks end with an error and roll back."""


class Worker:
    """A request in a thread of its own that runs only when its driver lets it.

    The thread runs ``fn(worker)`` in ``context`` (a fresh one by default, so
    that the request's scope is its own). ``fn`` calls :meth:`pause` where the
    driver may switch to another request; the driver's :meth:`go` then
    :meth:`wait` (together :meth:`step`) run it to its next pause or its end.
    Requests interleave one step at a time in the order the driver draws, or
    run at once (``go`` on each, then ``wait`` on each).
    """

    def __init__(
        self,
        fn: Callable[[Worker], Any],
        name: str,
        *,
        context: contextvars.Context | None = None,
    ) -> None:
        self.name = name
        self.result: Any = None
        self.error: BaseException | None = None
        self.ended = False
        self._run = threading.Semaphore(0)
        self._paused = threading.Semaphore(0)
        self._running = False
        self._stop = False
        run = (context or contextvars.Context()).run
        threading.Thread(target=run, args=(self._main, fn), name=name, daemon=True).start()

    def _main(self, fn: Callable[[Worker], Any]) -> None:
        self._run.acquire()
        try:
            if not self._stop:
                self.result = fn(self)
        except _Stopped:
            pass
        except BaseException as error:  # reported to the driver
            self.error = error
        finally:
            self.ended = True
            self._paused.release()

    def pause(self) -> None:
        """In the worker: let the driver go on; resume when it says so."""
        self._paused.release()
        self._run.acquire()
        if self._stop:
            raise _Stopped

    def go(self) -> None:
        """In the driver: let the worker run (returns at once)."""
        if not self.ended and not self._running:
            self._running = True
            self._run.release()

    def wait(self, timeout: float = HANG) -> None:
        """In the driver: wait until the worker pauses or ends.

        Raises:
            HungError: It did neither within ``timeout`` seconds.
        """
        if not self._running:
            return
        if not self._paused.acquire(timeout=timeout):
            raise HungError(f"{self.name} did not reach its next step within {timeout:g} s")
        self._running = False

    def step(self) -> None:
        """In the driver: run the worker to its next pause or its end."""
        self.go()
        self.wait()

    def stop(self) -> None:
        """In the driver: end the worker where it paused (its blocks roll back); never raises.

        A hung worker (one that did not pause in time) is left to its daemon thread.
        """
        if self.ended or self._running:
            return
        self._stop = True
        with contextlib.suppress(HungError):
            self.step()


def run_all(workers: Sequence[Worker]) -> list[str]:
    """Let every worker run at once to its next pause or end; the hung ones, as violations."""
    for worker in workers:
        worker.go()
    hung: list[str] = []
    for worker in workers:
        try:
            worker.wait()
        except HungError as error:
            hung.append(str(error))
    return hung


def stop_all(workers: Sequence[Worker]) -> None:
    """Stop every worker still running (after a violation: their blocks roll back)."""
    for worker in workers:
        worker.stop()


def committed(db: SyncDatabase, prefix: str) -> list[str]:
    """Bodies of the committed notes whose body starts with ``prefix`` (every owner), sorted."""
    with db.raw.connect() as conn:
        rows = conn.execute(
            text(f"SELECT body FROM {db.table} WHERE body LIKE :p ORDER BY body"),  # noqa: S608 - our own table name
            {"p": prefix + "%"},
        ).all()
    return [str(r[0]) for r in rows]


def checked_out(db: SyncDatabase) -> int:
    """Connections the subject's engine's own pool has checked out now."""
    pool: Any = db.engine.pool
    return int(pool.checkedout()) if hasattr(pool, "checkedout") else 0


def leftovers(manager: Any, db: SyncDatabase, when: str) -> list[str]:
    """What is still open ``when`` nothing should be: the manager's sessions, slots, the pool's."""
    found: list[str] = []
    stats = getattr(manager, "stats", None)
    if stats is not None:
        now = stats()
        if now.open_sessions or now.checked_out:
            found.append(
                f"{when}: {now.open_sessions} sessions open, {now.checked_out} slots checked out"
            )
    if checked_out(db):
        found.append(f"{when}: the engine's pool has {checked_out(db)} connections checked out")
    return found


def bind_principal_sync(session: Session) -> None:
    """Set the current principal for row-level security on ``session``'s transaction.

    The sync twin of :func:`~.sessions.bind_principal`, for mutants that open
    their sessions by hand.
    """
    tenant, user = current_context().principal
    session.execute(
        text(
            "SELECT set_config('isolation.user_id', :u, true), "
            "set_config('isolation.tenant_id', :t, true)"
        ),
        {"u": user, "t": tenant or ""},
    )


class ScopeSessions:
    """The mutants' base: one sync ``Session`` per scope, nested blocks as SAVEPOINTs.

    The outermost block commits on a clean exit and rolls back on an error
    (``commit_on_error`` breaks that); on PostgreSQL it binds the principal for
    row-level security. It knows no deadline and no admission: the mutants
    of modes 3 and 4 are this, and mode 4's commits on error too.
    """

    def __init__(self, db: SyncDatabase, *, commit_on_error: bool = False, **ignored: Any) -> None:
        self.commit_on_error = commit_on_error
        self._engine = db.engine
        self._rls = db.backend == "postgres"
        self._sessions: dict[int, Session] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        key = id(current_scope())
        with self._lock:
            s = self._sessions.get(key)
            if s is None:
                s = self._sessions[key] = Session(self._engine, expire_on_commit=False)
                nested = None
            else:
                nested = s.begin_nested()
        if nested is not None:
            try:
                yield s
            except BaseException:
                nested.rollback()
                raise
            nested.commit()
            return
        failed = False
        try:
            if self._rls:
                bind_principal_sync(s)
            yield s
        except BaseException:
            failed = True
            raise
        finally:
            with self._lock:
                del self._sessions[key]
            try:
                if failed and not self.commit_on_error:
                    s.rollback()
                else:
                    s.commit()
            finally:
                s.close()
