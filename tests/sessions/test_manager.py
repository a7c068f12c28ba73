"""SessionManager: ownership, commit or rollback, shielded commit, stats, watchdog."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any

import anyio
import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only

import isolation
from _support.databases import Note, checked_out
from isolation import (
    ContextExpiredError,
    CrossContextAccessError,
    NoContextError,
    PoolExhaustedError,
    ScopeEndedError,
    SessionInUseError,
    UsageError,
    UserContext,
)
from isolation.sessions import SessionManager
from isolation.sessions._manager import SessionStats
from isolation.testing import FakeClock

pytestmark = pytest.mark.anyio


def ctx(user: str = "alice", tenant: str | None = "acme", ttl: float | None = None) -> UserContext:
    return UserContext.new(user, tenant_id=tenant, ttl=ttl)


async def count_notes(engine: AsyncEngine, body: str | None = None) -> int:
    async with engine.connect() as conn:
        query = select(func.count()).select_from(Note)
        if body is not None:
            query = query.where(Note.body == body)
        return int((await conn.execute(query)).scalar_one())


def note(body: str, user: str = "alice", tenant: str | None = "acme") -> Note:
    return Note(body=body, owner=user, tenant=tenant)


class TestOwnership:
    async def test_nested_blocks_share_the_scope_session(self, engine: AsyncEngine) -> None:
        """Nested and sequential blocks of one scope get the same AsyncSession."""
        manager = SessionManager(engine)
        async with isolation.scope(ctx()):
            async with manager.session() as outer:
                async with manager.session() as inner:
                    assert inner is outer
            async with manager.session() as later:
                assert later is outer

    async def test_other_scopes_never_share(self, engine: AsyncEngine) -> None:
        """Another scope, even a child scope of the same user, gets another session."""
        manager = SessionManager(engine)
        seen = []
        for c in (ctx(), ctx(), ctx(tenant="other")):
            async with isolation.scope(c):
                async with manager.session() as s:
                    seen.append(s)
                    child_ctx = UserContext.new(c.user_id, tenant_id=c.tenant_id)
                    async with isolation.scope(child_ctx), manager.session() as child:
                        seen.append(child)
        assert len({id(s) for s in seen}) == len(seen)

    async def test_no_context_fails_closed(self, engine: AsyncEngine) -> None:
        """Without a bound scope, session() raises NoContextError."""
        manager = SessionManager(engine)
        with pytest.raises(NoContextError):
            async with manager.session():
                pass
        assert manager.stats().checked_out == 0

    async def test_session_used_by_a_later_request_is_refused_before_sql(
        self, engine: AsyncEngine
    ) -> None:
        """A session kept past its request raises CrossContextAccessError; no SQL is sent."""
        manager = SessionManager(engine)
        async with isolation.scope(ctx()), manager.session() as kept:
            pass
        statements: list[str] = []
        event.listen(
            engine.sync_engine, "before_cursor_execute", lambda *a: statements.append(a[2])
        )
        async with isolation.scope(ctx()), manager.session():
            with pytest.raises(CrossContextAccessError):
                await kept.execute(select(Note))
            with pytest.raises(CrossContextAccessError):
                kept.add(note("smuggled"))
            with pytest.raises(CrossContextAccessError):
                await kept.flush()
        assert statements == []
        with pytest.raises(CrossContextAccessError):
            await kept.execute(text("select 1"))
        assert await count_notes(engine) == 0

    async def test_session_outside_its_block_is_refused(self, engine: AsyncEngine) -> None:
        """In its own scope but after its block ended, the session refuses to start work."""
        manager = SessionManager(engine)
        async with isolation.scope(ctx()):
            async with manager.session() as s:
                pass
            with pytest.raises(UsageError, match="outside its"):
                await s.execute(select(Note))
        assert checked_out(engine) == 0

    async def test_second_task_of_the_scope_is_refused(self, engine: AsyncEngine) -> None:
        """A second task entering session() while a block is open gets SessionInUseError."""
        manager = SessionManager(engine)
        inside, leave = anyio.Event(), anyio.Event()
        errors: list[BaseException] = []

        async def holder() -> None:
            async with manager.session() as s:
                await s.execute(select(Note))
                inside.set()
                await leave.wait()

        async def intruder() -> None:
            await inside.wait()
            try:
                async with manager.session():
                    pass
            except SessionInUseError as exc:
                errors.append(exc)
            finally:
                leave.set()

        with anyio.fail_after(10):
            async with isolation.scope(ctx()), anyio.create_task_group() as tg:
                tg.start_soon(holder)
                tg.start_soon(intruder)
        assert len(errors) == 1
        assert "sequential blocks" in str(errors[0])
        assert manager.stats().checked_out == 0

    async def test_concurrent_use_of_the_session_object_is_refused(
        self, engine: AsyncEngine
    ) -> None:
        """Another task of the scope using the yielded session directly is refused too."""
        manager = SessionManager(engine)
        async with isolation.scope(ctx()), manager.session() as s:
            errors: list[BaseException] = []

            async def child() -> None:
                try:
                    await s.execute(select(Note))
                except SessionInUseError as exc:
                    errors.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(child)
        assert len(errors) == 1

    async def test_sync_scope_is_refused(self, engine: AsyncEngine) -> None:
        """A scope entered with a sync `with` cannot own a session (its cleanup awaits)."""
        manager = SessionManager(engine)
        with isolation.scope(ctx()):
            with pytest.raises(UsageError, match="async with"):
                async with manager.session():
                    pass


class TestEndings:
    async def test_clean_exit_commits(self, engine: AsyncEngine) -> None:
        """The outermost block commits on a clean exit and returns its connection."""
        manager = SessionManager(engine)
        async with isolation.scope(ctx()):
            async with manager.session() as s:
                s.add(note("kept"))
            assert checked_out(engine) == 0
            # Counted outside any scope (an admin's connection): committed at the block's end.
            outside = asyncio.get_running_loop().create_task(
                count_notes(engine, "kept"), context=contextvars.Context()
            )
            assert await outside == 1
        assert manager.stats().commits == 1

    @pytest.mark.parametrize(
        "error",
        [ValueError("boom"), CrossContextAccessError("violation")],
        ids=["exception", "isolation-error"],
    )
    async def test_exception_rolls_back(self, engine: AsyncEngine, error: Exception) -> None:
        """An exception or an IsolationError in the block rolls everything back."""
        manager = SessionManager(engine)
        with pytest.raises(type(error)):
            async with isolation.scope(ctx()), manager.session() as s:
                s.add(note("lost"))
                await s.flush()
                raise error
        assert await count_notes(engine) == 0
        assert manager.stats().rollbacks == 1
        assert checked_out(engine) == 0

    async def test_cancellation_rolls_back(self, engine: AsyncEngine) -> None:
        """A cancellation from outside rolls back the flushed work."""
        manager = SessionManager(engine)
        with anyio.CancelScope() as cancel:
            async with isolation.scope(ctx()), manager.session() as s:
                s.add(note("lost"))
                await s.flush()
                cancel.cancel()
                await anyio.sleep_forever()
        assert await count_notes(engine) == 0
        assert checked_out(engine) == 0
        assert manager.stats().rollbacks == 1

    async def test_expiry_while_awaiting_rolls_back(
        self, engine: AsyncEngine, fake_clock: FakeClock
    ) -> None:
        """The deadline passing while user code awaits cancels, rolls back and closes."""
        manager = SessionManager(engine)
        with pytest.raises(ContextExpiredError):
            async with isolation.scope(ctx(ttl=10)), manager.session() as s:
                s.add(note("lost"))
                await s.flush()
                fake_clock.advance(11)
                await anyio.sleep_forever()
        assert await count_notes(engine) == 0
        stats = manager.stats()
        assert (stats.open_sessions, stats.checked_out, checked_out(engine)) == (0, 0, 0)

    async def test_expiry_without_a_checkpoint_does_not_commit(
        self, engine: AsyncEngine, fake_clock: FakeClock
    ) -> None:
        """A block that ends after the deadline passed, before any await, rolls back."""
        manager = SessionManager(engine)
        after: list[str] = []
        with pytest.raises(ContextExpiredError):
            async with isolation.scope(ctx(ttl=10)):
                async with manager.session() as s:
                    s.add(note("lost"))
                    await s.flush()
                    fake_clock.advance(11)
                after.append("code after the block ran")
        assert after == []
        assert await count_notes(engine) == 0

    async def test_commit_runs_shielded_past_the_deadline(
        self, engine: AsyncEngine, fake_clock: FakeClock
    ) -> None:
        """A commit that started before the deadline finishes; the scope then expires."""
        manager = SessionManager(engine)
        in_commit, resume = anyio.Event(), anyio.Event()

        def on_commit(conn: Any) -> None:
            in_commit.set()
            await_only(resume.wait())

        event.listen(engine.sync_engine, "commit", on_commit)

        async def request() -> None:
            with pytest.raises(ContextExpiredError):
                async with isolation.scope(ctx(ttl=10)):
                    async with manager.session() as s:
                        s.add(note("committed"))
                    await anyio.sleep_forever()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(request)
                await in_commit.wait()
                fake_clock.advance(11)
                resume.set()
        event.remove(engine.sync_engine, "commit", on_commit)
        assert await count_notes(engine, "committed") == 1
        assert manager.stats().commits == 1

    async def test_failed_nested_block_is_not_committed(self, engine: AsyncEngine) -> None:
        """A nested block is a SAVEPOINT: its failure is rolled back, the outer work commits."""
        manager = SessionManager(engine)
        async with isolation.scope(ctx()), manager.session() as s:
            s.add(note("outer"))
            with pytest.raises(ValueError, match="inner"):
                async with manager.session() as inner:
                    inner.add(note("inner"))
                    await inner.flush()
                    raise ValueError("inner")
            async with manager.session() as ok:
                ok.add(note("nested-ok"))
        assert await count_notes(engine, "outer") == 1
        assert await count_notes(engine, "inner") == 0
        assert await count_notes(engine, "nested-ok") == 1

    async def test_explicit_commit_inside_the_block(self, engine: AsyncEngine) -> None:
        """The user may commit inside the block; later work is still committed at exit."""
        manager = SessionManager(engine)
        async with isolation.scope(ctx()), manager.session() as s:
            s.add(note("first"))
            await s.commit()
            s.add(note("second"))
        assert await count_notes(engine) == 2

    async def test_escaped_task_is_cut_off_by_the_finalizer(self, engine: AsyncEngine) -> None:
        """A block still open when its scope ends is invalidated; its work is lost."""
        manager = SessionManager(engine)
        inside, scope_ended = anyio.Event(), anyio.Event()
        errors: list[BaseException] = []

        async def escaped(session_ready: anyio.Event) -> None:
            try:
                async with manager.session() as s:
                    s.add(note("escaped"))
                    await s.flush()
                    inside.set()
                    await scope_ended.wait()
                    await s.execute(select(Note))
            except (ScopeEndedError, CrossContextAccessError) as exc:
                errors.append(exc)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                async with isolation.scope(ctx()):
                    # The task inherits the scope's context but outlives the scope.
                    tg.start_soon(escaped, anyio.Event())
                    await inside.wait()
                scope_ended.set()
        assert len(errors) == 1
        assert await count_notes(engine) == 0
        stats = manager.stats()
        assert (stats.open_sessions, stats.checked_out, checked_out(engine)) == (0, 0, 0)


class TestStats:
    async def test_stats_snapshot(self, engine: AsyncEngine) -> None:
        """stats() is a frozen snapshot with the documented fields."""
        manager = SessionManager(engine, per_user_limit=2)
        async with isolation.scope(ctx()), manager.session() as s:
            await s.execute(select(Note))
            stats = manager.stats()
            assert isinstance(stats, SessionStats)
            assert stats.open_sessions == 1
            assert dict(stats.open_sessions_by_principal) == {("acme", "alice"): 1}
            assert stats.checked_out == 1
        after = manager.stats()
        assert (after.open_sessions, after.checked_out, after.commits) == (0, 0, 1)
        assert dict(after.open_sessions_by_principal) == {}
        assert stats.checked_out == 1  # the snapshot did not move

    async def test_session_collected_unclosed_warns_and_counts(self, engine: AsyncEngine) -> None:
        """A session dropped without its finalizer emits ResourceWarning and counts a leak."""
        manager = SessionManager(engine)
        async with isolation.scope(ctx()) as scope:
            held = manager._new_held(scope)
            assert scope._finalizers is not None
            scope._finalizers.clear()  # simulate a finalizer that never ran
        with pytest.warns(ResourceWarning, match="garbage-collected"):
            del held  # the last reference: collected at once
        assert manager.stats().leaks == 1
        assert manager.stats().open_sessions == 0

    async def test_watchdog_counts_long_holds(
        self, engine: AsyncEngine, fake_clock: FakeClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A block held past hold_warning is logged and counted once by the watchdog."""
        seen = anyio.Event()

        class Spy(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if getattr(record, "event", None) == "session_held":
                    seen.set()

        spy = Spy()
        logging.getLogger("isolation.sessions").addHandler(spy)
        try:
            async with SessionManager(engine, hold_warning=5, watchdog_interval=0.01) as manager:
                async with isolation.scope(ctx()), manager.session():
                    fake_clock.advance(6)
                    with anyio.fail_after(10):
                        await seen.wait()
            assert manager.stats().hold_warnings == 1
        finally:
            logging.getLogger("isolation.sessions").removeHandler(spy)

    async def test_aclose_waits_for_open_blocks(self, engine: AsyncEngine) -> None:
        """aclose() waits for open blocks, then refuses new sessions."""
        manager = SessionManager(engine)
        await manager.start()
        inside, leave = anyio.Event(), anyio.Event()
        closed: list[int] = []

        async def request() -> None:
            async with isolation.scope(ctx()), manager.session():
                inside.set()
                await leave.wait()

        async def closer() -> None:
            await inside.wait()
            await manager.aclose()
            closed.append(manager.stats().checked_out)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(request)
                tg.start_soon(closer)
                await inside.wait()
                await anyio.wait_all_tasks_blocked()
                assert closed == []
                leave.set()
        assert closed == [0]
        with pytest.raises(UsageError, match="closed"):
            async with isolation.scope(ctx()), manager.session():
                pass


class TestInvalidation:
    async def test_commit_cut_short_invalidates(self, engine: AsyncEngine) -> None:
        """A commit that overruns the cleanup time invalidates the connection."""
        manager = SessionManager(engine)
        invalidated: list[object] = []
        event.listen(engine.sync_engine.pool, "invalidate", lambda *a: invalidated.append(a))
        never = anyio.Event()

        def on_commit(conn: Any) -> None:
            await_only(never.wait())

        event.listen(engine.sync_engine, "commit", on_commit)
        with pytest.raises(isolation.SessionError, match="outcome is unknown"):
            async with isolation.scope(ctx(), cleanup_timeout=0.05), manager.session() as s:
                s.add(note("maybe"))
        event.remove(engine.sync_engine, "commit", on_commit)
        assert invalidated
        assert checked_out(engine) == 0
        assert manager.stats().checked_out == 0
        async with isolation.scope(ctx()), manager.session() as s:
            assert (await s.execute(text("select 1"))).scalar() == 1

    @pytest.mark.parametrize("hook", ["rollback", "checkout", "reset"])
    async def test_cancelled_mid_step_is_invalidated(
        self, engine: AsyncEngine, fake_clock: FakeClock, hook: str
    ) -> None:
        """Cancelled during checkout, a rollback or a close (the pool's reset) cut short: the
        connection is invalidated, never reused."""
        manager = SessionManager(engine)
        invalidated: list[object] = []
        event.listen(engine.sync_engine.pool, "invalidate", lambda *a: invalidated.append(a))
        reached, never = anyio.Event(), anyio.Event()

        def block(*args: Any) -> None:
            reached.set()
            await_only(never.wait())

        target = engine.sync_engine if hook == "rollback" else engine.sync_engine.pool
        event.listen(target, hook, block)

        expected = {
            "rollback": ValueError,  # the block's own error, with a note
            "checkout": ContextExpiredError,
            "reset": isolation.SessionError,  # the pool's reset runs inside commit()
        }[hook]

        async def request() -> None:
            with pytest.raises(expected):
                async with isolation.scope(ctx(ttl=10), cleanup_timeout=0.05):
                    async with manager.session() as s:
                        if hook == "rollback":
                            s.add(note("lost"))
                            await s.flush()
                            raise ValueError("roll back")
                        await s.execute(select(Note))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(request)
                if hook == "checkout":
                    await reached.wait()
                    fake_clock.advance(11)
        event.remove(target, hook, block)
        assert invalidated
        assert checked_out(engine) == 0
        assert manager.stats().checked_out == 0
        assert await count_notes(engine) == 0


class TestConfiguration:
    async def test_defaults_follow_the_pool(self, engine: AsyncEngine) -> None:
        """The global bound is the pool's size plus overflow; per user a quarter, at least 2."""
        manager = SessionManager(engine)
        assert manager.max_sessions == 5
        assert manager.per_user_limit == 2
        assert SessionManager(engine, max_sessions=3).max_sessions == 3

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"per_user_limit": 0},
            {"acquire_timeout": 0},
            {"acquire_timeout": float("nan")},
            {"hold_warning": -1},
            {"return_check": 2.0},
            {"max_sessions": 0},
        ],
    )
    async def test_bad_values_are_refused(
        self, engine: AsyncEngine, kwargs: dict[str, Any]
    ) -> None:
        """Each bad argument raises ConfigurationError naming it."""
        with pytest.raises(isolation.ConfigurationError, match=next(iter(kwargs))):
            SessionManager(engine, **kwargs)

    def test_not_an_engine(self) -> None:
        """A sync engine or anything else is a UsageError."""
        with pytest.raises(UsageError, match="AsyncEngine"):
            SessionManager(object())  # type: ignore[arg-type]


async def test_exhaustion_error_names_principal_limit_and_time(engine: AsyncEngine) -> None:
    """Past acquire_timeout, PoolExhaustedError names the principal, the limit, the wait."""
    manager = SessionManager(engine, per_user_limit=1, acquire_timeout=0.05)
    inside, leave = anyio.Event(), anyio.Event()
    errors: list[PoolExhaustedError] = []

    async def holder() -> None:
        async with isolation.scope(ctx()), manager.session():
            inside.set()
            await leave.wait()

    async def second() -> None:
        await inside.wait()
        try:
            async with isolation.scope(ctx()), manager.session():
                pass
        except PoolExhaustedError as exc:
            errors.append(exc)
        leave.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder)
            tg.start_soon(second)
    assert len(errors) == 1
    message = str(errors[0])
    assert "'alice' of tenant 'acme'" in message
    assert "per-user limit of 1" in message
    assert "after waiting 0.0" in message
    assert isinstance(errors[0], TimeoutError)
    assert manager.stats().exhausted == 1
    assert manager.stats().checked_out == 0
