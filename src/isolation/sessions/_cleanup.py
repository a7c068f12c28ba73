"""Which error a session block raises once its cleanup has run (pure, no I/O).

The end of an outermost block commits or rolls back, closes, and may have to
invalidate the connection (``_lifecycle.py`` decides those steps). What the
caller then sees is decided here, from what happened, so that every
combination can be tested in a table without a database:

* the block raised: its own exception propagates (with a note when the
  rollback did not finish; a block that raised never commits);
* the block raised nothing: the commit's own failure, or a typed error that
  says why nothing was committed (the cleanup was cut short, a nested block
  could not be rolled back, the scope ended, the context expired);
* a driver error that SQLAlchemy classed as a disconnect becomes
  :class:`~isolation.DatabaseConnectionLostError` (:func:`connection_lost`).
"""

from __future__ import annotations

import enum

__all__ = ["AfterEnd", "connection_lost", "error_after_cleanup"]


class AfterEnd(enum.Enum):
    """What the end of an outermost block raises."""

    #: Nothing of its own: the block's exception, if any, propagates unchanged.
    NOTHING = "nothing"
    #: The commit's own failure (the block raised nothing).
    COMMIT_FAILED = "commit_failed"
    #: The block's exception propagates, noted: the rollback did not finish.
    NOTE_CUT_SHORT = "note_cut_short"
    #: ``SessionError``: the commit or rollback did not finish within the cleanup time.
    CUT_SHORT = "cut_short"
    #: ``SessionError``: a nested block could not be rolled back, so all was rolled back.
    POISONED = "poisoned"
    #: ``ScopeEndedError``: the scope ended while the block ran; its work was rolled back.
    SCOPE_ENDED = "scope_ended"
    #: ``ContextExpiredError``: the context expired inside the block; rolled back.
    EXPIRED = "expired"


def error_after_cleanup(
    *,
    raised: bool,
    cut_off: bool,
    commit_failed: bool,
    finished: bool,
    committed: bool,
    poisoned: bool,
    scope_closed: bool,
) -> AfterEnd:
    """Decide what the end of an outermost block raises, in this order of precedence.

    Args:
        raised: The block itself raised (an error, a cancellation).
        cut_off: The scope's finalizer had already ended the block (rolled back,
            the connection invalidated) before the block's own end ran.
        commit_failed: The commit raised (it was rolled back).
        finished: The cleanup steps returned or raised within their bound
            (not cut short by the cleanup timeout).
        committed: The commit went through.
        poisoned: A nested block's rollback failed, so the transaction was
            rolled back whatever the block did.
        scope_closed: The scope has ended (read after the cleanup).
    """
    if cut_off:
        return AfterEnd.NOTHING if raised else AfterEnd.SCOPE_ENDED
    if commit_failed:
        return AfterEnd.COMMIT_FAILED
    if not finished and not committed:
        return AfterEnd.NOTE_CUT_SHORT if raised else AfterEnd.CUT_SHORT
    if raised or committed:
        return AfterEnd.NOTHING
    if poisoned:
        return AfterEnd.POISONED
    if scope_closed:
        return AfterEnd.SCOPE_ENDED
    return AfterEnd.EXPIRED


def connection_lost(*, disconnect: bool, ending: bool, raised: bool) -> bool:
    """Whether a driver error becomes :class:`~isolation.DatabaseConnectionLostError`.

    Args:
        disconnect: The error is a ``DBAPIError`` SQLAlchemy classed as a disconnect
            (``connection_invalidated``).
        ending: It came from the block's end (the commit), not from inside the block.
        raised: The block itself raised: then an error of its end is not the
            news, and propagates as it is.
    """
    return disconnect and not (ending and raised)
