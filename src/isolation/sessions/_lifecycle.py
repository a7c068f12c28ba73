"""Commit or roll back: the decisions at the end of a session block (pure, no I/O).

These are the rules of the contract's failure modes 3 and 4 in one place, so
they can be property-tested without an event loop or a database:

* the outermost block commits only on a clean exit of a scope that is still
  live (not expired, not cancelled, not ended); anything else rolls back;
* a nested block (a SAVEPOINT) is released on a clean exit and rolled back on
  any exception, so the outer block never commits a failed inner block's work;
* a cleanup step (commit, rollback, close) that did not finish leaves the
  connection in an unknown state: it is invalidated, never returned to the pool.
"""

from __future__ import annotations

import enum

__all__ = ["Cleanup", "Outcome", "after_cleanup", "nested_outcome", "outermost_outcome"]


class Outcome(enum.Enum):
    """What to do with the transaction of a block that is ending."""

    COMMIT = "commit"
    ROLLBACK = "rollback"


class Cleanup(enum.Enum):
    """What to do with the connection once the cleanup step has run."""

    RETURN = "return"
    INVALIDATE = "invalidate"


def outermost_outcome(
    exc: BaseException | None, *, expired: bool, cancelled: bool, scope_closed: bool
) -> Outcome:
    """Decide the end of an outermost block.

    Args:
        exc: The exception leaving the block (an error, an
            :class:`~isolation.IsolationError`, a cancellation), or ``None``.
        expired: The scope's deadline has passed.
        cancelled: The scope's body has been cancelled (the cancellation may
            not have been delivered yet).
        scope_closed: The scope's finalizer already cleaned up this session.
    """
    if exc is None and not expired and not cancelled and not scope_closed:
        return Outcome.COMMIT
    return Outcome.ROLLBACK


def nested_outcome(exc: BaseException | None) -> Outcome:
    """Decide the end of a nested block: release its SAVEPOINT or roll back to it."""
    return Outcome.COMMIT if exc is None else Outcome.ROLLBACK


def after_cleanup(*, finished: bool, error: BaseException | None) -> Cleanup:
    """Decide the connection's fate after commit, rollback or close.

    Args:
        finished: The step returned or raised within its bound (it was not
            cut short by a timeout or a cancellation).
        error: What the step raised, if anything.
    """
    if not finished:
        return Cleanup.INVALIDATE
    if error is not None:
        # The driver failed or was interrupted mid-call: the connection's state is unknown.
        return Cleanup.INVALIDATE
    return Cleanup.RETURN
