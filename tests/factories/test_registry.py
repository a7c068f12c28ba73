"""Registry: typed providers per lifetime, teardown, captive dependencies, exactly once."""

from __future__ import annotations

import contextvars
import functools
import gc
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import isolation
from isolation import Lifetime, Registry, UserContext


class Settings:
    """An APP product."""


class Database:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings


class Assistant:
    def __init__(self, ctx: UserContext, db: Database) -> None:
        self.ctx = ctx
        self.db = db


class Memory:
    """A REQUEST product."""


class Socket:
    """A CONNECTION product."""

    def __init__(self, ctx: UserContext) -> None:
        self.ctx = ctx


def make_registry(log: list[str] | None = None, **kwargs: object) -> Registry:
    registry = Registry(**kwargs)  # type: ignore[arg-type]
    registry.provide(Settings, lifetime=Lifetime.APP)

    @registry.provide
    def database(settings: Settings) -> Iterator[Database]:
        db = Database(settings)
        yield db
        if log is not None:
            log.append("database closed")

    registry.provide(Assistant)
    return registry


def alice() -> UserContext:
    return UserContext.new("alice", tenant_id="acme")


class TestResolution:
    def test_by_annotation(self) -> None:
        """Parameters resolve by annotation: registered types and the UserContext."""
        registry = make_registry()
        ctx = alice()
        with isolation.scope(ctx, registry=registry) as s:
            assistant = s.get(Assistant)
            assert assistant.ctx is ctx
            assert isinstance(assistant.db.settings, Settings)
            assert s.get(UserContext) is ctx

    def test_once_per_scope_and_fresh_per_scope(self) -> None:
        """Within a scope one instance per type; another scope gets another."""
        registry = make_registry()
        with isolation.scope(alice(), registry=registry) as s:
            first = s.get(Assistant)
            assert s.get(Assistant) is first
        with isolation.scope(alice(), registry=registry) as s:
            assert s.get(Assistant) is not first

    def test_app_products_shared(self) -> None:
        """APP products are built once and shared by every user."""
        registry = make_registry()
        with isolation.scope(alice(), registry=registry) as s:
            settings = s.get(Settings)
        with isolation.scope(UserContext.new("bob"), registry=registry) as s:
            assert s.get(Settings) is settings
        assert registry.stats().built_app == 1

    @pytest.mark.parametrize("shape", ["positional", "keyword-only", "positional-only"])
    def test_one_dependency_any_parameter_kind(self, shape: str) -> None:
        """A provider's single dependency arrives whatever kind of parameter takes it."""
        registry = Registry()
        settings = Settings()
        registry.provide_value(settings)
        got: list[Settings] = []

        if shape == "positional":

            def memory(settings: Settings) -> Memory:
                got.append(settings)
                return Memory()
        elif shape == "keyword-only":

            def memory(*, settings: Settings) -> Memory:
                got.append(settings)
                return Memory()
        else:

            def memory(settings: Settings, /) -> Memory:
                got.append(settings)
                return Memory()

        registry.provide(memory)
        with isolation.scope(alice(), registry=registry) as s:
            assert isinstance(s.get(Memory), Memory)
        assert got == [settings]

    def test_provide_value(self) -> None:
        """provide_value registers an existing object."""
        registry = Registry()
        settings = Settings()
        registry.provide_value(settings)
        with isolation.scope(alice(), registry=registry) as s:
            assert s.get(Settings) is settings

    def test_unknown_type(self) -> None:
        """Asking for an unregistered type is a UsageError naming it."""
        with (
            isolation.scope(alice(), registry=Registry()) as s,
            pytest.raises(isolation.UsageError, match="Memory"),
        ):
            s.get(Memory)

    def test_scope_without_registry(self) -> None:
        """get() on a scope without a registry is a UsageError."""
        with isolation.scope(alice()) as s, pytest.raises(isolation.UsageError, match="registry"):
            s.get(Memory)

    def test_get_after_scope_ended(self) -> None:
        """A scope that ended resolves nothing."""
        registry = make_registry()
        with isolation.scope(alice(), registry=registry) as s:
            pass
        with pytest.raises(isolation.ScopeEndedError):
            s.get(Assistant)

    def test_get_from_another_scope_refused(self) -> None:
        """Holding another user's scope object does not let you resolve its products."""
        registry = make_registry()
        import contextvars

        with isolation.scope(alice(), registry=registry) as s:

            def as_bob() -> object:
                with isolation.scope(UserContext.new("bob"), allow_switch=True):
                    return s.get(Assistant)

            with pytest.raises(isolation.CrossContextAccessError):
                contextvars.copy_context().run(as_bob)

    def test_child_scope_inherits_registry(self) -> None:
        """A child scope of the same principal resolves from the parent's registry."""
        registry = make_registry()
        with isolation.scope(alice(), registry=registry) as outer:
            first = outer.get(Assistant)
            with isolation.scope(alice()) as inner:
                assert inner.registry is registry
                assert inner.get(Assistant) is not first


class TestRegistration:
    def test_missing_return_annotation(self) -> None:
        """A provider must say what it provides."""
        registry = Registry()
        with pytest.raises(isolation.ConfigurationError, match="return annotation"):

            @registry.provide
            def anything():  # type: ignore[no-untyped-def]
                return 1

    def test_unannotated_parameter(self) -> None:
        """Every parameter needs an annotation."""
        registry = Registry()
        with pytest.raises(isolation.ConfigurationError, match="'x'"):

            @registry.provide
            def memory(x) -> Memory:  # type: ignore[no-untyped-def]
                return Memory()

    def test_twice(self) -> None:
        """One provider per type."""
        registry = Registry()
        registry.provide(Memory)
        with pytest.raises(isolation.ConfigurationError, match="already"):
            registry.provide(Memory)

    def test_bad_generator_annotation(self) -> None:
        """A generator provider returns Iterator[T]."""
        registry = Registry()
        with pytest.raises(isolation.ConfigurationError, match="Iterator"):

            @registry.provide
            def memory() -> Memory:  # type: ignore[misc]
                yield Memory()

    @pytest.mark.parametrize("bad", [{"check": "sometimes"}, {"sample_every": 0}])
    def test_bad_options(self, bad: dict[str, object]) -> None:
        """check and sample_every are validated."""
        with pytest.raises(isolation.ConfigurationError):
            Registry(**bad)  # type: ignore[arg-type]

    def test_bad_lifetime(self) -> None:
        """lifetime must be a Lifetime."""
        with pytest.raises(isolation.UsageError):
            Registry().provide(Memory, lifetime="app")  # type: ignore[call-overload]


class TestCaptiveDependencies:
    def test_app_taking_user_context(self) -> None:
        """An APP product built from the UserContext is refused (failure mode 11)."""
        registry = Registry()
        with pytest.raises(isolation.ConfigurationError, match="UserContext"):

            @registry.provide(lifetime=Lifetime.APP)
            def engine(ctx: UserContext) -> Memory:
                return Memory()

    def test_app_taking_request_product_at_registration(self) -> None:
        """An APP product taking a registered REQUEST product is refused, naming both."""
        registry = Registry()
        registry.provide(Memory)
        with pytest.raises(isolation.ConfigurationError, match=r"APP provider .*engine.*REQUEST"):

            @registry.provide(lifetime=Lifetime.APP)
            def engine(memory: Memory) -> Settings:
                return Settings()

    def test_refused_at_first_resolution(self) -> None:
        """Registered in the other order, the refusal comes at first resolution."""
        registry = Registry()

        @registry.provide(lifetime=Lifetime.APP)
        def engine(memory: Memory) -> Settings:
            return Settings()

        registry.provide(Memory)
        with (
            isolation.scope(alice(), registry=registry) as s,
            pytest.raises(isolation.ConfigurationError, match="Memory"),
        ):
            s.get(Settings)

    def test_connection_taking_request(self) -> None:
        """A CONNECTION product taking a REQUEST product is refused."""
        registry = Registry()
        registry.provide(Memory)
        with pytest.raises(isolation.ConfigurationError, match="CONNECTION"):

            @registry.provide(lifetime=Lifetime.CONNECTION)
            def socket(memory: Memory) -> Socket:
                return Socket(UserContext.new("x"))


class TestLifetimes:
    def test_connection_holds_requests(self) -> None:
        """CONNECTION products are shared by the connection's requests; REQUEST ones are fresh."""
        registry = Registry()
        registry.provide(Socket, lifetime=Lifetime.CONNECTION)
        registry.provide(Memory)
        ctx = alice()
        with isolation.scope(ctx, registry=registry, lifetime=Lifetime.CONNECTION) as conn:
            socket = conn.get(Socket)
            memories = []
            for _ in range(2):
                with isolation.scope(ctx) as request:  # same context object, shorter lifetime
                    assert request.parent is conn
                    assert request.get(Socket) is socket
                    memories.append(request.get(Memory))
            assert memories[0] is not memories[1]

    def test_connection_product_without_connection_scope(self) -> None:
        """A CONNECTION product needs an enclosing CONNECTION scope."""
        registry = Registry()
        registry.provide(Socket, lifetime=Lifetime.CONNECTION)
        with (
            isolation.scope(alice(), registry=registry) as s,
            pytest.raises(isolation.UsageError, match="CONNECTION"),
        ):
            s.get(Socket)

    def test_longer_scope_inside_shorter_refused(self) -> None:
        """A CONNECTION scope cannot open inside a REQUEST scope."""
        ctx = alice()
        with isolation.scope(ctx), pytest.raises(isolation.UsageError, match="CONNECTION"):
            with isolation.scope(ctx, lifetime=Lifetime.CONNECTION):
                pass

    def test_app_lifetime_scope_refused(self) -> None:
        """Scopes are CONNECTION or REQUEST."""
        with pytest.raises(isolation.UsageError):
            isolation.scope(alice(), lifetime=Lifetime.APP)

    def test_lifetime_order(self) -> None:
        """APP > CONNECTION > REQUEST."""
        assert Lifetime.APP > Lifetime.CONNECTION > Lifetime.REQUEST


class TestTeardown:
    def test_reverse_order_at_scope_exit(self) -> None:
        """Generator providers tear down at scope exit, last built first."""
        log: list[str] = []
        registry = Registry()

        @registry.provide
        def memory() -> Iterator[Memory]:
            yield Memory()
            log.append("memory")

        @registry.provide
        def socket(ctx: UserContext, memory: Memory) -> Iterator[Socket]:
            yield Socket(ctx)
            log.append("socket")

        with isolation.scope(alice(), registry=registry) as s:
            s.get(Socket)
            assert log == []
        assert log == ["socket", "memory"]

    def test_exception_passed_and_not_suppressed(self) -> None:
        """Teardown receives the body's exception through throw() and cannot swallow it."""
        seen: list[BaseException] = []
        registry = Registry()

        @registry.provide
        def memory() -> Iterator[Memory]:
            try:
                yield Memory()
            except ValueError as exc:
                seen.append(exc)  # and swallows it

        with pytest.raises(ValueError, match="boom"):
            with isolation.scope(alice(), registry=registry) as s:
                s.get(Memory)
                raise ValueError("boom")
        assert len(seen) == 1

    def test_yielding_twice_is_an_error(self) -> None:
        """A provider that yields twice fails its teardown."""
        registry = Registry()

        @registry.provide
        def memory() -> Iterator[Memory]:
            yield Memory()
            yield Memory()

        with pytest.raises(isolation.FactoryError, match="more than once"):
            with isolation.scope(alice(), registry=registry) as s:
                s.get(Memory)

    def test_app_teardown_on_close(self) -> None:
        """APP generator products tear down at registry.close()."""
        log: list[str] = []
        registry = Registry()

        @registry.provide(lifetime=Lifetime.APP)
        def settings() -> Iterator[Settings]:
            yield Settings()
            log.append("settings closed")

        with isolation.scope(alice(), registry=registry) as s:
            s.get(Settings)
        assert log == []
        registry.close()
        assert log == ["settings closed"]
        with pytest.raises(isolation.UsageError, match="closed"):
            registry.provide(Memory)

    @pytest.mark.anyio
    async def test_app_teardown_on_aclose(self) -> None:
        """aclose() is the async twin of close()."""
        log: list[str] = []
        registry = Registry()

        @registry.provide(lifetime=Lifetime.APP)
        def settings() -> Iterator[Settings]:
            yield Settings()
            log.append("closed")

        async with isolation.scope(alice(), registry=registry) as s:
            await s.aget(Settings)
        await registry.aclose()
        assert log == ["closed"]

    def test_products_collected_after_scope(self) -> None:
        """Nothing keeps a REQUEST product alive after its scope ends."""
        registry = make_registry()
        with isolation.scope(alice(), registry=registry) as s:
            ref = weakref.ref(s.get(Assistant))
        gc.collect()
        assert ref() is None


class TestAsync:
    @pytest.mark.anyio
    async def test_async_providers(self) -> None:
        """aget resolves async functions, async generators and sync providers."""
        log: list[str] = []
        registry = make_registry(log)

        @registry.provide
        async def memory(assistant: Assistant) -> Memory:
            await anyio.lowlevel.checkpoint()
            return Memory()

        @registry.provide
        async def socket(ctx: UserContext, memory: Memory) -> AsyncIterator[Socket]:
            yield Socket(ctx)
            await anyio.lowlevel.checkpoint()
            log.append("socket closed")

        async with isolation.scope(alice(), registry=registry) as s:
            sock = await s.aget(Socket)
            assert await s.aget(Socket) is sock
            assert isinstance(await s.aget(Assistant), Assistant)
        assert log == ["socket closed", "database closed"]

    @pytest.mark.anyio
    async def test_get_refuses_async_provider(self) -> None:
        """get() on an async provider says to use aget()."""
        registry = Registry()

        @registry.provide
        async def memory() -> Memory:
            return Memory()

        async with isolation.scope(alice(), registry=registry) as s:
            with pytest.raises(isolation.UsageError, match="aget"):
                s.get(Memory)

    def test_async_generator_in_sync_scope_refused(self) -> None:
        """An async-generator provider needs an async with scope."""
        registry = Registry()

        @registry.provide
        async def memory() -> AsyncIterator[Memory]:
            yield Memory()

        async def in_sync_scope() -> None:
            with isolation.scope(alice(), registry=registry) as s:
                await s.aget(Memory)

        with pytest.raises(isolation.UsageError, match="async with"):
            anyio.run(in_sync_scope)

    @pytest.mark.anyio
    async def test_ten_tasks_one_build(self) -> None:
        """Ten tasks resolving one async provider at once build it once."""
        registry = Registry()
        calls = 0
        release = anyio.Event()

        @registry.provide
        async def memory() -> Memory:
            nonlocal calls
            calls += 1
            await release.wait()
            return Memory()

        results: list[Memory] = []
        async with isolation.scope(alice(), registry=registry) as s:

            async def resolve() -> None:
                results.append(await s.aget(Memory))

            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(resolve)
                await anyio.wait_all_tasks_blocked()
                release.set()
        assert calls == 1
        assert len({id(r) for r in results}) == 1

    @pytest.mark.anyio
    async def test_failed_build_leaves_nothing(self) -> None:
        """A provider that raises half-way caches nothing; the next resolution succeeds."""
        registry = Registry()
        attempts = 0

        @registry.provide
        async def memory() -> Memory:
            nonlocal attempts
            attempts += 1
            await anyio.lowlevel.checkpoint()
            if attempts == 1:
                raise RuntimeError("half-way")
            return Memory()

        async with isolation.scope(alice(), registry=registry) as s:
            with pytest.raises(RuntimeError):
                await s.aget(Memory)
            assert isinstance(await s.aget(Memory), Memory)


class TestAsyncAcrossEventLoops:
    def test_waiters_in_other_threads_are_woken(self) -> None:
        """Threads with event loops of their own share one async CONNECTION build.

        Thread A builds; B and C, each on its own loop, wait for it. An anyio
        event wakes only its own loop, so they wait on a threading event; the
        test releases the build only once both wait, then checks one build,
        one product.
        """
        waiting = threading.Condition()
        waiters = [0]

        class CountingEvent(threading.Event):
            def wait(self, timeout: float | None = None) -> bool:
                with waiting:
                    waiters[0] += 1
                    waiting.notify_all()
                return super().wait(timeout)

        registry = Registry(check="off", event_factory=CountingEvent)
        started, release = threading.Event(), threading.Event()
        builds: list[str] = []

        @registry.provide(lifetime=Lifetime.CONNECTION)
        async def socket(ctx: UserContext) -> Socket:
            builds.append(threading.current_thread().name)
            started.set()
            await anyio.to_thread.run_sync(release.wait, 30)
            return Socket(ctx)

        results: dict[str, object] = {}

        def worker(name: str) -> None:
            async def run() -> None:
                async with isolation.scope(alice()) as request:
                    results[name] = await request.aget(Socket)

            anyio.run(run)

        with isolation.scope(alice(), lifetime=Lifetime.CONNECTION, registry=registry):
            threads = {
                name: threading.Thread(
                    target=contextvars.copy_context().run, args=(worker, name), name=name
                )
                for name in "ABC"
            }
            threads["A"].start()
            assert started.wait(30)
            threads["B"].start()
            threads["C"].start()
            with waiting:
                assert waiting.wait_for(lambda: waiters[0] >= 2, timeout=30)
            release.set()
            for thread in threads.values():
                thread.join(30)
                assert not thread.is_alive()
        assert builds == ["A"]
        assert len({id(product) for product in results.values()}) == 1
        assert sorted(results) == ["A", "B", "C"]


class TestThreads:
    def test_failed_sync_build_leaves_nothing(self) -> None:
        """A sync provider that raises caches nothing."""
        registry = Registry()
        attempts = [0]

        @registry.provide
        def memory() -> Memory:
            attempts[0] += 1
            if attempts[0] == 1:
                raise RuntimeError("half-way")
            return Memory()

        with isolation.scope(alice(), registry=registry) as s:
            with pytest.raises(RuntimeError):
                s.get(Memory)
            assert isinstance(s.get(Memory), Memory)

    def test_ten_threads_one_build(self) -> None:
        """Ten threads resolving at once through a context executor build once."""
        registry = Registry()
        calls = [0]
        barrier = threading.Barrier(10, timeout=30)

        @registry.provide
        def memory() -> Memory:
            calls[0] += 1
            return Memory()

        with (
            isolation.scope(alice(), registry=registry) as s,
            isolation.ContextThreadPoolExecutor(10) as pool,
        ):

            def resolve() -> Memory:
                barrier.wait()
                return s.get(Memory)

            results = [f.result(timeout=30) for f in [pool.submit(resolve) for _ in range(10)]]
        assert calls == [1]
        assert len({id(r) for r in results}) == 1

    def test_stats(self) -> None:
        """stats() counts products per lifetime."""
        registry = make_registry()
        with isolation.scope(alice(), registry=registry) as s:
            s.get(Assistant)
        stats = registry.stats()
        assert (stats.built_app, stats.built_request, stats.built_connection) == (1, 2, 0)


SHARED_CACHE: dict[str, str] = {}


class LeakyEngine:
    def __init__(self, ctx: UserContext) -> None:
        self.cache = SHARED_CACHE  # the same dict for every user


class CleanEngine:
    def __init__(self, ctx: UserContext) -> None:
        self.cache: dict[str, str] = {}


class TestSharedStateAndOwnership:
    def test_walk_refuses_shared_state_between_live_users(self) -> None:
        """Two users' live products reaching one dict: the second build is refused."""
        registry = Registry()
        registry.provide(LeakyEngine)
        with isolation.scope(alice(), registry=registry) as a:
            a.get(LeakyEngine)
            import contextvars

            def bob() -> None:
                with isolation.scope(
                    UserContext.new("bob"), registry=registry, allow_switch=True
                ) as b:
                    b.get(LeakyEngine)

            with pytest.raises(isolation.SharedStateError) as info:
                contextvars.copy_context().run(bob)
        assert "cache" in str(info.value)
        assert registry.stats().violations == 1
        assert registry.stats().walks == 2

    def test_clean_products_pass(self) -> None:
        """Products with their own state pass the walk."""
        registry = Registry()
        registry.provide(CleanEngine)
        with isolation.scope(alice(), registry=registry) as a:
            a.get(CleanEngine)
            with isolation.scope(UserContext.new("bob"), registry=registry, allow_switch=True) as b:
                b.get(CleanEngine)
        assert registry.stats().violations == 0

    def test_check_off_does_not_walk(self) -> None:
        """check='off' builds without walking."""
        registry = Registry(check="off")
        registry.provide(LeakyEngine)
        with isolation.scope(alice(), registry=registry) as a:
            a.get(LeakyEngine)
            with isolation.scope(UserContext.new("bob"), registry=registry, allow_switch=True) as b:
                b.get(LeakyEngine)
        assert registry.stats().walks == 0

    def test_sampled_walks_about_one_in_n(self) -> None:
        """check='sampled' walks each build with chance 1/sample_every."""
        registry = Registry(check="sampled", sample_every=3, sample_seed=7)
        registry.provide(CleanEngine)
        for _ in range(300):
            with isolation.scope(alice(), registry=registry) as s:
                s.get(CleanEngine)
        assert 70 <= registry.stats().walks <= 130

    def test_owned_connection_product_owned_by_connection(self) -> None:
        """An @owned CONNECTION product is owned by the connection scope, usable in its requests."""
        registry = Registry()

        @isolation.owned
        class Channel:
            def __init__(self, ctx: UserContext) -> None:
                self.user = ctx.user_id

            def name(self) -> str:
                return self.user

        registry.provide(Channel, lifetime=Lifetime.CONNECTION)
        ctx = alice()
        with isolation.scope(ctx, registry=registry, lifetime=Lifetime.CONNECTION):
            with isolation.scope(ctx) as request:
                channel = request.get(Channel)
                assert channel.name() == "alice"
            assert channel.name() == "alice"  # still the owner's (connection) scope
        with pytest.raises(isolation.CrossContextAccessError):
            channel.name()

    def test_audit_a_registry(self) -> None:
        """isolation audit accepts a Registry: a leaky provider is a violation, a clean one is not."""
        from isolation.factories._audit import audit

        clean = Registry()
        clean.provide(CleanEngine)
        clean.provide(Socket, lifetime=Lifetime.CONNECTION)
        report = audit(clean, users=4, threads=2)
        assert {f.name for f in report.factories} == {"CleanEngine", "Socket"}
        assert all(not f.violations for f in report.factories)

        leaky = Registry(check="off")
        leaky.provide(LeakyEngine)
        report = audit(leaky, users=4, threads=2)
        assert any(v.kind == "shared-state" for f in report.factories for v in f.violations)


class TestAppProductsShared:
    def test_app_products_are_shareable_by_declaration(self) -> None:
        """Two users' live products both reaching the APP product are not refused."""
        registry = make_registry()
        ctx_a, ctx_b = alice(), UserContext.new("bob", tenant_id="acme")
        with isolation.scope(ctx_a, registry=registry) as a:
            first = a.get(Assistant)
            with isolation.scope(ctx_b, registry=registry, allow_switch=True) as b:
                second = b.get(Assistant)
        assert first.db.settings is second.db.settings
        assert registry.stats().violations == 0

    def test_app_value_is_shareable(self) -> None:
        """A value registered at APP is shared by declaration too."""
        registry = Registry()
        settings = Settings()
        registry.provide_value(settings)

        class Holder:
            def __init__(self, settings: Settings) -> None:
                self.settings = settings

        registry.provide(Holder)
        with isolation.scope(alice(), registry=registry) as a:
            a.get(Holder)
            with isolation.scope(UserContext.new("bob"), registry=registry, allow_switch=True) as b:
                b.get(Holder)
        assert registry.stats().violations == 0


def test_provider_check_overrides_registry() -> None:
    """provide(check='off') skips the walk for that provider only; a bad value is refused."""
    registry = Registry()
    registry.provide(LeakyEngine, check="off")
    with isolation.scope(alice(), registry=registry) as a:
        a.get(LeakyEngine)
        with isolation.scope(UserContext.new("bob"), registry=registry, allow_switch=True) as b:
            b.get(LeakyEngine)
    assert registry.stats().walks == 0
    strict = Registry(check="off")
    strict.provide(LeakyEngine, check="full")
    with isolation.scope(alice(), registry=strict) as a:
        a.get(LeakyEngine)
    assert strict.stats().walks == 1
    with pytest.raises(isolation.ConfigurationError):
        Registry().provide(CleanEngine, check="sometimes")  # type: ignore[call-overload]


def test_audit_command_accepts_a_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`isolation audit MODULE:REGISTRY` audits every provider; a leak exits 1."""
    (tmp_path / "service_under_audit.py").write_text(
        "import isolation\n"
        "SHARED = {}\n"
        "class Clean:\n"
        "    def __init__(self, ctx: isolation.UserContext) -> None:\n"
        "        self.cache = {}\n"
        "class Leaky:\n"
        "    def __init__(self) -> None:\n"
        "        self.cache = SHARED\n"
        "clean = isolation.Registry()\n"
        "clean.provide(Clean)\n"
        "leaky = isolation.Registry(check='off')\n"
        "leaky.provide(Leaky)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from isolation._cli import main

    assert main(["audit", "service_under_audit:clean", "--users", "4", "--threads", "2"]) == 0
    assert main(["audit", "service_under_audit:leaky", "--users", "4", "--threads", "2"]) == 1
    assert "cache" in capsys.readouterr().out


class Client:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings


def _keyword_passthrough(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        return fn(**kwargs)

    return wrapper


def test_wrapped_provider_taking_keywords_only() -> None:
    """A decorated provider whose wrapper takes only keywords gets its dependency by name."""
    registry = Registry(check="off")
    settings = Settings()
    registry.provide_value(settings, lifetime=Lifetime.APP)

    @registry.provide
    @_keyword_passthrough
    def client(settings: Settings) -> Client:
        return Client(settings)

    with isolation.scope(UserContext.new("alice"), registry=registry) as s:
        assert s.get(Client).settings is settings


def test_event_factory_must_be_callable() -> None:
    """Registry(event_factory=...) takes a callable making a threading.Event."""
    with pytest.raises(isolation.ConfigurationError, match="event_factory"):
        Registry(event_factory=object())  # type: ignore[arg-type]
