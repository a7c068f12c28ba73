"""FM7, races in concurrent factory use: a Registry builds one product per key per scope.

Subject: a :class:`~isolation.Registry` class. In each of 20 scopes, 10 threads
(through an executor that carries the scope) and then 10 tasks resolve the
same ``REQUEST`` product at the same moment. The provider blocks until every
resolver is either inside it or waiting for the build — for tasks,
``anyio.wait_all_tasks_blocked()``; for threads, the events the registry makes
with the check's ``event_factory=`` (the injectable hook of the context core's
"build once" primitive) count their waiters — so the interleaving that exposes a race happens every
run. The property: the provider ran exactly once per scope and every resolver
got the same object. The mutant resolves without a lock.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import anyio

from isolation._errors import UsageError
from isolation.context._interface import storage
from isolation.context._model import UserContext
from isolation.context._propagation import ContextThreadPoolExecutor
from isolation.context._scope import Scope
from isolation.factories._registry import Registry
from isolation.report._registry import Backend, Check, ModeRegistry, Settings

__all__ = ["CountingEvent", "register"]

SCOPES = 20
RESOLVERS = 10
_HANG_GUARD = 60.0


class CountingEvent(threading.Event):
    """A ``threading.Event`` that counts the threads waiting on it and wakes a condition."""

    def __init__(self, changed: threading.Condition, waiting: list[int]) -> None:
        super().__init__()
        self._changed = changed
        self._waiting = waiting

    def wait(self, timeout: float | None = None) -> bool:
        with self._changed:
            self._waiting[0] += 1
            self._changed.notify_all()
        try:
            return super().wait(timeout)
        finally:
            with self._changed:
                self._waiting[0] -= 1


class Product:
    """What the provider builds."""


def _thread_round(registry_class: type[Registry]) -> list[str]:
    changed = threading.Condition()
    entries = [0]
    waiting = [0]
    registry = registry_class(event_factory=lambda: CountingEvent(changed, waiting))

    @registry.provide
    def product() -> Product:
        with changed:
            entries[0] += 1
            changed.notify_all()
            # Wait until every resolver is in here or waiting for the scope.
            settled = changed.wait_for(
                lambda: entries[0] + waiting[0] >= RESOLVERS, timeout=_HANG_GUARD
            )
        if not settled:
            raise TimeoutError("resolvers never settled")
        return Product()

    violations: list[str] = []
    with ContextThreadPoolExecutor(RESOLVERS) as pool:
        for i in range(SCOPES):
            entries[0] = 0
            ctx = UserContext.new(f"fm7-thread-{i}")
            with Scope(ctx, registry=registry) as scope:
                start = threading.Barrier(RESOLVERS, timeout=_HANG_GUARD)

                def resolve(s: Scope = scope, b: threading.Barrier = start) -> Product:
                    b.wait()
                    return s.get(Product)

                futures = [pool.submit(resolve) for _ in range(RESOLVERS)]
                results = [f.result(timeout=_HANG_GUARD) for f in futures]
            if entries[0] != 1 or len({id(r) for r in results}) != 1:
                violations.append(
                    f"scope {i}: the provider ran {entries[0]} times for {RESOLVERS} threads, "
                    f"{len({id(r) for r in results})} distinct products"
                )
    return violations


async def _task_round(registry_class: type[Registry]) -> list[str]:
    registry = registry_class()
    entries = [0]
    release = anyio.Event()

    @registry.provide
    async def product() -> Product:
        entries[0] += 1
        await release.wait()
        return Product()

    violations: list[str] = []
    for i in range(SCOPES):
        entries[0] = 0
        release = anyio.Event()
        results: list[Product] = []
        async with Scope(UserContext.new(f"fm7-task-{i}"), registry=registry) as scope:

            async def resolve(s: Scope = scope, into: list[Product] = results) -> None:
                into.append(await s.aget(Product))

            with anyio.fail_after(_HANG_GUARD):
                async with anyio.create_task_group() as tg:
                    for _ in range(RESOLVERS):
                        tg.start_soon(resolve)
                    await anyio.wait_all_tasks_blocked()
                    release.set()
        if entries[0] != 1 or len({id(r) for r in results}) != 1:
            violations.append(
                f"scope {i}: the provider ran {entries[0]} times for {RESOLVERS} tasks, "
                f"{len({id(r) for r in results})} distinct products"
            )
    return violations


def check_registry_exactly_once(registry_class: type[Registry], settings: Settings) -> list[str]:
    """10 threads, then 10 tasks, resolve one product at once in each of 20 scopes: built once."""
    return _thread_round(registry_class) + anyio.run(_task_round, registry_class, backend="asyncio")


class _UnlockedRegistry(Registry):
    """Mutant: resolves plain providers without a lock (check the scope's cache, build, store).

    Written against the Registry's public ``provide`` and its declared interface
    to ``Scope.get`` and ``Scope.aget`` (``__isolation_resolvers__`` and
    ``__isolation_aresolvers__``: how each key resolves), not its private tables.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._fns: dict[Any, Callable[[], Any]] = {}
        self.__isolation_resolvers__ = _ByKey(self._resolver)
        self.__isolation_aresolvers__ = _ByKey(self._aresolver)

    def provide(self, fn: Any = None, /, **options: Any) -> Any:
        """Register as the library does; remember ``fn`` under the type it returns."""
        if fn is None:
            return lambda f: self.provide(f, **options)
        self._fns[inspect.signature(fn, eval_str=True).return_annotation] = fn
        return super().provide(fn, **options)

    def _fn(self, key: Any) -> Callable[[], Any]:
        fn = self._fns.get(key)
        if fn is None:
            raise UsageError(f"this mutant resolves only what it was given, not {key!r}")
        return fn

    def _resolver(self, key: Any) -> Callable[[Scope], Any]:
        fn = self._fn(key)
        if inspect.iscoroutinefunction(fn):
            raise UsageError("this mutant resolves async providers through aget() only")

        def resolve(scope: Scope) -> Any:
            data, _ = storage(scope)
            product = data.get((self, key), _NOTHING)
            if product is _NOTHING:
                product = fn()
                data[(self, key)] = product
            return product

        return resolve

    def _aresolver(self, key: Any) -> tuple[bool, Callable[[Scope], Any], None]:
        fn = self._fn(key)
        if not inspect.iscoroutinefunction(fn):
            return (False, self._resolver(key), None)

        async def aresolve(scope: Scope) -> Any:
            data, _ = storage(scope)
            product = data.get((self, key), _NOTHING)
            if product is _NOTHING:
                product = await fn()
                data[(self, key)] = product
            return product

        return (True, aresolve, None)


_NOTHING: Any = object()
"""The mutant's "not built in this scope yet"."""


class _ByKey(Mapping[Any, Any]):
    """A read-only table whose entry for a key is made on first lookup (``make(key)``)."""

    def __init__(self, make: Callable[[Any], Any]) -> None:
        self._make = make
        self._made: dict[Any, Any] = {}

    def __getitem__(self, key: Any) -> Any:
        try:
            return self._made[key]
        except KeyError:
            entry = self._made[key] = self._make(key)
            return entry

    def __iter__(self) -> Iterator[Any]:
        return iter(self._made)

    def __len__(self) -> int:
        return len(self._made)


def _library() -> Callable[[], Registry]:
    return Registry


def _mutant() -> Callable[[], Registry]:
    return _UnlockedRegistry


def register(registry: ModeRegistry) -> None:
    """Register FM7's check of the Registry."""
    registry.register(
        7,
        Check(
            name="registry-exactly-once",
            backend=Backend.MEMORY,
            run=check_registry_exactly_once,
            library=_library,
            mutant=_mutant,
            description="10 threads and 10 tasks resolve one product at once in 20 scopes: built once",
        ),
    )
