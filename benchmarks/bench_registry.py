"""The Registry against hand-written code, dishka and svcs (issue: registry and lifetimes).

Workload: enter a request scope, resolve three request-scoped objects (X takes
Y, Y takes the app-scoped Config and has a teardown; Z stands alone), run the
one finalizer, exit. Anchor: the same by hand with ``contextlib.ExitStack``
(``AsyncExitStack`` for the async rows). Targets with the walk ``"off"`` or
``"sampled"``: at most 2.5x sync and 2.8x async. Run:
``pytest benchmarks/bench_registry.py`` (needs benchmarks/requirements.txt).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest

import isolation
from isolation import Lifetime, Registry, UserContext

CTX = UserContext.new("alice", tenant_id="acme")


class Config:
    pass


class Y:
    def __init__(self, config: Config) -> None:
        self.config = config


class X:
    def __init__(self, y: Y) -> None:
        self.y = y


class Z:
    pass


CONFIG = Config()


def _close(y: Y) -> None:
    return None


def _isolation_registry(check: str) -> Registry:
    registry = Registry(check=check)  # type: ignore[arg-type]
    registry.provide_value(CONFIG, lifetime=Lifetime.APP)

    @registry.provide
    def y(config: Config) -> Iterator[Y]:
        value = Y(config)
        yield value
        _close(value)

    registry.provide(X)
    registry.provide(Z)
    return registry


def _isolation_async_registry(check: str) -> Registry:
    registry = Registry(check=check)  # type: ignore[arg-type]
    registry.provide_value(CONFIG, lifetime=Lifetime.APP)

    @registry.provide
    async def y(config: Config) -> AsyncIterator[Y]:
        value = Y(config)
        yield value
        _close(value)

    registry.provide(X)
    registry.provide(Z)
    return registry


GROUP = "request: scope + 3 products + 1 finalizer (sync)"
AGROUP = "request: scope + 3 products + 1 finalizer (async)"


@pytest.mark.benchmark(group=GROUP)
def test_anchor_plain_exitstack(benchmark: pytest.FixtureRequest) -> None:
    def run() -> None:
        with contextlib.ExitStack() as stack:
            y = Y(CONFIG)
            stack.callback(_close, y)
            X(y)
            Z()

    benchmark(run)


@pytest.mark.parametrize("check", ["off", "sampled", "full"])
@pytest.mark.benchmark(group=GROUP)
def test_isolation_registry(benchmark: pytest.FixtureRequest, check: str) -> None:
    registry = _isolation_registry(check)

    def run() -> None:
        with isolation.scope(CTX, registry=registry) as s:
            s.get(X)
            s.get(Y)
            s.get(Z)

    benchmark(run)


@pytest.mark.benchmark(group=GROUP)
def test_dishka(benchmark: pytest.FixtureRequest) -> None:
    from dishka import Provider, Scope, make_container, provide

    class AppProvider(Provider):
        @provide(scope=Scope.APP)
        def config(self) -> Config:
            return CONFIG

        @provide(scope=Scope.REQUEST)
        def y(self, config: Config) -> Iterator[Y]:
            value = Y(config)
            yield value
            _close(value)

        x = provide(X, scope=Scope.REQUEST)
        z = provide(Z, scope=Scope.REQUEST)

    container = make_container(AppProvider())

    def run() -> None:
        with container() as request:
            request.get(X)
            request.get(Y)
            request.get(Z)

    benchmark(run)


@pytest.mark.benchmark(group=GROUP)
def test_svcs(benchmark: pytest.FixtureRequest) -> None:
    import svcs

    registry = svcs.Registry()
    registry.register_value(Config, CONFIG)

    def y_factory(container: svcs.Container) -> Iterator[Y]:
        value = Y(container.get(Config))
        yield value
        _close(value)

    def x_factory(container: svcs.Container) -> X:
        return X(container.get(Y))

    registry.register_factory(Y, y_factory)
    registry.register_factory(X, x_factory)
    registry.register_factory(Z, Z)

    def run() -> None:
        with svcs.Container(registry) as container:
            container.get(X)
            container.get(Y)
            container.get(Z)

    benchmark(run)


def _run_async(benchmark: pytest.FixtureRequest, body: object) -> None:
    """Time an async body on one asyncio loop in this thread, without the loop's start-up.

    Each round runs the body 500 times on a persistent ``asyncio.Runner``; a
    portal to a loop in another thread made the anchor's figure swing by 2x
    between runs, more than the differences measured.
    """

    async def many(n: int) -> None:
        for _ in range(n):
            await body()  # type: ignore[operator]

    with asyncio.Runner() as runner:
        runner.run(many(500))  # warm up: compile resolvers, fill caches
        benchmark.pedantic(  # type: ignore[attr-defined]
            lambda: runner.run(many(500)), rounds=40, iterations=1
        )


@pytest.mark.benchmark(group=AGROUP)
def test_anchor_async_plain_exitstack(benchmark: pytest.FixtureRequest) -> None:
    async def body() -> None:
        async with contextlib.AsyncExitStack() as stack:
            y = Y(CONFIG)
            stack.callback(_close, y)
            X(y)
            Z()

    _run_async(benchmark, body)


@pytest.mark.parametrize("check", ["off", "sampled", "full"])
@pytest.mark.benchmark(group=AGROUP)
def test_isolation_registry_async(benchmark: pytest.FixtureRequest, check: str) -> None:
    registry = _isolation_async_registry(check)

    async def body() -> None:
        async with isolation.scope(CTX, registry=registry) as s:
            await s.aget(X)
            await s.aget(Y)
            await s.aget(Z)

    _run_async(benchmark, body)


@pytest.mark.benchmark(group=AGROUP)
def test_dishka_async(benchmark: pytest.FixtureRequest) -> None:
    from dishka import Provider, Scope, make_async_container, provide

    class AppProvider(Provider):
        @provide(scope=Scope.APP)
        def config(self) -> Config:
            return CONFIG

        @provide(scope=Scope.REQUEST)
        async def y(self, config: Config) -> AsyncIterator[Y]:
            value = Y(config)
            yield value
            _close(value)

        x = provide(X, scope=Scope.REQUEST)
        z = provide(Z, scope=Scope.REQUEST)

    container = make_async_container(AppProvider())

    async def body() -> None:
        async with container() as request:
            await request.get(X)
            await request.get(Y)
            await request.get(Z)

    _run_async(benchmark, body)


@pytest.mark.benchmark(group=AGROUP)
def test_svcs_async(benchmark: pytest.FixtureRequest) -> None:
    import svcs

    registry = svcs.Registry()
    registry.register_value(Config, CONFIG)

    async def y_factory(container: svcs.Container) -> AsyncIterator[Y]:
        value = Y(await container.aget(Config))
        yield value
        _close(value)

    async def x_factory(container: svcs.Container) -> X:
        return X(await container.aget(Y))

    registry.register_factory(Y, y_factory)
    registry.register_factory(X, x_factory)
    registry.register_factory(Z, Z)

    async def body() -> None:
        async with svcs.Container(registry) as container:
            await container.aget(X)
            await container.aget(Y)
            await container.aget(Z)

    _run_async(benchmark, body)
