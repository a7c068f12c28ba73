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
re-authentication". With ``EventRouter(history=History(...))`` events carry an
offset and an epoch, and ``connect(ctx, resume=ResumePoint(...))`` replays what
a client missed (the how-to "Recover missed events after a reconnect").
"""

from isolation._deprecated import moved
from isolation.events._connection import Connection as Connection
from isolation.events._history import History as History
from isolation.events._history import ResumePoint as ResumePoint
from isolation.events._model import CloseReason as CloseReason
from isolation.events._model import Event as Event
from isolation.events._model import Overflow as Overflow
from isolation.events._model import PublishResult as PublishResult
from isolation.events._router import TICKET_PURPOSE as TICKET_PURPOSE
from isolation.events._router import EventRouter as EventRouter

__all__ = [
    "CloseReason",
    "Connection",
    "Event",
    "EventRouter",
    "History",
    "Overflow",
    "PublishResult",
    "ResumePoint",
    "TICKET_PURPOSE",
]

# Names that left this module (issue 19): the backend author's types are in
# isolation.events.backends; the rest warn for one release.
__getattr__ = moved(
    __name__,
    {
        "Authenticate": ("isolation.events._router", "Authenticate"),
        "Backend": ("isolation.events.backends", "EventBackend"),
        "ConnectionState": ("isolation.events._model", "ConnectionState"),
        "ConnectionStats": ("isolation.events._model", "ConnectionStats"),
        "DEFAULT_MAX_CONNECTIONS_PER_USER": (
            "isolation.events._router",
            "DEFAULT_MAX_CONNECTIONS_PER_USER",
        ),
        "DEFAULT_PUBLISH_TIMEOUT": ("isolation.events._router", "DEFAULT_PUBLISH_TIMEOUT"),
        "DEFAULT_QUEUE_SIZE": ("isolation.events._router", "DEFAULT_QUEUE_SIZE"),
        "DEFAULT_TICKET_TTL": ("isolation.events._router", "DEFAULT_TICKET_TTL"),
        "Deliver": ("isolation.events.backends", "Deliver"),
        "Envelope": ("isolation.events.backends", "Envelope"),
        "MemoryBackend": ("isolation.events.backends", "MemoryBackend"),
        "PrincipalStats": ("isolation.events._model", "PrincipalStats"),
        "RouterStats": ("isolation.events._model", "RouterStats"),
    },
)
