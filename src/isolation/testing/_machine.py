"""``AsyncRuleBasedStateMachine``: Hypothesis state machines with ``async def`` rules.

Hypothesis runs a machine's rules one by one from its own (synchronous) loop
and cannot await them (HypothesisWorks/hypothesis#4107). This base class gives
each machine instance **one event loop** for its whole run — an anyio blocking
portal, the loop in a worker thread — and runs every ``async def`` rule,
invariant, initializer and ``ateardown`` on it. So a task started in one step
(``self.task_group.start_soon(...)``) keeps running into the next, and a later
rule can await what it produced. Use Hypothesis' own ``@rule``, ``@invariant``,
``@initialize``, ``@precondition`` and ``Bundle``; shrinking works as usual.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

import anyio
import anyio.from_thread
from hypothesis.stateful import RuleBasedStateMachine

from isolation._compat import hypothesis_rule_markers

__all__ = ["AsyncRuleBasedStateMachine"]

_MARKERS = hypothesis_rule_markers()


def _make_sync(name: str, marker: str, spec: Any) -> Callable[..., Any]:
    async_fn = spec.function

    @functools.wraps(async_fn)
    def run_on_loop(machine: AsyncRuleBasedStateMachine, **kwargs: Any) -> Any:
        return machine._call(async_fn, machine, **kwargs)

    # The rule's own record is replaced by one whose function runs on the loop.
    setattr(run_on_loop, marker, dataclasses.replace(spec, function=run_on_loop))
    return run_on_loop


class AsyncRuleBasedStateMachine(RuleBasedStateMachine):
    """A ``RuleBasedStateMachine`` whose rules and invariants may be ``async def``.

    Set ``backend = "trio"`` (or use :meth:`on_backend`) to run on trio; the
    default is asyncio. Inside async rules, ``self.task_group`` starts tasks
    that live across steps; they are cancelled at teardown, and a task that
    failed makes the run fail there. Override ``async def ateardown(self)`` for
    async cleanup (it runs before the task group is cancelled).

    Example::

        class Counter(AsyncRuleBasedStateMachine):
            def __init__(self) -> None:
                super().__init__()
                self.n = 0

            @rule()
            async def bump(self) -> None:
                await anyio.sleep(0)
                self.n += 1

        TestCounter = Counter.TestCase
    """

    backend: ClassVar[str] = "asyncio"
    backend_options: ClassVar[dict[str, Any] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, member in list(vars(cls).items()):
            for marker in _MARKERS:
                spec = getattr(member, marker, None)
                if spec is not None and inspect.iscoroutinefunction(spec.function):
                    setattr(cls, name, _make_sync(name, marker, spec))

    def __init__(self) -> None:
        super().__init__()
        self._portal_cm = anyio.from_thread.start_blocking_portal(
            self.backend, self.backend_options
        )
        self._portal = self._portal_cm.__enter__()
        self._stop: anyio.Event | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        # Set on the loop by the host task as its group fails, before the portal's
        # future for it is (a callback, a loop iteration later): steps read this.
        self._failed = False
        try:
            self._host, _ = self._portal.start_task(self._host_tasks)
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise

    @classmethod
    def on_backend(cls, backend: str, **options: Any) -> type[AsyncRuleBasedStateMachine]:
        """Return a subclass of this machine that runs on ``backend`` (``"trio"``)."""
        return type(
            f"{cls.__name__}On{backend.title()}",
            (cls,),
            {"backend": backend, "backend_options": options or None},
        )

    async def _host_tasks(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        self._stop = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                task_status.started()
                await self._stop.wait()
                tg.cancel_scope.cancel()
        except BaseException:
            self._failed = True
            raise

    @property
    def task_group(self) -> anyio.abc.TaskGroup:
        """A task group that lives for the whole run (use it from async rules)."""
        assert self._task_group is not None
        return self._task_group

    @property
    def portal(self) -> anyio.from_thread.BlockingPortal:
        """The portal to the run's event loop, for sync rules that need it."""
        return self._portal

    def _call(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any, **kwargs: Any) -> Any:
        result = self._portal.call(self._step, functools.partial(fn, *args, **kwargs))
        if self._failed:  # a background task failed: fail this step, every replay
            self._host.result()  # waits for the portal's future, then raises
        return result

    @staticmethod
    async def _step(call: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        result = await call()
        # Let the background tasks run until they all wait, so that what a step
        # leaves behind is the same on every replay (Hypothesis needs that).
        await anyio.wait_all_tasks_blocked()
        return result

    async def ateardown(self) -> None:
        """Async cleanup at the end of a run; override it (the default does nothing)."""

    def teardown(self) -> None:
        """Run :meth:`ateardown`, cancel the run's tasks and close its event loop."""
        try:
            self._portal.call(self.ateardown)
        finally:
            try:
                assert self._stop is not None
                self._portal.call(self._stop.set)
                self._host.result()  # re-raises what a background task raised
            finally:
                self._portal_cm.__exit__(None, None, None)


AsyncRuleBasedStateMachine.__module__ = "isolation.testing"
