"""Who owns a managed session, and the check that refuses everyone else.

An :class:`Owner` is referenced by its session (never the other way round) and
holds its scope weakly. :meth:`Owner.guard` is what SQLAlchemy's events call
before any SQL is sent (``_guard.py``); :meth:`Owner.refuse` is the slow path of
every checked method and property: another scope, no scope, an ended scope, a
generator holding the scope across a yield, or another task of the scope.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, final

from isolation import _clock
from isolation._errors import (
    ContextExpiredError,
    CrossContextAccessError,
    ScopeEndedError,
    SessionInUseError,
    UsageError,
)
from isolation._redact import redact_principal
from isolation.context._interface import bound_scope, holds_itself
from isolation.context._principal import Principal
from isolation.context._scope import Scope

if TYPE_CHECKING:
    from isolation.sessions._tenancy import Tenancy
    from isolation.sessions.postgres import Binding

__all__ = ["Owner", "current_scope_or_none", "in_use_error"]

# The bound scope or ``None``, without current_scope()'s checks: the guard decides.
current_scope_or_none = bound_scope
_current_scope = current_scope_or_none


@final
class Owner:
    """Who a session belongs to, and which task is inside its block right now.

    Referenced by the session, never referencing it back, and holding its scope
    weakly: nothing here keeps an ended scope alive.
    """

    __slots__ = (
        "__weakref__",
        "admitted",
        "cleaners",
        "closed",
        "depth",
        "poisoned",
        "principal",
        "rls",
        "scope_ref",
        "started",
        "sync",
        "task",
        "tenancy",
        "unrestricted",
        "warned",
    )

    def __init__(
        self,
        scope: Scope,
        principal: Principal,
        tenancy: Tenancy | None,
        rls: Binding | None,
        *,
        sync: bool = False,
        unrestricted: bool = False,
    ) -> None:
        self.scope_ref = weakref.ref(scope)
        self.principal = principal
        self.tenancy = None if unrestricted else tenancy
        self.rls = rls
        self.sync = sync
        self.unrestricted = unrestricted
        # The task inside the block (async face); the face's marker of an open block (sync).
        self.task: object | None = None
        self.depth = 0
        self.admitted = False
        self.closed = False
        self.poisoned = False
        self.started = 0.0
        self.warned = False
        # Who runs the manager's own cleanup: tasks (async face), thread idents (sync face).
        self.cleaners: set[object] | None = None

    def worker(self) -> object | None:
        """The running asyncio task (async face) or thread ident (sync face)."""
        if self.sync:
            return threading.get_ident()
        try:
            return asyncio.current_task()
        except RuntimeError:
            return None

    def refuse(self, current: Scope | None) -> None:
        """The slow path of every checked method: raise, unless the manager is cleaning up.

        Raises :class:`CrossContextAccessError` for use from another scope or from
        none, and :class:`ScopeEndedError` for use from a copy of the owner's scope
        that has ended (an escaped task). The manager's own cleanup (the scope's
        finalizer, a block's end) runs in tasks it marks, and passes.
        """
        cleaners = self.cleaners
        if cleaners:
            worker = self.worker()
            if worker is not None and worker in cleaners:
                return
        if current is not None and holds_itself(current) and current is self.scope_ref():
            if current.active and not self.closed:
                return  # in the generator that holds its scope across a yield
            if not self.closed:
                raise CrossContextAccessError(
                    f"a database session of {redact_principal(self.principal)} was used "
                    "outside the generator that holds its scope across a yield"
                )
        if current is None or current is not self.scope_ref():
            where = (
                "with no scope bound"
                if current is None
                else f"from another scope (of {redact_principal(current.context.principal)})"
            )
            raise CrossContextAccessError(
                f"a database session of {redact_principal(self.principal)} was used {where}",
                hint=(
                    "Never keep a session across requests or hand it to other code; "
                    "open `async with manager.session()` in the scope that uses it"
                ),
            )
        raise ScopeEndedError(
            f"a database session of {redact_principal(self.principal)} was used after "
            "its scope ended"
        )

    @contextlib.contextmanager
    def cleaning(self) -> Iterator[None]:
        """Mark the running task (or thread) as the manager's cleanup: the checks let it through."""
        worker = self.worker()
        assert worker is not None  # the async face runs on asyncio tasks only (_running_task)
        cleaners = self.cleaners
        if cleaners is None:
            cleaners = self.cleaners = set()
        cleaners.add(worker)
        try:
            yield
        finally:
            cleaners.discard(worker)

    def guard(self) -> None:
        """Refuse use from another scope, after the scope ended, outside a block, or by
        another task: called by SQLAlchemy's events before any SQL is sent."""
        current = _current_scope()
        if current is None or current is not self.scope_ref() or self.closed:
            self.refuse(current)
            return
        task = self.task
        if task is None:
            raise UsageError(
                f"the database session of {redact_principal(self.principal)} was used "
                f"outside its `{'' if self.sync else 'async '}with manager.session()` block",
                hint="Do the database work inside the block; objects stay readable after it",
            )
        if self.sync:
            # No task to cancel at the deadline: the next statement is refused instead
            # (not the manager's own rollback of it).
            deadline = current.deadline
            if (
                deadline is not None
                and _clock._now() >= deadline
                and not (self.cleaners and threading.get_ident() in self.cleaners)
            ):
                raise ContextExpiredError(
                    f"the context of {redact_principal(self.principal)} expired inside a "
                    "session block; its work will be rolled back"
                )
            return
        try:
            running = asyncio.current_task()
        except RuntimeError:  # a worker thread (to_thread) has no running loop
            running = None
        if task is not running:
            raise in_use_error(self.principal)


def in_use_error(principal: Principal) -> SessionInUseError:
    return SessionInUseError(
        f"another task of the scope of {redact_principal(principal)} is inside a session "
        "block: one AsyncSession must not be used by two tasks at once",
        hint=(
            "Use sequential blocks, or run each concurrent task in its own child scope "
            "(async with isolation.scope(UserContext.new(...same user...))) with its own session"
        ),
    )
