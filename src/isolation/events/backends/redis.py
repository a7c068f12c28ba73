"""``RedisBackend``: the event router across processes, over Redis pub/sub (extra ``redis``).

::

    backend = RedisBackend("redis://127.0.0.1:6379/0", keys=[key])
    router = EventRouter(backend=backend)

Each process subscribes (plain ``SUBSCRIBE``, never patterns) to the channel
of every principal with a live connection in it, and only those; the router's
``connect()`` returns once Redis has confirmed the subscription. Events travel
as signed JSON envelopes (:mod:`isolation.events.backends._envelope`); the
receiving process verifies the size, signature, recipient, expiry and a replay
window before the router's own last-step check, and drops, logs (without
payload) and counts anything else. Pub/sub is **at most once**: a lost Redis
connection is re-established with backoff and resubscribed, and every affected
local connection then receives an event of kind ``"gap"``. Concurrent publishes
are coalesced: one writer task per backend sends every envelope waiting at
that moment in one pipeline (one round trip) and answers each publisher from
its own reply. Publishing while Redis is unreachable raises
:class:`~isolation.BackendUnavailableError` after ``unavailable_timeout``.
Single-use tickets are claimed with ``SET NX`` and an expiry, so they are
single-use across processes.

This module is the I/O shell: the subscription state (desired against
confirmed channels, what to write, when a subscription is confirmed, when a
gap is owed, the liveness checks and the backoff) is decided by the pure state
machine of :mod:`isolation.events.backends._subscriptions`, unit-tested
without Redis.

asyncio only (redis-py's asyncio client): under trio every method that talks
to Redis raises :class:`~isolation.UnsupportedBackendError`.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import math
import os
import random
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, NoReturn, TypeVar, final, overload

try:
    import redis.asyncio as aioredis
    from redis.asyncio.connection import AbstractConnection
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import AuthenticationError as RedisAuthenticationError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError, ResponseError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as exc:  # pragma: no cover - the test suite installs the extra
    raise ImportError(
        "isolation.events.backends.redis needs redis-py: pip install 'isolation-primitives[redis]'"
    ) from exc

from isolation import _clock, _compat
from isolation._deprecated import moved as _moved
from isolation._errors import (
    BackendUnavailableError,
    ConfigurationError,
    QueueFullError,
    UnsupportedBackendError,
)
from isolation.context._model import UNSET, Principal, Unset, UserContext, deprecated, principal_of
from isolation.context._principal import trusted_principal
from isolation.events._model import Envelope, PublishResult
from isolation.events._wake import current_backend
from isolation.events.backends import Deliver
from isolation.events.backends._envelope import (
    DEFAULT_EVENT_TTL,
    DEFAULT_MAX_ENVELOPE_BYTES,
    Codec,
    Drop,
    ReplayWindow,
    channel_name,
    check_namespace,
)
from isolation.events.backends._redis_stats import RedisStats as _RedisStats
from isolation.events.backends._subscriptions import Backoff, Subscriptions, Watched
from isolation.events.backends._tickets import check_claimable, record_ms

__all__ = ["RedisBackend"]

# Names that left the surface (issue 19): the defaults (the signature shows them) and
# the type of RedisBackend.stats() (read by attribute). They warn for one release.
__getattr__ = _moved(
    __name__,
    {
        "DEFAULT_HEALTH_INTERVAL": ("isolation.events.backends.redis", "_DEFAULT_HEALTH_INTERVAL"),
        "DEFAULT_UNAVAILABLE_TIMEOUT": (
            "isolation.events.backends.redis",
            "_DEFAULT_UNAVAILABLE_TIMEOUT",
        ),
        "RedisStats": ("isolation.events.backends._redis_stats", "RedisStats"),
    },
)

logger = logging.getLogger("isolation.events")

T = TypeVar("T")

_DEFAULT_UNAVAILABLE_TIMEOUT: Final = 5.0
"""Seconds a publish, a ticket claim or a subscription waits for Redis before giving up."""
_DEFAULT_HEALTH_INTERVAL: Final = 5.0
"""Seconds between liveness checks (a ``PING`` on the subscriber connection)."""
_BACKOFF_FIRST: Final = 0.02
_BACKOFF_MAX: Final = 1.0
_PUBLISH_BATCH: Final = 256  # envelopes in one pipeline at most
_NAMES_CACHED: Final = 4096  # channel names of recent recipients kept for publish()
_LOG_EVERY: Final = 1.0  # seconds between two drop warnings of one reason

_CLOSED: Final = "the Redis backend was closed"
_CLOSED_HINT: Final = "Make a new router and backend"

_SUBSCRIBE: Final = b"subscribe"
_MESSAGE: Final = b"message"
_UNSUBSCRIBE: Final = b"unsubscribe"
_PONG: Final = b"pong"


class _Outgoing:
    """One envelope waiting for the publish writer, and the future its publisher awaits."""

    __slots__ = ("channel", "data", "deadline", "future", "sent")

    def __init__(
        self, channel: bytes, data: bytes, deadline: float, future: asyncio.Future[None]
    ) -> None:
        self.channel = channel
        self.data = data
        # Event-loop time after which the publisher gets BackendUnavailableError.
        self.deadline = deadline
        # Resolved by the writer only; cancelled by the publisher's cancellation.
        self.future = future
        # It was in a pipeline at least once, so Redis may have it.
        self.sent = False


def _describe(url: str) -> str:
    """``host:port/db`` of a Redis URL, without credentials, for messages."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or "?"
        port = parts.port or 6379
    except ValueError:
        return "the Redis URL"
    return f"{parts.scheme}://{host}:{port}{parts.path}"


@final
class RedisBackend:
    """Carries events between routers in several processes through Redis pub/sub.

    Plug it in with ``EventRouter(backend=RedisBackend(url, keys=[key]))``; one
    backend serves one router. The key list is the same in every process (the
    first signs, any verifies; rotation as for :mod:`isolation.tokens`).

    Args:
        url: ``redis://`` or ``rediss://`` (TLS) URL, with credentials if the
            server wants them (they never appear in messages or logs).
        keys: Secrets of 32+ bytes for the envelope signatures.
        namespace: Prefix of every channel and key (``{namespace}:``), so
            several deployments can share one Redis.
        unavailable_timeout: Seconds a publish, a ticket claim or a
            subscription waits for Redis before ``BackendUnavailableError``.
        event_ttl: Seconds an envelope is valid after publishing: the replay
            window, and how stale an event may arrive.
        max_envelope_bytes: The largest signed envelope sent or accepted.
        health_interval: Seconds between liveness checks of the listener.

    Raises:
        ConfigurationError: A setting is out of range.
    """

    __slots__ = (
        "__weakref__",
        "_attached",
        "_client",
        "_closing",
        "_codec",
        "_conn",
        "_counts",
        "_deliver",
        "_expiry",
        "_health_interval",
        "_in_flight",
        "_last_log",
        "_loop",
        "_names",
        "_namespace",
        "_origin",
        "_outbox",
        "_outbox_ready",
        "_pool",
        "_publisher",
        "_replays",
        "_session",
        "_subs",
        "_supervisor",
        "_tasks",
        "_unavailable_timeout",
        "_url",
        "_waiters",
        "_wake_writer",
        "_wrap_batch",
        "_wrap_session",
    )

    def __init__(
        self,
        url: str,
        *,
        keys: Sequence[bytes],
        namespace: str = "isolation",
        unavailable_timeout: float = _DEFAULT_UNAVAILABLE_TIMEOUT,
        event_ttl: float = DEFAULT_EVENT_TTL,
        max_envelope_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES,
        health_interval: float = _DEFAULT_HEALTH_INTERVAL,
    ) -> None:
        if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in (
            "redis",
            "rediss",
            "unix",
        ):
            raise ConfigurationError(
                "url must be a redis://, rediss:// or unix:// URL",
                hint="For example redis://127.0.0.1:6379/0, or rediss://... for TLS",
            )
        self._url = url
        self._codec = Codec(keys, ttl=event_ttl, max_bytes=max_envelope_bytes)
        self._namespace = check_namespace(namespace)
        self._unavailable_timeout = _seconds("unavailable_timeout", unavailable_timeout)
        self._health_interval = _seconds("health_interval", health_interval)
        self._origin = os.urandom(12).hex()
        self._deliver: Deliver | None = None
        self._attached = False
        # The subscription state (pure): desired and confirmed channels, commands.
        self._subs = Subscriptions(self._namespace)
        # Who waits for a channel's confirmation: one future per channel awaited.
        self._waiters: dict[Principal, asyncio.Future[None]] = {}
        self._names: dict[Principal, bytes] = {}
        # Envelopes waiting for the publish writer, in publish order; the
        # writer's current pipeline is in _in_flight until its replies are read.
        self._outbox: deque[_Outgoing] = deque()
        self._in_flight: list[_Outgoing] = []
        # The timer that fails envelopes of the pipeline out at their deadlines.
        self._expiry: asyncio.TimerHandle | None = None
        self._outbox_ready: asyncio.Event | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._replays = ReplayWindow()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: aioredis.Redis | None = None
        self._pool: aioredis.ConnectionPool | None = None
        self._conn: AbstractConnection | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._session: asyncio.Task[None] | None = None
        self._wake_writer: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._last_log: dict[str, float] = {}
        self._counts: dict[str, int] = {
            "published": 0,
            "batches": 0,
            "received": 0,
            "delivered": 0,
            "reconnects": 0,
            "gaps": 0,
            "listener_restarts": 0,
            "unavailable": 0,
        }
        for reason in Drop:
            self._counts[f"drop:{reason.value}"] = 0
        self._counts["drop:overflow"] = 0
        # Hooks for tests: wrap each listener session's coroutine, and each
        # pipeline execution of the publish writer (to inject faults).
        self._wrap_session: Callable[[Awaitable[None]], Awaitable[None]] | None = None
        self._wrap_batch: Callable[[Awaitable[list[Any]]], Awaitable[list[Any]]] | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closing else "open"
        return (
            f"<isolation.events.backends.redis.RedisBackend {_describe(self._url)} "
            f"namespace={self._namespace!r} {state} channels={len(self._subs)}>"
        )

    # -- what it tells ----------------------------------------------------------

    @property
    def shared(self) -> bool:
        """Always ``True``: other processes publish and subscribe through the same Redis."""
        return True

    @property
    def namespace(self) -> str:
        """The prefix of every channel and key."""
        return self._namespace

    @overload
    def channel(self, of: Principal | UserContext, /) -> str: ...

    @overload
    @deprecated("pass isolation.Principal(tenant_id, user_id) or ctx.principal")
    def channel(self, of: str, /, *, tenant_id: str | None) -> str: ...

    def channel(
        self, of: Principal | UserContext | str, /, *, tenant_id: str | Unset | None = UNSET
    ) -> str:
        """The channel name of principal ``of`` (for ACLs and debugging).

        ``of`` is a :class:`~isolation.Principal` or a :class:`~isolation.UserContext`;
        a user id ``str`` with ``tenant_id=`` is deprecated, without it refused
        (``UsageError``), as in :meth:`EventRouter.publish`.
        """
        return channel_name(self._namespace, principal_of(of, tenant_id, "channel"))

    def stats(self) -> _RedisStats:
        """Return a snapshot of the counters."""
        counts = self._counts
        return _RedisStats(
            published=counts["published"],
            batches=counts["batches"],
            received=counts["received"],
            delivered=counts["delivered"],
            dropped={
                key.partition(":")[2]: value
                for key, value in counts.items()
                if key.startswith("drop:")
            },
            subscriptions=self._subs.confirmed,
            reconnects=counts["reconnects"],
            gaps=counts["gaps"],
            listener_restarts=counts["listener_restarts"],
            unavailable=counts["unavailable"],
        )

    # -- the Backend protocol --------------------------------------------------------

    def attach(self, deliver: Deliver) -> None:
        """Remember the router's entry points; a second router is refused.

        After :meth:`aclose`, the backend may be attached again (its router
        starting again, maybe on another event loop): it reopens, with new
        connections and tasks made on first use.
        """
        if self._attached:
            raise ConfigurationError(
                "this RedisBackend already serves a router",
                hint="Give each EventRouter its own RedisBackend",
            )
        if self._closing:
            self._reopen()
        self._attached = True
        self._deliver = deliver

    def open_history(self, history: object) -> NoReturn:
        """Not yet: a router with ``history`` on Redis is refused (a later release keeps it).

        Raises:
            ConfigurationError: Always.
        """
        raise ConfigurationError(
            "history on Redis is not supported yet",
            hint="Use EventRouter(history=...) with the in-memory backend for now",
        )

    def _reopen(self) -> None:
        """Forget what a closed backend held on its event loop; the replay window is kept."""
        self._closing = False
        self._disarm_expiry()
        self._loop = None
        self._client = self._pool = None
        self._supervisor = self._session = self._publisher = None
        self._wake_writer = self._outbox_ready = None
        self._tasks.clear()
        self._subs.clear()
        self._waiters.clear()

    def watch(self, principal: Principal) -> Awaitable[None] | None:
        """Subscribe to ``principal``'s channel; the awaitable ends when Redis confirmed it.

        Returns ``None`` when the subscription is already confirmed.

        Raises:
            UnsupportedBackendError: Not running under asyncio.
            BackendUnavailableError: (when awaited) Redis did not confirm within
                ``unavailable_timeout``, or the backend closed meanwhile.
        """
        self._start(listen=True)
        watched = self._subs.watch(principal)
        if watched is Watched.CONFIRMED:
            return None
        self._wake()
        ready = self._waiters.get(principal)
        if ready is None or watched is Watched.NEW_WAIT:
            assert self._loop is not None
            ready = self._waiters[principal] = self._loop.create_future()
        return self._until_ready(ready)

    def unwatch(self, principal: Principal) -> None:
        """Unsubscribe from ``principal``'s channel (written by the listener, not awaited)."""
        if self._subs.unwatch(principal):
            self._waiters.pop(principal, None)
        self._wake()

    async def publish(self, envelope: Envelope) -> PublishResult:
        """Sign ``envelope``, have Redis accept it, then deliver it to local connections.

        The envelope joins the publish writer's queue: concurrent publishes
        share one pipeline, and this call waits only for its own reply, so
        cancelling it never cancels a write in flight (an envelope not yet
        written is withdrawn). Returns what happened on this process's
        connections; other processes count their deliveries in their own stats.

        Raises:
            EventTooLargeError: The signed envelope exceeds ``max_envelope_bytes``.
            UsageError: The payload is not JSON-serialisable.
            BackendUnavailableError: Redis did not accept it within
                ``unavailable_timeout`` (or refused it, or the backend closed).
            UnsupportedBackendError: Not running under asyncio.
        """
        loop = self._loop
        supervisor = self._supervisor
        if (
            loop is None
            # The running asyncio loop, None under trio: cheaper than asking sniffio.
            or _compat.running_loop() is not loop
            or self._closing
            or (supervisor is not None and supervisor.done())
        ):
            self._start()  # raises unless open on this loop; restarts a dead supervisor
            loop = self._loop
            assert loop is not None
        principal = trusted_principal(envelope.tenant_id, envelope.recipient)
        data = self._codec.encode(envelope, origin=self._origin, now=_clock._now())
        channel = self._names.get(principal)
        if channel is None:
            if len(self._names) >= _NAMES_CACHED:
                self._names.clear()
            name = channel_name(self._namespace, principal).encode("ascii")
            channel = self._names[principal] = name
        outgoing = _Outgoing(
            channel, data, loop.time() + self._unavailable_timeout, loop.create_future()
        )
        publisher = self._publisher
        if publisher is None or publisher.done():
            self._start_publisher(loop)
        self._outbox.append(outgoing)
        ready = self._outbox_ready
        assert ready is not None
        ready.set()
        await outgoing.future
        deliver = self._deliver
        if deliver is None or not self._subs.is_wanted(principal):
            return PublishResult(delivered=0, dropped=0)
        result = deliver.offer(envelope)
        if type(result) is PublishResult:
            return result
        return await result

    async def claim_ticket(self, token: str, *, expires_at: float) -> bool:
        """Record ``token`` as used in Redis (``SET NX`` with expiry); ``False`` if it was.

        The key is ``{namespace}:ticket:`` and the SHA-256 of the token (the
        token itself is never stored). The value is a random nonce, so a claim
        whose reply was lost and retried still recognises its own record. The
        record lives ``expires_at - now + 2 * LEEWAY + 1`` seconds (at least
        ``2 * LEEWAY``): past the last instant any process whose clock is within
        ``LEEWAY`` of this one's still accepts the ticket.

        Raises:
            TokenExpiredError: The ticket has expired at this claim's clock reading.
            BackendUnavailableError: Redis did not answer within ``unavailable_timeout``.
        """
        self._start()
        now = _clock._now()  # the one reading: the refusal and the record's lifetime agree
        check_claimable(expires_at, now)
        key = f"{self._namespace}:ticket:{hashlib.sha256(token.encode('ascii')).hexdigest()}"
        ttl_ms = record_ms(expires_at, now)
        nonce = os.urandom(16).hex().encode("ascii")

        async def claim(client: aioredis.Redis) -> bool:
            if await client.set(key, nonce, nx=True, px=ttl_ms):
                return True
            return bool(await client.get(key) == nonce)

        return await self._call("ticket claim", claim)

    async def aclose(self) -> None:
        """Stop the listener, fail pending subscriptions, close the connections. Idempotent."""
        if self._closing:
            return
        self._closing = True
        for ready in self._waiters.values():
            if not ready.done():
                ready.set_exception(
                    BackendUnavailableError("the Redis backend was closed before it subscribed")
                )
                ready.exception()  # retrieved: nobody may be waiting any more
        tasks = [
            t
            for t in (self._publisher, self._supervisor, self._session, *self._tasks)
            if t is not None
        ]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._fail_pending(_CLOSED, hint=_CLOSED_HINT)
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.disconnect(nowait=True)
        if self._client is not None:
            await self._client.aclose()
        if self._pool is not None:
            await self._pool.aclose()
        self._subs.clear()
        self._waiters.clear()
        self._deliver = None
        self._attached = False  # attach() reopens: a router starting again

    # -- starting -----------------------------------------------------------------------

    def _start(self, *, listen: bool = False) -> None:
        """Check the event loop; with ``listen``, start the supervisor (again, if it died)."""
        if current_backend() != "asyncio":
            raise UnsupportedBackendError(
                "the Redis event backend runs on asyncio only (redis-py's asyncio client)",
                hint="Run the service under asyncio, or use the in-memory router under trio",
            )
        if self._closing:
            raise BackendUnavailableError("the Redis backend is closed", hint=_CLOSED_HINT)
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            # The subscriber connection: RESP2 (pub/sub replies are plain arrays;
            # a URL may still ask for RESP3, whose pushes are read the same way).
            self._pool = aioredis.ConnectionPool.from_url(
                self._url,
                retry=Retry(NoBackoff(), 0),
                socket_connect_timeout=self._unavailable_timeout,
                socket_timeout=None,
                protocol=2,
            )
            # The command client (PUBLISH, tickets) owns its pool; the backend
            # retries lost connections itself, up to unavailable_timeout, which
            # also bounds each call. No socket_timeout (redis-py 8 defaults to
            # 5 s): with one, redis-py writes through asyncio.wait_for, which on
            # Python 3.11 can swallow a cancellation racing with the write
            # (python/cpython#86296), so a cancelled call would go on.
            self._client = aioredis.Redis.from_url(
                self._url,
                retry=Retry(NoBackoff(), 0),
                socket_connect_timeout=self._unavailable_timeout,
                socket_timeout=None,
            )
            self._wake_writer = asyncio.Event()
            self._outbox_ready = asyncio.Event()
        elif loop is not self._loop:
            raise UnsupportedBackendError(
                "this RedisBackend was started on another event loop",
                hint="Use a backend (and its router) from one event loop",
            )
        supervisor = self._supervisor
        if not listen and supervisor is None:
            return
        if supervisor is None or supervisor.done():
            if supervisor is not None:
                logger.error(
                    "the Redis backend's supervisor had stopped; restarting it",
                    extra={"event": "backend_supervisor_restarted"},
                )
            # A context of its own: the supervisor serves every principal, so it
            # must not run as (or keep alive the scope of) whoever started it.
            self._supervisor = loop.create_task(self._supervise(), context=contextvars.Context())

    async def _until_ready(self, ready: asyncio.Future[None]) -> None:
        try:
            async with asyncio.timeout(self._unavailable_timeout):
                await asyncio.shield(ready)
        except TimeoutError:
            self._counts["unavailable"] += 1
            raise BackendUnavailableError(
                f"Redis at {_describe(self._url)} did not confirm the subscription within "
                f"{self._unavailable_timeout} s",
                hint="Check that Redis is up and reachable; connect() can be retried",
            ) from None

    async def _call(self, what: str, op: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """Run ``op`` on the command client, retrying lost connections until the deadline."""
        client = self._client
        assert client is not None
        last: BaseException | None = None
        backoff = Backoff(_BACKOFF_FIRST, _BACKOFF_MAX)
        try:
            async with asyncio.timeout(self._unavailable_timeout):
                while True:
                    try:
                        return await op(client)
                    except ResponseError as exc:
                        last = exc
                        break
                    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                        last = exc
                    await asyncio.sleep(backoff.failed(_jitter()))
        except TimeoutError:
            pass
        self._counts["unavailable"] += 1
        if isinstance(last, ResponseError):
            raise BackendUnavailableError(
                f"Redis at {_describe(self._url)} refused the {what}: {str(last)[:200]}",
                hint="Check the ACL of the Redis user (see the how-to 'Scale out with Redis')",
            )
        raise BackendUnavailableError(
            f"Redis at {_describe(self._url)} did not accept the {what} within "
            f"{self._unavailable_timeout} s ({type(last).__name__ if last else 'no answer'})",
            hint="Check that Redis is up and reachable; nothing was sent",
        )

    # -- the publish writer -------------------------------------------------------------

    def _start_publisher(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the publish writer; if one died, first fail what it left pending."""
        previous = self._publisher
        if previous is not None:
            self._publisher_ended(previous)
        # A context of its own, as the supervisor's: the writer sends every
        # tenant's envelopes and must not run, or log, as the first publisher.
        fresh = contextvars.Context()
        task = loop.create_task(self._write_publishes(), context=fresh)
        task.add_done_callback(self._publisher_ended, context=fresh)
        self._publisher = task

    async def _write_publishes(self) -> None:
        """The only sender of publishes: each pipeline carries every envelope waiting.

        Publishers await only their own future, so no cancellation of theirs
        reaches a write in flight. An envelope whose deadline passes while its
        pipeline is out fails then (``BackendUnavailableError``, "sent but not
        confirmed"), without touching the pipeline, which is abandoned (its
        connection dropped) only when every envelope in it has expired. A
        pipeline whose connection failed is sent again, ahead of newer
        envelopes, after a backoff: Redis may have carried out some of it, and
        the receivers' replay window drops the second copies. After a failure
        the writer first makes sure it can connect, so an envelope counts as
        sent only once a connection to Redis was open.
        """
        loop = asyncio.get_running_loop()
        outbox = self._outbox
        ready = self._outbox_ready
        client = self._client
        assert ready is not None
        assert client is not None
        counts = self._counts
        backoff = Backoff(_BACKOFF_FIRST, _BACKOFF_MAX)
        last: BaseException | None = None
        connected = False
        while True:
            if not outbox:
                ready.clear()
                await ready.wait()
                continue
            now = loop.time()
            batch: list[_Outgoing] = []
            while outbox and len(batch) < _PUBLISH_BATCH:
                item = outbox.popleft()
                if item.future.done():
                    continue  # its publisher was cancelled: withdrawn
                if item.deadline <= now:
                    self._fail(item, self._unavailable(last, sent=item.sent))
                    continue
                batch.append(item)
            if not batch:
                continue
            self._in_flight = batch
            self._arm_expiry(loop)
            try:
                async with asyncio.timeout_at(max(item.deadline for item in batch)):
                    if not connected:
                        # Connect (and authenticate) first: what fails here was not sent.
                        get_connection: Callable[[], Awaitable[AbstractConnection]] = (
                            client.connection_pool.get_connection  # typed name: see _connect()
                        )
                        conn = await get_connection()
                        await client.connection_pool.release(conn)
                        connected = True
                    # A new pipeline each time: one whose execute() failed before
                    # it got a connection still holds its commands.
                    pipe = client.pipeline(transaction=False)
                    for item in batch:
                        pipe.publish(item.channel, item.data)
                        item.sent = True
                    execution: Awaitable[list[Any]] = pipe.execute(raise_on_error=False)
                    if self._wrap_batch is not None:
                        execution = self._wrap_batch(execution)
                    replies = await execution
            except RedisAuthenticationError as exc:  # refused, not unreachable: no retry
                self._in_flight = []
                for item in batch:
                    self._fail(item, self._refused(exc))
                continue
            except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError) as exc:
                last = exc
                connected = False
                self._in_flight = []
                live = [item for item in batch if not item.future.done()]
                outbox.extendleft(reversed(live))
                if live:  # back off, but wake for the first deadline among them
                    until = min(item.deadline for item in live) - loop.time()
                    await asyncio.sleep(max(0.0, min(until, backoff.failed(_jitter()))))
                continue
            except ResponseError as exc:  # the connection itself refused (HELLO, SELECT)
                self._in_flight = []
                for item in batch:
                    self._fail(item, self._refused(exc))
                continue
            finally:
                self._disarm_expiry()
            backoff.succeeded()
            last = None
            counts["batches"] += 1
            for item, reply in zip(batch, replies, strict=True):
                if isinstance(reply, ResponseError):
                    self._fail(item, self._refused(reply))
                    continue
                counts["published"] += 1
                if not item.future.done():
                    item.future.set_result(None)
            self._in_flight = []  # only now: should this loop fail, the rest are failed

    def _arm_expiry(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail each envelope of the pipeline out at its own deadline (a timer)."""
        live = [item.deadline for item in self._in_flight if not item.future.done()]
        self._expiry = loop.call_at(min(live), self._expire, loop) if live else None

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for item in self._in_flight:
            if item.deadline <= now:
                self._fail(item, self._unavailable(None, sent=item.sent))
        self._arm_expiry(loop)

    def _disarm_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def _refused(self, reply: RedisError) -> BackendUnavailableError:
        return BackendUnavailableError(
            f"Redis at {_describe(self._url)} refused the publish: {str(reply)[:200]}",
            hint="Check the ACL of the Redis user (see the how-to 'Scale out with Redis')",
        )

    def _unavailable(self, last: BaseException | None, *, sent: bool) -> BackendUnavailableError:
        cause = (
            "no answer" if last is None or isinstance(last, TimeoutError) else type(last).__name__
        )
        return BackendUnavailableError(
            f"Redis at {_describe(self._url)} did not accept the publish within "
            f"{self._unavailable_timeout} s ({cause})",
            hint=(
                "Check that Redis is up and reachable; the event was sent but not "
                "confirmed, so it may or may not have been delivered (at most once)"
                if sent
                else "Check that Redis is up and reachable; the event was not sent"
            ),
        )

    def _fail(self, item: _Outgoing, error: BackendUnavailableError) -> None:
        if not item.future.done():
            self._counts["unavailable"] += 1
            item.future.set_exception(error)

    def _publisher_ended(self, task: asyncio.Task[None]) -> None:
        """The publish writer ended: every publish still waiting gets an error, none hangs."""
        if task is not self._publisher:
            return  # handled already, when its successor started
        self._publisher = None
        if self._closing:
            self._fail_pending(_CLOSED, hint=_CLOSED_HINT)
            return
        self._disarm_expiry()
        reason = "it was cancelled" if task.cancelled() else repr(task.exception())[:200]
        # Cancelled with nothing held is an event loop shutting down without aclose().
        held = bool(self._in_flight or self._outbox)
        logger.log(
            logging.ERROR if held or not task.cancelled() else logging.INFO,
            "the Redis backend's publish writer ended (%s); failing the publishes it held",
            reason,
            extra={"event": "backend_publisher_lost"},
        )
        self._fail_pending(f"the Redis backend's publish writer ended ({reason})")

    def _fail_pending(self, message: str, *, hint: str = "Publish again") -> None:
        """Fail every envelope queued or in flight (the writer is gone)."""
        pending = [*self._in_flight, *self._outbox]
        self._in_flight = []
        self._outbox.clear()
        for item in pending:
            state = "sent but not confirmed" if item.sent else "not sent"
            self._fail(
                item, BackendUnavailableError(f"{message}; the event was {state}", hint=hint)
            )

    # -- the subscriber connection ------------------------------------------------------

    def _wake(self) -> None:
        """Wake the subscriber connection's writer if commands are queued."""
        if self._wake_writer is not None and self._subs.has_commands:
            self._wake_writer.set()

    def _confirmed(self, principal: Principal, *, gap: bool) -> None:
        """Redis confirmed ``principal``'s channel: wake its waiter; queue the gap owed."""
        ready = self._waiters.pop(principal, None)
        if ready is not None and not ready.done():
            ready.set_result(None)
        if gap:
            self._gap(principal, "reconnected")

    def _prune_waiters(self) -> None:
        """Drop the waiters of channels forgotten: they wait for nothing."""
        known = self._subs.knows
        for principal in [p for p in self._waiters if not known(p)]:
            del self._waiters[principal]

    async def _supervise(self) -> None:
        """Keep one listener session alive: connect, resubscribe, check liveness, back off."""
        backoff = Backoff(_BACKOFF_FIRST, _BACKOFF_MAX)
        lost = False
        while not self._closing:
            assert self._pool is not None
            make_connection: Callable[[], AbstractConnection] = self._pool.make_connection
            conn = make_connection()
            try:
                async with asyncio.timeout(self._unavailable_timeout):
                    await _connect(conn)
            except (RedisError, OSError, TimeoutError) as exc:
                await conn.disconnect(nowait=True)
                pause = backoff.failed(_jitter())
                logger.warning(
                    "cannot reach Redis at %s for the event listener (%s); retrying in %.2f s",
                    _describe(self._url),
                    type(exc).__name__,
                    pause,
                    extra={"event": "backend_connect_failed"},
                )
                await asyncio.sleep(pause)
                continue
            backoff.succeeded()
            if lost:
                self._counts["reconnects"] += 1
                logger.info(
                    "the event listener reconnected to Redis at %s; resubscribing %d channels",
                    _describe(self._url),
                    self._subs.wanted,
                    extra={"event": "backend_reconnected"},
                )
            self._conn = conn
            session: Awaitable[None] = self._listen(conn, self._subs.open())
            if self._wrap_session is not None:
                session = self._wrap_session(session)
            task = asyncio.ensure_future(session)
            self._session = task
            try:
                await self._watch_session(task)
            finally:
                if not task.done():
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                self._conn = None
                await conn.disconnect(nowait=True)
                self._subs.lost()
                self._prune_waiters()
            lost = True
            if task.cancelled():
                reason = "it was cancelled"
            elif task.exception() is not None:
                reason = f"{type(task.exception()).__name__}"
            else:
                reason = "it stopped"
            if not self._closing:
                self._counts["listener_restarts"] += 1
                logger.warning(
                    "the Redis event listener ended (%s); reconnecting, and local "
                    "connections will be sent a gap event",
                    reason,
                    extra={"event": "backend_listener_lost"},
                )

    async def _watch_session(self, task: asyncio.Future[None]) -> None:
        """Wait for the session to end; end it if a liveness ``PING`` goes unanswered."""
        subs = self._subs
        while not task.done():
            done, _ = await asyncio.wait({task}, timeout=self._health_interval)
            if done:
                return
            if subs.unanswered:
                logger.warning(
                    "the Redis event listener did not answer a liveness check within %.1f s",
                    self._health_interval,
                    extra={"event": "backend_listener_unresponsive"},
                )
                return
            subs.ping()
            self._wake()

    async def _listen(self, conn: AbstractConnection, resubscribe: list[list[bytes]]) -> None:
        """One session: resubscribe what is wanted, then read until the connection fails."""
        for names in resubscribe:
            await conn.send_command(b"SUBSCRIBE", *names, check_health=False)
        writer = asyncio.ensure_future(self._write(conn))
        try:
            while True:
                response = await conn.read_response(timeout=math.inf, push_request=True)
                if writer.done():
                    writer.result()  # a failed write ends the session
                self._handle(response)
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    async def _write(self, conn: AbstractConnection) -> None:
        """The only writer of the subscriber connection: batches queued (UN)SUBSCRIBEs and PINGs."""
        wake = self._wake_writer
        assert wake is not None
        subs = self._subs
        while True:
            await wake.wait()
            wake.clear()
            batch = subs.take_commands()
            if batch:
                if not conn.is_connected:
                    raise RedisConnectionError("the subscriber connection is closed")
                await conn.send_packed_command(conn.pack_commands(batch), check_health=False)

    def _handle(self, response: Any) -> None:
        """One reply or message read from the subscriber connection."""
        if not isinstance(response, list) or not response:
            if response == b"PONG":  # outside subscribed mode
                self._subs.pong()
            return
        kind = response[0]
        if kind == _MESSAGE and len(response) == 3:
            self._message(response[1], response[2])
        elif kind == _SUBSCRIBE:
            confirmed = self._subs.subscribed(response[1])
            if confirmed is not None:
                self._confirmed(confirmed.principal, gap=confirmed.gap)
        elif kind == _UNSUBSCRIBE:
            forgotten = self._subs.unsubscribed(response[1]) if len(response) > 1 else None
            if forgotten is not None:
                self._waiters.pop(forgotten, None)
        elif kind == _PONG:
            self._subs.pong()

    def _message(self, channel: bytes, data: Any) -> None:
        principal = self._subs.recipient(channel)
        if principal is None:
            self._drop(Drop.UNKNOWN_CHANNEL, channel)
            return
        if not isinstance(data, bytes):  # pragma: no cover - RESP2 messages are bytes
            self._drop(Drop.MALFORMED, channel)
            return
        now = _clock._now()
        decoded = self._codec.decode(data, principal=principal, now=now)
        if isinstance(decoded, Drop):
            self._drop(decoded, channel)
            return
        envelope, expires_at, origin = decoded
        if origin == self._origin:
            return  # published here, and delivered locally by publish()
        self._counts["received"] += 1
        if not self._replays.first_time(envelope.id, expires_at=expires_at, now=now):
            self._drop(Drop.REPLAYED, channel)
            return
        deliver = self._deliver
        if deliver is None:  # pragma: no cover - closing
            return
        self._counts["delivered"] += 1
        result = deliver.offer(envelope)
        if type(result) is not PublishResult:
            # A full BLOCK connection: wait for room in a task of its own, so the
            # listener never stalls; past the router's publish_timeout the event
            # is dropped there and a gap queued.
            task = asyncio.ensure_future(self._wait_for_room(result, principal))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _wait_for_room(self, waiting: Awaitable[PublishResult], principal: Principal) -> None:
        try:
            await waiting
        except QueueFullError as exc:
            self._counts["drop:overflow"] += 1
            self._gap(principal, "overflow", exc.connections)

    def _gap(
        self, principal: Principal, reason: str, connections: Sequence[Any] | None = None
    ) -> None:
        deliver = self._deliver
        if deliver is not None:
            self._counts["gaps"] += deliver.gap(principal, reason=reason, connections=connections)

    def _drop(self, reason: Drop, channel: bytes) -> None:
        self._counts[f"drop:{reason.value}"] += 1
        now = _clock._now()
        if now - self._last_log.get(reason.value, -math.inf) >= _LOG_EVERY:
            self._last_log[reason.value] = now
            logger.warning(
                "dropped a message on channel %s: %s (payload not logged; further drops of "
                "this reason within %.0f s are counted, not logged)",
                channel.decode("ascii", "replace")[:100],
                reason.value,
                _LOG_EVERY,
                extra={"event": "envelope_dropped", "reason": reason.value},
            )


def _jitter() -> float:
    """The random share of a backoff delay to pause (spreads reconnecting processes)."""
    return random.uniform(0.5, 1.0)  # noqa: S311


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConfigurationError(f"{name} must be finite seconds > 0, got {value!r}")
    return float(value)


RedisBackend.__module__ = "isolation.events.backends.redis"


async def _connect(conn: AbstractConnection) -> None:
    """Connect through a typed name.

    redis-py annotates some of its asyncio methods only in newer releases, so a
    direct call needs a ``type: ignore`` that mypy then calls unused there; a
    typed name checks the same on every version the extra allows.
    """
    connect: Callable[[], Awaitable[None]] = conn.connect
    await connect()
