"""FM7, races in concurrent factory use: a scoped factory runs exactly once per scope.

Subject: ``scoped(factory, event_factory) -> wrapped`` with the contract of
:func:`isolation.request_scoped`: inside a scope, ``wrapped()`` (or ``await
wrapped()`` for an async factory) returns the scope's one instance;
``event_factory`` makes the :class:`threading.Event` a caller waits on while
another thread builds (the injectable hook of the context core's "build once"
primitive, as dishka's ``lock_factory=``). The library's is
``request_scoped``'s own ``ScopedFactory``, with a private index.

Scenario (the seed's 10 workers x 20 requests): 20 scopes one after another;
in each, 10 threads call the factory at the same moment through a
:class:`~isolation.ContextThreadPoolExecutor` (which carries the scope into
the threads); then the same with 10 tasks. Property: the factory ran exactly
20 times, never twice at once, and all callers of one scope got one instance.

The interleaving is forced, not left to the GIL: the factory blocks until it
is released and counts concurrent entries. With tasks, it is released once
:func:`anyio.wait_all_tasks_blocked` says every other caller is waiting. With
threads, once every other caller waits on an event the subject made with the
check's ``event_factory`` (which notes each waiter), or once all ten are
inside the factory. So the mutant, creation without a lock, lets all ten
callers in, every run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Final

import anyio

from isolation.context._interface import storage
from isolation.context._model import UserContext
from isolation.context._propagation import ContextThreadPoolExecutor
from isolation.context._scope import Scope, current_scope
from isolation.factories._index import SharedStateIndex
from isolation.factories._request_scoped import ScopedFactory, wrap_scoped
from isolation.report._registry import Backend, Check, ModeRegistry, Settings

__all__ = ["Scoped", "register", "run_tasks", "run_threads"]

EventFactory = Callable[[], threading.Event]
Scoped = Callable[[Callable[..., Any], EventFactory], Callable[[], Any]]

WORKERS: Final = 10
SCOPES: Final = 20
HANG_GUARD: Final = 30.0  # seconds: only reached if the check cannot observe the callers


def _ctx(i: int) -> UserContext:
    return UserContext.new(f"user-{i % 5}", tenant_id=f"t{i % 2}")


class _ThreadRound:
    """One scope's worth of the thread scenario: the blocking factory and its observer."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.entered = 0
        self.inside = 0
        self.most_inside = 0
        self.blocked: set[int] = set()
        self.released = False
        self.timed_out = False
        self.local = threading.local()

    def factory(self) -> dict[str, int]:
        self.local.in_factory = True
        with self.cond:
            self.entered += 1
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            self.cond.notify_all()
            if not self.cond.wait_for(
                lambda: self.released or self.entered == WORKERS, timeout=HANG_GUARD
            ):
                self.timed_out = True
            self.inside -= 1
        return {"built": self.entered}

    def event_factory(self) -> threading.Event:
        """The subject's hook: an event that notes each caller about to wait on it."""
        round_ = self

        class _Observed(threading.Event):
            def wait(self, timeout: float | None = None) -> bool:
                if not getattr(round_.local, "in_factory", False):
                    with round_.cond:
                        round_.blocked.add(threading.get_ident())
                        round_.cond.notify_all()
                return super().wait(timeout)

        return _Observed()

    def call(self, wrapped: Callable[[], Any]) -> Any:
        self.local.in_factory = False
        return wrapped()

    def release_when_ready(self) -> None:
        with self.cond:
            if not self.cond.wait_for(
                lambda: (
                    self.entered == WORKERS
                    or (self.entered >= 1 and len(self.blocked) >= WORKERS - self.entered)
                ),
                timeout=HANG_GUARD,
            ):
                self.timed_out = True
            self.released = True
            self.cond.notify_all()


def run_threads(scoped: Scoped) -> list[str]:
    """10 threads x 20 scopes through a context-carrying executor; return the violations."""
    found: list[str] = []
    runs = 0
    with ContextThreadPoolExecutor(max_workers=WORKERS) as pool:
        for i in range(SCOPES):
            round_ = _ThreadRound()
            wrapped = scoped(round_.factory, round_.event_factory)
            with Scope(_ctx(i)):
                futures = [pool.submit(round_.call, wrapped) for _ in range(WORKERS)]
                round_.release_when_ready()
                results = [f.result(timeout=HANG_GUARD) for f in futures]
            runs += round_.entered
            if round_.timed_out:
                found.append(f"scope {i}: the callers could not be observed (hang guard)")
            if round_.most_inside > 1:
                found.append(
                    f"scope {i}: the factory ran {round_.most_inside} times at once "
                    f"({WORKERS} threads)"
                )
            if len({id(r) for r in results}) != 1:
                found.append(f"scope {i}: {len({id(r) for r in results})} instances in one scope")
    if runs != SCOPES:
        found.insert(0, f"threads: the factory ran {runs} times for {SCOPES} scopes")
    return found


async def run_tasks(scoped: Scoped) -> list[str]:
    """10 tasks x 20 scopes; return the violations (runs on asyncio and trio)."""
    found: list[str] = []
    runs = 0
    for i in range(SCOPES):
        release = anyio.Event()
        state = {"entered": 0, "inside": 0, "most": 0}

        async def factory(state: dict[str, int] = state, release: anyio.Event = release) -> object:
            state["entered"] += 1
            state["inside"] += 1
            state["most"] = max(state["most"], state["inside"])
            await release.wait()
            state["inside"] -= 1
            return object()

        wrapped = scoped(factory, threading.Event)
        results: list[object] = []

        async def call(
            wrapped: Callable[[], Any] = wrapped, results: list[object] = results
        ) -> None:
            results.append(await wrapped())

        with anyio.fail_after(HANG_GUARD):
            async with Scope(_ctx(i)), anyio.create_task_group() as tg:
                for _ in range(WORKERS):
                    tg.start_soon(call)
                await anyio.wait_all_tasks_blocked()
                release.set()
        runs += state["entered"]
        if state["most"] > 1:
            found.append(
                f"scope {i}: the factory ran {state['most']} times at once ({WORKERS} tasks)"
            )
        if len({id(r) for r in results}) != 1:
            found.append(f"scope {i}: {len({id(r) for r in results})} instances in one scope")
    if runs != SCOPES:
        found.insert(0, f"tasks: the factory ran {runs} times for {SCOPES} scopes")
    return found


def check_exactly_once(scoped: Scoped, settings: Settings) -> list[str]:
    """Threads, then tasks (on asyncio here; the test suite runs tasks on trio too)."""
    found = run_threads(scoped)
    found.extend(anyio.run(run_tasks, scoped, backend="asyncio"))
    return found


# -- the library's subject and the mutant ------------------------------------------------


def _library_scoped(factory: Callable[..., Any], event_factory: EventFactory) -> Callable[[], Any]:
    return wrap_scoped(
        ScopedFactory(factory, index=SharedStateIndex(), event_factory=event_factory)
    )


def _unlocked_scoped(factory: Callable[..., Any], event_factory: EventFactory) -> Callable[[], Any]:
    """Mutant: a per-scope cache that builds without a lock (check, build, store)."""
    key = object()
    if anyio_is_async(factory):

        async def get_async() -> Any:
            data = storage(current_scope())[0]
            if key not in data:
                data[key] = await factory()
            return data[key]

        return get_async

    def get() -> Any:
        data = storage(current_scope())[0]
        if key not in data:
            data[key] = factory()
        return data[key]

    return get


def anyio_is_async(fn: Callable[..., Any]) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fn)


def _library() -> Scoped:
    return _library_scoped


def _mutant() -> Scoped:
    return _unlocked_scoped


def register(registry: ModeRegistry) -> None:
    """Register FM7's exactly-once check."""
    registry.register(
        7,
        Check(
            name="request-scoped-exactly-once",
            backend=Backend.MEMORY,
            run=check_exactly_once,
            library=_library,
            mutant=_mutant,
            description=(
                "20 scopes x 10 threads (context-carrying executor), then x 10 tasks, calling "
                "a blocking factory at once: it ran exactly 20 times, one instance per scope"
            ),
        ),
    )
