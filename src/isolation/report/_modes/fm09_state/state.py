"""FM9, agent execution state bleeds between users: per-scope state stays in its scope.

Subject: a class with the interface of :class:`isolation.ContextLocal`
(``Local(default_factory)`` with ``get()`` and ``set()``). Five users, each in
its own scope, run at once — as tasks of one event loop and as worker threads —
and each writes its own value before any reads (an event orders it, so every
interleaving that matters happens every run); each must read back exactly its
own. Then each user opens a *new* scope: nothing written in the old one may be
seen. The mutant keeps values in a dict keyed by thread id, the thread-local
pattern that bleeds on an event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread

from isolation.context._local import ContextLocal
from isolation.context._model import UserContext
from isolation.context._scope import Scope
from isolation.report._modes._support.registration import add_check
from isolation.report._registry import ModeRegistry, Settings

__all__ = ["register"]

USERS = 5


async def check_state_per_user(local_class: Callable[..., Any], settings: Settings) -> list[str]:
    """Five users write, then read, at once in tasks and in threads: each sees only its own."""
    violations: list[str] = []
    state = local_class(lambda: "<unset>")
    users = [UserContext.new(f"agent-user-{i}", tenant_id="fm9") for i in range(USERS)]

    # As tasks of one event loop: all write, then all read.
    written = anyio.Event()
    count = [0]

    async def task_user(ctx: UserContext) -> None:
        async with Scope(ctx):
            state.set(f"memory of {ctx.user_id}")
            count[0] += 1
            if count[0] == USERS:
                written.set()
            await written.wait()
            seen = state.get()
            if seen != f"memory of {ctx.user_id}":
                violations.append(f"a task of {ctx.user_id} read {seen!r}")

    async with anyio.create_task_group() as tg:
        for ctx in users:
            tg.start_soon(task_user, ctx)

    # As worker threads: a barrier makes every write happen before any read.
    barrier = threading.Barrier(USERS, timeout=30)

    def thread_user(ctx: UserContext) -> None:
        with Scope(ctx):
            state.set(f"thread memory of {ctx.user_id}")
            barrier.wait()
            seen = state.get()
            if seen != f"thread memory of {ctx.user_id}":
                violations.append(f"a thread of {ctx.user_id} read {seen!r}")

    async with anyio.create_task_group() as tg:
        for ctx in users:
            tg.start_soon(anyio.to_thread.run_sync, thread_user, ctx)

    # A later request of the same user starts empty.
    for ctx in users:
        async with Scope(UserContext.new(ctx.user_id, tenant_id="fm9")):
            seen = state.get()
            if seen != "<unset>":
                violations.append(f"a new scope of {ctx.user_id} read {seen!r} from an ended one")
    return violations


class _ThreadKeyedState:
    """Mutant: per-"request" state in a dict keyed by thread id."""

    def __init__(self, default_factory: Callable[[], Any]) -> None:
        self._default = default_factory
        self._values: dict[int, Any] = {}

    def get(self) -> Any:
        return self._values.setdefault(threading.get_ident(), self._default())

    def set(self, value: Any) -> None:
        self._values[threading.get_ident()] = value


def register(registry: ModeRegistry) -> None:
    """Register FM9's check."""
    add_check(
        registry,
        9,
        "context-local-per-user",
        check_state_per_user,
        library=lambda: ContextLocal,
        mutant=lambda: _ThreadKeyedState,
        description="5 users write then read at once, in tasks and threads; new scopes start empty",
    )
