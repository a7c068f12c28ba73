"""ContextLocal: state per scope, shared within it, invisible outside it."""

from __future__ import annotations

import gc
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import anyio
import pytest

import isolation
from isolation import ContextLocal, UserContext


class Box:
    """A weak-referenceable value."""


class TestContextLocal:
    def test_outside_a_scope_fails_closed(self) -> None:
        """get() and set() outside a scope raise NoContextError."""
        local: ContextLocal[int] = ContextLocal(int)
        with pytest.raises(isolation.NoContextError):
            local.get()
        with pytest.raises(isolation.NoContextError):
            local.set(1)

    def test_each_scope_sees_only_its_own(self) -> None:
        """What one user's scope writes, another's never reads."""
        local: ContextLocal[str] = ContextLocal(lambda: "empty")
        with isolation.scope(UserContext.new("alice")):
            local.set("alice's")
            assert local.get() == "alice's"
        with isolation.scope(UserContext.new("bob")):
            assert local.get() == "empty"

    def test_later_request_of_same_user_starts_empty(self) -> None:
        """A new scope of the same user does not see the last one's value."""
        local: ContextLocal[list[int]] = ContextLocal(list)
        with isolation.scope(UserContext.new("alice")):
            local.get().append(1)
        with isolation.scope(UserContext.new("alice")):
            assert local.get() == []

    def test_child_scope_starts_empty(self) -> None:
        """A child scope (new context, same principal) has its own values."""
        local: ContextLocal[str] = ContextLocal(lambda: "empty")
        with isolation.scope(UserContext.new("alice")):
            local.set("outer")
            with isolation.scope(UserContext.new("alice")):
                assert local.get() == "empty"
            assert local.get() == "outer"

    def test_no_value_and_no_factory(self) -> None:
        """get() before set() without a default_factory raises NoContextError naming it."""
        local: ContextLocal[int] = ContextLocal(name="counter")
        with (
            isolation.scope(UserContext.new("alice")),
            pytest.raises(isolation.NoContextError, match="counter"),
        ):
            local.get()

    def test_default_factory_must_be_callable(self) -> None:
        """A non-callable default_factory is refused."""
        with pytest.raises(isolation.UsageError):
            ContextLocal(5)  # type: ignore[arg-type]

    def test_repr_and_name(self) -> None:
        """The name shows in repr()."""
        local: ContextLocal[int] = ContextLocal(int, name="memory")
        assert local.name == "memory"
        assert "memory" in repr(local)

    def test_ended_scope_fails_closed(self) -> None:
        """A copied context of an ended scope gets ScopeEndedError, not the old value."""
        import contextvars

        local: ContextLocal[str] = ContextLocal(lambda: "x")
        with isolation.scope(UserContext.new("alice")):
            local.set("secret")
            copied = contextvars.copy_context()
        with pytest.raises(isolation.ScopeEndedError):
            copied.run(local.get)

    def test_expired_scope_fails_closed(self, fake_clock: isolation.testing.FakeClock) -> None:
        """In a scope whose deadline passed, get() raises ContextExpiredError."""
        local: ContextLocal[str] = ContextLocal(lambda: "x")
        with pytest.raises(isolation.ContextExpiredError):
            with isolation.scope(UserContext.new("alice", ttl=5)):
                assert local.get() == "x"
                fake_clock.advance(10)
                local.get()

    def test_value_dropped_when_scope_ends(self) -> None:
        """Nothing keeps a scope's value alive after the scope ends."""
        local: ContextLocal[Box] = ContextLocal(Box)
        with isolation.scope(UserContext.new("alice")):
            ref = weakref.ref(local.get())
        gc.collect()
        assert ref() is None

    def test_default_factory_reading_its_own_local_is_refused(self) -> None:
        """A default_factory that reads its own ContextLocal is a UsageError, not a loop."""
        local: ContextLocal[int] = ContextLocal(lambda: local.get() + 1, name="depth")
        with (
            isolation.scope(UserContext.new("alice")),
            pytest.raises(isolation.UsageError, match="depth called itself"),
        ):
            local.get()

    def test_default_factory_once_per_scope_under_threads(self) -> None:
        """Threads racing to the first get() run default_factory exactly once."""
        calls = 0
        entered = threading.Event()
        release = threading.Event()

        def factory() -> Box:
            nonlocal calls
            calls += 1
            entered.set()
            release.wait(30)
            return Box()

        local: ContextLocal[Box] = ContextLocal(factory)
        with (
            isolation.scope(UserContext.new("alice")),
            isolation.ContextThreadPoolExecutor(8) as pool,
        ):
            futures = [pool.submit(local.get) for _ in range(8)]
            assert entered.wait(30)
            release.set()
            values = {id(f.result(timeout=30)) for f in futures}
        assert calls == 1
        assert len(values) == 1

    @pytest.mark.anyio
    async def test_shared_with_child_tasks_and_threads(self) -> None:
        """Writes in a child task or thread are seen by the whole scope."""
        local: ContextLocal[list[str]] = ContextLocal(list)
        async with isolation.scope(UserContext.new("alice")):
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._append, local, "task")
            await isolation.to_thread(local.get().append, "thread")
            assert sorted(local.get()) == ["task", "thread"]

    @staticmethod
    async def _append(local: ContextLocal[list[str]], value: str) -> None:
        local.get().append(value)

    def test_threads_of_different_users(self) -> None:
        """Five users in five threads, all writing before any reads: each reads its own."""
        local: ContextLocal[str] = ContextLocal(lambda: "empty")
        barrier = threading.Barrier(5, timeout=30)

        def user(i: int) -> str:
            with isolation.scope(UserContext.new(f"user-{i}")):
                local.set(f"value-{i}")
                barrier.wait()
                return local.get()

        with ThreadPoolExecutor(5) as pool:
            assert list(pool.map(user, range(5))) == [f"value-{i}" for i in range(5)]
