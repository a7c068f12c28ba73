"""@request_scoped: one instance per scope, exactly once, refused when it shares state."""

from __future__ import annotations

import contextvars
import gc
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

import anyio
import anyio.lowlevel
import pytest

import isolation
from isolation import UserContext
from isolation._redact import set_redactor
from isolation.factories._index import SharedStateIndex
from isolation.factories._request_scoped import ScopedFactory, scoped_factory_of, wrap_scoped
from isolation.report._modes.fm07_exactly_once import exactly_once as fm07


def private(fn: Callable[..., Any], **options: Any) -> Callable[[], Any]:
    """``fn`` wrapped like @request_scoped, with an index of its own."""
    index = options.pop("index", None)
    if index is None:
        index = SharedStateIndex()
    return wrap_scoped(ScopedFactory(fn, index=index, **options))


class Engine:
    """A clean engine: per-user state only."""

    def __init__(self, ctx: UserContext) -> None:
        self.user = ctx.user_id
        self.history: list[str] = []


class LeakyEngine:
    """The classic leak: a class-level cache shared by every instance."""

    cache: ClassVar[dict[str, str]] = {}

    def __init__(self) -> None:
        self.history: list[str] = []


class TestDecoration:
    """What @request_scoped accepts, and what it refuses at decoration time."""

    def test_function_class_and_options(self) -> None:
        """Bare and configured forms both wrap functions and classes."""
        make = isolation.request_scoped(Engine)
        configured = isolation.request_scoped(check="sampled", sample_every=10)(Engine)
        with isolation.scope(UserContext.new("alice")):
            assert make().user == "alice"
            assert configured().user == "alice"
        factory = scoped_factory_of(configured)
        assert factory is not None
        assert factory.check == "sampled"
        assert factory.sample_every == 10
        assert "sampled" in repr(factory)
        assert scoped_factory_of(Engine) is None

    def test_wrapper_keeps_name_and_takes_nothing(self) -> None:
        """The wrapper keeps the factory's name and doc, and its signature takes nothing."""
        import inspect

        make = isolation.request_scoped(Engine)
        assert make.__name__ == "Engine"
        assert make.__doc__ == Engine.__doc__
        assert str(inspect.signature(make)) == "()"

    def test_context_injection(self) -> None:
        """A parameter annotated UserContext gets the scope's context, by keyword or position."""

        def by_keyword(*, ctx: UserContext, size: int = 3) -> tuple[str, int]:
            return ctx.user_id, size

        def by_position(ctx: UserContext, /) -> str:
            return ctx.user_id

        def string_annotation(ctx: isolation.UserContext) -> str:
            return ctx.user_id

        def no_signature_needed(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
            return args, kwargs

        with isolation.scope(UserContext.new("alice")):
            assert private(by_keyword)() == ("alice", 3)
            assert private(by_position)() == "alice"
            assert private(string_annotation)() == "alice"
            assert private(no_signature_needed)() == ((), {})

    def test_unannotated_required_parameter_refused(self) -> None:
        """A required parameter that is not a UserContext is refused at decoration."""

        def make(size):  # type: ignore[no-untyped-def]
            return size

        with pytest.raises(isolation.UsageError, match="'size' is required"):
            isolation.request_scoped(make)

    def test_two_context_parameters_refused(self) -> None:
        """Only one parameter may take the context."""

        def make(a: UserContext, b: UserContext) -> None:
            pass

        with pytest.raises(isolation.UsageError, match="both 'a' and 'b'"):
            isolation.request_scoped(make)

    @pytest.mark.parametrize(
        "options",
        [{"check": "sometimes"}, {"sample_every": 0}, {"max_depth": 0}, {"max_objects": 1.5}],
    )
    def test_bad_options_refused(self, options: dict[str, Any]) -> None:
        """A bad option value is a ConfigurationError naming it."""
        with pytest.raises(isolation.ConfigurationError):
            isolation.request_scoped(**options)

    def test_not_callable_refused(self) -> None:
        """Only functions and classes are wrapped."""
        with pytest.raises(isolation.UsageError, match="function or a class"):
            isolation.request_scoped(42)  # type: ignore[call-overload]

    def test_builtin_without_signature(self) -> None:
        """A callable without a signature is called with no argument."""
        make = private(dict)
        with isolation.scope(UserContext.new("alice")):
            assert make() == {}


class TestPerScope:
    """One instance per scope; none outside."""

    def test_same_instance_in_a_scope_another_in_the_next(self) -> None:
        """Every call in one scope returns one instance; a new scope builds a new one."""
        make = private(Engine)
        with isolation.scope(UserContext.new("alice")):
            first = make()
            assert make() is first
        with isolation.scope(UserContext.new("alice")):
            assert make() is not first

    def test_child_scope_gets_its_own(self) -> None:
        """A child scope (a new context of the same user) gets its own instance."""
        make = private(Engine)
        with isolation.scope(UserContext.new("alice")):
            outer = make()
            with isolation.scope(UserContext.new("alice")):
                assert make() is not outer
            assert make() is outer

    def test_scope_with_a_deadline(self, fake_clock: isolation.testing.FakeClock) -> None:
        """A scope with a deadline takes the checked path, and refuses once expired."""
        make = private(Engine)
        with (
            pytest.raises(isolation.ContextExpiredError),
            isolation.scope(UserContext.new("alice", ttl=10)),
        ):
            first = make()
            assert make() is first
            fake_clock.advance(11)
            make()

    def test_outside_any_scope(self) -> None:
        """A call outside any scope raises NoContextError."""
        with pytest.raises(isolation.NoContextError):
            private(Engine)()

    def test_escaped_copy_of_an_ended_scope(self) -> None:
        """A call from a copy of a scope that has ended raises ScopeEndedError."""
        import contextvars

        make = private(Engine)
        with isolation.scope(UserContext.new("alice")):
            make()
            copy = contextvars.copy_context()
        with pytest.raises(isolation.ScopeEndedError):
            copy.run(make)

    @pytest.mark.anyio
    async def test_async_factory(self) -> None:
        """An async factory is awaited: one instance per scope, context injected."""

        async def make_engine(ctx: UserContext) -> Engine:
            await anyio.lowlevel.checkpoint()
            return Engine(ctx)

        make = isolation.request_scoped(make_engine)
        async with isolation.scope(UserContext.new("alice")):
            first = await make()
            assert first.user == "alice"
            assert await make() is first
        async with isolation.scope(UserContext.new("bob")):
            assert (await make()) is not first
        with pytest.raises(isolation.NoContextError):
            await make()

    @pytest.mark.anyio
    async def test_sync_factory_from_async_code(self) -> None:
        """A sync factory works in async code and in threads of the same scope."""
        make = private(Engine)
        async with isolation.scope(UserContext.new("alice")):
            here = make()
            assert await isolation.to_thread(make) is here


class TestFailures:
    """A factory that fails leaves nothing behind."""

    def test_failed_build_leaves_nothing_and_the_next_call_succeeds(self) -> None:
        """The first build raises half-way; the scope holds nothing; the second build succeeds."""
        attempts = []

        class Flaky:
            def __init__(self) -> None:
                attempts.append(1)
                self.items: list[int] = []
                if len(attempts) == 1:
                    raise RuntimeError("half-way")

        make = private(Flaky)
        with isolation.scope(UserContext.new("alice")) as scope:
            with pytest.raises(RuntimeError, match="half-way"):
                make()
            assert not [v for v in (scope._data or {}).values() if isinstance(v, Flaky)]
            assert isinstance(make(), Flaky)
        assert len(attempts) == 2

    @pytest.mark.anyio
    async def test_failed_async_build(self) -> None:
        """The same for an async factory, with a waiting task that then builds."""
        attempts = []

        async def make_flaky() -> list[int]:
            attempts.append(1)
            await anyio.lowlevel.checkpoint()
            if len(attempts) == 1:
                raise RuntimeError("half-way")
            return []

        make = private(make_flaky)
        results: list[object] = []
        errors: list[BaseException] = []

        async def call() -> None:
            try:
                results.append(await make())
            except RuntimeError as exc:
                errors.append(exc)

        async with isolation.scope(UserContext.new("alice")):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                tg.start_soon(call)
            assert len(errors) == 1
            assert len(results) == 1
            assert await make() is results[0]
        assert len(attempts) == 2

    @pytest.mark.anyio
    async def test_cancelled_build_lets_a_waiter_build(self) -> None:
        """A builder cancelled mid-build hands the build to the next caller."""
        started = anyio.Event()
        calls = []

        async def slow() -> object:
            calls.append(1)
            if len(calls) == 1:
                started.set()
                await anyio.sleep_forever()
            return object()

        make = private(slow)
        async with isolation.scope(UserContext.new("alice")):
            async with anyio.create_task_group() as tg:
                tg.start_soon(make)
                await started.wait()
                tg.cancel_scope.cancel()
            assert await make() is not None
        assert len(calls) == 2

    def test_recursion_refused(self) -> None:
        """A factory that calls itself while building is a UsageError, not a deadlock."""

        def again() -> object:
            return make()

        make = private(again)
        with (
            isolation.scope(UserContext.new("alice")),
            pytest.raises(isolation.UsageError, match="called itself"),
        ):
            make()

    @pytest.mark.anyio
    async def test_async_recursion_refused(self) -> None:
        """The same for an async factory."""

        async def again() -> object:
            return await make()

        make = private(again)
        async with isolation.scope(UserContext.new("alice")):
            with pytest.raises(isolation.UsageError, match="called itself"):
                await make()


class TestAcrossEventLoops:
    def test_async_waiter_in_another_threads_loop_is_woken(self) -> None:
        """An async factory built in one thread's event loop wakes a caller on another loop.

        Thread A builds (held until released); thread B, on an event loop of its
        own, calls while A builds and waits. The build is released only once
        B's loop has nothing left to run but that wait (anyio's
        ``wait_all_tasks_blocked`` in B's loop). An anyio event would wake only
        A's loop: B would never return.
        """
        started, release, b_waiting = threading.Event(), threading.Event(), threading.Event()
        builds: list[str] = []

        async def connect() -> object:
            builds.append(threading.current_thread().name)
            started.set()
            await anyio.to_thread.run_sync(release.wait, 30)
            return object()

        make = private(connect)
        results: dict[str, object] = {}

        def worker(name: str) -> None:
            async def run() -> None:
                async def call() -> None:
                    results[name] = await make()

                with anyio.fail_after(10):  # a hang guard: B is never woken otherwise
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(call)
                        if name == "B":
                            await anyio.wait_all_tasks_blocked()
                            b_waiting.set()

            anyio.run(run)

        with isolation.scope(UserContext.new("alice")):
            threads = {
                name: threading.Thread(
                    target=contextvars.copy_context().run, args=(worker, name), name=name
                )
                for name in "AB"
            }
            threads["A"].start()
            assert started.wait(30)
            threads["B"].start()
            assert b_waiting.wait(30)
            release.set()
            for thread in threads.values():
                thread.join(30)
                assert not thread.is_alive()
        assert builds == ["A"]
        assert sorted(results) == ["A", "B"]
        assert results["A"] is results["B"]


class TestExactlyOnce:
    """Threads and tasks calling at the same moment: the factory runs once per scope."""

    def test_threads(self) -> None:
        """10 threads x 20 scopes through a context-carrying executor: 20 runs."""
        assert fm07.run_threads(fm07._library_scoped) == []

    @pytest.mark.anyio
    async def test_tasks(self) -> None:
        """10 tasks x 20 scopes: 20 runs (asyncio and trio)."""
        assert await fm07.run_tasks(fm07._library_scoped) == []

    def test_mutant_caught_with_threads(self) -> None:
        """Creation without a lock is caught by the thread scenario, every run."""
        found = fm07.run_threads(fm07._unlocked_scoped)
        assert found[0] == "threads: the factory ran 200 times for 20 scopes"

    @pytest.mark.anyio
    async def test_mutant_caught_with_tasks(self) -> None:
        """Creation without a lock is caught by the task scenario, every run."""
        found = await fm07.run_tasks(fm07._unlocked_scoped)
        assert found[0] == "tasks: the factory ran 200 times for 20 scopes"


class TestSharedState:
    """The walk refuses state reachable from two principals' live instances."""

    def test_class_level_cache_refused_with_both_paths(self, live: Callable[..., Any]) -> None:
        """The second user's build is refused, naming both users and Engine.cache twice."""
        make = private(LeakyEngine)
        alice, bob = live("alice", "acme"), live("bob")
        first = alice.run(make)
        with pytest.raises(isolation.SharedStateError) as caught:
            bob.run(make)
        err = caught.value
        assert err.principals == ((None, "bob"), ("acme", "alice"))
        assert err.paths == (("LeakyEngine", "cache"), ("LeakyEngine", "cache"))
        assert "'bob'" in str(err)
        assert "'alice' of tenant 'acme'" in str(err)
        assert "LeakyEngine.cache (this build) is LeakyEngine.cache (theirs)" in str(err)
        assert "isolation.shareable" in str(err)
        assert alice.run(make) is first

    def test_message_redacts_user_ids(self, live: Callable[..., Any]) -> None:
        """User ids in the message pass through the redaction hook."""
        make = private(LeakyEngine)
        live("alice@example.com").run(make)
        previous = set_redactor(lambda value: "<user>")
        try:
            with pytest.raises(isolation.SharedStateError) as caught:
                live("bob@example.com").run(make)
        finally:
            set_redactor(previous)
        assert "example.com" not in str(caught.value)

    def test_same_object_for_two_users_refused(self, live: Callable[..., Any]) -> None:
        """A factory handing the same object to two users is refused."""
        engine = Engine(UserContext.new("nobody"))
        make = private(lambda: engine)
        live("alice").run(make)
        with pytest.raises(isolation.SharedStateError, match="the same Engine object"):
            live("bob").run(make)

    def test_even_an_immutable_same_object(self, live: Callable[..., Any]) -> None:
        """The same tuple handed to two users is refused too; atoms are not."""
        same = ("a", "b")
        make_tuple = private(lambda: same)
        make_number = private(lambda: 42)
        live("alice").run(make_tuple)
        live("alice").run(make_number)
        with pytest.raises(isolation.SharedStateError):
            live("bob").run(make_tuple)
        assert live("bob").run(make_number) == 42

    def test_two_factories_share_one_object(self, live: Callable[..., Any]) -> None:
        """Instances of two factories reaching one dict are refused, naming both factories."""
        shared: dict[str, int] = {}

        class Cache:
            def __init__(self) -> None:
                self.data = shared

        class Loader:
            def __init__(self) -> None:
                self.batches = [shared]

        index = SharedStateIndex()
        live("alice").run(private(Cache, index=index))
        with pytest.raises(isolation.SharedStateError) as caught:
            live("bob").run(private(Loader, index=index))
        assert caught.value.paths == (("Loader", "batches", "[0]"), ("Cache", "data"))
        assert "Loader instance" in str(caught.value)
        assert "Cache instance" in str(caught.value)

    def test_same_user_in_two_scopes_is_not_compared(self, live: Callable[..., Any]) -> None:
        """Two live scopes of one principal may reach the same object."""
        make = private(LeakyEngine)
        live("alice").run(make)
        live("alice").run(make)

    def test_same_user_id_in_two_tenants_is_two_users(self, live: Callable[..., Any]) -> None:
        """The principal is (tenant, user): the same user id in two tenants is compared."""
        make = private(LeakyEngine)
        live("alice", "acme").run(make)
        with pytest.raises(isolation.SharedStateError):
            live("alice", "globex").run(make)

    def test_scopes_that_do_not_overlap_are_not_compared(self) -> None:
        """Known limit: an ended scope's instances left the index, so nothing is compared."""
        make = private(LeakyEngine)
        with isolation.scope(UserContext.new("alice")):
            make()
        with isolation.scope(UserContext.new("bob")):
            make()

    def test_state_attached_after_the_build_is_not_seen(self, live: Callable[..., Any]) -> None:
        """Known limit: an instance is compared as walked when it was built."""
        shared: list[int] = []
        make = private(Engine)
        first = live("alice").run(make)
        first.extra = shared
        second = live("bob").run(make)
        second.extra = shared  # no build happens here: nothing is walked

    def test_refused_build_leaves_nothing_until_the_other_scope_ends(
        self, live: Callable[..., Any]
    ) -> None:
        """After a refusal the scope holds nothing; once the other user leaves, it builds."""
        make = private(LeakyEngine)
        alice, bob = live("alice"), live("bob")
        alice.run(make)
        with pytest.raises(isolation.SharedStateError):
            bob.run(make)
        with pytest.raises(isolation.SharedStateError):
            bob.run(make)
        alice.close()
        assert isinstance(bob.run(make), LeakyEngine)

    def test_declared_shareable_is_not_refused(self, live: Callable[..., Any]) -> None:
        """An object declared with isolation.shareable() may be reached by every user."""
        pool = isolation.shareable({"connections": []})

        class Client:
            def __init__(self) -> None:
                self.pool = pool

        make = private(Client)
        live("alice").run(make)
        live("bob").run(make)

    def test_check_off(self, live: Callable[..., Any]) -> None:
        """check="off" walks nothing."""
        make = private(LeakyEngine, check="off")
        live("alice").run(make)
        live("bob").run(make)

    def test_check_sampled(self, live: Callable[..., Any]) -> None:
        """check="sampled" walks each build with chance 1/sample_every: of 60 live users
        some are refused (chance of none about 1e-9), and most are not walked at all."""
        index = SharedStateIndex()
        make = private(LeakyEngine, check="sampled", sample_every=3, index=index)
        refused = 0
        for i in range(60):
            try:
                live(f"u{i}").run(make)
            except isolation.SharedStateError:
                refused += 1
        assert 1 <= refused <= 45

    def test_truncated_walk_warns(self) -> None:
        """A walk stopped by a bound warns with WalkTruncatedWarning, naming the bound."""

        class Big:
            def __init__(self) -> None:
                self.rows = [[i] for i in range(50)]

        make = private(Big, max_objects=10)
        with isolation.scope(UserContext.new("alice")):
            with pytest.warns(isolation.WalkTruncatedWarning, match="10 objects"):
                make()
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                make()  # a cache hit: no new walk, no warning

    def test_exactly_one_of_two_conflicting_builds_is_refused(self) -> None:
        """Two users building at the same moment: check-and-register is one atomic step."""
        for _ in range(20):
            assert sorted(self._race()) == ["built", "refused"]

    @staticmethod
    def _race() -> list[str]:
        """Alice and Bob build a leaky engine at once, both scopes live until both are done."""
        make = private(LeakyEngine)
        barrier = threading.Barrier(2)
        results: list[str] = []
        done = threading.Event()
        release = threading.Event()

        def build(user: str) -> None:
            with isolation.scope(UserContext.new(user)):
                barrier.wait()
                try:
                    make()
                    results.append("built")
                except isolation.SharedStateError:
                    results.append("refused")
                if len(results) == 2:
                    done.set()
                release.wait()

        threads = [threading.Thread(target=build, args=(u,)) for u in ("alice", "bob")]
        for t in threads:
            t.start()
        assert done.wait(30)
        release.set()
        for t in threads:
            t.join()
        return results


class TestLifetime:
    """FM6: nothing outlives its scope."""

    def test_instances_and_index_entries_die_with_the_scope(self) -> None:
        """After 100 scopes, weak references to every instance are dead and the index is empty."""
        index = SharedStateIndex()
        make = private(Engine, index=index)
        refs = []
        for i in range(100):
            with isolation.scope(UserContext.new(f"user-{i % 10}")) as scope:
                refs.append(weakref.ref(make()))
                refs.append(weakref.ref(scope))
                assert index.size > 0
        del scope
        gc.collect()
        assert [r for r in refs if r() is not None] == []
        assert index.size == 0

    @pytest.mark.anyio
    async def test_async_scopes(self) -> None:
        """The same for async scopes and an async factory."""
        index = SharedStateIndex()

        async def build(ctx: UserContext) -> Engine:
            return Engine(ctx)

        make = private(build, index=index)
        refs = []
        for i in range(20):
            async with isolation.scope(UserContext.new(f"user-{i}")):
                refs.append(weakref.ref(await make()))
        gc.collect()
        assert [r for r in refs if r() is not None] == []
        assert index.size == 0

    def test_default_index_is_module_level(self) -> None:
        """Bare @request_scoped factories share one index, which a scope's end empties."""
        from isolation.factories._index import default_index

        make = isolation.request_scoped(Engine)
        factory = scoped_factory_of(make)
        assert factory is not None
        assert factory.index is default_index()
