"""Event backends: where a router records redeemed tickets, and how events travel.

:class:`EventBackend` is the extension point, and this module holds what a
backend author needs: the protocol, the :class:`Deliver` entry points a router
gives it, the :class:`Envelope` it carries, and :class:`MemoryBackend`.

The router owns routing and the last-step check for its own connections; a backend only carries envelopes
between routers (processes) and keeps the single-use ticket record, so a
broken or hostile backend can at worst lose events, never deliver one to the
wrong connection. :class:`MemoryBackend` (the default) keeps everything in
this process; a Redis backend plugs in through the same protocol.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, Protocol, runtime_checkable

from isolation._deprecated import moved
from isolation.context._model import Principal
from isolation.events._model import Envelope as Envelope
from isolation.events._model import PublishResult
from isolation.events.backends._memory import MemoryBackend as MemoryBackend

__all__ = ["Deliver", "Envelope", "EventBackend", "MemoryBackend"]


class Deliver(Protocol):
    """The router's entry points for envelopes that arrived through a backend.

    ``await deliver(envelope)`` fans the envelope out to the router's
    connections of its recipient and returns what happened there; under
    ``Overflow.BLOCK`` it may wait for room. A backend whose receiving loop
    must never stall (Redis) uses :meth:`offer` and :meth:`gap` instead.
    """

    def __call__(self, envelope: Envelope) -> Awaitable[PublishResult]:
        """Fan ``envelope`` out to this router's connections, waiting for room if needed."""
        ...

    def offer(self, envelope: Envelope) -> PublishResult | Awaitable[PublishResult]:
        """Fan ``envelope`` out without waiting: the result, or an awaitable for the rest.

        The awaitable is returned only when some ``BLOCK`` connection is full:
        awaiting it (in a task of its own, so the caller is not stalled) waits
        up to the router's ``publish_timeout`` and raises
        :class:`~isolation.QueueFullError` naming the connections where the
        event was dropped.
        """
        ...

    def gap(
        self, principal: Principal, *, reason: str, connections: Sequence[Any] | None = None
    ) -> int:
        """Queue an event of kind ``"gap"`` on the live connections of ``principal``.

        ``connections`` narrows it to some of them (for example those named by a
        ``QueueFullError``). A connection already holding an unread gap gets no
        second one; a gap is queued even when the queue is full (at most one
        over capacity). Returns how many connections got one.
        """
        ...


@runtime_checkable
class EventBackend(Protocol):
    """What an event backend provides to :class:`~isolation.events.EventRouter`.

    Lifecycle: the router calls :meth:`attach` once when it is made, the other
    methods while it runs, and :meth:`aclose` when it is closed.
    """

    @property
    def shared(self) -> bool:
        """Whether other routers (processes) publish and subscribe through this backend.

        ``False``: the router is the only publisher and subscriber, and delivers
        a publish to its own connections directly, without calling
        :meth:`publish`. ``True``: every publish goes through :meth:`publish`,
        and the backend hands each envelope for a principal the router watches
        to the ``deliver`` function given to :meth:`attach`.
        """
        ...

    def attach(self, deliver: Deliver) -> None:
        """Connect the backend to its router; ``deliver(envelope)`` fans out locally.

        ``deliver`` applies the router's overflow policy and returns what
        happened on this router's connections. Under ``Overflow.BLOCK`` it may
        wait for room; ``deliver.offer()`` never waits (see :class:`Deliver`).
        Called again after :meth:`aclose` when the router starts again
        (``EventRouter.start()``, maybe on another event loop): reopen, or raise
        ``ConfigurationError`` if this backend cannot.
        """
        ...

    async def publish(self, envelope: Envelope) -> PublishResult:
        """Carry ``envelope`` to every router watching its recipient (this one included).

        Enforce the payload size where the payload is serialised, raising
        :class:`~isolation.EventTooLargeError` before anything is sent.
        """
        ...

    def watch(self, principal: Principal) -> Awaitable[None] | None:
        """A connection of ``principal`` is opening here: receive its events.

        Called (for a ``shared`` backend) on every ``connect()``, so it must be
        idempotent. It may return an awaitable: the router awaits it before
        ``connect()`` returns, so a backend that subscribes remotely returns
        once the subscription is confirmed, and an event published after
        ``connect()`` returned is never missed for want of a subscription. If
        it raises (or the wait is cancelled), the connection is closed and
        ``connect()`` raises.
        """
        ...

    def unwatch(self, principal: Principal) -> None:
        """The router's last connection of ``principal`` closed: stop receiving its events.

        Called synchronously as the connection closes: schedule remote work, never wait.
        """
        ...

    async def claim_ticket(self, token: str, *, expires_at: float) -> bool:
        """Record a verified ticket as used; ``False`` if it was used before.

        Store only a keyed digest of ``token``, never the token. Read the clock
        once: refuse a ticket past ``expires_at`` plus the tokens' ``LEEWAY`` at
        that reading (``TokenExpiredError``), and keep each record at least
        until ``expires_at + 2 * LEEWAY`` by it (longer in a store shared by
        processes whose clocks differ): the ticket is accepted until
        ``expires_at + LEEWAY``, and the record must outlive that by the skew
        tolerance, or an edge-of-expiry replay finds it gone. Still bounded by
        the ticket lifetime.
        """
        ...

    async def aclose(self) -> None:
        """Release what the backend holds; the router is closing."""
        ...


# The protocol was named `Backend` (a name `isolation.report` uses too) until issue 19.
__getattr__ = moved(__name__, {"Backend": (__name__, "EventBackend")})
