"""The ready machines: they pass a correct router and registry, and find planted bugs, shrunk."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from hypothesis import Phase, settings
from hypothesis.stateful import run_state_machine_as_test

import isolation
from isolation import Lifetime, Principal, Registry, UserContext, _clock
from isolation.events import Connection, EventRouter, Overflow, PublishResult
from isolation.testing import (
    DEFAULT_PRINCIPALS,
    AsyncRuleBasedStateMachine,
    RegistryMachine,
    RouterMachine,
)

BACKENDS = ["asyncio", "trio"]
QUICK = settings(max_examples=25, stateful_step_count=15)
# Hypothesis' explain phase replays the failure many times; the steps are enough here.
HUNT = settings(
    max_examples=100,
    stateful_step_count=15,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
)


INVARIANTS = (
    "teardown",
    "no_event_misdelivered_lost_or_duplicated",
    "closed_connections_stay_closed",
    "no_state_shared_between_principals",
)


def _steps(error: BaseException) -> list[str]:
    """The rules of the shrunk example Hypothesis attached to the failure (not invariants)."""
    notes = getattr(error, "__notes__", [])
    return [n for n in notes if "state." in n and not any(i in n for i in INVARIANTS)]


def _fails(machine: type[AsyncRuleBasedStateMachine], backend: str) -> tuple[str, list[str]]:
    with pytest.raises(AssertionError) as info:
        run_state_machine_as_test(machine.on_backend(backend), settings=HUNT)
    return str(info.value), _steps(info.value)


# -- the router machine ------------------------------------------------------------------


class CorrectRouter(RouterMachine):
    def make_router(self) -> EventRouter:
        return EventRouter(queue_size=8)


class AsyncFactoryRouter(RouterMachine):
    """make_router may be async, and the policy does not matter: queues never fill."""

    async def make_router(self) -> EventRouter:
        await anyio.sleep(0)
        return EventRouter(queue_size=3, overflow=Overflow.DISCONNECT)


class _Wrapper:
    """A stand-in for a user's router: delegates to a real one, except where it is broken."""

    def __init__(self) -> None:
        self.inner = EventRouter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _TenantBlindRouter(_Wrapper):
    """Planted bug: publishes to a user id in every tenant it has seen (routes by user id)."""

    def __init__(self) -> None:
        super().__init__()
        self.tenants: set[str | None] = set()

    async def connect(self, ctx: UserContext) -> Connection:
        self.tenants.add(ctx.tenant_id)
        return await self.inner.connect(ctx)

    async def publish(self, to: Principal, payload: Any) -> Any:
        delivered = 0
        for tenant in self.tenants | {to.tenant_id}:
            delivered += (
                await self.inner.publish(Principal(tenant, to.user_id), payload)
            ).delivered
        return PublishResult(delivered=delivered, dropped=0)


class _StickyConnection:
    """Planted bug: ``aclose()`` forgets the connection but leaves it open and receiving."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.forgotten = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)

    @property
    def closed(self) -> bool:
        return self.forgotten or self.conn.closed

    async def aclose(self) -> None:
        self.forgotten = True  # says closed; the real connection still gets events


class _RedeliveringRouter(_Wrapper):
    """Planted bug: a disconnected connection keeps receiving its principal's events."""

    async def connect(self, ctx: UserContext) -> Any:
        return _StickyConnection(await self.inner.connect(ctx))

    async def aclose(self) -> None:
        await self.inner.aclose()


class TenantBlindMachine(RouterMachine):
    def make_router(self) -> Any:
        return _TenantBlindRouter()


class RedeliveringMachine(RouterMachine):
    def make_router(self) -> Any:
        return _RedeliveringRouter()


class InitialMachine(CorrectRouter):
    principals = tuple(Principal(f"t{i % 2}", f"user-{i // 2}") for i in range(40))
    initial_connections = (Principal("t0", "user-0"), Principal("t1", "user-0"))


class ExpiringMachine(CorrectRouter):
    ttls = (None, 5.0, 20.0)


class _ImmortalRouter(_Wrapper):
    """Planted bug: connections ignore their context's expiry."""

    async def connect(self, ctx: UserContext) -> Connection:
        return await self.inner.connect(UserContext.new(ctx.user_id, tenant_id=ctx.tenant_id))


class ImmortalMachine(ExpiringMachine):
    def make_router(self) -> Any:
        return _ImmortalRouter()


class TestRouterMachine:
    @pytest.mark.parametrize("backend", BACKENDS)
    def test_passes_the_library_router(self, backend: str) -> None:
        """A plain EventRouter conforms on both backends."""
        run_state_machine_as_test(CorrectRouter.on_backend(backend), settings=QUICK)

    def test_runs_exercise_delivery_and_closing(self) -> None:
        """The passing runs really deliver, refuse and close (they cannot pass vacuously)."""
        routers: list[EventRouter] = []

        class Recording(CorrectRouter):
            def make_router(self) -> EventRouter:
                routers.append(EventRouter())
                return routers[-1]

        run_state_machine_as_test(Recording, settings=QUICK)
        stats = [router.stats() for router in routers]
        assert sum(s.delivered for s in stats) > 20
        assert sum(s.undeliverable for s in stats) > 0
        assert sum(s.closed for s in stats) > 20
        assert all(router.closed for router in routers)

    def test_async_factory_and_any_policy(self) -> None:
        """make_router may be async; the machine never overflows, so every policy conforms."""
        run_state_machine_as_test(AsyncFactoryRouter, settings=QUICK)

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_finds_routing_by_user_id(self, backend: str) -> None:
        """Routing by user id alone is found and shrunk to a connect and a publish."""
        message, steps = _fails(TenantBlindMachine, backend)
        assert "reported delivered=" in message or "expected nothing" in message
        assert any("connect" in s for s in steps)
        assert any("publish" in s for s in steps)
        assert len(steps) <= 3, steps

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_finds_delivery_after_a_disconnect(self, backend: str) -> None:
        """A connection that keeps receiving after it was closed is found, shrunk."""
        message, steps = _fails(RedeliveringMachine, backend)
        assert "0 live connection(s)" in message or "closed, yet" in message
        assert any("close" in s for s in steps)
        assert len(steps) <= 3, steps

    @pytest.mark.redis
    def test_passes_a_router_with_the_redis_backend(self, redis_url: str) -> None:
        """Events that travel through Redis (asyncio only) conform too."""
        pytest.importorskip("redis", reason="the Redis backend needs the redis extra")
        from isolation.events.backends.redis import RedisBackend

        routers: list[EventRouter] = []

        class OverRedis(RouterMachine):
            async def make_router(self) -> EventRouter:
                namespace = f"machines-{uuid.uuid4().hex[:12]}"
                backend = RedisBackend(
                    redis_url, keys=[b"0123456789abcdef" * 2], namespace=namespace
                )
                routers.append(EventRouter(backend=backend))
                return routers[-1]

        run_state_machine_as_test(OverRedis, settings=QUICK)
        assert sum(router.stats().delivered for router in routers) > 10

    def test_plain_pairs_become_principals(self) -> None:
        """principals may list plain (tenant_id, user_id) pairs: they are checked and
        published to as Principals; an invalid one fails at once, naming the field."""

        class Pairs(CorrectRouter):
            principals = (("t1", "alice"), ("t2", "alice"))

        run_state_machine_as_test(Pairs, settings=QUICK)
        assert all(type(p) is Principal for p in DEFAULT_PRINCIPALS)

        class Confusable(CorrectRouter):
            principals = (("t1", "alice"), ("t1", "\u212blice"))

        with pytest.raises(isolation.InvalidContextError, match="user_id"):
            Confusable()

    def test_needs_a_factory(self) -> None:
        """A machine without make_router says what to override."""
        with pytest.raises(NotImplementedError, match="make_router"):
            RouterMachine()

    def test_options_add_rules_only_where_set(self) -> None:
        """initial_connections and ttls add their rules only to machines that set them,
        so a machine without them draws the same sequences as before they existed."""
        assert not hasattr(CorrectRouter, "connect_initial")
        assert not hasattr(CorrectRouter, "expire")
        assert hasattr(InitialMachine, "connect_initial")
        assert hasattr(ExpiringMachine, "expire")

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_initial_connections_open_every_run(self, backend: str) -> None:
        """Every run starts with the listed connections, so a large pool still exercises
        the same user id in two tenants: routing by user id is found in the first run."""
        opened: list[list[Principal]] = []

        class Recording(InitialMachine):
            def make_router(self) -> Any:
                router = super().make_router()
                opened.append([])
                connect = router.connect

                async def recording(ctx: UserContext) -> Connection:
                    opened[-1].append(ctx.principal)
                    return await connect(ctx)

                router.connect = recording
                return router

        run_state_machine_as_test(Recording.on_backend(backend), settings=QUICK)
        assert opened
        assert all(run[:2] == list(InitialMachine.initial_connections) for run in opened)

        class Blind(InitialMachine):
            def make_router(self) -> Any:
                return _TenantBlindRouter()

        with pytest.raises(
            AssertionError, match=r"reported delivered=|expected nothing|was handed an event for"
        ):
            run_state_machine_as_test(
                Blind.on_backend(backend),
                settings=settings(max_examples=10, phases=[Phase.generate]),
            )

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_ttls_pass_the_library_router(self, backend: str) -> None:
        """With ttls, contexts expire on the machine's fake clock, which is put back after."""
        previous = _clock.get_clock()
        run_state_machine_as_test(ExpiringMachine.on_backend(backend), settings=QUICK)
        assert _clock.get_clock() is previous

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_ttls_find_a_router_that_ignores_expiry(self, backend: str) -> None:
        """A connection that outlives its context is found (the steps show the expiry)."""
        message, steps = _fails(ImmortalMachine, backend)
        assert "closed, yet" in message or "0 live connection(s)" in message
        assert any("expire" in s for s in steps)
        assert any("connect" in s for s in steps)


# -- the registry machine ----------------------------------------------------------------


class Settings:
    """An APP product: shared by every user, by declaration (it holds nothing mutable)."""

    model = "small"


@isolation.owned
class Assistant:
    def __init__(self, ctx: UserContext, settings: Settings) -> None:
        self.user = ctx.user_id
        self.settings = settings
        self.history: list[str] = []

    def ask(self, question: str) -> str:
        self.history.append(question)
        return f"{self.user}: {question}"


class Memory:
    def __init__(self) -> None:
        self.items: dict[str, str] = {}


class Tools:
    def __init__(self) -> None:
        self.open = True


def correct_registry() -> Registry:
    registry = Registry()
    registry.provide(Settings, lifetime=Lifetime.APP)
    registry.provide(Assistant)

    @registry.provide
    async def memory() -> Memory:
        await anyio.sleep(0)  # an async provider: concurrent resolves wait for one build
        return Memory()

    @registry.provide
    def tools() -> Iterator[Tools]:
        made = Tools()
        yield made
        made.open = False

    return registry


class CorrectRegistry(RegistryMachine):
    products = (Assistant, Memory, Tools, Settings)

    def make_registry(self) -> Registry:
        return correct_registry()

    def use(self, product: Any) -> Any:
        return product.ask("hello?")  # a real method of the @owned Assistant


_LEAK: dict[str, list[str]] = {}


class LeakyMemory:
    def __init__(self, ctx: UserContext) -> None:
        # The planted bug: one module-level list for every user.
        self.items = _LEAK.setdefault("items", [])


def leaky_registry(check: Any) -> Registry:
    registry = Registry(check=check)
    registry.provide(LeakyMemory)
    return registry


class LeakyUnchecked(RegistryMachine):
    products = (LeakyMemory,)

    def make_registry(self) -> Registry:
        return leaky_registry("off")


class LeakyChecked(RegistryMachine):
    products = (LeakyMemory,)

    def make_registry(self) -> Registry:
        return leaky_registry("full")


class SwallowingUse(CorrectRegistry):
    """Planted bug in the test itself: a ``use`` that hides the refusal."""

    def use(self, product: Any) -> Any:
        try:
            return product.ask("hello?")
        except isolation.CrossContextAccessError:
            return None


class ConnectionScopes(RegistryMachine):
    """CONNECTION products resolve in CONNECTION scopes; async generators tear down."""

    products = (Tools,)
    scope_lifetime = Lifetime.CONNECTION

    async def make_registry(self) -> Registry:
        registry = Registry()

        @registry.provide(lifetime=Lifetime.CONNECTION)
        async def tools() -> AsyncIterator[Tools]:
            made = Tools()
            yield made
            made.open = False

        return registry


class TestRegistryMachine:
    @pytest.mark.parametrize("backend", BACKENDS)
    def test_passes_a_correct_registry(self, backend: str) -> None:
        """Sync, async, generator, @owned and APP products pass on both backends."""
        run_state_machine_as_test(CorrectRegistry.on_backend(backend), settings=QUICK)

    def test_runs_exercise_resolving_and_refusing(self) -> None:
        """The passing runs really build products and see @owned refusals."""
        refused: list[str] = []
        registries: list[Registry] = []

        class Recording(CorrectRegistry):
            def make_registry(self) -> Registry:
                registries.append(correct_registry())
                return registries[-1]

            def use(self, product: Any) -> Any:
                try:
                    return product.ask("hello?")
                except isolation.CrossContextAccessError as exc:
                    refused.append(str(exc))
                    raise

        run_state_machine_as_test(Recording, settings=QUICK)
        assert sum(r.stats().built_request for r in registries) > 20
        assert len(refused) > 3

    def test_connection_scopes(self) -> None:
        """scope_lifetime = CONNECTION resolves CONNECTION products."""
        run_state_machine_as_test(ConnectionScopes.on_backend("trio"), settings=QUICK)

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_finds_a_module_level_dict_with_check_off(self, backend: str) -> None:
        """State shared through a module-level object is found by the walk, shrunk to 4 steps."""
        message, steps = _fails(LeakyUnchecked, backend)
        assert "is reachable from the LeakyMemory of" in message
        assert "LeakyMemory.items" in message
        assert len(steps) <= 4, steps

    def test_the_registrys_own_refusal_fails_the_run(self) -> None:
        """With check="full" the registry refuses the product, and the run says so."""
        message, steps = _fails(LeakyChecked, "asyncio")
        assert "SharedStateError" in message
        assert len(steps) <= 4, steps

    def test_finds_an_owned_product_used_elsewhere_unrefused(self) -> None:
        """The ownership rule can fail: a use that hides the refusal is found."""
        message, steps = _fails(SwallowingUse, "asyncio")
        assert "without CrossContextAccessError" in message
        assert len(steps) <= 5, steps

    def test_needs_products_and_a_factory(self) -> None:
        """A machine without products or without make_registry says what is missing."""
        with pytest.raises(isolation.UsageError, match="products"):
            RegistryMachine()

        class NoFactory(RegistryMachine):
            products = (Memory,)

        with pytest.raises(NotImplementedError, match="make_registry"):
            NoFactory()
