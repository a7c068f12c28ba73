"""FM4, transactions not rolled back on errors: the database holds exactly the clean work.

Subject: a manager factory (:class:`~isolation.report._modes._support.faces.SessionSubject`).
Hypothesis draws requests that write in an outer block and optionally in a
nested block (a SAVEPOINT), with a failure injected at a drawn point: an
exception, a cancellation, the context's expiry, or an isolation violation
(writing a row of another principal: refused by ``protect()`` on SQLite, by
the row-level security policy on PostgreSQL). A nested block's own failure
is caught by the outer block, which goes on. Property: the database holds
exactly the rows of the blocks that ended cleanly, nothing partial.

The mutant commits in a ``finally``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.lowlevel
import attrs

from isolation._clock import FakeClock
from isolation._errors import IsolationError
from isolation.context._model import UserContext
from isolation.context._scope import Scope, current_scope
from isolation.report._modes._support.faces import SessionSubject, register_face
from isolation.report._modes.fm01_sessions.async_face import rounds_check
from isolation.report._registry import ModeRegistry, Settings

__all__ = ["register"]

TTL = 10.0
KINDS = ("exception", "cancel", "expiry", "violation")
POSITIONS = ("start", "middle", "end")
PRINCIPALS = (("t1", "alice"), ("t2", "alice"), ("t1", "bob"))

# (outer writes before, nested (writes, inner failure) or None, outer writes after,
#  failure (kind, position) or None)
Plan = tuple[int, tuple[int, str | None] | None, int, tuple[str, str] | None]


class _InjectedError(Exception):
    """The exception a plan injects."""


def _plans(count: int, kinds: tuple[str, ...] = KINDS) -> list[list[Plan]]:
    """``count`` drawn lists of plans, after one with every failure ``kinds`` at every position."""
    from hypothesis import strategies as st

    from isolation.report._modes._support.sessions import generate

    nested = st.none() | st.tuples(
        st.integers(min_value=1, max_value=2), st.sampled_from([None, "exception", "violation"])
    )
    failure = st.none() | st.tuples(st.sampled_from(kinds), st.sampled_from(POSITIONS))
    plan = st.tuples(
        st.integers(min_value=0, max_value=2),
        nested,
        st.integers(min_value=0, max_value=2),
        failure,
    )
    explicit: list[list[Plan]] = [
        [(1, (1, None), 1, (kind, position)) for kind in kinds for position in POSITIONS]
        + [(1, (1, inner), 1, None) for inner in (None, "exception", "violation")]
    ]
    return generate(st.lists(plan, min_size=4, max_size=8), count, explicit)


@attrs.define
class _Request:
    """One planned request: writes, an optional nested block, an injected failure."""

    manager: Any
    clock: FakeClock
    plan: Plan
    principal: tuple[str, str]
    prefix: str
    clean: list[str] = attrs.Factory(list)

    def note(self, body: str, owner: str | None = None) -> Any:
        from isolation.report._modes._support.sessions import Note

        tenant, user = self.principal
        return Note(body=body, tenant=tenant, owner=owner or user)

    async def inject(self, kind: str, session: Any, cancel: anyio.CancelScope) -> None:
        if kind == "exception":
            raise _InjectedError("injected")
        if kind == "cancel":
            cancel.cancel()
            await anyio.lowlevel.checkpoint()
        elif kind == "expiry":
            self.clock.advance(TTL + 1)
            await anyio.lowlevel.checkpoint()
        else:
            session.add(self.note(f"{self.prefix}-foreign", owner="mallory"))
            await session.flush()

    async def at(self, position: str, session: Any, cancel: anyio.CancelScope) -> None:
        failure = self.plan[3]
        if failure is not None and failure[1] == position:
            await self.inject(failure[0], session, cancel)

    async def run(self, cancel: anyio.CancelScope) -> None:
        from sqlalchemy.exc import DBAPIError

        before, nested, after, _ = self.plan
        tenant, user = self.principal
        prefix, manager = self.prefix, self.manager
        async with (
            Scope(UserContext.new(user, tenant_id=tenant, ttl=TTL)),
            manager.session() as s,
        ):
            await self.at("start", s, cancel)
            for k in range(before):
                s.add(self.note(f"{prefix}-a{k}"))
                self.clean.append(f"{prefix}-a{k}")
            await s.flush()
            await self.at("middle", s, cancel)
            if nested is not None:
                writes, inner_failure = nested
                with contextlib.suppress(_InjectedError, IsolationError, DBAPIError):
                    async with manager.session() as inner:
                        for k in range(writes):
                            inner.add(self.note(f"{prefix}-n{k}"))
                        await inner.flush()
                        if inner_failure is not None:
                            await self.inject(inner_failure, inner, cancel)
                    self.clean.extend(f"{prefix}-n{k}" for k in range(writes))
            for k in range(after):
                s.add(self.note(f"{prefix}-b{k}"))
                self.clean.append(f"{prefix}-b{k}")
            await self.at("end", s, cancel)


async def _run(manager: Any, db: Any, clock: FakeClock, plans: list[Plan], tag: str) -> list[str]:
    from isolation.report._modes._support.sessions import committed_bodies

    expected: list[str] = []
    found: list[str] = []
    for index, plan in enumerate(plans):
        failure = plan[3]
        request = _Request(
            manager=manager,
            clock=clock,
            plan=plan,
            principal=PRINCIPALS[index % len(PRINCIPALS)],
            prefix=f"{tag}-{index:02d}",
        )
        error: BaseException | None = None
        try:
            with anyio.fail_after(30), anyio.CancelScope() as cancel:
                await request.run(cancel)
        except Exception as exc:
            error = exc
        if failure is None:
            if error is not None:
                found.append(f"request {index} failed without an injected failure: {error!r}"[:300])
            expected.extend(request.clean)
        elif failure[0] != "cancel" and error is None:
            found.append(f"request {index}: the injected {failure[0]} did not surface")
    committed = await committed_bodies(db, tag + "-")
    if committed != sorted(expected):
        unexpected = sorted(set(committed) - set(expected))
        missing = sorted(set(expected) - set(committed))
        found.append(
            f"the database holds other work than the clean blocks': unexpected {unexpected[:6]}, "
            f"missing {missing[:6]}"
        )
    return found


def _check(backend: str) -> Callable[[Any, Settings], Any]:
    return rounds_check(backend, _plans, _run)


class _CommitInFinally:
    """Mutant: a session per scope with savepoints, whose outer block commits in ``finally``."""

    def __init__(self, db: Any) -> None:
        self._engine = db.engine
        self._rls = db.backend == "postgres"
        self._sessions: dict[int, Any] = {}

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Any]:
        from sqlalchemy.ext.asyncio import AsyncSession

        from isolation.report._modes._support.sessions import bind_principal

        key = id(current_scope())
        s = self._sessions.get(key)
        if s is not None:
            nested = await s.begin_nested()
            try:
                yield s
            except BaseException:
                await nested.rollback()
                raise
            await nested.commit()
            return
        s = self._sessions[key] = AsyncSession(self._engine, expire_on_commit=False)
        try:
            if self._rls:
                await bind_principal(s)
            yield s
        finally:
            del self._sessions[key]
            try:
                await s.commit()
            finally:
                await s.close()


def register(registry: ModeRegistry) -> None:
    """Register FM4's checks, on SQLite and on PostgreSQL."""
    register_face(
        registry,
        4,
        "exactly-clean-work",
        _check,
        mutant=functools.partial(SessionSubject, make=_CommitInFinally),
        description=(
            "exceptions, cancellations, expiries and violations at drawn points: the "
            "database holds exactly the work of blocks that ended cleanly"
        ),
    )
