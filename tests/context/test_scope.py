"""Scope: binding, switch refusal, child scopes, deadlines, escape detection, finalizers."""

# A scope's exit is what raises (expiry, finalizer failures), so the body belongs
# inside the `pytest.raises` block.

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import threading
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import isolation
from isolation import (
    ConfigurationError,
    ContextExpiredError,
    ContextSwitchError,
    Lifetime,
    NoContextError,
    Scope,
    ScopeEndedError,
    UsageError,
    UserContext,
    current_context,
    current_context_or_none,
    current_scope,
    scope,
    scope_stats,
)
from isolation._counters import open_resources
from isolation.testing import FakeClock

READERS: tuple[Callable[[], object], ...] = (
    current_context,
    current_context_or_none,
    current_scope,
)


def alice(**kwargs: Any) -> UserContext:
    return UserContext.new("alice", tenant_id="acme", **kwargs)


def bob(**kwargs: Any) -> UserContext:
    return UserContext.new("bob", tenant_id="acme", **kwargs)


def read_all() -> dict[str, object]:
    """Call each reader; map its name to what it returned or the exception it raised."""
    seen: dict[str, object] = {}
    for reader in READERS:
        try:
            seen[reader.__name__] = reader()
        except Exception as exc:
            seen[reader.__name__] = exc
    return seen


class TestBinding:
    def test_binds_and_resets(self) -> None:
        """Inside the block the context is current; outside, none is bound."""
        ctx = alice()
        assert current_context_or_none() is None
        with scope(ctx) as s:
            assert isinstance(s, Scope)
            assert current_context() is ctx
            assert current_context_or_none() is ctx
            assert current_scope() is s
            assert s.context is ctx
            assert s.active
            assert not s.ended
            assert s.parent is None
        assert s.ended
        assert not s.active
        assert current_context_or_none() is None

    def test_no_context_error_outside(self) -> None:
        """current_context() and current_scope() raise NoContextError (a LookupError)."""
        for reader in (current_context, current_scope):
            with pytest.raises(NoContextError) as info:
                reader()
            assert isinstance(info.value, LookupError)
            assert "isolation.scope(ctx)" in str(info.value)

    def test_reset_when_body_raises(self) -> None:
        """The ContextVar is reset with its token even when the body raises."""
        with pytest.raises(ValueError, match="boom"), scope(alice()):
            raise ValueError("boom")
        assert current_context_or_none() is None

    def test_scope_is_isolation_scope(self) -> None:
        """isolation.scope is the Scope class, printed under its public name."""
        assert isolation.scope is Scope
        assert Scope.__module__ == "isolation"
        text = repr(Scope(alice()))
        assert text.startswith("<isolation.Scope 'alice' of tenant 'acme' new>")
        assert repr(Scope(UserContext.new("carol"))) == "<isolation.Scope 'carol' new>"

    @pytest.mark.parametrize("bad", [None, "alice", object()])
    def test_needs_a_user_context(self, bad: object) -> None:
        """scope() refuses anything but a UserContext."""
        with pytest.raises(UsageError):
            Scope(bad)  # type: ignore[arg-type]

    @pytest.mark.parametrize("timeout", [0, -1, math.nan, math.inf, "5"])
    def test_cleanup_timeout_checked(self, timeout: object) -> None:
        """cleanup_timeout must be a finite positive number of seconds."""
        with pytest.raises(ConfigurationError):
            Scope(alice(), cleanup_timeout=timeout)  # type: ignore[arg-type]
        assert Scope(alice(), cleanup_timeout=0.5) is not None

    def test_entered_twice_refused(self) -> None:
        """A Scope object is entered once: again, or nested in itself, is a UsageError."""
        s = scope(alice())
        with s:
            with pytest.raises(UsageError, match="entered once"), s:
                pass
            assert current_scope() is s
        with pytest.raises(UsageError), s:
            pass

    @pytest.mark.anyio
    async def test_async_entered_twice_refused(self) -> None:
        """An ended scope cannot be entered again with async with."""
        s = scope(alice())
        async with s:
            pass
        with pytest.raises(UsageError):
            async with s:
                pass

    @pytest.mark.anyio
    async def test_async_binds_in_child_tasks(self) -> None:
        """async with binds the context in the body and in its child tasks."""
        ctx = alice()
        seen: list[UserContext] = []

        async def child() -> None:
            seen.append(current_context())

        async with scope(ctx) as s, anyio.create_task_group() as tg:
            assert current_scope() is s
            tg.start_soon(child)
            tg.start_soon(child)
        assert seen == [ctx, ctx]
        assert current_context_or_none() is None

    def test_remaining(self, fake_clock: FakeClock) -> None:
        """Scope.remaining() is infinite without a deadline, counts down and clamps at 0."""
        with scope(alice()) as s:
            assert s.deadline is None
            assert s.remaining() == math.inf
        with scope(alice(ttl=10)) as s:
            assert s.deadline == fake_clock.time() + 10
            fake_clock.advance(3)
            assert s.remaining() == 7.0
        assert Scope(alice(ttl=1)).remaining() == math.inf  # not entered: no deadline yet


class TestSwitch:
    def test_other_principal_refused(self) -> None:
        """Entering another principal's scope inside a bound one raises ContextSwitchError."""
        outer = alice()
        with scope(outer):
            with pytest.raises(ContextSwitchError) as info, scope(bob()):
                pytest.fail("the body of a refused scope ran")
            assert "'bob' of tenant 'acme'" in str(info.value)
            assert "'alice' of tenant 'acme'" in str(info.value)
            assert "allow_switch=True" in str(info.value)
            assert (info.value.entered, info.value.bound) == (bob().principal, outer.principal)
            assert type(info.value.entered) is type(info.value.bound) is isolation.Principal
            assert current_context() is outer

    def test_same_user_id_other_tenant_refused(self) -> None:
        """The same user id in another tenant is another principal: refused."""
        with scope(UserContext.new("alice", tenant_id="acme")):
            with (
                pytest.raises(ContextSwitchError),
                scope(UserContext.new("alice", tenant_id="globex")),
            ):
                pass
            with pytest.raises(ContextSwitchError), scope(UserContext.new("alice")):
                pass

    def test_allow_switch(self) -> None:
        """allow_switch=True binds the other principal as a root scope, then restores."""
        outer, other = alice(), bob()
        with scope(outer):
            with scope(other, allow_switch=True) as s:
                assert current_context() is other
                assert s.parent is None
            assert current_context() is outer

    def test_allow_switch_keeps_outer_deadline(self, fake_clock: FakeClock) -> None:
        """A switched scope still ends no later than the scope it runs in."""
        with scope(alice(ttl=5)) as outer, scope(bob(ttl=50), allow_switch=True) as s:
            assert s.deadline == outer.deadline

    @pytest.mark.anyio
    async def test_async_switch_refused(self) -> None:
        """async with refuses a switch the same way, and allow_switch permits it."""
        async with scope(alice()):
            with pytest.raises(ContextSwitchError):
                async with scope(bob()):
                    pass
            other = bob()
            async with scope(other, allow_switch=True):
                assert current_context() is other


class TestReentrancy:
    def test_same_context_object_reenters(self) -> None:
        """The same context nested in its own scope gets the enclosing scope back."""
        ctx = alice()
        with scope(ctx) as outer:
            with scope(ctx) as inner:
                assert inner is outer
                assert current_scope() is outer
            assert outer.active
            assert current_context() is ctx
        assert outer.ended

    @pytest.mark.anyio
    async def test_async_reenters(self) -> None:
        """async with re-enters the same way."""
        ctx = alice()
        async with scope(ctx) as outer:
            async with scope(ctx) as inner:
                assert inner is outer
            assert current_scope() is outer

    def test_finalizer_on_reentered_scope_object_runs_once(self) -> None:
        """A finalizer registered on the re-entered Scope object runs at the outer exit."""
        ctx = alice()
        calls: list[object] = []
        with scope(ctx):
            inner = scope(ctx)
            with inner:
                inner.on_close(calls.append)
            assert calls == []
        assert calls == [None]

    def test_reentering_expired_context_raises(self, fake_clock: FakeClock) -> None:
        """Re-entering a context after its deadline raises ContextExpiredError."""
        ctx = alice(ttl=1)
        with pytest.raises(ContextExpiredError), scope(ctx):
            fake_clock.advance(2)
            with scope(ctx):
                pytest.fail("the body of an expired scope ran")


class TestChildScope:
    def test_new_context_same_principal_is_child(self) -> None:
        """A new context of the bound principal opens a child scope with the parent set."""
        parent_ctx, child_ctx = alice(), alice()
        with scope(parent_ctx) as parent:
            with scope(child_ctx) as child:
                assert child is not parent
                assert child.parent is parent
                assert current_context() is child_ctx
                assert current_scope() is child
            assert current_context() is parent_ctx

    def test_child_finalizers_run_at_child_exit(self) -> None:
        """A child's finalizers run when the child ends, the parent's when it ends."""
        order: list[str] = []
        with scope(alice()) as parent:
            parent.on_close(lambda exc: order.append("parent"))
            with scope(alice()) as child:
                child.on_close(lambda exc: order.append("child"))
            assert order == ["child"]
        assert order == ["child", "parent"]

    @pytest.mark.parametrize(
        ("outer_ttl", "inner_ttl", "expected"),
        [(10, 100, 10), (100, 10, 10), (None, 10, 10), (10, None, 10), (None, None, None)],
    )
    def test_earliest_deadline_kept(
        self,
        fake_clock: FakeClock,
        outer_ttl: float | None,
        inner_ttl: float | None,
        expected: float | None,
    ) -> None:
        """A child's deadline is the earliest of its context's and its parent's."""
        start = fake_clock.time()
        with scope(alice(ttl=outer_ttl)), scope(alice(ttl=inner_ttl)) as child:
            assert child.deadline == (None if expected is None else start + expected)

    def test_child_of_expired_parent_refused(self, fake_clock: FakeClock) -> None:
        """A child cannot outlive an expired parent: entering it raises ContextExpiredError."""
        with pytest.raises(ContextExpiredError), scope(alice(ttl=1)):
            fake_clock.advance(1)
            with scope(alice()):
                pytest.fail("the body of an expired child ran")


class TestSyncDeadline:
    def test_expired_on_entry(self, fake_clock: FakeClock) -> None:
        """Entering an expired context raises ContextExpiredError and binds nothing."""
        ctx = alice(ttl=1)
        fake_clock.advance(1)
        with pytest.raises(ContextExpiredError) as info, scope(ctx):
            pytest.fail("the body of an expired scope ran")
        assert isinstance(info.value, TimeoutError)
        assert current_context_or_none() is None

    def test_checked_on_exit(self, fake_clock: FakeClock) -> None:
        """A deadline passed during a sync body raises at exit; finalizers get that error."""
        seen: list[BaseException | None] = []
        before = scope_stats().expired
        with pytest.raises(ContextExpiredError) as info, scope(alice(ttl=5)) as s:
            s.on_close(seen.append)
            fake_clock.advance(5)
        assert seen == [info.value]
        assert scope_stats().expired == before + 1
        assert current_context_or_none() is None

    def test_body_error_wins_over_expiry(self, fake_clock: FakeClock) -> None:
        """If the body raised after the deadline, its exception propagates unchanged."""
        with pytest.raises(KeyError), scope(alice(ttl=5)):
            fake_clock.advance(10)
            raise KeyError("body")

    def test_current_context_raises_when_expired(self, fake_clock: FakeClock) -> None:
        """Inside an expired sync scope every reader raises ContextExpiredError."""
        with pytest.raises(ContextExpiredError), scope(alice(ttl=5)):
            fake_clock.advance(5)
            seen = read_all()
            assert all(isinstance(v, ContextExpiredError) for v in seen.values()), seen

    def test_thread_running_after_expiry(self, fake_clock: FakeClock) -> None:
        """A thread still running in the scope after the deadline gets ContextExpiredError."""
        release = threading.Event()
        seen: dict[str, object] = {}

        def worker() -> None:
            release.wait(10)
            seen.update(read_all())

        with pytest.raises(ContextExpiredError), scope(alice(ttl=5)):
            thread = threading.Thread(target=contextvars.copy_context().run, args=(worker,))
            thread.start()
            fake_clock.advance(5)
            release.set()
            thread.join(10)
        assert set(seen) == {"current_context", "current_context_or_none", "current_scope"}
        assert all(isinstance(v, ContextExpiredError) for v in seen.values()), seen


class TestAsyncDeadline:
    @pytest.mark.anyio
    async def test_body_cancelled_and_error_raised(self, fake_clock: FakeClock) -> None:
        """At the deadline the body is cancelled and async with raises ContextExpiredError."""
        waiting = anyio.Event()
        seen: list[BaseException | None] = []
        resumed: list[bool] = []

        async def finalizer(exc: BaseException | None) -> None:
            await anyio.lowlevel.checkpoint()  # finalizers may await: they run shielded
            seen.append(exc)

        async def advance() -> None:
            await waiting.wait()
            fake_clock.advance(10)

        before = scope_stats().expired
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(advance)
                with pytest.raises(ContextExpiredError) as info:
                    async with scope(alice(ttl=10)) as s:
                        s.on_close(finalizer)
                        waiting.set()
                        await anyio.Event().wait()
                        resumed.append(True)
        assert resumed == []
        assert isinstance(info.value, TimeoutError)
        assert seen == [info.value]
        assert isinstance(info.value.__cause__, anyio.get_cancelled_exc_class())
        assert scope_stats().expired == before + 1
        assert current_context_or_none() is None

    @pytest.mark.anyio
    async def test_real_clock_deadline(self) -> None:
        """With the system clock, a tiny ttl cancels a body waiting forever."""
        started: list[bool] = []
        seen: list[BaseException | None] = []
        with anyio.fail_after(10):
            with pytest.raises(ContextExpiredError) as info:
                async with scope(alice(ttl=0.25)) as s:
                    s.on_close(seen.append)
                    started.append(True)
                    await anyio.Event().wait()
        assert started == [True]
        assert seen == [info.value]

    @pytest.mark.anyio
    async def test_never_exits_silently_without_checkpoint(self, fake_clock: FakeClock) -> None:
        """A body that passes its deadline without awaiting still raises at exit."""
        with pytest.raises(ContextExpiredError):
            async with scope(alice(ttl=1)):
                fake_clock.advance(1)
                for reader in READERS:
                    with pytest.raises(ContextExpiredError):
                        reader()

    @pytest.mark.anyio
    async def test_expired_on_entry(self, fake_clock: FakeClock) -> None:
        """Entering an expired context with async with raises and binds nothing."""
        ctx = alice(ttl=1)
        fake_clock.advance(2)
        with pytest.raises(ContextExpiredError):
            async with scope(ctx):
                pytest.fail("the body of an expired scope ran")
        assert current_context_or_none() is None

    @pytest.mark.anyio
    async def test_body_error_propagates(self, fake_clock: FakeClock) -> None:
        """A body error before the deadline propagates; the finalizer receives it."""
        seen: list[BaseException | None] = []
        with pytest.raises(KeyError) as info:
            async with scope(alice(ttl=10)) as s:
                s.on_close(seen.append)
                raise KeyError("body")
        assert seen == [info.value]

    @pytest.mark.anyio
    async def test_body_ok_before_deadline(self, fake_clock: FakeClock) -> None:
        """A body that finishes in time exits normally; the clock no longer watches it."""
        seen: list[BaseException | None] = []
        async with scope(alice(ttl=10)) as s:
            s.on_close(seen.append)
            await anyio.lowlevel.checkpoint()
        assert seen == [None]
        fake_clock.advance(100)  # a later advance must not touch the ended scope

    @pytest.mark.anyio
    async def test_clock_moving_short_of_the_deadline(self, fake_clock: FakeClock) -> None:
        """Advancing the clock short of the deadline cancels nothing; readers see the user."""
        ctx = alice(ttl=10)
        async with scope(ctx) as s:
            fake_clock.advance(9)
            await anyio.lowlevel.checkpoint()
            assert current_context() is ctx
            assert current_context_or_none() is ctx
            assert current_scope() is s
            assert s.remaining() == 1.0

    @pytest.mark.anyio
    async def test_deadline_without_fake_clock_reaches_no_further(self) -> None:
        """With the system clock, a scope that ends in time is not expired."""
        async with scope(alice(ttl=60)) as s:
            assert 0 < s.remaining() <= 60

    @pytest.mark.anyio
    async def test_outside_cancel_is_not_expiry(self, fake_clock: FakeClock) -> None:
        """An outside cancel reaches the finalizers as the cancellation, not as an expiry."""
        seen: list[BaseException | None] = []

        async def finalizer(exc: BaseException | None) -> None:
            await anyio.lowlevel.checkpoint()
            seen.append(exc)

        for ttl in (None, 60.0):
            with anyio.CancelScope() as outer:
                async with scope(alice(ttl=ttl)) as s:
                    s.on_close(finalizer)
                    outer.cancel()
                    await anyio.Event().wait()
            assert outer.cancelled_caught
        assert len(seen) == 2
        assert all(isinstance(exc, anyio.get_cancelled_exc_class()) for exc in seen)

    @pytest.mark.anyio
    async def test_worker_thread_after_expiry(self, fake_clock: FakeClock) -> None:
        """A worker thread abandoned at the deadline reads ContextExpiredError, never the user."""
        release = threading.Event()
        done = threading.Event()
        seen: dict[str, object] = {}
        waiting = anyio.Event()

        def worker() -> None:
            anyio.from_thread.run_sync(waiting.set)
            release.wait(10)
            seen.update(read_all())
            done.set()

        with anyio.fail_after(10):
            with pytest.raises(ContextExpiredError):
                async with scope(alice(ttl=5)), anyio.create_task_group() as tg:

                    async def advance() -> None:
                        await waiting.wait()
                        fake_clock.advance(5)

                    tg.start_soon(advance)
                    await anyio.to_thread.run_sync(worker, abandon_on_cancel=True)
            release.set()
            await anyio.to_thread.run_sync(done.wait, 10)
        assert set(seen) == {"current_context", "current_context_or_none", "current_scope"}
        assert all(isinstance(v, ContextExpiredError) for v in seen.values()), seen


class TestEscape:
    def test_copy_context_run(self) -> None:
        """copy_context().run after the scope ended raises ScopeEndedError from every reader."""
        with scope(alice()):
            copied = contextvars.copy_context()
        before = scope_stats().escapes_detected
        seen = copied.run(read_all)
        for value in seen.values():
            assert isinstance(value, ScopeEndedError), seen
            assert not isinstance(value, NoContextError)
        assert scope_stats().escapes_detected >= before + 3

    def test_copied_context_of_ended_scope_allows_another_principal(self) -> None:
        """In a copy of an ended scope nothing is bound: another principal may be entered."""
        with scope(alice()):
            copied = contextvars.copy_context()
        other = bob()

        def enter_other() -> UserContext:
            with scope(other):
                return current_context()

        assert copied.run(enter_other) is other
        with pytest.raises(ScopeEndedError):
            copied.run(current_context)

    def test_thread_with_copied_context(self) -> None:
        """A thread started with a copied context outliving the scope gets ScopeEndedError."""
        release = threading.Event()
        seen: dict[str, object] = {}

        def worker() -> None:
            release.wait(10)
            seen.update(read_all())

        with scope(alice()):
            thread = threading.Thread(target=contextvars.copy_context().run, args=(worker,))
            thread.start()
        release.set()
        thread.join(10)
        assert len(seen) == 3
        assert all(isinstance(v, ScopeEndedError) for v in seen.values()), seen

    def test_escaped_with_deadline_still_pending(self, fake_clock: FakeClock) -> None:
        """An escape from a scope whose deadline has not passed is ScopeEndedError."""
        with scope(alice(ttl=60)):
            copied = contextvars.copy_context()
        assert all(isinstance(v, ScopeEndedError) for v in copied.run(read_all).values())

    @pytest.mark.anyio
    async def test_task_started_into_outer_group(self) -> None:
        """A task spawned from inside the scope into an outer task group cannot read the user."""
        release = anyio.Event()
        seen: dict[str, object] = {}

        async def escaped() -> None:
            await release.wait()
            seen.update(read_all())

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                async with scope(alice()):
                    tg.start_soon(escaped)
                release.set()
        assert len(seen) == 3
        assert all(isinstance(v, ScopeEndedError) for v in seen.values()), seen


class TestEscapeAsyncio:
    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.mark.anyio
    async def test_detached_create_task(self) -> None:
        """A detached asyncio.create_task outliving its scope gets ScopeEndedError."""
        release = asyncio.Event()
        seen: dict[str, object] = {}

        async def escaped() -> None:
            await release.wait()
            seen.update(read_all())

        async with scope(alice()):
            task = asyncio.create_task(escaped())
        release.set()
        with anyio.fail_after(10):
            await task
        assert len(seen) == 3
        assert all(isinstance(v, ScopeEndedError) for v in seen.values()), seen


class TestFinalizers:
    def test_reverse_order_and_receive_none(self) -> None:
        """Finalizers run in reverse order of registration and get None after success."""
        calls: list[tuple[str, object]] = []
        with scope(alice()) as s:
            for name in ("first", "second", "third"):
                s.on_close(lambda exc, name=name: calls.append((name, exc)))
        assert calls == [("third", None), ("second", None), ("first", None)]

    def test_on_close_is_a_decorator(self) -> None:
        """on_close returns its argument, so it works as a decorator."""
        with scope(alice()) as s:

            @s.on_close
            def cleanup(exc: BaseException | None) -> None:
                pass

            assert callable(cleanup)

    def test_receive_body_exception(self) -> None:
        """Finalizers get the body's exception, which then propagates."""
        seen: list[BaseException | None] = []
        with pytest.raises(ValueError, match="body") as info, scope(alice()) as s:
            s.on_close(seen.append)
            raise ValueError("body")
        assert seen == [info.value]

    def test_on_close_refused_when_inactive(self) -> None:
        """on_close before entering or after the end is a UsageError."""
        s = scope(alice())
        with pytest.raises(UsageError, match="not active"):
            s.on_close(lambda exc: None)
        with s:
            pass
        with pytest.raises(UsageError, match="not active"):
            s.on_close(lambda exc: None)

    def test_non_callable_refused(self) -> None:
        """on_close takes a callable."""
        with scope(alice()) as s, pytest.raises(UsageError, match="callable"):
            s.on_close(42)  # type: ignore[arg-type]

    def test_async_finalizer_refused_on_sync_scope(self) -> None:
        """An async function or an object with async __call__ needs an async with scope."""

        async def coroutine_function(exc: BaseException | None) -> None:
            pass

        class AsyncCallable:
            async def __call__(self, exc: BaseException | None) -> None:
                pass

        with scope(alice()) as s:
            for fn in (coroutine_function, AsyncCallable()):
                with pytest.raises(UsageError, match="async with"):
                    s.on_close(fn)

    def test_sync_finalizer_returning_awaitable_fails(self) -> None:
        """A sync finalizer that returns an awaitable on a sync scope is a failure, not a leak."""

        async def later() -> None:
            pass

        class Awaitable:
            def __await__(self) -> Any:
                yield

        ran: list[str] = []
        with pytest.raises(UsageError, match="returned an awaitable"), scope(alice()) as s:
            s.on_close(lambda exc: ran.append("first"))
            s.on_close(lambda exc: Awaitable())
            s.on_close(lambda exc: later())
        assert ran == ["first"]

    def test_all_run_and_first_failure_raised_with_later_chained(self) -> None:
        """Body ok: every finalizer runs; the first failure raises with later ones chained."""
        ran: list[str] = []

        def failing(name: str) -> Callable[[BaseException | None], None]:
            def fn(exc: BaseException | None) -> None:
                ran.append(name)
                raise RuntimeError(name)

            return fn

        before = scope_stats().finalizer_failures
        with pytest.raises(RuntimeError, match="c") as info, scope(alice()) as s:
            s.on_close(failing("a"))
            s.on_close(lambda exc: ran.append("ok"))
            s.on_close(failing("b"))
            s.on_close(failing("c"))
        assert ran == ["c", "b", "ok", "a"]
        assert str(info.value.__context__) == "b"
        assert str(info.value.__context__.__context__) == "a"  # type: ignore[union-attr]
        assert scope_stats().finalizer_failures == before + 3
        assert current_context_or_none() is None

    def test_body_error_propagates_with_notes(self, caplog: pytest.LogCaptureFixture) -> None:
        """Body raised: its exception propagates, finalizer failures are notes, logs, counts."""
        ctx = alice()
        before = scope_stats().finalizer_failures
        with (
            caplog.at_level(logging.ERROR, logger="isolation.context"),
            pytest.raises(ValueError, match="body") as info,
            scope(ctx) as s,
        ):
            s.on_close(lambda exc: (_ for _ in ()).throw(RuntimeError("f1")))
            s.on_close(lambda exc: (_ for _ in ()).throw(OSError("f2")))
            raise ValueError("body")
        notes = info.value.__notes__
        assert len(notes) == 2
        assert "OSError('f2')" in notes[0]
        assert "RuntimeError('f1')" in notes[1]
        assert scope_stats().finalizer_failures == before + 2
        records = [r for r in caplog.records if getattr(r, "event", None) == "finalizer_failed"]
        assert len(records) == 2
        assert all(r.request_id == ctx.request_id for r in records)  # type: ignore[attr-defined]

    def test_failure_after_expiry_noted_on_expired_error(self, fake_clock: FakeClock) -> None:
        """A finalizer failing at an expired exit is a note on the ContextExpiredError."""
        with pytest.raises(ContextExpiredError) as info, scope(alice(ttl=1)) as s:
            s.on_close(lambda exc: (_ for _ in ()).throw(RuntimeError("cleanup")))
            fake_clock.advance(1)
        assert any("cleanup" in note for note in info.value.__notes__)


class TestAsyncFinalizers:
    @pytest.mark.anyio
    async def test_sync_and_async_in_reverse_order(self) -> None:
        """An async scope runs sync and async finalizers, in reverse order, awaiting each."""
        calls: list[str] = []

        async def async_fn(exc: BaseException | None) -> None:
            await anyio.lowlevel.checkpoint()
            calls.append("async")

        class AsyncCallable:
            async def __call__(self, exc: BaseException | None) -> None:
                await anyio.lowlevel.checkpoint()
                calls.append("callable")

        async def later() -> None:
            calls.append("returned")

        async with scope(alice()) as s:
            s.on_close(lambda exc: calls.append("sync"))
            s.on_close(async_fn)
            s.on_close(AsyncCallable())
            s.on_close(lambda exc: later())
        assert calls == ["returned", "callable", "async", "sync"]

    @pytest.mark.anyio
    async def test_shielded_from_outside_cancel(self) -> None:
        """Finalizers complete their awaits even though the scope was cancelled."""
        done: list[str] = []

        async def finalizer(exc: BaseException | None) -> None:
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            done.append("done")

        with anyio.CancelScope() as outer:
            async with scope(alice()) as s:
                s.on_close(finalizer)
                outer.cancel()
                await anyio.lowlevel.checkpoint()
        assert done == ["done"]

    @pytest.mark.anyio
    async def test_bounded_by_cleanup_timeout(self) -> None:
        """A finalizer awaiting forever is abandoned and reported as a CleanupTimeoutError
        (a TimeoutError, and an IsolationError naming the finalizer and its bound)."""
        ran: list[str] = []

        async def stuck(exc: BaseException | None) -> None:
            await anyio.Event().wait()

        with anyio.fail_after(10):
            with pytest.raises(TimeoutError, match="overran its cleanup time") as info:
                async with scope(alice(), cleanup_timeout=0.05) as s:
                    s.on_close(lambda exc: ran.append("earlier"))
                    s.on_close(stuck)
        assert ran == ["earlier"]
        assert isinstance(info.value, isolation.CleanupTimeoutError)
        assert info.value.finalizer.endswith("stuck")
        assert info.value.timeout == 0.05

    @pytest.mark.anyio
    async def test_stuck_finalizer_noted_on_body_error(self) -> None:
        """With a failing body, an abandoned finalizer is a note on the body's exception."""

        async def stuck(exc: BaseException | None) -> None:
            await anyio.Event().wait()

        with anyio.fail_after(10):
            with pytest.raises(KeyError) as info:
                async with scope(alice(), cleanup_timeout=0.05) as s:
                    s.on_close(stuck)
                    raise KeyError("body")
        assert any("TimeoutError" in note for note in info.value.__notes__)

    @pytest.mark.anyio
    async def test_first_failure_raised_with_later_chained(self) -> None:
        """Body ok: the first async failure propagates, the later one chained, all ran."""
        ran: list[str] = []

        async def failing_a(exc: BaseException | None) -> None:
            ran.append("a")
            raise RuntimeError("a")

        async def failing_b(exc: BaseException | None) -> None:
            ran.append("b")
            raise RuntimeError("b")

        with pytest.raises(RuntimeError, match="b") as info:
            async with scope(alice()) as s:
                s.on_close(failing_a)
                s.on_close(failing_b)
        assert ran == ["b", "a"]
        assert str(info.value.__context__) == "a"


class TestStorage:
    def test_per_scope_storage(self) -> None:
        """Each scope gets its own storage, made once, and refuses it after the end."""
        with scope(alice()) as parent:
            data, lock = parent._storage()
            assert parent._storage() == (data, lock)
            with scope(alice()) as child:
                assert child._storage()[0] is not data
        with pytest.raises(ScopeEndedError):
            parent._storage()


class TestFastExit:
    """The common exit (no deadline, no finalizer) skips _unbind's questions, not its work."""

    @staticmethod
    def _fields(s: Scope) -> dict[str, object]:
        fields = {name: getattr(s, name) for name in Scope.__slots__ if name != "__weakref__"}
        fields["_lock"] = type(fields["_lock"])  # each scope has its own lock
        return fields

    def test_ends_like_unbind(self) -> None:
        """A plain `with` leaves the scope, and the binding, as _unbind leaves them."""
        ctx = alice()
        ended: list[dict[str, object]] = []
        for fast in (True, False):
            before = open_resources()["scopes"]
            s = scope(ctx)
            s.__enter__()
            s._storage()  # per-scope values and a finish hook: both let go at the end
            s.on_finish(lambda: None)
            if fast:
                assert s.__exit__(None, None, None) is False
            else:
                assert s._unbind() is None
            assert current_context_or_none() is None
            assert open_resources()["scopes"] == before
            assert s.ended
            ended.append(self._fields(s))
        assert ended[0] == ended[1]

    def test_common_scope_stores_no_defaults(self) -> None:
        """A plain scope keeps its options' defaults at class level; set ones are its own."""
        plain = scope(alice())
        with plain:
            assert current_context() is plain.context
        assert vars(plain) == {}
        assert plain.lifetime is Lifetime.REQUEST
        assert plain.parent is None
        other = scope(alice(), lifetime=Lifetime.CONNECTION, cleanup_timeout=1, allow_switch=True)
        assert vars(other) == {
            "_lifetime": Lifetime.CONNECTION,
            "_cleanup_timeout": 1,
            "_allow_switch": True,
        }
        assert vars(scope(alice())) == {}

    def test_exit_in_another_context_refused(self) -> None:
        """A scope entered in a copied context and exited here is refused, not a ValueError."""
        s = scope(alice())
        contextvars.copy_context().run(s.__enter__)
        with pytest.raises(UsageError, match="exited out of place"):
            s.__exit__(None, None, None)
        assert s.ended
        assert current_context_or_none() is None


class TestStats:
    def test_snapshot_is_a_value(self) -> None:
        """scope_stats() returns an immutable snapshot under the public name."""
        stats = scope_stats()
        assert type(stats).__name__ == "ScopeStats"
        assert type(stats).__module__ == "isolation"
        assert stats.finalizer_failures >= 0
        assert stats.escapes_detected >= 0
        assert stats.expired >= 0
        with pytest.raises(AttributeError):
            stats.expired = 0  # type: ignore[misc]
