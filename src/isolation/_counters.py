"""Process-wide gauges of what is open: scopes, sessions, connections.

Each part registers a gauge (a function returning how many of its resources
are open now). The pytest plugin's ``--isolation-strict`` reads them before and
after each test, so a test that leaves something open fails deterministically,
without waiting for the garbage collector's ``ResourceWarning``.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

from isolation._compat import count_value

__all__ = ["Counter", "counted", "open_resources", "register_gauge"]

_gauges: dict[str, Callable[[], int]] = {}
_lock = threading.Lock()


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


def open_resources() -> dict[str, int]:
    """Return every gauge's current value, by name."""
    with _lock:
        gauges = dict(_gauges)
    return {name: gauge() for name, gauge in sorted(gauges.items())}


def counted(count: int, name: str) -> str:
    """``"1 scope"``, ``"2 scopes"``: a gauge's count with its (plural) name."""
    return f"{count} {name[:-1] if count == 1 and name.endswith('s') else name}"
