"""Admission of sessions: a global bound and a fair per-principal limit (pure, no I/O).

The manager admits a session before it may touch the pool, so SQLAlchemy's own
``pool_timeout`` never fires and no checkout is cancelled inside SQLAlchemy.
:class:`Admission` is the bookkeeping only: who holds how many slots, and who
waits in which order. The async face in ``_manager.py`` parks a future per
waiter and wakes the ones this module grants.

Invariant, restored by every :meth:`Admission.release`: no waiter is left in
the queue that could be admitted. So a new arrival that fits both bounds is
admitted at once without being unfair to anyone queued: every queued waiter is
blocked by the global bound (then so is the arrival) or by its own principal's
limit (a different principal, or the arrival would not fit either).
"""

from __future__ import annotations

import contextlib
from collections import deque
from typing import Final, final

from isolation.context._principal import Principal

__all__ = ["Admission", "Waiter", "sync_wait"]


@final
class Waiter:
    """One parked request for a slot; ``granted`` is set when it gets one."""

    __slots__ = ("granted", "principal", "token")

    def __init__(self, principal: Principal, token: object = None) -> None:
        self.principal: Final = principal
        self.granted = False
        # Whatever the async face needs to wake the waiter (an asyncio future).
        self.token: Final = token


@final
class Admission:
    """Counts slots held per principal and in total; queues waiters in FIFO order.

    Args:
        capacity: The global bound (the pool's size plus its overflow), or
            ``None`` for no global bound.
        per_principal: The most slots one principal may hold at once.
    """

    __slots__ = ("by_principal", "capacity", "in_use", "per_principal", "waiters")

    def __init__(self, capacity: int | None, per_principal: int) -> None:
        self.capacity = capacity
        self.per_principal = per_principal
        self.in_use = 0
        self.by_principal: dict[Principal, int] = {}
        self.waiters: deque[Waiter] = deque()

    def _fits(self, principal: Principal) -> bool:
        capacity = self.capacity
        return (capacity is None or self.in_use < capacity) and self.by_principal.get(
            principal, 0
        ) < self.per_principal

    def try_admit(self, principal: Principal) -> bool:
        """Take a slot for ``principal`` now if both bounds allow it."""
        if not self._fits(principal):
            return False
        self.in_use += 1
        self.by_principal[principal] = self.by_principal.get(principal, 0) + 1
        return True

    def enqueue(self, waiter: Waiter) -> None:
        """Park ``waiter`` at the end of the queue."""
        self.waiters.append(waiter)

    def withdraw(self, waiter: Waiter) -> bool:
        """Remove a waiter that gives up; ``False`` if it was granted a slot meanwhile.

        A granted waiter that gives up still holds its slot: the caller must
        :meth:`release` it.
        """
        if waiter.granted:
            return False
        with contextlib.suppress(ValueError):  # already granted and removed
            self.waiters.remove(waiter)
        return True

    def release(self, principal: Principal) -> list[Waiter]:
        """Return a slot of ``principal``; grant it to the first waiters that fit.

        Returns:
            The waiters granted a slot (already counted), in queue order.
        """
        held = self.by_principal[principal] - 1
        if held:
            self.by_principal[principal] = held
        else:
            del self.by_principal[principal]
        self.in_use -= 1
        if not self.waiters:
            return []
        granted: list[Waiter] = []
        kept: deque[Waiter] = deque()
        for waiter in self.waiters:
            if self._fits(waiter.principal):
                waiter.granted = True
                self.in_use += 1
                self.by_principal[waiter.principal] = self.by_principal.get(waiter.principal, 0) + 1
                granted.append(waiter)
            else:
                kept.append(waiter)
        self.waiters = kept
        return granted

    def held_by(self, principal: Principal) -> int:
        """How many slots ``principal`` holds now."""
        return self.by_principal.get(principal, 0)


def sync_wait(timeout: float, deadline: float | None, now: float) -> tuple[float, bool]:
    """How long a sync block may wait for a slot, and whether the scope's deadline is
    what bounds the wait (then running out of it is expiry, not an exhausted pool).

    A thread is not cancelled at the deadline as a task is: its wait is cut to
    the time left instead (never below 0).
    """
    if deadline is None:
        return timeout, False
    left = deadline - now
    return max(0.0, min(timeout, left)), left < timeout
