"""Pure routing rules: the last-step recipient check and the connection state machine.

No I/O. The connection applies :func:`verdict` to every event just before it
hands the event to its consumer (it inlines the accepting case on its hot
path; a test checks that the inlined rule and this one agree), and moves
between states only through :func:`transition`.
"""

from __future__ import annotations

import enum

from isolation._errors import UsageError
from isolation.events._model import ConnectionState

__all__ = ["TRANSITIONS", "Verdict", "transition", "verdict"]


class Verdict(enum.Enum):
    """What the last step decides for one event."""

    DELIVER = "deliver"
    """The event is for this connection's principal, whose context is live."""
    FOREIGN = "foreign"
    """The event is for another principal: refuse it, log it without payload, count it."""
    EXPIRED = "expired"
    """The connection's context has expired: close it, deliver nothing more."""


def verdict(
    *,
    event_tenant: str | None,
    event_user: str,
    bound_tenant: str | None,
    bound_user: str,
    expires_at: float | None,
    now: float,
) -> Verdict:
    """Decide whether an event may reach a connection bound to ``(bound_tenant, bound_user)``.

    Identity first: a foreign event is refused whatever the time, so a
    routing fault is always counted as one.
    """
    if event_user != bound_user or event_tenant != bound_tenant:
        return Verdict.FOREIGN
    if expires_at is not None and now >= expires_at:
        return Verdict.EXPIRED
    return Verdict.DELIVER


TRANSITIONS: frozenset[tuple[ConnectionState, ConnectionState]] = frozenset(
    {
        (ConnectionState.CONNECTING, ConnectionState.OPEN),
        (ConnectionState.CONNECTING, ConnectionState.CLOSED),
        (ConnectionState.OPEN, ConnectionState.CLOSED),
    }
)
"""The allowed ``(from, to)`` moves: forward only, and never out of ``CLOSED``."""


def transition(current: ConnectionState, target: ConnectionState) -> ConnectionState:
    """Return ``target`` if a connection in ``current`` may move there.

    Raises:
        UsageError: The move is not allowed (for example reopening a closed connection).
    """
    if (current, target) not in TRANSITIONS:
        raise UsageError(
            f"a connection cannot go from {current.value} to {target.value}",
            hint="A closed connection is never reopened or rebound: open a new one",
        )
    return target
