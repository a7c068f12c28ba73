"""The one injectable clock every deadline and expiry in :mod:`isolation` reads.

Contexts, scopes and tokens read wall-clock epoch seconds from here, never from
:func:`time.time` directly, so that tests can expire a context without sleeping
(:class:`isolation.testing.FakeClock`). The clock is process-wide on purpose:
a deadline that one part saw pass must have passed for every other part too.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar, runtime_checkable

__all__ = ["Clock", "FakeClock", "get_clock", "now", "set_clock", "use_clock"]


@runtime_checkable
class Clock(Protocol):
    """What a clock gives: the current time in epoch seconds."""

    def time(self) -> float:
        """Return the current time as epoch seconds."""
        ...


class _SystemClock:
    __slots__ = ()

    def time(self) -> float:
        return time.time()

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK: Clock = _SystemClock()
_clock: Clock = SYSTEM_CLOCK
# The hot paths call this module global directly; it is `time.time` itself for
# the system clock, so reading the time costs one C call.
_now: Callable[[], float] = time.time


def now() -> float:
    """Return the current time of the active clock, in epoch seconds."""
    return _now()


def get_clock() -> Clock:
    """Return the active clock."""
    return _clock


def set_clock(clock: Clock | None) -> Clock:
    """Make ``clock`` the process-wide clock (``None`` restores the system clock).

    Returns:
        The clock that was active before, so a caller can restore it.
    """
    global _clock, _now
    previous = _clock
    _clock = SYSTEM_CLOCK if clock is None else clock
    _now = time.time if _clock is SYSTEM_CLOCK else _clock.time
    return previous


_C = TypeVar("_C", bound=Clock)


@contextmanager
def use_clock(clock: _C) -> Iterator[_C]:
    """Use ``clock`` inside the ``with`` block, then restore the previous one.

    The ``as`` target is ``clock`` itself, with its own type, so that
    ``with use_clock(FakeClock()) as clock: clock.advance(5)`` type-checks.
    """
    previous = set_clock(clock)
    try:
        yield clock
    finally:
        set_clock(previous)


class _Watcher(Protocol):
    def _clock_moved(self) -> None: ...


class FakeClock:
    """A clock that moves only when told to: expire contexts without sleeping.

    Scopes with a deadline that are entered while a ``FakeClock`` is active
    register with it, and :meth:`advance` cancels the ones whose deadline it
    passes. Call :meth:`advance` from the thread that runs the event loop (or
    from synchronous code); anyio cancel scopes are not thread-safe.

    Args:
        start: The initial time, in epoch seconds.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._t = float(start)
        self._lock = threading.Lock()
        self._watchers: weakref.WeakSet[_Watcher] = weakref.WeakSet()

    def time(self) -> float:
        """Return the fake time."""
        return self._t

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` and fire the deadlines passed."""
        if not seconds >= 0:
            from isolation._errors import ConfigurationError

            raise ConfigurationError(f"FakeClock.advance() takes seconds >= 0, got {seconds!r}")
        with self._lock:
            self._t += seconds
            watchers = list(self._watchers)
        for watcher in watchers:
            watcher._clock_moved()

    def _watch(self, watcher: _Watcher) -> None:
        with self._lock:
            self._watchers.add(watcher)

    def _unwatch(self, watcher: _Watcher) -> None:
        with self._lock:
            self._watchers.discard(watcher)

    def __repr__(self) -> str:
        return f"FakeClock({self._t!r})"


Clock.__module__ = "isolation"
