"""FM1, DB sessions not isolated between users: one session per scope, only own rows read.

Subject: a :class:`SessionSubject`, a manager factory (the interface of
:class:`isolation.sessions.SessionManager`: ``session()``) plus the policy
builder used on PostgreSQL. Hypothesis draws interleavings of several
principals' requests, **the same user id in two tenants** among them; a
sequencer runs them step by step as concurrent tasks, each in its own scope,
with blocks of different principals open at once. Properties: the sets of
session objects per principal are disjoint, and every row a request reads is
its own (ORM reads filtered by ``protect()`` on SQLite; raw SQL under
row-level security on PostgreSQL, as a role that is neither owner nor
superuser).

Mutants: ``session-per-scope`` faces a manager that caches one session per
process; ``own-rows-only`` faces a filter on the user column alone (on
PostgreSQL: a policy on the user column alone).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
import attrs

from isolation.context._model import UserContext
from isolation.context._scope import Scope, current_context
from isolation.report._registry import Backend, Check, ModeRegistry, Settings

__all__ = ["SessionSubject", "register"]

PRINCIPALS: tuple[tuple[str, str], ...] = (
    ("t1", "alice"),
    ("t2", "alice"),
    ("t1", "bob"),
    ("t2", "carol"),
)
REQUESTS = 6


@attrs.frozen(kw_only=True)
class SessionSubject:
    """What the session checks drive.

    Attributes:
        make: Builds a manager for a database (``make(db) -> manager``).
        policy_sql: Builds the row-level security policy on PostgreSQL.
    """

    make: Callable[[Any], Any]
    policy_sql: Callable[..., Sequence[str]] | None = None


Plan = list[tuple[int, int, str]]  # (request, principal index, action) in schedule order


def _plans(count: int) -> list[Plan]:
    from hypothesis import strategies as st

    from isolation.report.modes._sessions import generate

    cycle = st.tuples(st.booleans(), st.integers(min_value=1, max_value=3))
    request = st.tuples(
        st.integers(min_value=0, max_value=len(PRINCIPALS) - 1),
        st.lists(cycle, min_size=1, max_size=3),
    )

    @st.composite
    def plan(draw: Any) -> Plan:
        requests = draw(st.lists(request, min_size=REQUESTS, max_size=REQUESTS))
        # Every principal takes part, the two alices included.
        requests = [(i % len(PRINCIPALS), cycles) for i, (_, cycles) in enumerate(requests)]
        actions: list[list[str]] = []
        for _, cycles in requests:
            steps: list[str] = []
            for write, reads in cycles:
                if write:
                    steps.append("write")
                steps += ["open", *(["read"] * reads), "close"]
            actions.append(steps)
        order = draw(st.permutations([i for i, steps in enumerate(actions) for _ in steps]))
        cursor = [0] * len(actions)
        scheduled: Plan = []
        for i in order:
            scheduled.append((i, requests[i][0], actions[i][cursor[i]]))
            cursor[i] += 1
        return scheduled

    # The explicit plan opens a block of every principal before any closes.
    explicit: Plan = []
    explicit += [(i, i, "write") for i in range(len(PRINCIPALS))]
    explicit += [(i, i, "open") for i in range(len(PRINCIPALS))]
    explicit += [(i, i, "read") for i in range(len(PRINCIPALS))]
    explicit += [(i, i, "close") for i in range(len(PRINCIPALS))]
    return generate(plan(), count, [explicit])


async def _read_rows(session: Any, backend: str) -> list[tuple[str | None, str]]:
    from sqlalchemy import select, text

    from isolation.report.modes._sessions import TABLE, Note

    if backend == "postgres":
        result = await session.execute(text(f"SELECT tenant, owner FROM {TABLE}"))  # noqa: S608 - our own table name
        return [(row[0], row[1]) for row in result]
    notes = (await session.scalars(select(Note))).all()
    return [(n.tenant, n.owner) for n in notes]


async def _run_plan(manager: Any, plan: Plan, backend: str, tag: str) -> list[str]:
    from isolation.report.modes._sessions import Note

    found: list[str] = []
    rows_read = 0
    owners: dict[int, set[tuple[str, str]]] = {}
    keep: list[Any] = []  # hold sessions so ids stay unique during the run
    requests = sorted({(r, p) for r, p, _ in plan})
    steps = {r: [a for rr, _, a in plan if rr == r] for r, _ in requests}
    go = {r: [anyio.Event() for _ in steps[r]] for r, _ in requests}
    done = {r: [anyio.Event() for _ in steps[r]] for r, _ in requests}

    async def request(index: int, principal_index: int) -> None:
        nonlocal rows_read
        tenant, user = PRINCIPALS[principal_index]
        principal = (tenant, user)
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(Scope(UserContext.new(user, tenant_id=tenant)))
            block: Any = None
            session: Any = None
            for n, action in enumerate(steps[index]):
                await go[index][n].wait()
                try:
                    if action == "write":
                        async with manager.session() as s:
                            owners.setdefault(id(s), set()).add(principal)
                            keep.append(s)
                            s.add(Note(body=f"{tag}-{index}-{n}", tenant=tenant, owner=user))
                    elif action == "open":
                        block = manager.session()
                        session = await block.__aenter__()
                        owners.setdefault(id(session), set()).add(principal)
                        keep.append(session)
                    elif action == "read":
                        assert current_context().principal == principal
                        rows = await _read_rows(session, backend)
                        rows_read += len(rows)
                        for row in rows:
                            if row != principal:
                                found.append(
                                    f"request of {principal} read a row of {row} (step {n})"
                                )
                    elif action == "close":
                        await block.__aexit__(None, None, None)
                        block = session = None
                except Exception as exc:
                    found.append(f"request of {principal} raised {type(exc).__name__}: {exc}"[:300])
                    block = session = None
                finally:
                    done[index][n].set()

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for index, principal_index in requests:
                tg.start_soon(request, index, principal_index)
            cursor = dict.fromkeys(steps, 0)
            for index, _, _ in plan:
                n = cursor[index]
                cursor[index] += 1
                go[index][n].set()
                await done[index][n].wait()
    for seen in owners.values():
        if len(seen) > 1:
            found.append(f"one session object was used by {len(seen)} principals: {sorted(seen)}")
    if not rows_read and any(action == "read" for _, _, action in plan):
        found.append("no request read any row: the scenario proved nothing")
    return found


def _check(backend: str) -> Callable[[SessionSubject, Settings], Any]:
    async def check(subject: SessionSubject, settings: Settings) -> list[str]:
        from isolation.report.modes._sessions import open_database

        plans = _plans(settings.examples)
        found: list[str] = []
        async with open_database(
            backend, settings.postgres_url, policy_sql=subject.policy_sql
        ) as db:
            manager = subject.make(db)
            tag = uuid.uuid4().hex[:8]
            for number, plan in enumerate(plans):
                found += await _run_plan(manager, plan, backend, f"{tag}-{number}")
                if found:
                    break
            await _close(manager)
        return found

    return check


async def _close(manager: Any) -> None:
    aclose = getattr(manager, "aclose", None)
    if aclose is not None:
        await aclose()


# -- the library ---------------------------------------------------------------


def _library() -> SessionSubject:
    from isolation.report.modes._sessions import library_manager
    from isolation.sessions.postgres import rls_policy_sql

    return SessionSubject(make=library_manager, policy_sql=rls_policy_sql)


# -- mutant 1: one session cached per process --------------------------------------


class _ProcessSessionManager:
    """Mutant: every request of every user gets the one session the process made first."""

    def __init__(self, db: Any) -> None:
        from sqlalchemy.ext.asyncio import AsyncSession

        self._session = AsyncSession(db.engine, expire_on_commit=False)
        self._rls = db.backend == "postgres"
        if not self._rls:
            _filter_pairs(self._session)

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Any]:
        from sqlalchemy import text

        s = self._session
        if self._rls:
            tenant, user = current_context().principal
            await s.execute(
                text(
                    "SELECT set_config('isolation.user_id', :u, true), "
                    "set_config('isolation.tenant_id', :t, true)"
                ),
                {"u": user, "t": tenant or ""},
            )
        yield s
        await s.commit()

    async def aclose(self) -> None:
        await self._session.close()


def _filter_pairs(session: Any, *, user_only: bool = False) -> None:
    """The ORM filter, re-implemented for the mutants (pair, or user column alone)."""
    from sqlalchemy import event
    from sqlalchemy.orm import with_loader_criteria

    from isolation.report.modes._sessions import Note

    @event.listens_for(session.sync_session, "do_orm_execute")
    def _criteria(state: Any) -> None:
        if state.is_select and not state.is_column_load and not state.is_relationship_load:
            tenant, user = current_context().principal
            criteria = Note.owner == user
            if not user_only:
                criteria = criteria & (Note.tenant == tenant)
            state.statement = state.statement.options(with_loader_criteria(Note, criteria))


def _mutant_cached() -> SessionSubject:
    from isolation.sessions.postgres import rls_policy_sql

    return SessionSubject(make=_ProcessSessionManager, policy_sql=rls_policy_sql)


# -- mutant 2: a filter on the user column alone ------------------------------------


class _UserColumnOnlyManager:
    """Mutant: a session per scope, but the ORM filter compares the user column only."""

    def __init__(self, db: Any) -> None:
        self._engine = db.engine

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Any]:
        from sqlalchemy.ext.asyncio import AsyncSession

        async with AsyncSession(self._engine, expire_on_commit=False) as s:
            _filter_pairs(s, user_only=True)
            yield s
            await s.commit()


def _user_only_policy_sql(table: str, **kwargs: Any) -> list[str]:
    """Mutant policy: the tenant column is left out."""
    from isolation.sessions.postgres import rls_policy_sql

    return rls_policy_sql(table, user_column=kwargs["user_column"])


def _make_user_only(db: Any) -> Any:
    if db.backend == "postgres":
        from isolation.report.modes._sessions import library_manager

        return library_manager(db)
    return _UserColumnOnlyManager(db)


def _mutant_user_only() -> SessionSubject:
    return SessionSubject(make=_make_user_only, policy_sql=_user_only_policy_sql)


def register(registry: ModeRegistry) -> None:
    """Register FM1's checks, on SQLite and on PostgreSQL."""
    needs = ("sqlalchemy", "aiosqlite", "hypothesis")
    for backend, suffix, extra in (
        (Backend.SQLITE, "", ()),
        (Backend.POSTGRES, "-postgres", ("asyncpg",)),
    ):
        registry.register(
            1,
            Check(
                name=f"session-per-scope{suffix}",
                backend=backend,
                run=_check(str(backend)),
                library=_library,
                mutant=_mutant_cached,
                requires=needs + extra,
                description=(
                    "interleaved requests of 4 principals (one user id in two tenants): "
                    "session objects per principal disjoint, rows read own"
                ),
            ),
        )
        registry.register(
            1,
            Check(
                name=f"own-rows-only{suffix}",
                backend=backend,
                run=_check(str(backend)),
                library=_library,
                mutant=_mutant_user_only,
                requires=needs + extra,
                description=(
                    "the same interleavings against a filter (or policy) on the user column alone"
                ),
            ),
        )
