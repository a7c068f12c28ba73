"""The one injectable clock every deadline and expiry in :mod:`isolation` reads.

Contexts, scopes and tokens read wall-clock epoch seconds from here, never from
:func:`time.time` directly, so that tests can expire a context without sleeping
(:class:`isolation.testing.FakeClock`). The clock is process-wide on purpose:
a deadline that one part saw pass must have passed for every other part too.

:class:`Clock` is the interface production code talks to (trio's ``Clock`` and
``MockClock`` are the model): it reads the time, turns an epoch deadline into real
seconds to sleep (:meth:`Clock.deadline_to_sleep_time`), and wakes watchers when
it moves (:meth:`Clock.watch`). Production code asks the clock; it never tests
which clock it has.
"""

from __future__ import annotations

import abc
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

__all__ = ["Clock", "FakeClock", "get_clock", "now", "set_clock", "use_clock"]


class Clock(abc.ABC):
    """The interface of a clock: epoch seconds, sleeps to a deadline, and watchers.

    A clock whose time passes on its own implements :meth:`time` only: the
    defaults sleep until the deadline and have nothing to wake. A clock that moves
    only when told to (:class:`~isolation.testing.FakeClock`) never lets a sleep
    reach a deadline; it calls its watchers when it moves instead.
    """

    __slots__ = ()

    @abc.abstractmethod
    def time(self) -> float:
        """Return the current time as epoch seconds."""

    def deadline_to_sleep_time(self, deadline: float) -> float:
        """Real seconds to sleep until the epoch ``deadline`` (``math.inf``: never).

        A waiter with a deadline sleeps this long and also watches the clock
        (:meth:`watch`), so that whichever comes first ends the wait.
        """
        return max(0.0, deadline - self.time())

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (a bound method, held weakly) whenever the clock moves.

        Idempotent. A clock whose time passes on its own never calls it: the
        sleep of :meth:`deadline_to_sleep_time` reaches the deadline instead.
        """
        return

    def unwatch(self, callback: Callable[[], None]) -> None:
        """Stop calling ``callback``; a callback not watching is ignored."""
        return


class _HasTime(Protocol):
    """The least a clock must have: ``time()`` (one of the user's, duck-typed)."""

    def time(self) -> float: ...


class _SystemClock(Clock):
    __slots__ = ()

    def time(self) -> float:
        return time.time()

    def __repr__(self) -> str:
        return "SystemClock()"


class _TimeSource(Clock):
    """A clock of the user's that has ``time()`` only (duck-typed): time passes on its own."""

    __slots__ = ("source",)

    def __init__(self, source: _HasTime) -> None:
        self.source = source

    def time(self) -> float:
        return self.source.time()

    def __repr__(self) -> str:
        return repr(self.source)


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


def set_clock(clock: Clock | _HasTime | None) -> Clock:
    """Make ``clock`` the process-wide clock (``None`` restores the system clock).

    An object that has a ``time()`` method but does not subclass :class:`Clock`
    is accepted as a clock whose time passes on its own.

    Returns:
        The clock that was active before, so a caller can restore it.
    """
    global _clock, _now
    previous = _clock
    if clock is None:
        clock = SYSTEM_CLOCK
    elif not isinstance(clock, Clock):
        clock = _TimeSource(clock)
    _clock = clock
    _now = time.time if clock is SYSTEM_CLOCK else clock.time
    return previous


_C = TypeVar("_C", bound=_HasTime)


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


class FakeClock(Clock):
    """A clock that moves only when told to: expire contexts without sleeping.

    Scopes with a deadline that are entered while a ``FakeClock`` is active
    watch it, and :meth:`advance` cancels the ones whose deadline it passes.
    Call :meth:`advance` from the thread that runs the event loop (or from
    synchronous code); anyio cancel scopes are not thread-safe.

    Args:
        start: The initial time, in epoch seconds.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._t = float(start)
        self._lock = threading.Lock()
        # owner -> the functions of its bound methods that watch: weak in the owner,
        # so a scope or router that is gone stops watching by itself.
        self._watchers: weakref.WeakKeyDictionary[Any, set[Callable[[Any], None]]] = (
            weakref.WeakKeyDictionary()
        )

    def time(self) -> float:
        """Return the fake time."""
        return self._t

    def deadline_to_sleep_time(self, deadline: float) -> float:
        """Never: the fake time reaches a deadline only through :meth:`advance`."""
        return math.inf

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` and call the watchers."""
        if not seconds >= 0:
            from isolation._errors import ConfigurationError

            raise ConfigurationError(f"FakeClock.advance() takes seconds >= 0, got {seconds!r}")
        with self._lock:
            self._t += seconds
            calls = [(owner, fn) for owner, fns in self._watchers.items() for fn in list(fns)]
        for owner, fn in calls:
            fn(owner)

    def watch(self, callback: Callable[[], None]) -> None:
        """Call the bound method ``callback`` on every :meth:`advance` (weakly held)."""
        owner, fn = _split(callback)
        with self._lock:
            fns = self._watchers.get(owner)
            if fns is None:
                self._watchers[owner] = {fn}
            else:
                fns.add(fn)

    def unwatch(self, callback: Callable[[], None]) -> None:
        """Stop calling ``callback``."""
        owner, fn = _split(callback)
        with self._lock:
            fns = self._watchers.get(owner)
            if fns is not None:
                fns.discard(fn)
                if not fns:
                    del self._watchers[owner]

    def _unwatch(self, owner: object) -> None:
        """Forget every callback of ``owner`` (tests: "as if the clock never told it")."""
        with self._lock:
            self._watchers.pop(owner, None)

    def __repr__(self) -> str:
        return f"FakeClock({self._t!r})"


def _split(callback: Callable[[], None]) -> tuple[Any, Callable[[Any], None]]:
    owner = getattr(callback, "__self__", None)
    fn = getattr(callback, "__func__", None)
    if owner is None or fn is None:
        from isolation._errors import ConfigurationError

        raise ConfigurationError(
            f"a clock watcher is a bound method (held weakly through its object), got {callback!r}"
        )
    return owner, fn


Clock.__module__ = "isolation"
