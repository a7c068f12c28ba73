"""FM3, sessions leak when user contexts expire: expiry rolls back and closes, always.

Subject: a manager factory (:class:`~isolation.report._modes._support.faces.SessionSubject`).
Scenario: rounds of 10 sessions; each request enters a scope with a deadline,
opens a session, and awaits at a drawn point (before any statement, after a
flushed write, inside a query, inside a nested block); the check then either
moves a fake clock past the deadline (the context expires while user code
awaits) or lets it finish. Properties after every request: 0 sessions open and
0 connections checked out (by the manager and by the engine's pool); at the
end the database holds exactly the rows of the requests that did not expire.

The mutant closes its session only on a normal exit.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio

from isolation._clock import FakeClock
from isolation._errors import ContextExpiredError
from isolation.context._model import UserContext
from isolation.context._scope import Scope
from isolation.report._modes._support.faces import SessionSubject, register_face
from isolation.report._modes.fm01_sessions.async_face import rounds_check
from isolation.report._registry import ModeRegistry, Settings

__all__ = ["register"]

SESSIONS = 10
POINTS = ("before-query", "after-flush", "in-query", "in-nested")
TTL = 10.0
_PAUSE = re.compile(r"isolation-pause-(\d+)")

Request = tuple[bool, str]  # (expires, point)


def _rounds(count: int) -> list[list[Request]]:
    from hypothesis import strategies as st

    from isolation.report._modes._support.sessions import generate

    request = st.tuples(st.booleans(), st.sampled_from(POINTS))
    explicit = [[(True, point) for point in POINTS] + [(False, point) for point in POINTS]]
    explicit[0] += [(True, "after-flush"), (False, "in-query")]
    return generate(
        st.lists(request, min_size=SESSIONS, max_size=SESSIONS), max(1, count // 5), explicit
    )


async def _request(
    manager: Any,
    *,
    index: int,
    point: str,
    body: str,
    events: tuple[anyio.Event, anyio.Event],
    sessions: list[Any],
    outcome: list[BaseException | None],
) -> None:
    """One request: write, then await at ``point`` until told to go on (or expired)."""
    from sqlalchemy import text

    from isolation.report._modes._support.sessions import Note

    at, proceed = events
    user = f"user-{index % 5}"
    try:
        async with (
            Scope(UserContext.new(user, tenant_id="t", ttl=TTL)),
            manager.session() as s,
        ):
            sessions.append(s)
            if point == "before-query":
                at.set()
                await proceed.wait()
            s.add(Note(body=body, tenant="t", owner=user))
            await s.flush()
            if point == "after-flush":
                at.set()
                await proceed.wait()
            if point == "in-nested":
                async with manager.session() as inner:
                    inner.add(Note(body=body + "-inner", tenant="t", owner=user))
                    await inner.flush()
                    at.set()
                    await proceed.wait()
            if point == "in-query":
                await s.execute(text(f"SELECT 1 /* isolation-pause-{index} */"))
        outcome.append(None)
    except Exception as exc:
        outcome.append(exc)


async def _run_round(
    manager: Any, db: Any, clock: FakeClock, requests: list[Request], tag: str
) -> list[str]:
    from sqlalchemy import event
    from sqlalchemy.util import await_only

    from isolation.report._modes._support.sessions import checked_out, committed_bodies

    found: list[str] = []
    pauses: dict[int, tuple[anyio.Event, anyio.Event]] = {}

    def pause_in_query(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        match = _PAUSE.search(statement)
        if match is not None:
            at, proceed = pauses[int(match.group(1))]
            at.set()
            await_only(proceed.wait())

    event.listen(db.engine.sync_engine, "before_cursor_execute", pause_in_query)
    try:
        for index, (expires, point) in enumerate(requests):
            at, proceed = anyio.Event(), anyio.Event()
            pauses[index] = (at, proceed)
            sessions: list[Any] = []
            outcome: list[BaseException | None] = []
            body = f"{tag}-{index}"

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(
                        functools.partial(
                            _request,
                            manager,
                            index=index,
                            point=point,
                            body=body,
                            events=pauses[index],
                            sessions=sessions,
                            outcome=outcome,
                        )
                    )
                    await at.wait()
                    if expires:
                        clock.advance(TTL + 1)
                    else:
                        proceed.set()
            error = outcome[0] if outcome else None
            if expires and not isinstance(error, ContextExpiredError):
                found.append(f"request {index} expired at {point} but ended with {error!r}")
            if not expires and error is not None:
                found.append(f"request {index} ({point}) failed: {error!r}"[:300])
            left = checked_out(db.engine)
            stats = getattr(manager, "stats", None)
            open_sessions = stats().open_sessions if stats is not None else 0
            if left or open_sessions:
                found.append(
                    f"after request {index} expired={expires} at {point}: {left} connections "
                    f"checked out, {open_sessions} sessions open"
                )
                for s in sessions:  # clean up after a broken subject
                    with contextlib.suppress(Exception):
                        await s.close()
            if found:
                return found
        expected = sorted(
            body
            for index, (expires, point) in enumerate(requests)
            if not expires
            for body in (
                [f"{tag}-{index}", f"{tag}-{index}-inner"]
                if point == "in-nested"
                else [f"{tag}-{index}"]
            )
        )
        committed = await committed_bodies(db, tag + "-")
        if committed != expected:
            extra = sorted(set(committed) - set(expected))
            missing = sorted(set(expected) - set(committed))
            found.append(f"committed rows differ: unexpected {extra}, missing {missing}")
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", pause_in_query)
    return found


def _check(backend: str) -> Callable[[Any, Settings], Any]:
    return rounds_check(backend, _rounds, _run_round)


class _CloseOnNormalExit:
    """Mutant: commits and closes the session when the block ends normally, only then."""

    def __init__(self, db: Any) -> None:
        self._engine = db.engine
        self._rls = db.backend == "postgres"

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Any]:
        from sqlalchemy.ext.asyncio import AsyncSession

        from isolation.report._modes._support.sessions import bind_principal

        s = AsyncSession(self._engine, expire_on_commit=False)
        if self._rls:
            await bind_principal(s)
        yield s
        await s.commit()
        await s.close()


def register(registry: ModeRegistry) -> None:
    """Register FM3's checks, on SQLite and on PostgreSQL."""
    register_face(
        registry,
        3,
        "expiry-closes",
        _check,
        mutant=functools.partial(SessionSubject, make=_CloseOnNormalExit),
        description=(
            "10 sessions per round whose contexts expire at drawn points while user "
            "code awaits: 0 open, 0 checked out, expired work rolled back"
        ),
    )
