"""The block lifecycle: ``async with manager.session()`` (and ``with``), from enter to end.

Entering claims the scope's session (made once per scope, kept in the scope's
storage), then admits the block or opens a SAVEPOINT for a nested one. Ending
commits or rolls back and closes, invalidating the connection when a step did
not finish. The two faces share their decisions: what to do is decided in
``_lifecycle.py``, what to raise afterwards in ``_cleanup.py`` (both pure);
the async face runs its steps shielded and bounded by the scope's cleanup time,
the sync face plainly (a thread is not cancelled; the driver's own timeouts hold).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import typing
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, final

import anyio
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, AsyncSessionTransaction
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.orm.session import SessionTransactionState

from isolation import _clock
from isolation._errors import (
    ContextExpiredError,
    DatabaseConnectionLostError,
    IsolationError,
    ScopeEndedError,
    SessionError,
    UnsupportedBackendError,
    UsageError,
)
from isolation._redact import redact_principal
from isolation.context._interface import body_cancelled, cleanup_timeout, storage
from isolation.context._scope import DEFAULT_CLEANUP_TIMEOUT, Scope, current_scope
from isolation.sessions._cleanup import AfterEnd, connection_lost, error_after_cleanup
from isolation.sessions._held import Held
from isolation.sessions._lifecycle import (
    Cleanup,
    Outcome,
    after_cleanup,
    nested_outcome,
    outermost_outcome,
)
from isolation.sessions._owner import Owner, in_use_error

if TYPE_CHECKING:
    from isolation.sessions._manager import SessionManager

__all__ = ["SYNC_BLOCK", "Block", "running_task"]

logger = logging.getLogger("isolation.sessions")

# ``Owner.task`` of a sync session's open block: its threads take turns, none owns it.
SYNC_BLOCK: Final = object()


def running_task() -> asyncio.Task[Any]:
    """The running asyncio task; sessions run on asyncio only."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    if task is None:
        raise UnsupportedBackendError(
            "isolation.sessions runs on asyncio only (SQLAlchemy's asyncio layer), and no "
            "asyncio task is running here"
        )
    return task


@final
class Block:
    """One ``async with manager.session()`` block, or ``with`` for a sync engine (single use)."""

    __slots__ = ("_held", "_key", "_manager", "_nested")

    def __init__(self, manager: SessionManager, *, unrestricted: bool = False) -> None:
        self._manager = manager
        # The scope's storage key: an unrestricted session is a second one of the scope.
        self._key: object = manager._unrestricted_key if unrestricted else manager
        self._held: Held | None = None
        self._nested: Any = None  # the SAVEPOINT of a nested block: async or sync

    # -- entering: the decisions both faces share ------------------------------------

    def _scope(self, *, closed_hint: str) -> tuple[Scope, dict[object, Any], threading.RLock]:
        """The bound scope and its storage, once the manager is open and an unrestricted
        block is allowed."""
        manager = self._manager
        scope = current_scope()
        if manager._closing:
            raise UsageError("this SessionManager is closed", hint=closed_hint)
        if self._key is not manager:
            manager._allow_unrestricted(scope)
        data, lock = storage(scope)
        return scope, data, lock

    def _held_in(self, scope: Scope, data: dict[object, Any]) -> Held:
        """The scope's session for this block's key, made on first use."""
        held: Held | None = data.get(self._key)
        if held is None:
            manager = self._manager
            held = manager._new_held(scope, unrestricted=self._key is not manager)
            data[self._key] = held
        return held

    # -- the sync face ----------------------------------------------------------------

    def __enter__(self) -> Session:
        manager = self._manager
        if not manager._sync:
            raise UsageError(
                "this SessionManager has an AsyncEngine: open its sessions with "
                "`async with manager.session()`",
                hint="Give the manager a sync sqlalchemy Engine for `with manager.session()`",
            )
        scope, data, lock = self._scope(
            closed_hint="Open sessions before close() is called, or enter `with manager:` again"
        )
        with lock:  # a request's threads may open it at once (FastAPI's thread pool)
            held = self._held_in(scope, data)
            owner = held.owner
            nested = owner.depth > 0
            owner.depth += 1
            if not nested:
                owner.task = SYNC_BLOCK
        session = typing.cast(Session, held.session)
        try:
            if nested:
                # The scope's code may move between threads (FastAPI runs a dependency and
                # the endpoint in different ones): an inner block is a SAVEPOINT, whichever.
                self._nested = session.begin_nested()
            else:
                if manager._checks.pending:
                    manager._checks.run_sync()
                manager._gate.admit_sync(owner, scope)
        except BaseException:
            with lock:
                owner.depth -= 1
                if not nested:
                    owner.task = None
            raise
        self._held = held
        return session

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        held = self._held
        if held is None:
            return False
        self._held = None
        try:
            _end_sync(held, self._nested, exc)
        except DBAPIError as failure:
            _raise_if_lost(held.owner, failure, exc, ending=True)
            raise
        _raise_if_lost(held.owner, exc, exc, ending=False)
        return False

    # -- the async face ---------------------------------------------------------------

    async def __aenter__(self) -> AsyncSession:
        manager = self._manager
        if manager._sync:
            raise UsageError(
                "this SessionManager has a sync Engine: open its sessions with "
                "`with manager.session()` (in a thread: FastAPI runs sync endpoints and "
                "dependencies in its thread pool)",
                hint="Give the manager an AsyncEngine for `async with manager.session()`",
            )
        task = running_task()
        scope, data, _lock = self._scope(
            closed_hint="Open sessions before aclose() is called, or start() it again"
        )
        held = self._held_in(scope, data)
        owner = held.owner
        session = typing.cast(AsyncSession, held.session)
        if owner.depth:
            if owner.task is not task:
                raise in_use_error(owner.principal)
            owner.depth += 1
            try:
                self._nested = await session.begin_nested()
            except BaseException:
                owner.depth -= 1
                raise
            self._held = held
            return session
        # Claim the block before awaiting admission: a second task of this scope that
        # arrives meanwhile is refused, deterministically.
        owner.task = task
        owner.depth = 1
        try:
            if manager._checks.pending:
                await manager._checks.run()
            await manager._gate.admit(owner)
        except BaseException:
            owner.task = None
            owner.depth = 0
            raise
        self._held = held
        return session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        held = self._held
        if held is None:
            return False
        self._held = None
        try:
            await _end(held, self._nested, exc)
        except DBAPIError as failure:
            _raise_if_lost(held.owner, failure, exc, ending=True)
            raise
        _raise_if_lost(held.owner, exc, exc, ending=False)
        return False


# -- ending: the decisions both faces share ---------------------------------------------


def _outcome(owner: Owner, exc: BaseException | None, *, cancellable: bool) -> Outcome:
    """Commit or roll back an outermost block that is ending (``_lifecycle`` decides)."""
    scope = owner.scope_ref()
    expired = scope is None or (scope.deadline is not None and _clock._now() >= scope.deadline)
    cancelled = False
    if cancellable:  # the async face: the scope's body may have been cancelled
        cancelled = scope is not None and body_cancelled(scope)
    outcome = outermost_outcome(
        exc, expired=expired, cancelled=cancelled, scope_closed=owner.closed
    )
    if owner.poisoned:
        outcome = Outcome.ROLLBACK
    return outcome


def _ended(held: Held, *, committed: bool) -> None:
    """The block is over, whatever happened: reset its owner, count it, give the slot back."""
    owner = held.owner
    owner.depth = 0
    owner.task = None
    owner.poisoned = False
    held.manager._count_end(committed=committed)
    held.manager._gate.release(owner)


def _raise_after(
    owner: Owner,
    exc: BaseException | None,
    outcome: Outcome,
    commit_error: Exception | None,
    *,
    cut_off: bool = False,
    finished: bool = True,
    committed: bool = False,
    poisoned: bool = False,
) -> None:
    """Raise what ``_cleanup.error_after_cleanup`` decides once a block's cleanup has run
    (or note it on the block's own error); the scope's end is read now, after the cleanup."""
    verdict = error_after_cleanup(
        raised=exc is not None,
        cut_off=cut_off,
        commit_failed=commit_error is not None,
        finished=finished,
        committed=committed,
        poisoned=poisoned,
        scope_closed=owner.closed,
    )
    if verdict is AfterEnd.NOTHING:
        return
    if verdict is AfterEnd.COMMIT_FAILED:
        assert commit_error is not None
        raise commit_error
    if verdict is AfterEnd.NOTE_CUT_SHORT:
        # The block's own exception says what went wrong; keep it.
        assert exc is not None
        exc.add_note("isolation: the rollback did not finish; the connection was invalidated")
        return
    if verdict is AfterEnd.CUT_SHORT:
        raise SessionError(
            f"{'commit' if outcome is Outcome.COMMIT else 'rollback'} of the session of "
            f"{redact_principal(owner.principal)} did not finish within the cleanup time; "
            "the connection was invalidated"
            + ("; the commit's outcome is unknown" if outcome is Outcome.COMMIT else ""),
            hint="Give the scope a longer cleanup_timeout, or keep transactions short",
        )
    raise _uncommitted(verdict, owner)


def _uncommitted(verdict: AfterEnd, owner: Owner) -> IsolationError:
    """Why a block that raised nothing was rolled back."""
    if verdict is AfterEnd.POISONED:
        return SessionError(
            "a nested session block could not be rolled back, so the whole "
            "transaction was rolled back",
            hint="See the logged error of the nested block",
        )
    if verdict is AfterEnd.SCOPE_ENDED:
        return ScopeEndedError(
            f"the scope of {redact_principal(owner.principal)} ended while its "
            "session block ran; the block's work was rolled back"
        )
    return ContextExpiredError(
        f"the context of {redact_principal(owner.principal)} expired inside a session "
        "block; its work was rolled back"
    )


def _savepoint_failed(held: Held, error: BaseException | None) -> None:
    # The savepoint's work may still be in the transaction: never commit it.
    held.owner.poisoned = True
    logger.error(
        "rolling back a nested session block failed; the whole transaction will roll back",
        exc_info=error,
        extra={"event": "savepoint_rollback_failed"},
    )


def _raise_if_lost(
    owner: Owner, failure: BaseException | None, exc: BaseException | None, *, ending: bool
) -> None:
    """Raise the typed error when ``failure`` is a driver error SQLAlchemy classed as a
    disconnect (``_cleanup.connection_lost`` decides)."""
    disconnect = isinstance(failure, DBAPIError) and failure.connection_invalidated
    if connection_lost(disconnect=disconnect, ending=ending, raised=exc is not None):
        raise _connection_lost(owner, "while committing" if ending else "inside the block") from (
            failure
        )


def _connection_lost(owner: Owner, when: str) -> DatabaseConnectionLostError:
    """The typed error for a driver error that SQLAlchemy classed as a disconnect."""
    outcome = (
        "the commit's outcome is unknown"
        if when == "while committing"
        else "the block's work was rolled back"
    )
    return DatabaseConnectionLostError(
        f"the database connection of a session of {redact_principal(owner.principal)} was "
        f"lost {when} (closed by the server or the network: a restart, an idle timeout, "
        f"a terminated backend); {outcome}, and the pool discarded its older connections",
        hint=(
            "Retry the request; create the engine with pool_pre_ping=True to test idle "
            "connections before use"
        ),
    )


# -- ending, the sync face ----------------------------------------------------------------


def _end_sync(held: Held, nested: SessionTransaction | None, exc: BaseException | None) -> None:
    """End a sync block: release or roll back its SAVEPOINT, or end the transaction."""
    if nested is not None:
        held.owner.depth -= 1
        _end_nested_sync(held, nested, exc)
    else:
        _end_outermost_sync(held, exc)


def _end_nested_sync(held: Held, nested: SessionTransaction, exc: BaseException | None) -> None:
    with held.owner.cleaning():
        if nested_outcome(exc) is Outcome.COMMIT and not held.owner.closed:
            try:
                if nested.is_active:
                    nested.commit()
                return
            except BaseException:
                _rollback_nested_sync(held, nested)
                raise
        _rollback_nested_sync(held, nested)


def _rollback_nested_sync(held: Held, nested: SessionTransaction) -> None:
    try:
        if nested._state is not SessionTransactionState.CLOSED:
            nested.rollback()
    except Exception as failure:
        _savepoint_failed(held, failure)


def _end_outermost_sync(held: Held, exc: BaseException | None) -> None:
    """The sync face's end of a block: the decisions of :func:`_end_outermost`; no
    shield or time bound (a thread is not cancelled; the driver's own timeouts hold)."""
    owner = held.owner
    outcome = _outcome(owner, exc, cancellable=False)
    poisoned = owner.poisoned
    session = typing.cast(Session, held.session)
    committed = False
    commit_error: Exception | None = None
    cleanup_error: Exception | None = None
    try:
        with owner.cleaning():
            try:
                if outcome is Outcome.COMMIT:
                    try:
                        session.commit()
                        committed = True
                    except Exception as failure:
                        commit_error = failure
                if not committed:
                    session.rollback()
                session.close()
            except Exception as failure:
                cleanup_error = failure
        if after_cleanup(finished=True, error=cleanup_error) is Cleanup.INVALIDATE:
            _invalidate_sync(held, cleanup_error)
    except BaseException as interrupt:
        _invalidate_sync(held, interrupt)
        raise
    finally:
        _ended(held, committed=committed)
    _raise_after(owner, exc, outcome, commit_error, committed=committed, poisoned=poisoned)


def _invalidate_sync(held: Held, error: BaseException | None) -> None:
    logger.error(
        "a session's cleanup failed; its connection is invalidated, never reused",
        exc_info=error,
        extra={"event": "session_invalidated"},
    )
    with held.owner.cleaning():
        try:
            typing.cast(Session, held.session).invalidate()
        except Exception:
            logger.exception("invalidating a session's connection failed")


# -- ending, the async face ---------------------------------------------------------------


async def _end(
    held: Held, nested: AsyncSessionTransaction | None, exc: BaseException | None
) -> None:
    """End an async block: release or roll back its SAVEPOINT, or end the transaction."""
    if nested is not None:
        held.owner.depth -= 1
        await _end_nested(held, nested, exc)
    else:
        await _end_outermost(held, exc)


def _cleanup_time(held: Held) -> float:
    scope = held.owner.scope_ref()
    return DEFAULT_CLEANUP_TIMEOUT if scope is None else cleanup_timeout(scope)


async def _end_nested(
    held: Held, nested: AsyncSessionTransaction, exc: BaseException | None
) -> None:
    with held.owner.cleaning():
        if nested_outcome(exc) is Outcome.COMMIT and not held.owner.closed:
            try:
                if nested.is_active:
                    await nested.commit()
                return
            except BaseException:
                await _rollback_nested(held, nested)
                raise
        await _rollback_nested(held, nested)


async def _rollback_nested(held: Held, nested: AsyncSessionTransaction) -> None:
    error: BaseException | None = None
    with anyio.move_on_after(_cleanup_time(held), shield=True) as bound:
        try:
            # A flush that failed inside the savepoint leaves it inactive but not yet
            # rolled back: only a closed one is left alone.
            sync = nested.sync_transaction
            if sync is not None and sync._state is not SessionTransactionState.CLOSED:
                await nested.rollback()
        except Exception as failure:
            error = failure
    if bound.cancelled_caught or error is not None:
        _savepoint_failed(held, error)


async def _end_outermost(held: Held, exc: BaseException | None) -> None:
    owner = held.owner
    if not owner.admitted:
        # The scope's finalizer already cut this block off.
        owner.depth = 0
        owner.task = None
        _raise_after(owner, exc, Outcome.ROLLBACK, None, cut_off=True)
        return
    outcome = _outcome(owner, exc, cancellable=True)
    poisoned = owner.poisoned
    session = typing.cast(AsyncSession, held.session)
    committed = False
    commit_error: Exception | None = None
    cleanup_error: BaseException | None = None
    finished = False
    try:
        with owner.cleaning(), anyio.move_on_after(_cleanup_time(held), shield=True):
            try:
                if outcome is Outcome.COMMIT:
                    try:
                        await session.commit()
                        committed = True
                    except Exception as failure:
                        commit_error = failure
                if not committed:
                    await session.rollback()
                await session.close()
                finished = True
            except Exception as failure:
                cleanup_error = failure
                finished = True
        if after_cleanup(finished=finished, error=cleanup_error) is Cleanup.INVALIDATE:
            await _invalidate(held, cleanup_error, finished=finished)
    except BaseException as interrupt:
        # Not a cancellation (we were shielded): KeyboardInterrupt or similar.
        await _invalidate(held, interrupt, finished=False)
        raise
    finally:
        _ended(held, committed=committed)
    _raise_after(
        owner, exc, outcome, commit_error, finished=finished, committed=committed, poisoned=poisoned
    )


async def _invalidate(held: Held, error: BaseException | None, *, finished: bool) -> None:
    logger.error(
        "a session's cleanup %s; its connection is invalidated, never reused",
        "was cut short" if not finished else "failed",
        exc_info=error,
        extra={"event": "session_invalidated"},
    )
    with held.owner.cleaning(), anyio.move_on_after(_cleanup_time(held), shield=True):
        try:
            await typing.cast(AsyncSession, held.session).invalidate()
        except Exception:
            logger.exception("invalidating a session's connection failed")
