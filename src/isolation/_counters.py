"""Process-wide gauges of what is open: scopes, sessions, connections.

Each part registers a gauge (a function returning how many of its resources
are open now), and :func:`track` its long-lived objects (session managers, event
routers), weakly, under a kind: the gauges and ``isolation.telemetry``'s metric
callbacks read them through :func:`tracked`, so no part imports the telemetry and
tracking costs one ``WeakSet.add`` per object made, nothing per operation. The pytest plugin's ``--isolation-strict`` reads them before and
after each test, so a test that leaves something open fails deterministically,
without waiting for the garbage collector's ``ResourceWarning``.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable
from typing import Any

from isolation._compat import count_value

__all__ = [
    "EVENT_ROUTERS",
    "SESSION_MANAGERS",
    "Counter",
    "counted",
    "open_resources",
    "register_gauge",
    "track",
    "tracked",
]

# The kinds of tracked objects.
SESSION_MANAGERS = "session_managers"
EVENT_ROUTERS = "event_routers"

_gauges: dict[str, Callable[[], int]] = {}
_lock = threading.Lock()
_tracked: dict[str, weakref.WeakSet[Any]] = {}


class Counter:
    """A thread-safe monotonic counter whose increment is one C call (``itertools.count``)."""

    __slots__ = ("_count", "increment")

    def __init__(self) -> None:
        self._count = itertools.count()
        self.increment = self._count.__next__

    @property
    def value(self) -> int:
        """How many times :attr:`increment` has been called."""
        return count_value(self._count)


def register_gauge(name: str, gauge: Callable[[], int]) -> None:
    """Register ``gauge`` (the number of open resources of ``name``)."""
    with _lock:
        _gauges[name] = gauge


def track(kind: str, obj: object) -> None:
    """Remember ``obj`` (weakly) among the live objects of ``kind``."""
    with _lock:
        live = _tracked.get(kind)
        if live is None:
            live = _tracked[kind] = weakref.WeakSet()
        live.add(obj)


def tracked(kind: str) -> list[Any]:
    """The live objects of ``kind`` now (a list: safe to iterate while others are made)."""
    with _lock:
        live = _tracked.get(kind)
        return [] if live is None else list(live)


def open_resources() -> dict[str, int]:
    """Return every gauge's current value, by name."""
    with _lock:
        gauges = dict(_gauges)
    return {name: gauge() for name, gauge in sorted(gauges.items())}


def counted(count: int, name: str) -> str:
    """``"1 scope"``, ``"2 scopes"``: a gauge's count with its (plural) name."""
    return f"{count} {name[:-1] if count == 1 and name.endswith('s') else name}"
