"""FM3 on the sync face: a context expires while its thread runs; its work rolls back, all closes.

Subject: a manager factory (:class:`~isolation.report._modes._support.faces.SessionSubject`)
on a sync ``Engine``. Scenario: rounds of 10 requests of 5 users, each a
thread whose scope has a deadline; all 10 open their blocks at once, then
each in turn writes and pauses at a drawn point (before any statement, after
a flushed write, inside a nested block, inside a query). The check then
either moves a fake clock past that request's deadline (nothing interrupts a
thread) or not, and lets it go on: to one more write, or straight to the
end of its block. Properties: an expired request's block ends with
:class:`~isolation.ContextExpiredError` (raised by its next statement or by
the block's end) and commits nothing; the others commit; each request's
connection is returned when it ends; after each round 0 sessions are open and
0 connections checked out, and the database holds exactly the rows of the
requests that did not expire.

The mutant knows no deadline: after it, its block runs statements and commits.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from isolation._clock import FakeClock
from isolation._errors import ContextExpiredError
from isolation.context._model import UserContext
from isolation.context._scope import Scope
from isolation.report._modes._support.faces import (
    register_face,
    scope_sessions,
    sync_rounds,
    sync_run_for,
)
from isolation.report._modes.fm03_expiry.async_face import POINTS, SESSIONS, TTL
from isolation.report._registry import ModeRegistry

__all__ = ["register"]

USERS = 5
THEN = ("statement", "end")
LONG_TTL = 1e9
"""The deadline of a request that must not expire: never reached by the fake clock."""
_PAUSE = re.compile(r"isolation-pause-(\d+)")

Request = tuple[bool, str, str]  # (expires, point, what follows the pause)


def _rounds(count: int) -> list[list[Request]]:
    from hypothesis import strategies as st

    from isolation.report._modes._support.sessions import generate

    request = st.tuples(st.booleans(), st.sampled_from(POINTS), st.sampled_from(THEN))
    explicit = [
        [(True, point, "statement") for point in POINTS]
        + [(True, "after-flush", "end"), (True, "in-nested", "end")]
        + [(False, point, "statement") for point in POINTS]
    ]
    return generate(
        st.lists(request, min_size=SESSIONS, max_size=SESSIONS), max(1, count // 10), explicit
    )


def _bodies(index: int, point: str, then: str, tag: str) -> list[str]:
    """The rows request ``index`` writes when nothing stops it."""
    body = f"{tag}-{index}"
    late = then == "statement" and point != "in-query"
    return [body, *([f"{body}-inner"] if point == "in-nested" else []), *([f"{body}-late"] * late)]


def _request(
    worker: Any,
    manager: Any,
    *,
    index: int,
    ttl: float,
    request: Request,
    tag: str,
    outcome: list[BaseException | None],
    ran: list[str],
) -> None:
    """Open a block, pause (every block opens at once); on its turn write, pause, go on.

    ``outcome`` gets how the block ended; ``ran`` gets ``"late"`` once the write
    after the pause went through.
    """
    from sqlalchemy import text

    from isolation.report._modes._support.sessions import Note

    _, point, then = request
    user = f"user-{index % USERS}"
    body = f"{tag}-{index}"

    def late(session: Any) -> None:
        if then == "statement":
            session.add(Note(body=f"{body}-late", tenant="t", owner=user))
            session.flush()
            ran.append("late")

    with Scope(UserContext.new(user, tenant_id="t", ttl=ttl)):
        try:
            with manager.session() as s:
                worker.pause()
                if point == "before-query":
                    worker.pause()
                s.add(Note(body=body, tenant="t", owner=user))
                s.flush()
                if point == "after-flush":
                    worker.pause()
                    late(s)
                elif point == "in-nested":
                    with manager.session() as inner:
                        inner.add(Note(body=f"{body}-inner", tenant="t", owner=user))
                        inner.flush()
                        worker.pause()
                        late(inner)
                elif point == "in-query":
                    s.execute(text(f"SELECT 1 /* isolation-pause-{index} */"))
                else:
                    late(s)
            outcome.append(None)
        except Exception as exc:
            outcome.append(exc)


def _run_round(
    manager: Any, db: Any, clock: FakeClock, requests: list[Request], tag: str
) -> list[str]:
    from sqlalchemy import event

    from isolation.report._modes._support.sync_sessions import (
        HungError,
        Worker,
        checked_out,
        committed,
        leftovers,
        run_all,
        stop_all,
    )

    # The k-th request to expire has its deadline just before the clock's k-th move.
    ttls, expiring = [], 0
    for expires, _, _ in requests:
        expiring += expires
        ttls.append(TTL * expiring - 1 if expires else LONG_TTL)
    outcomes: list[list[BaseException | None]] = [[] for _ in requests]
    ran: list[list[str]] = [[] for _ in requests]
    workers = [
        Worker(
            functools.partial(
                _request,
                manager=manager,
                index=index,
                ttl=ttls[index],
                request=request,
                tag=tag,
                outcome=outcomes[index],
                ran=ran[index],
            ),
            f"request {index}",
        )
        for index, request in enumerate(requests)
    ]

    def pause_in_query(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        match = _PAUSE.search(statement)
        if match is not None:
            workers[int(match.group(1))].pause()

    found: list[str] = []
    event.listen(db.engine, "before_cursor_execute", pause_in_query)
    try:
        found += run_all(workers)  # every block open at once
        for index, (expires, point, then) in enumerate(requests):
            before = checked_out(db)
            worker = workers[index]
            worker.step()  # its turn: to its point
            if expires:
                clock.advance(TTL)
            worker.step()  # on, to its end
            what = f"request {index} ({point}, then {then})"
            error = outcomes[index][0] if outcomes[index] else worker.error
            if expires and not isinstance(error, ContextExpiredError):
                found.append(f"{what} expired, but its block ended with {error!r}"[:300])
            if expires and ran[index]:
                found.append(f"{what}: a statement ran after the context's deadline")
            if not expires and (error is not None or worker.error is not None):
                found.append(f"{what} failed: {error or worker.error!r}"[:300])
            if checked_out(db) > before:
                found.append(f"{what} ended with its connection still checked out")
            if found:
                return found
        found += leftovers(manager, db, "after a round")
        expected = sorted(
            body
            for index, (expires, point, then) in enumerate(requests)
            if not expires
            for body in _bodies(index, point, then, tag)
        )
        rows = committed(db, tag + "-")
        if rows != expected:
            extra = sorted(set(rows) - set(expected))
            missing = sorted(set(expected) - set(rows))
            found.append(f"committed rows differ: unexpected {extra[:6]}, missing {missing[:6]}")
    except HungError as error:
        found.append(str(error))
    finally:
        stop_all(workers)
        event.remove(db.engine, "before_cursor_execute", pause_in_query)
    return found


def register(registry: ModeRegistry) -> None:
    """Register FM3's sync-face check, on SQLite and on PostgreSQL."""
    register_face(
        registry,
        3,
        "expiry-closes-sync",
        sync_run_for(sync_rounds(_rounds, _run_round), pool_size=SESSIONS, max_overflow=0),
        mutant=scope_sessions(),
        sync=True,
        description=(
            "the sync face: 10 threads with blocks open whose contexts expire at drawn points "
            "while they run: the next statement or the block's end refuses, 0 open after"
        ),
    )
