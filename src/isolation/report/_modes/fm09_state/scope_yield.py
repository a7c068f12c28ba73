"""FM9, no scope across a yield: a generator's user never bleeds into its consumer.

Subject: ``make(ctx)``, which returns the scope a job generator enters (``with``
and ``async with``), as :class:`isolation.scope` does. Five users' job
generators each enter their scope and yield inside it — the background-jobs
pattern written as a generator. The property, with real threads and tasks:

* the consumer between items, in a task, and in a thread of a bare
  ``ThreadPoolExecutor`` (a later, unrelated job on the worker that ran the
  generator), never reads the generator's user; it can open a scope of its own;
* a generator resumed under the consumer's own scope never builds an item as
  the consumer's user, and a scope held through a ``@contextmanager`` helper
  is held too;
* a generator closed in another context, thread or task ends with a typed
  :class:`~isolation.IsolationError`, never a ``ValueError`` from a foreign token,
  and the closing task can then open a new scope.

The mutant enters the real scope from a helper method, so the scope cannot see
that a generator's body holds it: the behaviour before issue 16, where the
consumer read the generator's user.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import AsyncGenerator, Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

import anyio

from isolation._errors import IsolationError
from isolation.context._model import UserContext
from isolation.context._scope import Scope, current_context
from isolation.report._modes._support.registration import add_check
from isolation.report._registry import ModeRegistry, Settings

__all__ = ["register"]

Make = Callable[[UserContext], Any]

USERS = 5


def _who() -> str:
    """The user id read here, or the name of the library error that refused it."""
    try:
        return current_context().user_id
    except IsolationError as exc:
        return type(exc).__name__


def _jobs(make: Make, ctx: UserContext) -> Generator[str, None, None]:
    with make(ctx):
        yield current_context().user_id
        yield current_context().user_id


async def _ajobs(make: Make, ctx: UserContext) -> AsyncGenerator[str, None]:
    async with make(ctx):
        yield current_context().user_id
        yield current_context().user_id


def _digest(make: Make, ctx: UserContext) -> Generator[str, None, None]:
    """Items built as whoever the body runs as: the generator's user, or a refusal."""
    with make(ctx):
        yield _who()
        yield _who()


@contextlib.contextmanager
def _as_user(make: Make, ctx: UserContext) -> Generator[None, None, None]:
    """An application's helper: the scope reaches the generator through it."""
    with make(ctx):
        yield


def _helper_jobs(make: Make, ctx: UserContext) -> Generator[str, None, None]:
    with _as_user(make, ctx):
        yield _who()
        yield _who()


def _resumed_and_helpers(make: Make, users: list[UserContext], violations: list[str]) -> None:
    """A generator resumed under the consumer's own scope never builds an item as the
    consumer's user; a scope held through a @contextmanager helper is held too."""
    for ctx in users:
        gen = _digest(make, ctx)
        next(gen)
        with Scope(UserContext.new("fm9-consumer"), allow_switch=True):
            try:
                if next(gen) == "fm9-consumer":
                    violations.append(
                        f"the generator of {ctx.user_id}, resumed under the consumer's "
                        "scope, built an item as the consumer's user"
                    )
            except IsolationError:
                pass
            _close(gen, "under the consumer's scope", violations)
        _close(gen, "after the consumer's scope", violations)
        helper = _helper_jobs(make, ctx)
        next(helper)
        if _who() == ctx.user_id:
            violations.append(
                f"the consumer ran as {ctx.user_id} between the items of a generator "
                "holding its scope through a @contextmanager helper"
            )
        _close(helper, "in another context", violations)


def _close(gen: Generator[str, None, None], where: str, violations: list[str]) -> None:
    """Close ``gen`` in a fresh copy of this context: only typed errors may come out."""
    try:
        contextvars.copy_context().run(gen.close)
    except IsolationError:
        pass
    except Exception as exc:
        violations.append(f"closing a job generator {where} raised {type(exc).__name__}")


def _sync_consumers(make: Make, users: list[UserContext], violations: list[str]) -> None:
    for ctx in users:
        gen = _jobs(make, ctx)
        if next(gen) != ctx.user_id:
            violations.append(f"the generator of {ctx.user_id} did not run as its user")
        seen = _who()
        if seen == ctx.user_id:
            violations.append(f"the consumer ran as {seen} between the items of its generator")
        with Scope(UserContext.new("fm9-consumer"), allow_switch=True):
            if _who() != "fm9-consumer":
                violations.append("the consumer could not open its own scope between items")
        _close(gen, "in another context", violations)
        if _who() == ctx.user_id:
            violations.append(f"the consumer still ran as {ctx.user_id} after closing")


def _pool_jobs(make: Make, users: list[UserContext], violations: list[str]) -> None:
    kept: list[Generator[str, None, None]] = []

    def first_job(ctx: UserContext) -> None:
        gen = _jobs(make, ctx)
        kept.append(gen)
        next(gen)

    with ThreadPoolExecutor(max_workers=1) as pool:
        for ctx in users:
            pool.submit(first_job, ctx).result(timeout=60)
            seen = pool.submit(_who).result(timeout=60)
            if seen == ctx.user_id:
                violations.append(f"a later, unrelated job on a pool worker ran as {seen}")
            pool.submit(_close, kept[-1], "on the worker", violations).result(timeout=60)


async def _closed_by_another_task(make: Make, ctx: UserContext, violations: list[str]) -> None:
    gen = _ajobs(make, ctx)
    await gen.__anext__()
    if _who() == ctx.user_id:
        violations.append(f"the consuming task ran as {ctx.user_id} between items")
    done = anyio.Event()

    async def closer() -> None:
        try:
            await gen.aclose()
        except IsolationError:
            pass
        except Exception as exc:
            violations.append(f"closing an async job generator in another task raised {exc!r}")
        try:
            async with Scope(UserContext.new("fm9-closer"), allow_switch=True):
                if _who() != "fm9-closer":
                    violations.append("the closing task could not open a new scope")
        except IsolationError as exc:
            violations.append(f"the closing task could not open a new scope: {exc!r}")
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(closer)
        await done.wait()


async def check_no_scope_across_yield(make: Make, settings: Settings) -> list[str]:
    """Five users' job generators hold their scopes across yields; no consumer sees them."""
    violations: list[str] = []
    users = [UserContext.new(f"fm9-job-user-{i}", tenant_id="fm9") for i in range(USERS)]
    _sync_consumers(make, users, violations)
    _resumed_and_helpers(make, users, violations)
    await anyio.to_thread.run_sync(_pool_jobs, make, users, violations)
    for ctx in users:
        await _closed_by_another_task(make, ctx, violations)
    return violations


# -- the mutant: the scope is entered from a helper, out of the generator's sight ------


class _EnteredByHelper:
    """Mutant: a scope whose ``__enter__`` runs in a helper method, not in the generator."""

    def __init__(self, ctx: UserContext) -> None:
        self._scope = Scope(ctx)

    def __enter__(self) -> Scope:
        return self._scope.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return self._scope.__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> Scope:
        return self._scope.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return self._scope.__exit__(exc_type, exc, tb)


def register(registry: ModeRegistry) -> None:
    """Register the scope-across-yield check under FM9."""
    add_check(
        registry,
        9,
        "no-scope-across-yield",
        check_no_scope_across_yield,
        library=lambda: Scope,
        mutant=lambda: _EnteredByHelper,
        description=(
            "5 users' job generators hold scopes across yields: consumers, pool workers "
            "and closing tasks never run as them; exits raise typed errors only"
        ),
    )
