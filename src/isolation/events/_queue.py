"""The overflow decision, as pure code: what a connection does with one more event.

No I/O and no event loop: :func:`decide` is property-tested on its own and the
router applies what it returns. The router inlines only the first rule (room
and nobody waiting: accept), the hot path; every other case goes through here.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable

import attrs

from isolation.events._model import Overflow

__all__ = ["Action", "BurstOutcome", "burst", "decide"]


class Action(enum.Enum):
    """What to do with an event offered to a connection."""

    ACCEPT = "accept"
    """Queue it."""
    WAIT = "wait"
    """Queue it behind the publishers already waiting; the publisher waits for room."""
    DROP_NEW = "drop_new"
    """Drop the offered event."""
    EVICT_OLDEST = "evict_oldest"
    """Drop the oldest queued event, then queue the offered one."""
    DISCONNECT = "disconnect"
    """Close the connection (reason ``OVERFLOW``), dropping the event and the backlog."""


def decide(policy: Overflow, *, queued: int, capacity: int, waiting: int = 0) -> Action:
    """Decide what a connection with ``queued`` of ``capacity`` events does with one more.

    ``waiting`` counts publishers already blocked on this connection (``BLOCK``
    only): while any wait, a new event goes behind them even if a slot just
    freed, so events enter the queue in ``seq`` order.
    """
    if queued < capacity and not waiting:
        return Action.ACCEPT
    if policy is Overflow.BLOCK:
        return Action.WAIT
    if policy is Overflow.DROP_NEWEST:
        return Action.DROP_NEW
    if policy is Overflow.DROP_OLDEST:
        return Action.EVICT_OLDEST
    return Action.DISCONNECT


@attrs.frozen(kw_only=True)
class BurstOutcome:
    """What a connection holds after a burst offered with no consumer running.

    Attributes:
        kept: The ``seq`` values still queued, oldest first.
        dropped: How many events were dropped.
        waiting: The ``seq`` values whose publishers wait for room (``BLOCK``).
        disconnected: Whether the connection was closed by ``DISCONNECT``.
    """

    kept: tuple[int, ...]
    dropped: int
    waiting: tuple[int, ...]
    disconnected: bool


def burst(policy: Overflow, capacity: int, seqs: Iterable[int]) -> BurstOutcome:
    """Apply :func:`decide` to each of ``seqs`` in turn: the reference model of a burst.

    Used by the tests and the failure-mode checks as the expected outcome.
    """
    queue: deque[int] = deque()
    waiting: list[int] = []
    dropped = 0
    for seq in seqs:
        action = decide(policy, queued=len(queue), capacity=capacity, waiting=len(waiting))
        if action is Action.ACCEPT:
            queue.append(seq)
        elif action is Action.WAIT:
            waiting.append(seq)
        elif action is Action.DROP_NEW:
            dropped += 1
        elif action is Action.EVICT_OLDEST:
            queue.popleft()
            queue.append(seq)
            dropped += 1
        else:
            dropped += len(queue) + 1
            return BurstOutcome(kept=(), dropped=dropped, waiting=(), disconnected=True)
    return BurstOutcome(
        kept=tuple(queue), dropped=dropped, waiting=tuple(waiting), disconnected=False
    )
