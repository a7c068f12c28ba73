"""FM4 on the sync face: threads whose requests fail at drawn points; exactly the clean work stays.

Subject: a manager factory (:class:`~isolation.report._modes._support.faces.SessionSubject`)
on a sync ``Engine``. The plans of mode 4 (:mod:`.async_face`) run all at
once, each request as FastAPI runs a sync endpoint: one thread holds the
request's scope (the middleware's), another runs the session block in a copy
of its context. A failure is injected at a drawn point: an exception, the
scope ending while the block's thread still runs (what a thread gets instead
of a cancellation), the context's expiry, or an isolation violation (a row of
another principal: refused by ``protect()`` on SQLite, by row-level security
on PostgreSQL). A nested block's own failure is caught by the outer block,
which goes on. Property: the database holds exactly the rows of the blocks
that ended cleanly, nothing partial, and nothing is left open.

The mutant commits in a ``finally``.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from typing import Any

import attrs

from isolation._clock import FakeClock
from isolation._errors import IsolationError
from isolation.context._model import UserContext
from isolation.context._scope import Scope
from isolation.report._modes._support.faces import (
    register_face,
    scope_sessions,
    sync_rounds,
    sync_run_for,
)
from isolation.report._modes.fm04_rollback.async_face import PRINCIPALS, TTL, Plan, _plans
from isolation.report._registry import ModeRegistry

__all__ = ["register"]

KINDS = ("exception", "scope-end", "expiry", "violation")
LONG_TTL = 1e9
"""The deadline of a request not planned to expire: the fake clock never reaches it."""
POOL = 12
"""The pool's size: the default per-user limit (3) admits a round's 8 requests at once."""


class _InjectedError(Exception):
    """The exception a plan injects."""


def _rounds(count: int) -> list[list[Plan]]:
    """Mode 4's plans with the sync face's failures; a round runs its requests at once."""
    return _plans(max(1, count // 5), kinds=KINDS)


@attrs.define
class _Request:
    """One planned request: a scope in one thread, its block in another, a failure injected."""

    manager: Any
    clock: FakeClock
    plan: Plan
    principal: tuple[str, str]
    prefix: str
    clean: list[str] = attrs.Factory(list)
    error: BaseException | None = None
    wake: threading.Event = attrs.Factory(threading.Event)
    scope_ended: threading.Event = attrs.Factory(threading.Event)

    def note(self, body: str, owner: str | None = None) -> Any:
        from isolation.report._modes._support.sessions import Note

        tenant, user = self.principal
        return Note(body=body, tenant=tenant, owner=owner or user)

    def inject(self, kind: str, session: Any) -> None:
        from isolation.report._modes._support.sync_sessions import HANG

        if kind == "exception":
            raise _InjectedError("injected")
        if kind == "scope-end":
            self.wake.set()  # the scope's thread ends the scope now
            self.scope_ended.wait(HANG)
        elif kind == "expiry":
            self.clock.advance(TTL + 1)
        else:
            session.add(self.note(f"{self.prefix}-foreign", owner="mallory"))
            session.flush()

    def at(self, position: str, session: Any) -> None:
        failure = self.plan[3]
        if failure is not None and failure[1] == position:
            self.inject(failure[0], session)

    def block(self, worker: Any) -> None:
        """The endpoint's thread: the session block, with the plan's writes and failures."""
        from sqlalchemy.exc import DBAPIError

        before, nested, after, _ = self.plan
        prefix, manager = self.prefix, self.manager
        try:
            with manager.session() as s:
                self.at("start", s)
                for k in range(before):
                    s.add(self.note(f"{prefix}-a{k}"))
                    self.clean.append(f"{prefix}-a{k}")
                s.flush()
                self.at("middle", s)
                if nested is not None:
                    writes, inner_failure = nested
                    with contextlib.suppress(_InjectedError, IsolationError, DBAPIError):
                        with manager.session() as inner:
                            for k in range(writes):
                                inner.add(self.note(f"{prefix}-n{k}"))
                            inner.flush()
                            if inner_failure is not None:
                                self.inject(inner_failure, inner)
                        self.clean.extend(f"{prefix}-n{k}" for k in range(writes))
                for k in range(after):
                    s.add(self.note(f"{prefix}-b{k}"))
                    self.clean.append(f"{prefix}-b{k}")
                self.at("end", s)
        finally:
            self.wake.set()

    def run(self, worker: Any) -> None:
        """The middleware's thread: the scope, around the endpoint's thread."""
        from isolation.report._modes._support.sync_sessions import HANG, Worker

        failure = self.plan[3]
        tenant, user = self.principal
        ttl = TTL if failure is not None and failure[0] == "expiry" else LONG_TTL
        endpoint: Worker | None = None
        try:
            with Scope(UserContext.new(user, tenant_id=tenant, ttl=ttl)):
                endpoint = Worker(
                    self.block, f"{worker.name}'s block", context=contextvars.copy_context()
                )
                endpoint.go()
                self.wake.wait(HANG)
        finally:
            self.scope_ended.set()
            if endpoint is not None:
                endpoint.wait()
                self.error = endpoint.error


def _run(manager: Any, db: Any, clock: FakeClock, plans: list[Plan], tag: str) -> list[str]:
    from isolation.report._modes._support.sync_sessions import Worker, committed, leftovers, run_all

    requests = [
        _Request(
            manager=manager,
            clock=clock,
            plan=plan,
            principal=PRINCIPALS[index % len(PRINCIPALS)],
            prefix=f"{tag}-{index:02d}",
        )
        for index, plan in enumerate(plans)
    ]
    workers = [Worker(r.run, f"request {index}") for index, r in enumerate(requests)]
    found = run_all(workers)
    if found:
        return found
    expected: list[str] = []
    for index, (request, worker) in enumerate(zip(requests, workers, strict=True)):
        failure = request.plan[3]
        error = request.error or worker.error
        if failure is None:
            if error is not None:
                found.append(f"request {index} failed without an injected failure: {error!r}"[:300])
            expected.extend(request.clean)
        elif error is None:
            found.append(f"request {index}: the injected {failure[0]} did not surface")
    found += leftovers(manager, db, "after the requests ended")
    rows = committed(db, tag + "-")
    if rows != sorted(expected):
        unexpected = sorted(set(rows) - set(expected))
        missing = sorted(set(expected) - set(rows))
        found.append(
            f"the database holds other work than the clean blocks': unexpected {unexpected[:6]}, "
            f"missing {missing[:6]}"
        )
    return found


def register(registry: ModeRegistry) -> None:
    """Register FM4's sync-face check, on SQLite and on PostgreSQL."""
    register_face(
        registry,
        4,
        "exactly-clean-work-sync",
        sync_run_for(sync_rounds(_rounds, _run), pool_size=POOL, max_overflow=0),
        mutant=scope_sessions(commit_on_error=True),
        sync=True,
        description=(
            "the sync face: requests in threads at once, failing by exceptions, a scope ending "
            "under its thread, expiries and violations at drawn points: exactly the clean work"
        ),
    )
