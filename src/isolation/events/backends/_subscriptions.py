"""The Redis backend's subscription state: a pure state machine, driven by its I/O shell.

:class:`~isolation.events.backends.redis.RedisBackend` talks to Redis; this
module decides. It holds, per principal's channel, what the local connections
want (*desired*) against what Redis has confirmed on the current subscriber
connection (*confirmed*), and answers the shell's questions:

- which ``SUBSCRIBE`` / ``UNSUBSCRIBE`` / ``PING`` commands to write, and when
  (:meth:`Subscriptions.take_commands`, :meth:`Subscriptions.open`);
- which channel a subscription reply confirms, and whether the principal's
  connections are owed a ``"gap"`` event with it (:meth:`Subscriptions.subscribed`):
  one is owed when a confirmed subscription was lost with its connection, and
  it is queued when the new subscription is confirmed, before any message of
  the new connection is read, so no event is lost unannounced;
- whether a message's channel has a recipient here (:meth:`Subscriptions.recipient`);
- whether the listener answers its liveness checks (:meth:`Subscriptions.unanswered`);
- how long to back off after a failure (:class:`Backoff`, its randomness passed in).

No I/O, no asyncio, no clock: the shell reports what happened (a connection
opened, a reply read, the connection lost) and carries out what it is told.
Replies on one connection come in the order of the commands, so a channel's
count of ``SUBSCRIBE`` commands queued or written and not yet answered says
when its latest subscription is confirmed (the count is back to 0).
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Final, NamedTuple, final

from isolation.context._model import Principal
from isolation.events.backends._envelope import channel_name

__all__ = ["SUBSCRIBE_BATCH", "Backoff", "Confirmed", "Subscriptions", "Watched"]

SUBSCRIBE_BATCH: Final = 512
"""Channels in one ``SUBSCRIBE`` command when a connection resubscribes."""

_SUBSCRIBE: Final = b"SUBSCRIBE"
_UNSUBSCRIBE: Final = b"UNSUBSCRIBE"
_PING: Final = b"PING"


class Confirmed(NamedTuple):
    """A subscription reply confirmed ``principal``'s channel; ``gap``: its connections
    are owed a ``"gap"`` event (the subscription had been lost since it was last confirmed)."""

    principal: Principal
    gap: bool


class Watched(enum.Enum):
    """What :meth:`Subscriptions.watch` tells the shell."""

    CONFIRMED = "confirmed"  # confirmed now: nothing to wait for
    NEW_WAIT = "new wait"  # wait for the confirmation, with a new waiter
    WAIT = "wait"  # wait for the confirmation the channel's waiter already waits for


_IDLE: Final = 0  # no confirmation awaited, none held
_AWAITING: Final = 1  # the latest subscription is awaited (the shell's waiter is pending)
_SETTLED: Final = 2  # the latest subscription was confirmed (and not lost since)


class _Channel:
    """One principal's channel."""

    __slots__ = ("lost", "name", "pending", "principal", "state", "wanted")

    def __init__(self, name: bytes, principal: Principal) -> None:
        self.name = name
        self.principal = principal
        # Desired: a local connection wants it (watch() until unwatch()).
        self.wanted = False
        # SUBSCRIBEs queued or written on the current connection whose reply is
        # not read yet: replies come in order, so 0 after a "subscribe" reply
        # means the latest one is confirmed. A queued one counts: a reply to an
        # earlier SUBSCRIBE, followed on the wire by an UNSUBSCRIBE, confirms
        # nothing Redis will hold.
        self.pending = 0
        self.state = _IDLE
        # A confirmed subscription was lost with its connection: a gap is owed
        # at the next confirmation.
        self.lost = False

    @property
    def confirmed(self) -> bool:
        return self.wanted and self.state == _SETTLED and self.pending == 0


@final
class Subscriptions:
    """Desired and confirmed channels of one subscriber connection at a time.

    The shell calls :meth:`watch` / :meth:`unwatch` for the router,
    :meth:`open` when a subscriber connection is established,
    :meth:`take_commands` from its writer, :meth:`subscribed`,
    :meth:`unsubscribed` and :meth:`pong` for what it reads, and :meth:`lost`
    when the connection is gone.
    """

    __slots__ = ("_by_name", "_by_principal", "_commands", "_connected", "_pings", "_pongs", "ns")

    def __init__(self, namespace: str) -> None:
        self.ns = namespace
        self._by_principal: dict[Principal, _Channel] = {}
        self._by_name: dict[bytes, _Channel] = {}
        # Commands for the writer, in order: (command, channel or None for PING).
        self._commands: deque[tuple[bytes, _Channel | None]] = deque()
        self._connected = False
        self._pings = 0
        self._pongs = 0

    # -- what the router asks --------------------------------------------------------

    def watch(self, principal: Principal) -> Watched:
        """A local connection wants ``principal``'s channel: confirmed now, or the shell
        waits until :meth:`subscribed` confirms it (a ``SUBSCRIBE`` is queued unless the
        channel was wanted already)."""
        ch = self._by_principal.get(principal)
        if ch is None:
            name = channel_name(self.ns, principal).encode("ascii")
            ch = self._by_principal[principal] = self._by_name[name] = _Channel(name, principal)
        if ch.confirmed:
            return Watched.CONFIRMED
        result = Watched.WAIT
        if ch.state != _AWAITING:
            ch.state = _AWAITING
            result = Watched.NEW_WAIT
        if not ch.wanted:
            ch.wanted = True
            ch.pending += 1
            self._commands.append((_SUBSCRIBE, ch))
        return result

    def unwatch(self, principal: Principal) -> bool:
        """No local connection wants ``principal``'s channel any more: nobody is owed a
        gap; it is forgotten at once if nothing about it is on the wire (``True``), else
        unsubscribed."""
        ch = self._by_principal.get(principal)
        if ch is None or not ch.wanted:
            return False
        ch.wanted = False
        ch.lost = False
        if not self._connected:  # nothing is on the wire; what is queued, open() drops
            self._forget(ch)
            return True
        self._commands.append((_UNSUBSCRIBE, ch))
        return False

    # -- the subscriber connection -------------------------------------------------------

    def open(self) -> list[list[bytes]]:
        """A subscriber connection was established: the ``SUBSCRIBE`` batches that
        resubscribe every desired channel, to write first. Queued commands are
        dropped (they were for the connection before); liveness counts restart."""
        self._connected = True
        self._commands.clear()
        self._pings = self._pongs = 0
        for ch in [ch for ch in self._by_principal.values() if not ch.wanted]:
            self._forget(ch)  # an UNSUBSCRIBE dropped above: not subscribed here
        wanted = list(self._by_principal.values())
        for ch in wanted:
            ch.state = _AWAITING
            ch.pending = 1  # the SUBSCRIBE below; those queued before were dropped
        return [
            [ch.name for ch in wanted[start : start + SUBSCRIBE_BATCH]]
            for start in range(0, len(wanted), SUBSCRIBE_BATCH)
        ]

    def take_commands(self) -> list[tuple[bytes, ...]]:
        """The queued commands still worth writing, in order (the writer's next batch).

        A ``SUBSCRIBE`` of a channel no longer wanted, or an ``UNSUBSCRIBE`` of one
        wanted again, is dropped; what is returned counts as written.
        """
        batch: list[tuple[bytes, ...]] = []
        commands = self._commands
        while commands:
            command, ch = commands.popleft()
            if ch is None:
                batch.append((command,))
            elif command == _SUBSCRIBE:
                if ch.wanted:
                    batch.append((command, ch.name))
                else:
                    ch.pending -= 1  # dropped: no reply will come
            elif not ch.wanted:
                batch.append((command, ch.name))
        return batch

    @property
    def has_commands(self) -> bool:
        """Whether commands are queued for the writer."""
        return bool(self._commands)

    def subscribed(self, name: bytes) -> Confirmed | None:
        """A ``subscribe`` reply for channel ``name`` was read: what it confirms, if anything."""
        ch = self._by_name.get(name)
        if ch is None:
            return None
        ch.pending = max(0, ch.pending - 1)
        if ch.pending == 0 and ch.wanted and ch.state == _AWAITING:
            ch.state = _SETTLED
            gap, ch.lost = ch.lost, False
            return Confirmed(ch.principal, gap)
        return None

    def unsubscribed(self, name: bytes) -> Principal | None:
        """An ``unsubscribe`` reply for channel ``name`` was read: the principal whose
        channel it let go (forgotten), if any."""
        ch = self._by_name.get(name)
        if ch is not None and not ch.wanted and ch.pending == 0:
            self._forget(ch)
            return ch.principal
        return None

    def lost(self) -> None:
        """The subscriber connection is gone: every desired channel needs a new
        subscription, and those confirmed owe their connections a gap at the next."""
        self._connected = False
        self._commands.clear()
        for ch in list(self._by_principal.values()):
            ch.pending = 0
            if not ch.wanted:
                self._forget(ch)
            elif ch.state == _SETTLED:
                ch.state = _IDLE
                ch.lost = True

    # -- liveness --------------------------------------------------------------------------

    def ping(self) -> None:
        """Queue a liveness ``PING``."""
        self._pings += 1
        self._commands.append((_PING, None))

    def pong(self) -> None:
        """A ``PONG`` was read."""
        self._pongs += 1

    @property
    def unanswered(self) -> bool:
        """Whether a ``PING`` of this connection is still unanswered."""
        return self._pongs < self._pings

    # -- questions -----------------------------------------------------------------------

    def recipient(self, name: bytes) -> Principal | None:
        """The principal a message on channel ``name`` is for, if one is wanted here."""
        ch = self._by_name.get(name)
        return ch.principal if ch is not None and ch.wanted else None

    def is_confirmed(self, principal: Principal) -> bool:
        """Whether ``principal``'s channel is wanted and its subscription confirmed."""
        ch = self._by_principal.get(principal)
        return ch is not None and ch.confirmed

    def knows(self, principal: Principal) -> bool:
        """Whether ``principal``'s channel is known (wanted, or not yet forgotten): a
        waiter of a channel not known waits for nothing and can be dropped."""
        return principal in self._by_principal

    def is_wanted(self, principal: Principal) -> bool:
        """Whether a local connection wants ``principal``'s channel."""
        ch = self._by_principal.get(principal)
        return ch is not None and ch.wanted

    @property
    def confirmed(self) -> int:
        """Channels wanted and confirmed now."""
        return sum(1 for ch in self._by_principal.values() if ch.confirmed)

    @property
    def wanted(self) -> int:
        """Channels wanted now."""
        return sum(1 for ch in self._by_principal.values() if ch.wanted)

    def __len__(self) -> int:
        """Channels known (wanted, or not yet forgotten)."""
        return len(self._by_principal)

    def clear(self) -> None:
        """Forget everything (the backend closed)."""
        self._by_principal.clear()
        self._by_name.clear()
        self._commands.clear()
        self._connected = False
        self._pings = self._pongs = 0

    def _forget(self, ch: _Channel) -> None:
        if self._by_principal.get(ch.principal) is ch:
            del self._by_principal[ch.principal]
            self._by_name.pop(ch.name, None)


@final
class Backoff:
    """Exponential backoff between ``first`` and ``maximum`` seconds.

    :meth:`failed` returns the pause before the next attempt, ``jitter`` (in
    ``[0.5, 1]``, drawn by the caller) times the current delay, and doubles the
    delay up to ``maximum``; :meth:`succeeded` starts again from ``first``.
    """

    __slots__ = ("delay", "first", "maximum")

    def __init__(self, first: float, maximum: float) -> None:
        self.first = first
        self.maximum = maximum
        self.delay = first

    def failed(self, jitter: float) -> float:
        pause = self.delay * jitter
        self.delay = min(self.delay * 2, self.maximum)
        return pause

    def succeeded(self) -> None:
        self.delay = self.first
