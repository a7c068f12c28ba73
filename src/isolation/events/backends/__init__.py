"""Event backends: where a router records redeemed tickets, and how events travel.

:class:`Backend` is the extension point. The router owns routing and the
last-step check for its own connections; a backend only carries envelopes
between routers (processes) and keeps the single-use ticket record, so a
broken or hostile backend can at worst lose events, never deliver one to the
wrong connection. :class:`MemoryBackend` (the default) keeps everything in
this process; a Redis backend plugs in through the same protocol.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from isolation.context._model import Principal
from isolation.events._model import Envelope, PublishResult
from isolation.events.backends.memory import MemoryBackend as MemoryBackend

__all__ = ["Backend", "Deliver", "MemoryBackend"]

Deliver = Callable[[Envelope], Awaitable[PublishResult]]
"""The router's entry point for an envelope that arrived through a backend."""


@runtime_checkable
class Backend(Protocol):
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
        wait for room.
        """
        ...

    async def publish(self, envelope: Envelope) -> PublishResult:
        """Carry ``envelope`` to every router watching its recipient (this one included).

        Enforce the payload size where the payload is serialised, raising
        :class:`~isolation.EventTooLargeError` before anything is sent.
        """
        ...

    def watch(self, principal: Principal) -> None:
        """The router has a first live connection of ``principal``: start receiving its events."""
        ...

    def unwatch(self, principal: Principal) -> None:
        """The router's last connection of ``principal`` closed: stop receiving its events."""
        ...

    async def claim_ticket(self, token: str, *, expires_at: float) -> bool:
        """Record a verified ticket as used; ``False`` if it was used before.

        Store only a keyed digest of ``token``, never the token, and keep each
        record until ``expires_at`` (the ticket's own expiry) plus the tokens'
        leeway: after that the ticket is refused as expired anyway, so the
        record stays bounded by the ticket lifetime.
        """
        ...

    async def aclose(self) -> None:
        """Release what the backend holds; the router is closing."""
        ...
