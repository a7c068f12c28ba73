"""The pure commit-or-rollback decisions."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from isolation import CrossContextAccessError
from isolation.sessions._lifecycle import (
    Cleanup,
    Outcome,
    after_cleanup,
    nested_outcome,
    outermost_outcome,
)

EXCEPTIONS = st.sampled_from(
    [
        None,
        ValueError("boom"),
        CrossContextAccessError("violation"),
        asyncio.CancelledError(),
        KeyboardInterrupt(),
    ]
)


@given(exc=EXCEPTIONS, expired=st.booleans(), cancelled=st.booleans(), closed=st.booleans())
def test_commit_only_on_a_clean_live_exit(
    exc: BaseException | None, expired: bool, cancelled: bool, closed: bool
) -> None:
    """The outermost block commits exactly when nothing went wrong and the scope is live."""
    outcome = outermost_outcome(exc, expired=expired, cancelled=cancelled, scope_closed=closed)
    clean = exc is None and not (expired or cancelled or closed)
    assert (outcome is Outcome.COMMIT) == clean


@given(exc=EXCEPTIONS)
def test_nested_rolls_back_on_any_exception(exc: BaseException | None) -> None:
    """A nested block releases its savepoint only on a clean exit."""
    assert (nested_outcome(exc) is Outcome.COMMIT) == (exc is None)


@given(finished=st.booleans(), error=EXCEPTIONS)
def test_unfinished_or_failed_cleanup_invalidates(
    finished: bool, error: BaseException | None
) -> None:
    """Only a cleanup that finished without error returns the connection to the pool."""
    returned = after_cleanup(finished=finished, error=error) is Cleanup.RETURN
    assert returned == (finished and error is None)
