"""The user-bound event router: every event reaches only its recipient's connections.

::

    router = EventRouter()                      # in memory, asyncio or trio
    conn = await router.connect(ctx)            # bound to ctx.principal for life
    await router.publish(Principal("acme", "alice"), {"text": "hi"})  # or ctx itself
    event = await conn.receive()                # checked against the bound principal

Connections have bounded queues with an explicit :class:`Overflow` policy, and
each event is checked against the connection's principal and expiry at the
last step before the consumer gets it. See the explanation page "Delivery
guarantees, overflow, gaps and expiry" and the how-to "Tickets and
re-authentication".
"""

from isolation.events._connection import Connection as Connection
from isolation.events._model import CloseReason as CloseReason
from isolation.events._model import ConnectionState as ConnectionState
from isolation.events._model import ConnectionStats as ConnectionStats
from isolation.events._model import Envelope as Envelope
from isolation.events._model import Event as Event
from isolation.events._model import Overflow as Overflow
from isolation.events._model import PrincipalStats as PrincipalStats
from isolation.events._model import PublishResult as PublishResult
from isolation.events._model import RouterStats as RouterStats
from isolation.events._router import (
    DEFAULT_MAX_CONNECTIONS_PER_USER as DEFAULT_MAX_CONNECTIONS_PER_USER,
)
from isolation.events._router import DEFAULT_PUBLISH_TIMEOUT as DEFAULT_PUBLISH_TIMEOUT
from isolation.events._router import DEFAULT_QUEUE_SIZE as DEFAULT_QUEUE_SIZE
from isolation.events._router import DEFAULT_TICKET_TTL as DEFAULT_TICKET_TTL
from isolation.events._router import TICKET_PURPOSE as TICKET_PURPOSE
from isolation.events._router import Authenticate as Authenticate
from isolation.events._router import EventRouter as EventRouter
from isolation.events.backends import Backend as Backend
from isolation.events.backends import Deliver as Deliver
from isolation.events.backends import MemoryBackend as MemoryBackend

__all__ = [
    "Authenticate",
    "Backend",
    "CloseReason",
    "Connection",
    "ConnectionState",
    "ConnectionStats",
    "DEFAULT_MAX_CONNECTIONS_PER_USER",
    "DEFAULT_PUBLISH_TIMEOUT",
    "DEFAULT_QUEUE_SIZE",
    "DEFAULT_TICKET_TTL",
    "Deliver",
    "Envelope",
    "Event",
    "EventRouter",
    "MemoryBackend",
    "Overflow",
    "PrincipalStats",
    "PublishResult",
    "RouterStats",
    "TICKET_PURPOSE",
]
