"""The Registry against hand-written code, dishka and svcs (issue: registry and lifetimes).

Workload: enter a request scope, resolve three request-scoped objects (X takes
Y, Y takes the app-scoped Config and has a teardown; Z stands alone), run the
one finalizer, exit. Anchor: the same by hand with ``contextlib.ExitStack``
(``AsyncExitStack`` for the async rows). Targets with the walk ``"off"`` or
``"sampled"``: at most 2.5x sync and 2.8x async. Three groups:

- sync: the workload, ``with`` and ``get``;
- async: the same providers through the async API (``async with``, ``aget``),
  against ``AsyncExitStack`` with the same sync teardown: the issue's
  workload, whose async anchor costs only ~0.2 µs more than the sync one;
- async generator: Y's provider is an async generator, and so is the
  anchor's (a hand-written async generator closed by ``AsyncExitStack``), so
  that every row pays the async generator's own protocol and none is timed
  against work it does not do. isolation runs that teardown inside a
  shielded anyio cancel scope, which the others do not; the group also times
  isolation and the anchor inside an anyio cancel scope (as under a task
  group), where anyio's scope bookkeeping grows for everyone.

Run: ``pytest benchmarks/bench_registry.py`` (needs benchmarks/requirements.txt).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

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
AGROUP = "request: scope + 3 products + 1 finalizer (async API)"
GGROUP = "request: scope + 3 products + 1 async-generator finalizer (async API)"


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


def _dishka_provider(*, async_teardown: bool) -> object:
    from dishka import Provider, Scope, provide

    class AppProvider(Provider):
        @provide(scope=Scope.APP)
        def config(self) -> Config:
            return CONFIG

        if async_teardown:

            @provide(scope=Scope.REQUEST)
            async def y(self, config: Config) -> AsyncIterator[Y]:
                value = Y(config)
                yield value
                _close(value)

        else:

            @provide(scope=Scope.REQUEST)
            def y(self, config: Config) -> Iterator[Y]:
                value = Y(config)
                yield value
                _close(value)

        x = provide(X, scope=Scope.REQUEST)
        z = provide(Z, scope=Scope.REQUEST)

    return AppProvider()


@pytest.mark.benchmark(group=GROUP)
def test_dishka(benchmark: pytest.FixtureRequest) -> None:
    from dishka import make_container

    container = make_container(_dishka_provider(async_teardown=False))

    def run() -> None:
        with container() as request:
            request.get(X)
            request.get(Y)
            request.get(Z)

    benchmark(run)


def _svcs_registry() -> object:
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
    return registry


REGISTRY_SVCS_SYNC = None if importlib.util.find_spec("svcs") is None else _svcs_registry()


@pytest.mark.benchmark(group=GROUP)
def test_svcs(benchmark: pytest.FixtureRequest) -> None:
    import svcs

    def run() -> None:
        with svcs.Container(REGISTRY_SVCS_SYNC) as container:
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


def _isolation_body(registry: Registry) -> Callable[[], Awaitable[None]]:
    async def body() -> None:
        async with isolation.scope(CTX, registry=registry) as s:
            await s.aget(X)
            await s.aget(Y)
            await s.aget(Z)

    return body


def _dishka_body(*, async_teardown: bool) -> Callable[[], Awaitable[None]]:
    from dishka import make_async_container

    container = make_async_container(_dishka_provider(async_teardown=async_teardown))

    async def body() -> None:
        async with container() as request:
            await request.get(X)
            await request.get(Y)
            await request.get(Z)

    return body


def _svcs_body(registry: object) -> Callable[[], Awaitable[None]]:
    import svcs

    async def body() -> None:
        async with svcs.Container(registry) as container:  # type: ignore[arg-type]
            await container.aget(X)
            await container.aget(Y)
            await container.aget(Z)

    return body


def _in_cancel_scope(inner: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """``inner`` inside an anyio cancel scope, as under a task group or ``fail_after``."""
    import anyio

    async def body() -> None:
        with anyio.CancelScope():
            await inner()

    return body


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
    _run_async(benchmark, _isolation_body(_isolation_registry(check)))


@pytest.mark.benchmark(group=AGROUP)
def test_dishka_async(benchmark: pytest.FixtureRequest) -> None:
    _run_async(benchmark, _dishka_body(async_teardown=False))


@pytest.mark.benchmark(group=AGROUP)
def test_svcs_async(benchmark: pytest.FixtureRequest) -> None:
    _run_async(benchmark, _svcs_body(REGISTRY_SVCS_SYNC))


# -- Y's teardown an async generator, everywhere -------------------------------------


async def _y_agen(config: Config) -> AsyncIterator[Y]:
    value = Y(config)
    yield value
    _close(value)


async def _aclose(generator: AsyncIterator[Y]) -> None:
    try:
        await generator.__anext__()
    except StopAsyncIteration:
        return


async def _anchor_agen() -> None:
    async with contextlib.AsyncExitStack() as stack:
        generator = _y_agen(CONFIG)
        y = await generator.__anext__()
        stack.push_async_callback(_aclose, generator)
        X(y)
        Z()


@pytest.mark.benchmark(group=GGROUP)
def test_anchor_agen_plain_exitstack(benchmark: pytest.FixtureRequest) -> None:
    _run_async(benchmark, _anchor_agen)


@pytest.mark.parametrize("check", ["off", "sampled", "full"])
@pytest.mark.benchmark(group=GGROUP)
def test_isolation_registry_agen(benchmark: pytest.FixtureRequest, check: str) -> None:
    _run_async(benchmark, _isolation_body(_isolation_async_registry(check)))


@pytest.mark.benchmark(group=GGROUP)
def test_isolation_registry_agen_in_cancel_scope(benchmark: pytest.FixtureRequest) -> None:
    """Inside an anyio cancel scope the Registry's teardown shield costs more."""
    _run_async(benchmark, _in_cancel_scope(_isolation_body(_isolation_async_registry("off"))))


@pytest.mark.benchmark(group=GGROUP)
def test_anchor_agen_in_cancel_scope(benchmark: pytest.FixtureRequest) -> None:
    """The anchor inside the same cancel scope, to read the row above against."""
    _run_async(benchmark, _in_cancel_scope(_anchor_agen))


@pytest.mark.benchmark(group=GGROUP)
def test_dishka_agen(benchmark: pytest.FixtureRequest) -> None:
    _run_async(benchmark, _dishka_body(async_teardown=True))


@pytest.mark.benchmark(group=GGROUP)
def test_svcs_agen(benchmark: pytest.FixtureRequest) -> None:
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
    _run_async(benchmark, _svcs_body(registry))
