"""A scope's session, and the tracking that finds the ones never closed.

:class:`Held` is what a scope's storage keeps for a manager: the session and its
:class:`~isolation.sessions._owner.Owner`. Its :meth:`Held.finalize` is the
scope's finalizer (the backstop that cuts off a block still open when the scope
ends), :meth:`Held.commit_now` the scope's finish hook, and ``__del__`` the leak
check: a session collected without its finalizer having run warns and counts.
:class:`OpenSessions` counts the open sessions, per principal, and the leaks.
"""

from __future__ import annotations

import asyncio
import threading
import typing
import warnings
from collections.abc import Awaitable
from typing import TYPE_CHECKING, final

import anyio
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from isolation import _clock
from isolation._redact import redact_principal
from isolation.context._principal import Principal
from isolation.sessions._owner import Owner

if TYPE_CHECKING:
    from isolation.sessions._manager import SessionManager

__all__ = ["Held", "OpenSessions"]


@final
class OpenSessions:
    """Sessions opened and not closed yet, per principal, and the leaked ones."""

    __slots__ = ("by_principal", "count", "leaks", "lock")

    def __init__(self, lock: threading.Lock) -> None:
        # The manager's lock: the sync face opens and closes sessions from threads.
        self.lock = lock
        self.count = 0
        self.by_principal: dict[Principal, int] = {}
        self.leaks = 0

    def opened(self, principal: Principal) -> None:
        with self.lock:
            self.count += 1
            self.by_principal[principal] = self.by_principal.get(principal, 0) + 1

    def closed(self, principal: Principal) -> None:
        with self.lock:
            self.count -= 1
            left = self.by_principal.get(principal, 0) - 1
            if left > 0:
                self.by_principal[principal] = left
            else:
                self.by_principal.pop(principal, None)


@final
class Held:
    """A scope's session: kept in the scope's storage, closed by the scope's finalizer."""

    __slots__ = ("__weakref__", "manager", "owner", "session")

    def __init__(
        self, manager: SessionManager, owner: Owner, session: AsyncSession | Session
    ) -> None:
        self.manager = manager
        self.owner = owner
        self.session = session

    def finalize(self, exc: BaseException | None) -> Awaitable[None] | None:
        """The backstop at scope exit: cut off a block still running, count the close.

        Usually every block has ended and there is nothing to await: then this
        returns ``None`` and the scope pays for no shielded cancel scope.
        A sync session's block still running in a thread cannot be cut off from
        here: it is marked closed, so its next statement is refused and its end
        rolls back.
        """
        owner = self.owner
        if owner.closed:
            return None
        if owner.sync:
            sync_session = typing.cast(Session, self.session)
            with owner.cleaning():
                owner.closed = True
                if not owner.admitted and sync_session.in_transaction():
                    sync_session.close()
            self.manager._sessions.closed(owner.principal)
            return None
        if owner.admitted or self.session.in_transaction():
            return self._finalize(exc)
        owner.closed = True
        self.manager._sessions.closed(owner.principal)
        return None

    async def _finalize(self, exc: BaseException | None) -> None:
        owner = self.owner
        if owner.closed:
            return
        owner.closed = True
        manager = self.manager
        try:
            with owner.cleaning():
                if owner.admitted:
                    # A block is still open (a task that escaped the scope, or a block never
                    # exited): its connection may be mid-operation in another task, so it is
                    # invalidated rather than rolled back politely, and its work is lost.
                    manager._rollbacks += 1
                    session: AsyncSession = self.session  # type: ignore[assignment]
                    try:
                        await session.invalidate()
                    finally:
                        manager._gate.release(owner)
                elif self.session.in_transaction():
                    session = self.session  # type: ignore[assignment]
                    await session.rollback()
                    await session.close()
        finally:
            manager._sessions.closed(owner.principal)

    async def commit_now(self) -> None:
        """The scope's :meth:`~isolation.Scope.finish` hook: commit a block still open.

        ``IsolationMiddleware`` finishes the scope before the response's status;
        a block opened in a FastAPI dependency with ``yield`` ends only after the
        response, so its work is committed here, and a failed commit (rolled back
        at once) still turns the response into a 500. The block stays open: its
        end commits what is done after this point, if anything.
        """
        owner = self.owner
        if owner.closed or not owner.admitted or owner.depth == 0 or owner.poisoned:
            return
        scope = owner.scope_ref()
        if scope is None or (scope.deadline is not None and _clock._now() >= scope.deadline):
            return  # expired: the block's end rolls back
        if owner.sync:
            await anyio.to_thread.run_sync(self._commit_sync)
            return
        session = typing.cast(AsyncSession, self.session)
        previous, owner.task = owner.task, asyncio.current_task()
        try:
            with owner.cleaning():
                try:
                    await session.commit()
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await session.rollback()
                    raise
        finally:
            owner.task = previous

    def _commit_sync(self) -> None:
        owner = self.owner
        session = typing.cast(Session, self.session)
        with owner.cleaning():
            try:
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def __del__(self) -> None:
        owner = self.owner
        if owner.closed:
            return
        owner.closed = True
        manager = self.manager
        manager._sessions.leaks += 1
        manager._sessions.closed(owner.principal)
        if owner.admitted:
            manager._gate.release_from_anywhere(owner)
        warnings.warn(
            f"a database session of {redact_principal(owner.principal)} was garbage-collected "
            "without being closed; its scope's finalizer never ran",
            ResourceWarning,
            stacklevel=1,
        )
