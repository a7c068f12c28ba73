"""FM1 on the sync face: threads of several principals, one ``Session`` per scope, own rows only.

Subject: a :class:`~isolation.report._modes._support.faces.SessionSubject` whose
manager is built on a sync ``Engine`` (``with manager.session()``). Rows of
four principals — the same user id in two tenants among them — and of a fifth
that makes no request are seeded first. Each round, 12 requests (3 per
principal) are threads that hold a scope and a session block open across
steps — open, read, end cleanly or with an error — in an order Hypothesis
draws; each read runs in another thread of the request (a copy of its
context, a nested block), as FastAPI runs a dependency and the endpoint in
different pool threads. Then the 12 run again at once: every block open
together, then each writes, reads and ends, concurrently.

Properties: the sets of session objects per principal are disjoint, two live
requests never share one, a request's threads share its one; every read
returns exactly the principal's committed rows, plus its own uncommitted one
(the ORM under ``protect()`` on SQLite, raw SQL under row-level security on
PostgreSQL, as a role that is neither owner nor superuser); the database
holds exactly the committed work; nothing is left open.

The mutant hands one shared ``Session`` to every scope.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import attrs

from isolation.context._model import Principal, UserContext
from isolation.context._scope import Scope
from isolation.report._modes._support.faces import SessionSubject, register_face, sync_run_for
from isolation.report._modes.fm01_sessions.async_face import PRINCIPALS
from isolation.report._registry import ModeRegistry, Settings

__all__ = ["register"]

PER_PRINCIPAL = 3
REQUESTS = len(PRINCIPALS) * PER_PRINCIPAL
STRANGER = Principal("t3", "mallory")
"""Seeded rows of a principal no request is made for: nobody may read them."""

Row = tuple[str | None, str, str]  # tenant, owner, body
# (steps: each request's index three times, for open, read and end; how each ends
#  there (True: cleanly); how each ends in the burst)
Round = tuple[tuple[int, ...], tuple[bool, ...], tuple[bool, ...]]


class _PlannedError(Exception):
    """Raised inside a request's block to end it with an error (a rollback)."""


def _rounds(count: int) -> list[Round]:
    from hypothesis import strategies as st

    from isolation.report._modes._support.sessions import generate

    steps = [index for index in range(REQUESTS) for _ in range(3)]
    ends = st.lists(st.booleans(), min_size=REQUESTS, max_size=REQUESTS).map(tuple)
    strategy = st.tuples(st.permutations(steps).map(tuple), ends, ends)
    # First: every block open at once, then every read, then every end.
    fixed = tuple(index for _ in range(3) for index in range(REQUESTS))
    alternate = tuple(index % 2 == 0 for index in range(REQUESTS))
    return generate(strategy, max(1, count // 20), [(fixed, alternate, alternate)])


def _rows(session: Any, backend: str) -> list[Row]:
    """Every row the session may see: raw SQL on PostgreSQL (the policy filters), else the ORM."""
    from sqlalchemy import select, text

    from isolation.report._modes._support.sessions import TABLE, Note

    if backend == "postgres":
        result = session.execute(text(f"SELECT tenant, owner, body FROM {TABLE}"))  # noqa: S608 - our own table
        return [(row[0], row[1], row[2]) for row in result]
    return [(n.tenant, n.owner, n.body) for n in session.scalars(select(Note))]


def _read(worker: Any, manager: Any, backend: str) -> tuple[Any, list[Row]]:
    """In another thread of the request: a nested block, and what it reads."""
    with manager.session() as s:
        return s, _rows(s, backend)


@attrs.define
class _Request:
    """One request of a round: a thread holding its scope and block open across steps."""

    manager: Any
    backend: str
    principal: Principal
    ok: bool
    session: Any = None
    seen: Any = None  # the session its other thread got
    rows: list[Row] = attrs.Factory(list)
    stage: int = 0

    def run(self, worker: Any) -> None:
        from isolation.report._modes._support.sync_sessions import Worker

        tenant, user = self.principal
        with (
            Scope(UserContext.new(user, tenant_id=tenant)),
            contextlib.suppress(_PlannedError),
            self.manager.session() as s,
        ):
            self.session = s
            worker.pause()
            other = Worker(
                functools.partial(_read, manager=self.manager, backend=self.backend),
                f"{worker.name}, another thread",
                context=contextvars.copy_context(),
            )
            other.step()
            if other.error is not None:
                raise other.error
            self.seen, self.rows = other.result
            worker.pause()
            if not self.ok:
                raise _PlannedError


def _burst(
    worker: Any,
    manager: Any,
    backend: str,
    principal: Principal,
    body: str,
    ok: bool,
    together: threading.Barrier,
    seen: list[tuple[Any, list[Row]]],
) -> None:
    """One request of the burst: open, wait until every block is open, write, read, end."""
    from isolation.report._modes._support.sessions import Note
    from isolation.report._modes._support.sync_sessions import HANG

    tenant, user = principal
    with (
        Scope(UserContext.new(user, tenant_id=tenant)),
        contextlib.suppress(_PlannedError),
        manager.session() as s,
    ):
        together.wait(HANG)
        s.add(Note(body=body, tenant=tenant, owner=user))
        s.flush()
        seen.append((s, _rows(s, backend)))
        if not ok:
            raise _PlannedError


class _Run:
    """The model of one check run: committed rows, and every session object handed out."""

    def __init__(self, manager: Any, db: Any) -> None:
        self.manager = manager
        self.db = db
        self.committed: dict[Principal, set[str]] = {}
        self.owners: dict[int, set[Principal]] = {}
        self.keep: list[Any] = []  # every session object, so that ids stay unique
        self.found: list[str] = []

    def seed(self, tag: str) -> None:
        from sqlalchemy import text

        params = []
        for tenant, user in (*PRINCIPALS, STRANGER):
            for k in range(2):
                body = f"{tag}-seed-{tenant}-{user}-{k}"
                params.append({"t": tenant, "o": user, "b": body})
                self.committed.setdefault(Principal(tenant, user), set()).add(body)
        with self.db.raw.begin() as conn:
            conn.execute(
                text(f"INSERT INTO {self.db.table} (tenant, owner, body) VALUES (:t, :o, :b)"),  # noqa: S608 - our own table
                params,
            )

    def handed(self, session: Any, principal: Principal, live: list[Any], who: str) -> None:
        """``session`` was handed to ``principal``; ``live`` are the other live requests' ones."""
        self.keep.append(session)
        owners = self.owners.setdefault(id(session), set())
        owners.add(principal)
        if len(owners) > 1:
            self.found.append(
                f"one session object was handed to {len(owners)} principals: "
                f"{sorted(owners, key=str)}"
            )
        elif any(other is session for other in live):
            self.found.append(f"{who} got the session of another live request")

    def reads(self, principal: Principal, rows: list[Row], who: str, *, extra: set[str]) -> None:
        """``rows`` are the principal's own, its committed ones, plus only ``extra`` ones."""
        foreign = sorted({(t, o) for t, o, _ in rows if (t, o) != principal}, key=str)
        if foreign:
            self.found.append(f"{who} of {principal} read rows of {foreign}")
            return
        bodies = {body for _, _, body in rows}
        missing = self.committed.get(principal, set()) - bodies
        if missing:
            self.found.append(f"{who} of {principal} missed its rows {sorted(missing)[:3]}")
        never = bodies - self.committed.get(principal, set()) - extra
        if never:
            self.found.append(
                f"{who} of {principal} read rows never committed: {sorted(never)[:3]}"
            )

    def database(self, when: str) -> None:
        from sqlalchemy import text

        with self.db.raw.connect() as conn:
            rows = {
                (r[0], r[1], r[2])
                for r in conn.execute(text(f"SELECT tenant, owner, body FROM {self.db.table}"))  # noqa: S608 - our own table
            }
        model = {(t, u, body) for (t, u), bodies in self.committed.items() for body in bodies}
        if rows != model:
            self.found.append(
                f"{when}: the database does not hold exactly the committed work "
                f"(uncommitted: {sorted(rows - model, key=str)[:3]}, "
                f"missing: {sorted(model - rows, key=str)[:3]})"
            )

    def lockstep(self, steps: tuple[int, ...], ends: tuple[bool, ...]) -> None:
        """The requests' steps one at a time, in the drawn order, each in its own thread."""
        from isolation.report._modes._support.sync_sessions import HungError, Worker, stop_all

        requests = [
            _Request(
                manager=self.manager,
                backend=self.db.backend,
                principal=PRINCIPALS[index % len(PRINCIPALS)],
                ok=ends[index],
            )
            for index in range(REQUESTS)
        ]
        workers = [Worker(r.run, f"request {index}") for index, r in enumerate(requests)]
        try:
            for index in steps:
                r, worker, who = requests[index], workers[index], f"request {index}"
                worker.step()
                r.stage += 1
                if worker.error is not None:
                    error = worker.error
                    self.found.append(f"{who} raised {type(error).__name__}: {error}"[:300])
                elif r.stage == 1:
                    live = [o.session for o in requests if o is not r and o.stage in (1, 2)]
                    self.handed(r.session, r.principal, live, who)
                elif r.stage == 2:
                    if r.seen is not r.session:
                        self.found.append(f"another thread of {who} got another session")
                    self.reads(r.principal, r.rows, who, extra=set())
                if self.found:
                    return
        except HungError as error:
            self.found.append(str(error))
        finally:
            stop_all(workers)

    def burst(self, outcomes: tuple[bool, ...], tag: str) -> None:
        """Every request at once: all blocks open together, then write, read and end."""
        from isolation.report._modes._support.sync_sessions import Worker, run_all

        together = threading.Barrier(REQUESTS)
        plans = [
            (PRINCIPALS[index % len(PRINCIPALS)], f"{tag}-burst-{index}", outcomes[index])
            for index in range(REQUESTS)
        ]
        seen: list[list[tuple[Any, list[Row]]]] = [[] for _ in plans]
        workers = [
            Worker(
                functools.partial(
                    _burst,
                    manager=self.manager,
                    backend=self.db.backend,
                    principal=principal,
                    body=body,
                    ok=ok,
                    together=together,
                    seen=seen[index],
                ),
                f"burst request {index}",
            )
            for index, (principal, body, ok) in enumerate(plans)
        ]
        self.found += run_all(workers)
        if self.found:
            return
        live: list[Any] = []
        for (principal, body, _), worker, results in zip(plans, workers, seen, strict=True):
            who = f"burst request of {body}"
            if worker.error is not None or not results:
                error = worker.error
                self.found.append(f"{who} raised {type(error).__name__}: {error}"[:300])
                continue
            ((session, rows),) = results
            self.handed(session, principal, live, who)
            live.append(session)
            # Its own row, and those of the same principal's requests that commit at once.
            extra = {b for p, b, o in plans if p == principal and (b == body or o)}
            self.reads(principal, rows, who, extra=extra)
            if body not in {b for _, _, b in rows}:
                self.found.append(f"{who} did not see its own uncommitted row")
        for principal, body, ok in plans:
            if ok:
                self.committed.setdefault(principal, set()).add(body)


def _scenario(subject: SessionSubject, db: Any, settings: Settings) -> list[str]:
    from isolation.report._modes._support.sync_sessions import leftovers, manager_of

    tag = uuid.uuid4().hex[:8]
    with manager_of(subject, db) as manager:
        run = _Run(manager, db)
        run.seed(tag)
        for number, (steps, ends, outcomes) in enumerate(_rounds(settings.examples)):
            run.lockstep(steps, ends)
            if not run.found:
                run.burst(outcomes, f"{tag}-{number:03d}")
            if not run.found:
                run.database(f"after round {number}")
            if run.found:
                return run.found
        return leftovers(manager, db, "after every request ended")


class _SharedSessionManager:
    """Mutant: every block of every scope gets the one sync ``Session`` made first."""

    def __init__(self, db: Any, **ignored: Any) -> None:
        from sqlalchemy.orm import Session

        from isolation.report._modes.fm01_sessions.async_face import _filter_pairs

        self._session = Session(db.engine, expire_on_commit=False)
        self._rls = db.backend == "postgres"
        if not self._rls:
            _filter_pairs(self._session)

    @contextlib.contextmanager
    def session(self) -> Iterator[Any]:
        from isolation.report._modes._support.sync_sessions import bind_principal_sync

        s = self._session
        if self._rls:
            bind_principal_sync(s)
        yield s
        s.commit()

    def close(self) -> None:
        self._session.close()


def register(registry: ModeRegistry) -> None:
    """Register FM1's sync-face check, on SQLite and on PostgreSQL."""
    register_face(
        registry,
        1,
        "session-per-scope-sync",
        sync_run_for(lambda: _scenario, pool_size=REQUESTS, max_overflow=0),
        mutant=functools.partial(SessionSubject, make=_SharedSessionManager),
        sync=True,
        description=(
            "the sync face: 12 threads of 4 principals (one user id in two tenants) holding "
            "blocks open in drawn orders, then all at once: sessions disjoint, rows read own"
        ),
    )
