"""FM2 on the sync face: threads held at a per-user limit, exhaustion raised, nothing held after.

Subject: a manager factory (:class:`~isolation.report._modes._support.faces.SessionSubject`,
``make(db, acquire_timeout=...)``) on a sync ``Engine`` whose pool holds 5
connections and no overflow; the library's manager has a per-user limit of 2.
Scenario, every request a thread of its own:

1. a greedy user's 5 threads open blocks at once and hold them: at most 2
   are inside together, the others get :class:`~isolation.PoolExhaustedError`;
2. 5 users' threads hold every connection: one more request gets
   :class:`~isolation.PoolExhaustedError` within its bound, not a hang;
3. the greedy user's 5 threads hold what they get while 19 other users run 5
   requests each, all at once (20 users x 5 sessions): every request of the
   others completes while the greedy user holds its limit;
4. afterwards 0 connections are checked out, by the manager and by the pool.

The mutant has no admission of its own: each block takes a ``Session``
straight from the engine, so the greedy user's threads take every connection.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from typing import Any

from isolation._errors import PoolExhaustedError
from isolation.context._model import UserContext
from isolation.context._scope import Scope
from isolation.report._modes._support.faces import SessionSubject, register_face, sync_run_for
from isolation.report._modes.fm02_pool.async_face import (
    ACQUIRE_TIMEOUT,
    EXHAUST_TIMEOUT,
    PER_USER,
    SESSIONS,
    USERS,
    pool_library,
)
from isolation.report._registry import ModeRegistry, Settings

__all__ = ["register"]

POOL_TIMEOUT = 10.0
"""SQLAlchemy's own wait for a connection: what the mutant's threads wait on."""
LATE_GUARD = 4.0
"""Seconds the request on a full pool may take before it counts as hung."""


def _hold(worker: Any, manager: Any, user: str) -> None:
    """Open a block, run a statement, and hold it (pause) until the driver lets go."""
    from sqlalchemy import text

    with Scope(UserContext.new(user, tenant_id="t")), manager.session() as s:
        s.execute(text("SELECT 1"))
        worker.pause()


def _select(worker: Any, manager: Any, user: str) -> None:
    from sqlalchemy import text

    with Scope(UserContext.new(user, tenant_id="t")), manager.session() as s:
        s.execute(text("SELECT 1"))


def _held_at_limit(manager: Any) -> list[str]:
    """A greedy user's threads open blocks at once: at most its limit get in."""
    from isolation.report._modes._support.sync_sessions import HungError, Worker, run_all, stop_all

    greedy = [
        Worker(functools.partial(_hold, manager=manager, user="greedy"), f"greedy request {k}")
        for k in range(SESSIONS)
    ]
    try:
        found = run_all(greedy)  # each is inside its block, or refused
        inside = sum(not w.ended for w in greedy)
        if inside > PER_USER:
            found.append(f"the greedy user held {inside} sessions at once (limit {PER_USER})")
        for w in greedy:
            w.step()  # let go: each held block ends cleanly
        errors = [w.error for w in greedy if not isinstance(w.error, PoolExhaustedError | None)]
        if errors:
            found.append(f"a greedy request ended with {errors[0]!r}"[:300])
        return found
    except HungError as error:
        return [str(error)]
    finally:
        stop_all(greedy)


def _exhausted(manager: Any) -> list[str]:
    """5 users' blocks hold a pool of 5: one more request fails clearly within its bound."""
    from isolation.report._modes._support.sync_sessions import (
        HANG,
        HungError,
        Worker,
        run_all,
        stop_all,
    )

    holders = [
        Worker(functools.partial(_hold, manager=manager, user=f"holder-{k}"), f"holder {k}")
        for k in range(SESSIONS)
    ]
    late = Worker(functools.partial(_select, manager=manager, user="late"), "the late request")
    found: list[str] = []
    try:
        found += run_all(holders)
        if found or any(w.ended for w in holders):
            found.append("the 5 holders of a pool of 5 did not all get in")
            return found
        late.go()
        try:
            late.wait(LATE_GUARD)
        except HungError:
            found.append(f"a request hung for {LATE_GUARD:g} s on a full pool instead of failing")
        for w in holders:
            w.step()
        late.wait(HANG)
        if late.error is None and not found:
            found.append("a sixth session was served while 5 sessions held a pool of 5")
        elif late.error is not None and not isinstance(late.error, PoolExhaustedError):
            found.append(f"the request on a full pool ended with {late.error!r}"[:300])
        return found
    except HungError as error:
        return [*found, str(error)]
    finally:
        stop_all([*holders, late])


def _greedy(worker: Any, manager: Any, release: threading.Event, inside: _Counter) -> None:
    from sqlalchemy import text

    from isolation.report._modes._support.sync_sessions import HANG

    with Scope(UserContext.new("greedy", tenant_id="t")), manager.session() as s:
        s.execute(text("SELECT 1"))
        with inside.one():
            release.wait(HANG)


class _Counter:
    """Blocks inside now, the most at once, and a way to wait for a number of them."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def one(self) -> Iterator[None]:
        with self._changed:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self.now -= 1

    def wait_for(self, count: int, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.now >= count, timeout)


def _others_proceed(manager: Any) -> list[str]:
    """The greedy user holds its limit while 19 users x 5 requests run at once."""
    from isolation.report._modes._support.sync_sessions import HANG, Worker, run_all

    release, inside = threading.Event(), _Counter()
    greedy = [
        Worker(
            functools.partial(_greedy, manager=manager, release=release, inside=inside),
            f"greedy request {k}",
        )
        for k in range(SESSIONS)
    ]
    others = [
        Worker(functools.partial(_select, manager=manager, user=f"user-{u}"), f"user-{u} #{k}")
        for u in range(1, USERS)
        for k in range(SESSIONS)
    ]
    found: list[str] = []
    for w in greedy:
        w.go()
    try:
        if not inside.wait_for(PER_USER, HANG):
            found.append(f"the greedy user did not get {PER_USER} sessions")
        found += run_all(others)
    finally:
        release.set()
        found += run_all(greedy)
    failed = [w.error for w in others if w.error is not None]
    if failed:
        found.append(
            f"{len(failed)} of {len(others)} requests of other users failed while the greedy "
            f"user was held at its limit: {failed[0]!r}"[:300]
        )
    if inside.peak > PER_USER:
        found.append(f"the greedy user held {inside.peak} sessions at once (limit {PER_USER})")
    # Its threads over the limit may time out waiting (PoolExhaustedError): that is the bound.
    errors = [w.error for w in greedy if not isinstance(w.error, PoolExhaustedError | None)]
    if errors:
        found.append(f"a greedy request ended with {errors[0]!r}"[:300])
    return found


def _scenario(subject: Any, db: Any, settings: Settings) -> list[str]:
    from isolation.report._modes._support.sync_sessions import leftovers, manager_of

    found: list[str] = []
    with manager_of(subject, db, acquire_timeout=EXHAUST_TIMEOUT) as quick:
        found += _held_at_limit(quick)
        if not found:
            found += _exhausted(quick)
        found += leftovers(quick, db, "after the bounded waits")
    if not found:
        with manager_of(subject, db, acquire_timeout=ACQUIRE_TIMEOUT) as manager:
            found += _others_proceed(manager)
            found += leftovers(manager, db, "after 20 users x 5 sessions")
    return found


class _Unadmitted:
    """Mutant: each block takes a ``Session`` straight from the engine: no limit, no bound."""

    def __init__(self, db: Any, **ignored: Any) -> None:
        self._engine = db.engine

    @contextlib.contextmanager
    def session(self) -> Iterator[Any]:
        from sqlalchemy.orm import Session

        with Session(self._engine) as s:
            yield s
            s.commit()


def register(registry: ModeRegistry) -> None:
    """Register FM2's sync-face check, on SQLite and on PostgreSQL."""
    register_face(
        registry,
        2,
        "bounded-admission-sync",
        sync_run_for(
            lambda: _scenario,
            pool_size=SESSIONS,
            max_overflow=0,
            pool_timeout=POOL_TIMEOUT,
        ),
        library=pool_library,
        mutant=functools.partial(SessionSubject, make=_Unadmitted),
        sync=True,
        requires=("sqlalchemy",),
        description=(
            "the sync face: a greedy user's threads held at its limit, exhaustion raised "
            "within the bound, 20 users x 5 threads on a pool of 5, 0 checked out after"
        ),
    )
