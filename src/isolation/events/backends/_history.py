"""Where a router's event history is kept: the :class:`HistoryStore` a backend provides.

The router owns the setting (:class:`~isolation.events.History`) and the rules
of a resume; a backend that can keep history provides the storage through
``backend.open_history(history) -> HistoryStore``. A backend without that
method cannot serve a router with history (``ConfigurationError``).

* A backend that is not ``shared`` (one router): the router calls
  :meth:`HistoryStore.append` for each publish, before the fan-out, so the
  offset is assigned before any overflow decision.
* A ``shared`` backend (Redis, a later slice) appends inside its own
  ``publish``, in the same round trip as the live publish, and delivers
  envelopes carrying their ``offset`` and ``epoch``; the router never calls
  ``append`` then.

Either way :meth:`HistoryStore.read` returns a principal's stream after an
offset, and the router reads only the stream of the connection's own principal.

:class:`MemoryHistory` is the in-process store: one bounded ring per principal.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from collections.abc import Awaitable
from typing import Any, Final, Protocol, final, runtime_checkable

import attrs

from isolation import _clock
from isolation.context._model import Principal
from isolation.events._history import History
from isolation.events._model import Packed

__all__ = ["EPOCH_BYTES", "HistoryStore", "MemoryHistory", "Replay"]

EPOCH_BYTES: Final = 8
"""Random bytes in an epoch of :class:`MemoryHistory` (rendered as hex)."""


@final
@attrs.frozen(kw_only=True)
class Replay:
    """What :meth:`HistoryStore.read` found in one principal's stream.

    Attributes:
        epoch: The stream's current epoch.
        first: The oldest offset the stream still holds (``last + 1`` when it holds none).
        last: The stream's last offset (0 before its first event).
        events: The held events with an offset above the one asked for, in
            offset order: ``(packed, payload)``, ``packed`` with its offset and epoch.
    """

    epoch: str
    first: int
    last: int
    events: tuple[tuple[Packed, Any], ...]


@runtime_checkable
class HistoryStore(Protocol):
    """The storage of per-principal event history, provided by a backend."""

    def append(self, principal: Principal, packed: Packed, payload: Any) -> Packed:
        """Record one event of ``principal``; return ``packed`` with its offset and epoch appended.

        ``packed`` is ``(id, recipient, tenant_id, kind, created_at)``; the
        result is the same with ``offset`` (1 for a stream's first event, up
        by one per event) and ``epoch``. Called by the router, before the
        fan-out, only for a backend that is not ``shared``.
        """
        ...

    def read(self, principal: Principal, after: int) -> Awaitable[Replay]:
        """The events of ``principal``'s stream with an offset above ``after``, and its bounds.

        A principal without a stream gets an empty one under a new epoch.
        """
        ...


class _Stream:
    """One principal's ring: its epoch, its last offset, and its newest events."""

    __slots__ = ("entries", "epoch", "last", "touched")

    def __init__(self, size: int, now: float) -> None:
        self.epoch = secrets.token_hex(EPOCH_BYTES)
        self.last = 0
        self.touched = now
        self.entries: deque[tuple[Packed, Any]] = deque(maxlen=size)


@final
class MemoryHistory:
    """The in-process :class:`HistoryStore`: a bounded ring per principal.

    Each stream keeps its ``size`` newest events, each for ``ttl`` seconds of
    the library's clock. A stream untouched (no event appended, no read) for
    ``ttl`` seconds is forgotten; its principal's next stream has a new epoch,
    so a resume point of the old one is told its history was lost. Epochs are
    random: a new store (a new router) never continues an old one's.
    """

    __slots__ = ("_size", "_streams", "_ttl")

    def __init__(self, history: History) -> None:
        self._size = history.size
        self._ttl = float(history.ttl)
        # Least recently touched first: forgetting stale streams is a pop at the front.
        self._streams: OrderedDict[Principal, _Stream] = OrderedDict()

    def _stream(self, principal: Principal, now: float) -> _Stream:
        streams = self._streams
        horizon = now - self._ttl
        while streams:
            oldest = next(iter(streams.values()))
            if oldest.touched > horizon:
                break
            streams.popitem(last=False)
        stream = streams.get(principal)
        if stream is None:
            stream = streams[principal] = _Stream(self._size, now)
        else:
            streams.move_to_end(principal)
            stream.touched = now
        entries = stream.entries
        while entries and entries[0][0][4] <= horizon:
            entries.popleft()
        return stream

    def append(self, principal: Principal, packed: Packed, payload: Any) -> Packed:
        """Record an event (see :meth:`HistoryStore.append`)."""
        stream = self._stream(principal, _clock._now())
        offset = stream.last + 1
        stream.last = offset
        recorded = (*packed[:5], offset, stream.epoch)
        stream.entries.append((recorded, payload))
        return recorded

    async def read(self, principal: Principal, after: int) -> Replay:
        """The stream after ``after`` (see :meth:`HistoryStore.read`)."""
        stream = self._stream(principal, _clock._now())
        entries = stream.entries
        first = entries[0][0][5] if entries else stream.last + 1
        skip = max(0, after - first + 1)
        events = tuple(entries)[skip:] if skip < len(entries) else ()
        return Replay(epoch=stream.epoch, first=first, last=stream.last, events=events)

    @property
    def streams(self) -> int:
        """How many principals' streams are held now."""
        return len(self._streams)

    def __repr__(self) -> str:
        return f"<isolation.events.backends.MemoryHistory streams={len(self._streams)}>"
