"""The snapshot type of :meth:`isolation.events.backends.redis.RedisBackend.stats`.

Private since issue 19 (read by attribute); the old path
``isolation.events.backends.redis.RedisStats`` warns for one release.
"""

from __future__ import annotations

from typing import final

import attrs

__all__ = ["RedisStats"]


@final
@attrs.frozen(kw_only=True)
class RedisStats:
    """A snapshot of a :class:`RedisBackend`'s counters.

    Attributes:
        published: Envelopes Redis accepted from this process.
        batches: Round trips (pipelines) that carried them: concurrent publishes
            share one, so ``published / batches`` is the coalescing achieved.
        received: Messages read from this process's channels (its own publishes excluded).
        delivered: Verified envelopes handed to the router (its stats count connections).
        dropped: Refused messages by reason (see ``_envelope.Drop``), plus
            ``"overflow"`` for events a full ``BLOCK`` connection dropped here.
        subscriptions: Channels subscribed and confirmed now.
        reconnects: Subscriber connections re-established after a loss.
        gaps: ``"gap"`` events queued on local connections.
        listener_restarts: Listener sessions that ended unexpectedly (a lost
            connection, a crash, a cancellation, a failed liveness check) and were restarted.
        unavailable: Calls that raised ``BackendUnavailableError``.
    """

    published: int
    batches: int
    received: int
    delivered: int
    dropped: dict[str, int]
    subscriptions: int
    reconnects: int
    gaps: int
    listener_restarts: int
    unavailable: int
