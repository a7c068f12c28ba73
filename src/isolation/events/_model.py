"""The values of the event router: events, results, reasons, policies and statistics.

All immutable. :class:`Event` is the one value made on the hot path (one per
connection per publish, since ``seq`` is per connection), so it is a slotted
class with a fast private constructor rather than an ``attrs`` class: building
it costs about a fifth of an ``attrs`` frozen class with seven fields.
"""

from __future__ import annotations

import enum
import itertools
import math
import os
from typing import Any, Final, NoReturn, final

import attrs

from isolation._errors import UsageError
from isolation._redact import redact, redact_tenant_repr

__all__ = [
    "CloseReason",
    "ConnectionState",
    "ConnectionStats",
    "Envelope",
    "Event",
    "GAP",
    "MESSAGE",
    "Overflow",
    "Packed",
    "PrincipalStats",
    "PublishResult",
    "RouterStats",
    "event_id",
    "make_event",
    "next_event_number",
]

MESSAGE: Final = "message"
"""The default ``kind`` of an event."""
GAP: Final = "gap"
"""The reserved ``kind`` of an event that tells the consumer it may have missed events."""

_ID_PREFIX: Final = os.urandom(6).hex()
# itertools.count is atomic under the GIL: ids are unique in this process
# across routers and threads, and the random prefix makes them unique across processes.
next_event_number: Final = itertools.count(1).__next__


def event_id(number: int | str) -> str:
    """Render an event number of this process as its id (an id from a backend is kept)."""
    if type(number) is str:
        return number
    return f"{_ID_PREFIX}-{number:x}"


class Overflow(enum.StrEnum):
    """What a connection does with an event when its queue is full.

    The policy is the router's, applied per connection: one slow tab never
    changes what another tab of the same user gets.
    """

    BLOCK = "block"
    """The publisher waits for room, at most ``publish_timeout`` (then ``QueueFullError``)."""
    DROP_OLDEST = "drop_oldest"
    """The oldest queued event is dropped to make room: the consumer keeps the newest."""
    DROP_NEWEST = "drop_newest"
    """The new event is dropped: the consumer keeps the oldest."""
    DISCONNECT = "disconnect"
    """The connection is closed with ``CloseReason.OVERFLOW``; its backlog is dropped."""


class CloseReason(enum.StrEnum):
    """Why a connection closed: the ``reason`` of :class:`isolation.ConnectionClosedError`."""

    CLOSED = "closed"
    """Closed by its owner, or by the end of the scope it was opened in."""
    OVERFLOW = "overflow"
    """Its queue overflowed under ``Overflow.DISCONNECT``."""
    EXPIRED = "expired"
    """Its context expired."""
    REAUTH_FAILED = "reauth_failed"
    """``reauthenticate()`` was given a token that did not prove the same principal."""
    ROUTER_CLOSED = "router_closed"
    """The router was closed."""


class ConnectionState(enum.StrEnum):
    """Where a connection is in its life; transitions only go forward.

    ``CONNECTING -> OPEN -> CLOSED``, or ``CONNECTING -> CLOSED`` when opening
    fails. A ``CLOSED`` connection is never reopened or rebound.
    """

    CONNECTING = "connecting"
    OPEN = "open"
    CLOSED = "closed"


@final
@attrs.frozen(kw_only=True)
class PublishResult:
    """What one :meth:`EventRouter.publish` did.

    Attributes:
        delivered: Connections of the recipient that accepted the event (it is
            queued for them, or was handed over at once).
        dropped: Events this publish caused to be dropped: the event itself on a
            connection where it did not fit (``DROP_NEWEST``, a ``BLOCK``
            timeout), the older events it pushed out (``DROP_OLDEST``), or the
            event and the backlog of a connection it closed (``DISCONNECT``).
    """

    delivered: int
    dropped: int


@final
@attrs.frozen(kw_only=True)
class Envelope:
    """An event before it is fanned out to connections: what a backend carries.

    The same for every connection of the recipient; each connection turns it
    into an :class:`Event` with its own ``seq``.
    """

    id: str
    recipient: str
    tenant_id: str | None
    kind: str
    created_at: float
    payload: Any
    offset: int | None = None
    """The event's offset in its principal's history (``None`` without history)."""
    epoch: str | None = None
    """The epoch of that history (``None`` without history)."""


class _EventSlots:
    # The mutable layout an Event is filled in through; see make_event().
    __slots__ = (
        "_id",
        "created_at",
        "epoch",
        "kind",
        "offset",
        "payload",
        "recipient",
        "seq",
        "tenant_id",
    )


@final
class Event(_EventSlots):
    """One event as a connection hands it to its consumer. Immutable.

    Attributes:
        id: The event's id, the same on every connection of the recipient.
        recipient: The user id it is for.
        tenant_id: The tenant of the recipient (``None`` for a single-tenant service).
        kind: ``"message"`` or an application kind; ``"gap"`` when the consumer
            may have missed events (sent by backends that can lose them).
        seq: Per connection: 1 for the first event accepted for it, then up by
            exactly one per event, assigned **before** the overflow decision, so
            a dropped event shows as a gap in ``seq``.
        created_at: Epoch seconds when it was published (the library's clock).
        payload: This recipient's own copy of the payload as it was published,
            in its JSON form: mutating it, or the published object, changes
            nothing another recipient gets.
        offset: With a router ``history``: the event's place in its principal's
            stream, 1 for the first, up by exactly one per event of that
            principal (the same on every connection, assigned before any
            overflow decision); ``None`` without history and on ``"gap"`` events.
        epoch: With a router ``history``: the stream's epoch, an opaque string
            that changes whenever the history may have been lost; ``None`` without.
            ``ResumePoint(event.epoch, event.offset)`` resumes after this event.
    """

    __slots__ = ()

    _id: int | str
    recipient: str
    tenant_id: str | None
    kind: str
    seq: int
    created_at: float
    payload: Any
    offset: int | None
    epoch: str | None

    def __init__(
        self,
        *,
        id: str,
        recipient: str,
        tenant_id: str | None,
        kind: str,
        seq: int,
        created_at: float,
        payload: Any,
        offset: int | None = None,
        epoch: str | None = None,
    ) -> None:
        if type(id) is not str or not id:
            raise UsageError(f"Event id must be a non-empty str, got {type(id).__name__}")
        if type(recipient) is not str or not recipient:
            raise UsageError("Event recipient must be a non-empty str (a user id)")
        if tenant_id is not None and type(tenant_id) is not str:
            raise UsageError("Event tenant_id must be a str or None")
        if type(kind) is not str or not kind:
            raise UsageError("Event kind must be a non-empty str")
        if type(seq) is not int or seq < 1:
            raise UsageError(f"Event seq must be an int >= 1, got {seq!r}")
        if not isinstance(created_at, int | float) or not math.isfinite(created_at):
            raise UsageError("Event created_at must be finite epoch seconds")
        if offset is not None and (type(offset) is not int or offset < 1):
            raise UsageError(f"Event offset must be an int >= 1 or None, got {offset!r:.40}")
        if epoch is not None and (type(epoch) is not str or not epoch):
            raise UsageError("Event epoch must be a non-empty str or None")
        _fill(self, id, recipient, tenant_id, kind, seq, float(created_at), payload)
        object.__setattr__(self, "offset", offset)
        object.__setattr__(self, "epoch", epoch)

    @property
    def id(self) -> str:
        """The event's id, the same on every connection of the recipient."""
        # Events published here carry a number, rendered only when read.
        number = self._id
        if type(number) is str:
            return number
        return f"{_ID_PREFIX}-{number:x}"

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"an Event is immutable; cannot set {name!r}")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"an Event is immutable; cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if type(other) is not Event:
            return NotImplemented
        return (
            self.id == other.id
            and self.seq == other.seq
            and self.recipient == other.recipient
            and self.tenant_id == other.tenant_id
            and self.kind == other.kind
            and self.created_at == other.created_at
            and self.payload == other.payload
            and self.offset == other.offset
            and self.epoch == other.epoch
        )

    def __hash__(self) -> int:
        return hash((self.id, self.seq, self.recipient, self.tenant_id))

    def __repr__(self) -> str:
        # The payload is left out: reprs end up in logs, payloads are the user's data.
        tenant = redact_tenant_repr(self.tenant_id)
        return (
            f"isolation.events.Event(id={self.id!r}, recipient={redact(self.recipient)!r}, "
            f"tenant_id={tenant}, kind={self.kind!r}, seq={self.seq!r}, "
            f"offset={self.offset!r}, payload=...)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_event,
            (
                self.id,
                self.recipient,
                self.tenant_id,
                self.kind,
                self.seq,
                self.created_at,
                self.payload,
                self.offset,
                self.epoch,
            ),
        )

    def __copy__(self) -> Event:
        return self


def _rebuild_event(
    id: str,
    recipient: str,
    tenant_id: str | None,
    kind: str,
    seq: int,
    created_at: float,
    payload: Any,
    offset: int | None = None,
    epoch: str | None = None,
) -> Event:
    return Event(
        id=id,
        recipient=recipient,
        tenant_id=tenant_id,
        kind=kind,
        seq=seq,
        created_at=created_at,
        payload=payload,
        offset=offset,
        epoch=epoch,
    )


def _fill(
    event: Event,
    id: str,
    recipient: str,
    tenant_id: str | None,
    kind: str,
    seq: int,
    created_at: float,
    payload: Any,
) -> None:
    osa = object.__setattr__
    osa(event, "_id", id)
    osa(event, "recipient", recipient)
    osa(event, "tenant_id", tenant_id)
    osa(event, "kind", kind)
    osa(event, "seq", seq)
    osa(event, "created_at", created_at)
    osa(event, "payload", payload)


Packed = tuple[Any, ...]
"""An envelope without its payload, as queued: ``(id, recipient, tenant_id, kind, created_at)``,
and with a router ``history`` two more, ``offset`` and ``epoch``.

One per publish, shared by every connection of the recipient; each connection
keeps the payload and its own ``seq`` beside it and builds the :class:`Event`
only when its consumer takes it. So a queued event costs no object per
connection, the events handed out die young, and the tuple (only strings and
a float) is untracked by the garbage collector after its first collection:
the collector's work does not grow with the events waiting in queues.
"""


def make_event(
    packed: Packed,
    payload: Any,
    seq: int,
    _new: Any = object.__new__,
    _mutable: type[_EventSlots] = _EventSlots,
    _event: type[Event] = Event,
) -> Event:
    """Build an Event from a trusted packed envelope and ``seq``: the router's hot path.

    The slots are filled on the mutable base layout and the object then becomes
    an ``Event`` (same layout, so ``__class__`` assignment is allowed): plain
    attribute stores, where ``object.__setattr__`` per field costs twice as much.
    """
    event = _new(_mutable)
    if len(packed) == 5:
        event._id, event.recipient, event.tenant_id, event.kind, event.created_at = packed
        event.offset = event.epoch = None
    else:
        (
            event._id,
            event.recipient,
            event.tenant_id,
            event.kind,
            event.created_at,
            event.offset,
            event.epoch,
        ) = packed
    event.payload = payload
    event.seq = seq
    event.__class__ = _event
    return event  # type: ignore[no-any-return]


@final
@attrs.frozen(kw_only=True)
class ConnectionStats:
    """A snapshot of one connection's counters.

    Every event accepted for the connection has a ``seq`` and ends as exactly
    one of: delivered, dropped, refused, or still queued (or waiting for room
    under ``BLOCK``): ``seq == delivered + dropped + refused + queued + waiting``.

    Attributes:
        seq: The last ``seq`` assigned (0 before the first event).
        delivered: Events handed to the consumer.
        dropped: Events dropped by the overflow policy, a ``BLOCK`` timeout, or
            discarded when the connection closed with events still queued.
        refused: Events refused at the last step: not for this connection's principal.
        queued: Events waiting in the queue now.
        waiting: Events of blocked publishers waiting for room (``BLOCK`` only).
    """

    seq: int
    delivered: int
    dropped: int
    refused: int
    queued: int
    waiting: int


@final
@attrs.frozen(kw_only=True)
class PrincipalStats:
    """A snapshot of one principal's counters: its live connections plus those closed since.

    Kept only while the principal has a live connection, so a publisher choosing
    recipient ids cannot grow the router's memory.
    """

    connections: int
    delivered: int
    dropped: int
    refused: int


@final
@attrs.frozen(kw_only=True)
class RouterStats:
    """A snapshot of the router's counters.

    Attributes:
        connections: Live connections.
        principals: Principals with at least one live connection.
        opened: Connections opened since the router was made.
        closed: Connections closed since.
        published: ``publish()`` calls that found at least one live connection.
        undeliverable: ``publish()`` calls that found none (the event went nowhere).
        delivered: Events handed to consumers.
        dropped: Events dropped (overflow, ``BLOCK`` timeouts, backlogs discarded at close).
        refused: Events refused at the last step because they were not for the
            connection's principal: a routing fault, logged and never delivered.
        expired: Connections closed because their context expired.
        overflow_disconnects: Connections closed by ``Overflow.DISCONNECT``.
    """

    connections: int
    principals: int
    opened: int
    closed: int
    published: int
    undeliverable: int
    delivered: int
    dropped: int
    refused: int
    expired: int
    overflow_disconnects: int


for _cls in (
    CloseReason,
    ConnectionState,
    ConnectionStats,
    Event,
    Overflow,
    PrincipalStats,
    PublishResult,
    RouterStats,
):
    _cls.__module__ = "isolation.events"
Envelope.__module__ = "isolation.events.backends"  # a backend author's type
