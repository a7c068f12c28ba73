"""``EventRouter``: user-bound connections, bounded queues, verified delivery, tickets.

The router keeps one routing entry per principal with a live connection: a
tuple of its connections, replaced (never edited in place) when one opens or
closes. ``publish`` fans an event out to the tuple of its recipient; each
connection applies the overflow policy (:mod:`isolation.events._queue`) and,
when its consumer takes the event, the last-step check
(:mod:`isolation.events._routing`). So a wrong routing entry can waste an
event, never deliver it to another principal: the refusal is logged and counted.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import json
import logging
import math
import weakref
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Final, final, overload

import anyio
import attrs

from isolation import _clock, tokens
from isolation._counters import EVENT_ROUTERS, register_gauge, track, tracked
from isolation._errors import (
    ConfigurationError,
    ConnectionClosedError,
    ConnectionLimitError,
    ContextExpiredError,
    ContextSwitchError,
    EventTooLargeError,
    MalformedTokenError,
    NoContextError,
    QueueFullError,
    TokenExpiredError,
    TokenPurposeError,
    TokenReplayedError,
    UsageError,
)
from isolation._redact import redact_principal
from isolation.context._model import (
    UNSET,
    Principal,
    Unset,
    UserContext,
    deprecated,
    principal_of,
)
from isolation.context._principal import trusted_principal
from isolation.context._scope import Scope, current_context_or_none, current_scope
from isolation.events._connection import Connection, Putter, _Blocked
from isolation.events._history import (
    RESUME_ATTRIBUTE,
    History,
    ResumePoint,
    resume_from_attribute,
    resume_to_attribute,
)
from isolation.events._model import (
    GAP,
    MESSAGE,
    CloseReason,
    ConnectionState,
    Envelope,
    Overflow,
    Packed,
    PrincipalStats,
    PublishResult,
    RouterStats,
    event_id,
    next_event_number,
)
from isolation.events._snapshot import freeze, thaw
from isolation.events._wake import current_backend, for_backend
from isolation.events.backends import EventBackend
from isolation.events.backends._history import HistoryStore, Replay
from isolation.events.backends._memory import MemoryBackend

__all__ = [
    "Authenticate",
    "DEFAULT_MAX_CONNECTIONS_PER_USER",
    "DEFAULT_PUBLISH_TIMEOUT",
    "DEFAULT_QUEUE_SIZE",
    "DEFAULT_TICKET_TTL",
    "EventRouter",
    "TICKET_PURPOSE",
]

logger = logging.getLogger("isolation.events")

# Every live router is tracked (weakly) (isolation._counters.track): the "connections" gauge of
# --isolation-strict sums them, and isolation.telemetry's callbacks read their stats.
register_gauge("connections", lambda: sum(len(router._live) for router in tracked(EVENT_ROUTERS)))

DEFAULT_QUEUE_SIZE: Final = 100
"""Events each connection queues before its overflow policy applies."""
DEFAULT_PUBLISH_TIMEOUT: Final = 5.0
"""Seconds a ``BLOCK`` publish waits for room, shared by all the recipient's connections."""
DEFAULT_MAX_CONNECTIONS_PER_USER: Final = 16
"""Live connections one principal may hold (tabs and devices)."""
DEFAULT_TICKET_TTL: Final = 30.0
"""Seconds a ticket from :meth:`EventRouter.issue_ticket` may wait to be redeemed."""
TICKET_PURPOSE: Final = "isolation.ws-ticket"
"""The token purpose of tickets: a ticket is refused anywhere else, and any other token here."""

Authenticate = Callable[[str | bytes], UserContext | Awaitable[UserContext]]
"""``authenticate(token)`` returns the token's context, or raises to refuse it."""

_CACHED: Final = 65
_CACHED_RESULTS: Final = tuple(PublishResult(delivered=n, dropped=0) for n in range(_CACHED))
_NOTHING: Final = _CACHED_RESULTS[0]
_OPEN: Final = ConnectionState.OPEN
_TOTALS = 3  # delivered, dropped, refused


def _positive_int(name: str, value: object) -> int:
    if type(value) is not int or value < 1:
        raise ConfigurationError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _positive_seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConfigurationError(f"{name} must be finite seconds > 0, got {value!r}")
    return float(value)


def _ticket_expiry(token: str) -> float:
    """The ``exp`` of a token that :func:`isolation.tokens.loads` has just verified."""
    try:
        body = token.split(".")[2]
        payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        expires = payload["exp"]
    except (IndexError, KeyError, TypeError, ValueError, binascii.Error):  # pragma: no cover
        raise MalformedTokenError("the ticket has no readable expiry") from None
    if isinstance(expires, bool) or not isinstance(expires, int | float):  # pragma: no cover
        raise MalformedTokenError("the ticket has no readable expiry")
    return float(expires)


@final
class EventRouter:
    """Routes events to the live connections of their recipient, and only there.

    In-memory by default (one process); ``await router.aclose()`` ends it and
    every connection, and ``async with EventRouter() as router:`` does that at
    exit. Runs on asyncio and trio. **Use a router from one event loop** (one
    thread): it is not thread-safe.

    Args:
        backend: Where tickets are recorded and events travel; a
            :class:`~isolation.events.backends.MemoryBackend` when ``None``.
        queue_size: Events each connection queues (default 100).
        overflow: What a full connection does (default ``Overflow.BLOCK``).
        publish_timeout: Seconds a ``BLOCK`` publish waits for room, one
            deadline shared by all the recipient's connections (default 5).
        max_connections_per_user: Live connections per principal (default 16).
        max_event_bytes: If set, the largest payload accepted, as compact
            UTF-8 JSON; larger ones raise ``EventTooLargeError`` and nothing is
            queued. ``None`` (default): the in-memory router does not serialise
            payloads at all (a backend that does enforces its own limit).
        authenticate: ``authenticate(token)`` (sync or async) returns the
            :class:`~isolation.UserContext` of a token that is not a ticket.
        keys: Signing keys for tickets (:meth:`issue_ticket`); the first signs.
        history: If set, a :class:`~isolation.events.History`: every event gets
            an ``offset`` in its principal's stream and the stream's ``epoch``,
            the recent events are kept (also for principals with no live
            connection), and ``connect(..., resume=...)`` replays what a client
            missed. The backend provides the storage (``open_history``).

    Raises:
        ConfigurationError: A setting is out of range.
    """

    def __init__(
        self,
        *,
        backend: EventBackend | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        overflow: Overflow = Overflow.BLOCK,
        publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT,
        max_connections_per_user: int = DEFAULT_MAX_CONNECTIONS_PER_USER,
        max_event_bytes: int | None = None,
        authenticate: Authenticate | None = None,
        keys: Sequence[bytes] | None = None,
        history: History | None = None,
    ) -> None:
        self._queue_size = _positive_int("queue_size", queue_size)
        try:
            self._overflow = Overflow(overflow)
        except ValueError:
            raise ConfigurationError(
                f"overflow must be an isolation.events.Overflow, got {overflow!r}"
            ) from None
        self._publish_timeout = _positive_seconds("publish_timeout", publish_timeout)
        self._max_connections = _positive_int("max_connections_per_user", max_connections_per_user)
        self._max_event_bytes = (
            None if max_event_bytes is None else _positive_int("max_event_bytes", max_event_bytes)
        )
        if authenticate is not None and not callable(authenticate):
            raise ConfigurationError("authenticate must be a callable or None")
        self._authenticate = authenticate
        self._keys = None if keys is None else tokens._check_keys(keys)
        if backend is None:
            backend = MemoryBackend()
        elif not isinstance(backend, EventBackend):
            raise ConfigurationError(
                f"backend must implement isolation.events.backends.EventBackend, got {type(backend).__name__}"
            )
        self._backend = backend
        self._shared = bool(backend.shared)
        self._history_setting = history
        self._history: HistoryStore | None = None
        if history is not None:
            self._history = _open_history(backend, history)
        backend.attach(_Inbox(self))

        # principal -> its live connections; replaced whole, never edited in place.
        self._routes: dict[Principal, tuple[Connection, ...]] = {}
        # principal -> [delivered, dropped, refused] of its closed connections,
        # kept only while the principal has live ones.
        self._totals: dict[Principal, list[int]] = {}
        self._live: set[Connection] = set()
        self._expiring: set[Connection] = set()
        self._scoped: weakref.WeakKeyDictionary[Scope, set[Connection]] = (
            weakref.WeakKeyDictionary()
        )
        self._closed = False
        self._opened = 0
        self._closed_count = 0
        self._published = 0
        self._undeliverable = 0
        self._closed_delivered = 0
        self._closed_dropped = 0
        self._refused_now = 0
        self._expired = 0
        self._overflow_disconnects = 0
        track(EVENT_ROUTERS, self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<isolation.events.EventRouter {state} connections={len(self._live)} "
            f"overflow={self._overflow.value} queue_size={self._queue_size}>"
        )

    # -- settings ---------------------------------------------------------------

    @property
    def queue_size(self) -> int:
        """Events each connection queues before the overflow policy applies."""
        return self._queue_size

    @property
    def overflow(self) -> Overflow:
        """The overflow policy of every connection."""
        return self._overflow

    @property
    def publish_timeout(self) -> float:
        """Seconds a ``BLOCK`` publish waits for room."""
        return self._publish_timeout

    @property
    def max_connections_per_user(self) -> int:
        """Live connections one principal may hold."""
        return self._max_connections

    @property
    def max_event_bytes(self) -> int | None:
        """The largest payload accepted, as compact UTF-8 JSON, or ``None``."""
        return self._max_event_bytes

    @property
    def history(self) -> History | None:
        """The history setting, or ``None`` (events carry no offset then)."""
        return self._history_setting

    @property
    def backend(self) -> EventBackend:
        """The backend."""
        return self._backend

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    # -- connecting ---------------------------------------------------------------

    async def connect(
        self,
        ctx: UserContext | None = None,
        *,
        token: str | bytes | None = None,
        resume: ResumePoint | None = None,
    ) -> Connection:
        """Open a connection bound to one principal for life.

        Exactly one source of identity: ``ctx``; or ``token`` (a ticket from
        :meth:`issue_ticket`, tried first when the router has ``keys``,
        otherwise a token for ``authenticate``); or, with neither, the current
        scope's context, in which case the connection closes when that scope
        ends. A connection opened with ``ctx`` or ``token`` lives until it is
        closed, expires, is closed by a policy, or the router closes. It
        expires (``CloseReason.EXPIRED``) with its credential: the context's
        ``expires_at`` and, when opened from a ticket, the ticket's expiry,
        whichever is first, unless :meth:`Connection.reauthenticate` extends it.

        ``resume`` (a router with ``history`` only), or the resume point a
        ticket carries: the connection first receives, in offset order and
        once, every event of **its own** principal's stream after
        ``resume.offset`` that the history still holds, then live events, with
        no gap or duplicate between the two. If ``resume.epoch`` is not the
        stream's current epoch it gets one ``"gap"`` event instead, with
        ``payload["reason"] == "history_lost"``; if the history no longer
        holds the event after ``resume.offset``, one with ``"too_old"``. A
        gap's payload also has ``"epoch"`` and ``"offset"``: the point to
        resume from once the client has reloaded its state.

        Raises:
            UsageError: Both ``ctx`` and ``token`` were given; ``resume`` is
                not a ``ResumePoint``, is given with a ticket that carries one,
                or is beyond the end of the stream under its current epoch.
            NoContextError: Neither was given and no scope is bound.
            ContextSwitchError: ``ctx`` or the token is for another principal
                than the bound scope's.
            ContextExpiredError: The context has already expired.
            ConnectionLimitError: The principal has ``max_connections_per_user`` connections.
            TokenError: The token was refused (``TokenReplayedError`` for a
                ticket used before, ``TokenPurposeError``, ``TokenExpiredError``, ...).
            ConfigurationError: A token was given to a router with neither
                ``keys`` nor ``authenticate``.
            ConnectionClosedError: The router is closed (reason ``ROUTER_CLOSED``).
        """
        self._check_open()
        bound = current_context_or_none()
        scope: Scope | None = None
        ticket_expiry: float | None = None
        if ctx is not None and token is not None:
            raise UsageError(
                "connect() takes a context or a token, not both",
                hint="Pass exactly one source of identity",
            )
        if resume is not None:
            self._check_resume(resume)
        if token is not None:
            ctx, ticket_expiry, signed = await self._resolve_token(token)
            if signed is not None:
                if resume is not None:
                    raise UsageError(
                        "the ticket carries a resume point; connect() was given another",
                        hint="Sign the resume point into the ticket, or pass it, not both",
                    )
                self._check_resume(signed)
                resume = signed
        elif ctx is not None:
            if type(ctx) is not UserContext:
                raise UsageError(
                    f"connect() takes an isolation.UserContext, got {type(ctx).__name__}"
                )
        else:
            if bound is None:
                raise NoContextError(
                    "connect() was given no context or token, and no scope is bound"
                )
            ctx = bound
            scope = current_scope()
        principal = ctx.principal
        if bound is not None and bound.principal != principal:
            raise ContextSwitchError(
                f"cannot connect as {redact_principal(principal)} inside the scope of "
                f"{redact_principal(bound.principal)}",
                entered=principal,
                bound=bound.principal,
            )
        expires_at = scope.deadline if scope is not None else _until(ctx, ticket_expiry)
        if expires_at is not None and _clock._now() >= expires_at:
            _check_ticket_live(ticket_expiry, expires_at)
            raise ContextExpiredError(
                f"the context of {redact_principal(principal)} has expired; it cannot connect"
            )
        self._check_limit(principal)
        if ticket_expiry is not None:
            await self._claim(token, ticket_expiry)  # type: ignore[arg-type]
            self._check_open()
            self._check_limit(principal)
        park, wake = for_backend(current_backend())
        conn = Connection._create(
            self,
            ctx,
            expires_at=expires_at,
            capacity=self._queue_size,
            policy=self._overflow,
            park=park,
            wake=wake,
        )
        if resume is not None:
            conn._hold()
        self._register(conn, principal)
        if self._shared:
            # A shared backend confirms the subscription before connect() returns
            # (see EventBackend.watch); on failure or cancellation the connection closes.
            try:
                pending = self._backend.watch(principal)
                if pending is not None:
                    await pending
            except BaseException:
                conn._close(CloseReason.CLOSED)
                raise
        if resume is not None:
            try:
                await self._resume(conn, principal, resume)
            except BaseException:
                conn._close(CloseReason.CLOSED)
                raise
        if scope is not None:
            self._bind_to_scope(conn, scope)
        return conn

    def _check_resume(self, resume: object) -> None:
        if type(resume) is not ResumePoint:
            raise UsageError(
                f"resume must be an isolation.events.ResumePoint, got {type(resume).__name__}"
            )
        if self._history is None:
            raise ConfigurationError(
                "a resume point was given to a router without history",
                hint="Make the router with history=isolation.events.History(size=..., ttl=...)",
            )

    async def _resume(self, conn: Connection, principal: Principal, resume: ResumePoint) -> None:
        """Replay the bound principal's stream after ``resume`` into ``conn``, then go live.

        The connection already receives live events (held aside) when the
        history is read, so nothing published meanwhile is missed; what the
        read returned is dropped from the held events by offset.
        """
        assert self._history is not None
        # Always the connection's own principal: nothing in ``resume`` names a stream.
        replay = await self._history.read(principal, resume.offset)
        if conn._state is not _OPEN:
            raise conn._closed_error()
        if resume.epoch != replay.epoch:
            first = [self._resume_gap(principal, "history_lost", replay)]
        elif resume.offset > replay.last:
            logger.warning(
                "resume point refused for %s: offset %d is beyond the stream's end %d",
                redact_principal(principal),
                resume.offset,
                replay.last,
                extra={"event": "resume_refused", "connection_id": conn._id},
            )
            raise UsageError(
                f"the resume offset {resume.offset} is beyond the end of the stream "
                f"({replay.last}) under its current epoch",
                hint="Resume from the epoch and offset of the last event received",
            )
        elif resume.offset < replay.first - 1:
            first = [self._resume_gap(principal, "too_old", replay)]
        else:
            first = [item for item in replay.events if item[0][5] > resume.offset]
        conn._resumed(first, replay.epoch, replay.last)

    def _resume_gap(self, principal: Principal, reason: str, replay: Replay) -> tuple[Packed, Any]:
        tenant_id, user_id = principal
        packed: Packed = (
            next_event_number(),
            user_id,
            tenant_id,
            GAP,
            _clock._now(),
            None,
            replay.epoch,
        )
        return packed, freeze({"reason": reason, "epoch": replay.epoch, "offset": replay.last})

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionClosedError(
                "the event router is closed", reason=CloseReason.ROUTER_CLOSED
            )

    def _check_limit(self, principal: Principal) -> None:
        conns = self._routes.get(principal, ())
        if len(conns) >= self._max_connections:
            raise ConnectionLimitError(
                f"{redact_principal(principal)} already has {len(conns)} open connections, "
                f"the limit is {self._max_connections}",
                limit=self._max_connections,
            )

    def _register(self, conn: Connection, principal: Principal) -> None:
        conns = self._routes.get(principal)
        if conns is None:
            self._routes[principal] = (conn,)
            self._totals[principal] = [0] * _TOTALS
        else:
            self._routes[principal] = (*conns, conn)
        conn._opened()
        self._live.add(conn)
        self._opened += 1
        if conn._expires_at is not None:
            self._expiring.add(conn)
            self._watch_clock()

    def _bind_to_scope(self, conn: Connection, scope: Scope) -> None:
        group = self._scoped.get(scope)
        if group is None:
            group = set()
            self._scoped[scope] = group
            scope.on_close(_closer(group))
        group.add(conn)
        conn._group = group

    def _detach(self, conn: Connection, reason: CloseReason) -> None:
        """Called by a connection as it closes: forget it everywhere, keep its counters."""
        principal = conn._principal
        conns = self._routes.get(principal)
        if conns is not None:
            remaining = tuple(c for c in conns if c is not conn)
            if len(remaining) != len(conns):
                if remaining:
                    self._routes[principal] = remaining
                    totals = self._totals.get(principal)
                    if totals is not None:
                        totals[0] += conn._delivered
                        totals[1] += conn._dropped
                        totals[2] += conn._refused
                else:
                    del self._routes[principal]
                    self._totals.pop(principal, None)
                    if self._shared:
                        self._backend.unwatch(principal)
        self._live.discard(conn)
        self._expiring.discard(conn)
        self._closed_count += 1
        self._closed_delivered += conn._delivered
        self._closed_dropped += conn._dropped
        if reason is CloseReason.EXPIRED:
            self._expired += 1
        elif reason is CloseReason.OVERFLOW:
            self._overflow_disconnects += 1

    def _set_expiry(self, conn: Connection, expires_at: float | None) -> None:
        conn._expires_at = expires_at
        conn._alive_until = math.inf if expires_at is None else expires_at
        if expires_at is None:
            self._expiring.discard(conn)
            return
        self._expiring.add(conn)
        self._watch_clock()

    def _watch_clock(self) -> None:
        """Have the clock call :meth:`_clock_moved` when it moves (a FakeClock does)."""
        _clock.get_clock().watch(self._clock_moved)

    def _clock_moved(self) -> None:
        """Called by a clock that moved: close the connections whose context expired."""
        self._sweep_expired()

    def _sweep_expired(self) -> None:
        if not self._expiring:
            return
        now = _clock._now()
        for conn in [
            c for c in self._expiring if c._expires_at is not None and now >= c._expires_at
        ]:
            conn._close(CloseReason.EXPIRED)

    # -- tickets and tokens -----------------------------------------------------------

    def issue_ticket(
        self,
        ctx: UserContext | None = None,
        *,
        ttl: float = DEFAULT_TICKET_TTL,
        resume: ResumePoint | None = None,
    ) -> str:
        """Return a single-use ticket that opens one connection for ``ctx``.

        A ticket is a signed token of purpose :data:`TICKET_PURPOSE` carrying
        the context (the current scope's when ``ctx`` is ``None``), valid for
        ``ttl`` seconds or until the context expires, whichever is first.
        Hand it to the client (for example in the WebSocket URL) and redeem it
        with ``connect(token=ticket)``: the first redemption consumes it.

        ``resume`` (a router with ``history``) is signed into the ticket: the
        connection it opens resumes from it, as with ``connect(ctx,
        resume=...)``, always on the ticket's own principal's stream.

        Raises:
            ConfigurationError: The router has no ``keys``, or a bad ``ttl``;
                ``resume`` on a router without history.
            UsageError: ``resume`` is not a ``ResumePoint``.
            NoContextError: ``ctx`` is ``None`` and no scope is bound.
            ContextExpiredError: The context has expired.
        """
        if self._keys is None:
            raise ConfigurationError(
                "issue_ticket() needs a router made with keys=[...]",
                hint="Make the router with keys=[key], a key of 32+ bytes from your secret store",
            )
        if ctx is None:
            ctx = current_context_or_none()
            if ctx is None:
                raise NoContextError("issue_ticket() was given no context and no scope is bound")
        elif type(ctx) is not UserContext:
            raise UsageError(
                f"issue_ticket() takes an isolation.UserContext, got {type(ctx).__name__}"
            )
        # Only this method writes the resume attribute: one the context carries is dropped.
        attributes = dict(ctx.attributes)
        attributes.pop(RESUME_ATTRIBUTE, None)
        if resume is not None:
            self._check_resume(resume)
            attributes[RESUME_ATTRIBUTE] = resume_to_attribute(resume)
        # A copy has a fresh random request id, which the token carries: no two
        # tickets are the same string, even for one context at one instant.
        return tokens.dumps(
            attrs.evolve(ctx, attributes=attributes),
            key=self._keys[0],
            purpose=TICKET_PURPOSE,
            ttl=_positive_seconds("ttl", ttl),
        )

    async def _resolve_token(
        self, token: str | bytes
    ) -> tuple[UserContext, float | None, ResumePoint | None]:
        """Return the token's context, for a ticket its expiry (not yet claimed) and
        the resume point it carries (removed from the context)."""
        if self._keys is not None:
            try:
                ctx = tokens.loads(token, keys=self._keys, purpose=TICKET_PURPOSE)
            except (TokenPurposeError, MalformedTokenError):
                if self._authenticate is None:
                    raise
            else:
                text = token.decode("ascii") if isinstance(token, bytes) else token
                expiry = _ticket_expiry(text)
                signed = ctx.attributes.get(RESUME_ATTRIBUTE)
                if signed is None:
                    return ctx, expiry, None
                attributes = dict(ctx.attributes)
                del attributes[RESUME_ATTRIBUTE]
                point = resume_from_attribute(signed)
                return attrs.evolve(ctx, attributes=attributes), expiry, point
        if self._authenticate is None:
            raise ConfigurationError(
                "a token was given, but the router has neither keys (tickets) nor authenticate",
                hint="Make the router with keys=[...] or authenticate=...",
            )
        result = self._authenticate(token)
        if inspect.isawaitable(result):
            result = await result
        if type(result) is not UserContext:
            raise UsageError(
                f"authenticate() must return an isolation.UserContext or raise, "
                f"got {type(result).__name__}"
            )
        return result, None, None

    async def _claim(self, token: str | bytes, expires_at: float) -> None:
        text = token.decode("ascii") if isinstance(token, bytes) else token
        if not await self._backend.claim_ticket(text, expires_at=expires_at):
            raise TokenReplayedError(
                "the ticket was redeemed before; a ticket opens one connection",
                hint="Issue a new ticket for each connection",
            )

    async def _context_from_token(
        self, token: str | bytes, *, principal: Principal
    ) -> tuple[UserContext, float | None]:
        """Resolve ``token`` for re-authentication: same principal, live, ticket claimed.

        Returns the context and when the connection it re-authenticates expires.
        """
        # A resume point in a re-authenticating ticket is ignored: nothing is replayed here.
        ctx, ticket_expiry, _ = await self._resolve_token(token)
        if ctx.principal != principal:
            raise ContextSwitchError(
                f"a token of {redact_principal(ctx.principal)} cannot re-authenticate a "
                f"connection of {redact_principal(principal)}",
                entered=ctx.principal,
                bound=principal,
            )
        expires_at = _until(ctx, ticket_expiry)
        if expires_at is not None and _clock._now() >= expires_at:
            _check_ticket_live(ticket_expiry, expires_at)
            raise ContextExpiredError(f"the context of {redact_principal(principal)} has expired")
        if ticket_expiry is not None:
            await self._claim(token, ticket_expiry)
        return ctx, expires_at

    # -- publishing --------------------------------------------------------------------

    @overload
    async def publish(
        self, to: Principal | UserContext, payload: Any, /, *, kind: str = MESSAGE
    ) -> PublishResult: ...

    @overload
    @deprecated("pass isolation.Principal(tenant_id, user_id) or ctx.principal")
    async def publish(
        self, to: str, payload: Any, /, *, tenant_id: str | None, kind: str = MESSAGE
    ) -> PublishResult: ...

    async def publish(
        self,
        to: Principal | UserContext | str,
        payload: Any,
        /,
        *,
        kind: str = MESSAGE,
        tenant_id: str | Unset | None = UNSET,
    ) -> PublishResult:
        """Deliver ``payload`` to every live connection of principal ``to``, and no other.

        ``to`` is an :class:`~isolation.Principal` (``Principal(tenant_id,
        user_id)``) or a :class:`~isolation.UserContext` (its principal). A
        user id ``str`` alone is refused: the tenant is never assumed.
        ``publish(user_id, payload, tenant_id=...)`` (``tenant_id`` given
        explicitly, ``None`` included) still works for one release, with a
        ``DeprecationWarning``.

        Each connection gets its own :class:`Event` (same ``id``, its own
        ``seq``) and applies the overflow policy. The payload is snapshotted
        here, before ``publish`` returns or waits: each recipient gets its own
        copy of it as it was at this call, in its JSON form (as through Redis),
        so mutating ``payload`` afterwards, or one recipient's copy, changes
        nothing any recipient gets. A principal with no live
        connection gets nothing: ``publish`` returns ``delivered == 0`` and
        the router counts it as ``undeliverable``. Returns without a
        checkpoint unless a ``BLOCK`` connection is full.

        Raises:
            QueueFullError: ``BLOCK``, and some connections had no room within
                ``publish_timeout``; it carries the partial result.
            EventTooLargeError: ``max_event_bytes`` is set and the payload is larger.
            UsageError: ``to`` is not a ``Principal`` or ``UserContext`` (a user
                id without ``tenant_id=``, a plain tuple); ``kind`` is ``"gap"``
                (reserved) or not a string; or JSON cannot carry the payload
                (the types the Redis backend refuses).
            InvalidContextError: (deprecated form) an id no context can have
                (not NFC, a control, bidi or zero-width character): never
                folded into another's.
            ConnectionClosedError: The router is closed.
        """
        # A Principal or a context's ids passed the checks when it was made.
        if type(to) is Principal and tenant_id is UNSET:
            principal = to
        elif type(to) is UserContext and tenant_id is UNSET:
            principal = to.principal
        else:
            principal = principal_of(to, tenant_id, "publish")
        if kind != MESSAGE:
            _check_kind(kind)
        if self._max_event_bytes is not None:
            self._check_size(payload)
        # The snapshot, taken before anything else can run: what every recipient
        # gets, whatever the publisher does with ``payload`` afterwards.
        of = type(payload)
        # Immutable: its own snapshot (freeze's cases, inlined with literal INT_MIN/INT_MAX).
        if of is str or (of is int and -0x8000000000000000 < payload < 0x8000000000000000):
            snapshot = payload
        else:
            snapshot = freeze(payload)
        if self._history is not None and not self._shared:
            return await self._publish_recorded(principal, kind, snapshot)
        if self._shared:
            self._check_open()
            envelope = Envelope(
                id=event_id(next_event_number()),
                recipient=principal[1],
                tenant_id=principal[0],
                kind=kind,
                created_at=_clock._now(),
                # A private copy: the backend may deliver it locally after awaiting.
                payload=thaw(snapshot),
            )
            return await self._backend.publish(envelope)
        conns = self._routes.get(principal)
        if conns is None:
            self._check_open()
            self._undeliverable += 1
            return _NOTHING
        self._published += 1
        result = self._fanout(
            conns, (next_event_number(), principal[1], principal[0], kind, _clock._now()), snapshot
        )
        if type(result) is PublishResult:
            return result
        return await self._wait_for_room(result)

    async def _publish_recorded(
        self, principal: Principal, kind: str, snapshot: Any
    ) -> PublishResult:
        """Publish with history: record the event (its offset) first, then fan it out."""
        self._check_open()
        assert self._history is not None
        packed = self._history.append(
            principal,
            (next_event_number(), principal[1], principal[0], kind, _clock._now()),
            snapshot,
        )
        conns = self._routes.get(principal)
        if conns is None:
            self._undeliverable += 1
            return _NOTHING
        self._published += 1
        result = self._fanout(conns, packed, snapshot)
        if type(result) is PublishResult:
            return result
        return await self._wait_for_room(result)

    async def _deliver(self, envelope: Envelope) -> PublishResult:
        """Fan an envelope from the backend out to this router's connections."""
        result = self._offer(envelope)
        if type(result) is PublishResult:
            return result
        return await result

    def _offer(self, envelope: Envelope) -> PublishResult | Awaitable[PublishResult]:
        """Fan an envelope out without waiting: the result, or the wait for room (``BLOCK``)."""
        conns = self._routes.get(trusted_principal(envelope.tenant_id, envelope.recipient))
        if conns is None:
            self._undeliverable += 1
            return _NOTHING
        self._published += 1
        packed: Packed = (
            (
                envelope.id,
                envelope.recipient,
                envelope.tenant_id,
                envelope.kind,
                envelope.created_at,
            )
            if envelope.offset is None
            else (
                envelope.id,
                envelope.recipient,
                envelope.tenant_id,
                envelope.kind,
                envelope.created_at,
                envelope.offset,
                envelope.epoch,
            )
        )
        result = self._fanout(conns, packed, freeze(envelope.payload))
        if type(result) is PublishResult:
            return result
        return self._wait_for_room(result)

    def _queue_gap(
        self, principal: Principal, reason: str, connections: Sequence[Any] | None = None
    ) -> int:
        """Queue a ``"gap"`` event on the principal's live connections (or on ``connections``)."""
        conns = self._routes.get(principal, ())
        if connections is not None:
            wanted = {id(c) for c in connections}
            conns = tuple(c for c in conns if id(c) in wanted)
        if not conns:
            return 0
        tenant_id, user_id = principal
        packed: Packed = (next_event_number(), user_id, tenant_id, GAP, _clock._now())
        payload = freeze({"reason": reason})
        return sum(1 for conn in conns if conn._push_gap(packed, payload))

    def _fanout(
        self, conns: tuple[Connection, ...], packed: Packed, payload: Any
    ) -> PublishResult | _Waiting:
        """Offer one event to each connection; return the result, or what still waits for room.

        ``payload`` is a snapshot (:func:`~isolation.events._snapshot.freeze`):
        each connection thaws its own copy when its consumer takes the event.
        """
        now = packed[4]
        delivered = dropped = 0
        waits: list[tuple[Connection, Putter]] | None = None
        blocked: _Blocked | None = None
        for conn in conns:
            queue = conn._queue
            # The hot path: open, live, room and nobody waiting (``_room`` is 0
            # unless the connection is open with no blocked publisher), which is
            # the ACCEPT rule of _queue.decide(), inlined.
            if len(queue) < conn._room and now < conn._alive_until:
                seq = conn._seq + 1
                conn._seq = seq
                queue.append(packed)
                conn._payloads.append(payload)
                conn._seqs.append(seq)
                delivered += 1
                waiter = conn._waiter
                if waiter is not None:
                    conn._waiter = None
                    conn._wake(waiter)
                continue
            if conn._state is not _OPEN:  # a stale entry (see unsafe_corrupt_routing)
                continue
            if now >= conn._alive_until:
                conn._close(CloseReason.EXPIRED)
                continue
            if conn._holding is not None:  # resuming: kept aside while the history is read
                conn._held(packed, payload)
                delivered += 1
                continue
            seq = conn._seq + 1
            conn._seq = seq
            if blocked is None and conn._policy is Overflow.BLOCK:
                blocked = _Blocked()
            accepted, lost, putter = conn._overflow(packed, payload, seq, blocked)
            delivered += accepted
            dropped += lost
            if putter is not None:
                if waits is None:
                    waits = []
                waits.append((conn, putter))
        if waits is not None:
            return _Waiting(delivered, dropped, waits)
        if dropped == 0 and delivered < _CACHED:
            return _CACHED_RESULTS[delivered]
        return PublishResult(delivered=delivered, dropped=dropped)

    async def _wait_for_room(self, waiting: _Waiting) -> PublishResult:
        delivered, dropped, waits = waiting.delivered, waiting.dropped, waiting.waits
        blocked = waits[0][1].blocked
        timed_out: list[Connection] = []
        try:
            with anyio.move_on_after(self._publish_timeout):
                await blocked.done.wait()
        finally:
            # Also on cancellation: an event still waiting is withdrawn (dropped);
            # one already admitted stays delivered.
            for conn, putter in waits:
                if putter.outcome == Putter.ADMITTED:
                    delivered += 1
                elif putter.outcome == Putter.DROPPED:
                    dropped += 1
                elif conn._withdraw(putter):
                    dropped += 1
                    timed_out.append(conn)
        result = PublishResult(delivered=delivered, dropped=dropped)
        if timed_out:
            conn = timed_out[0]
            raise QueueFullError(
                f"publish to {redact_principal(conn._principal)} waited {self._publish_timeout} s "
                f"for room on {len(timed_out)} connection(s) "
                f"({', '.join(c._id for c in timed_out)}); the event was dropped there",
                result=result,
                connections=timed_out,
            )
        return result

    def _check_size(self, payload: Any) -> None:
        limit = self._max_event_bytes
        assert limit is not None
        try:
            text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise UsageError(
                f"the payload is not JSON-serialisable: {exc}",
                hint="Publish dicts, lists, str, int, float, bool and None only",
            ) from None
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > limit:
            raise EventTooLargeError(
                f"the payload is {size} bytes as compact JSON, more than max_event_bytes={limit}",
                hint="Send a reference to the data instead, or raise max_event_bytes",
            )

    # -- statistics -----------------------------------------------------------------

    def stats(self) -> RouterStats:
        """Return a snapshot of the router's counters (connections past expiry close first)."""
        self._sweep_expired()
        return self._stats_now()

    def _stats_now(self) -> RouterStats:
        live = tuple(self._live)  # one C-level copy: a reader in another thread sees a whole set
        return RouterStats(
            connections=len(live),
            principals=len({c._principal for c in live}),
            opened=self._opened,
            closed=self._closed_count,
            published=self._published,
            undeliverable=self._undeliverable,
            delivered=self._closed_delivered + sum(c._delivered for c in live),
            dropped=self._closed_dropped + sum(c._dropped for c in live),
            refused=self._refused_now,
            expired=self._expired,
            overflow_disconnects=self._overflow_disconnects,
        )

    @overload
    def principal_stats(self, of: Principal | UserContext, /) -> PrincipalStats | None: ...

    @overload
    @deprecated("pass isolation.Principal(tenant_id, user_id) or ctx.principal")
    def principal_stats(self, of: str, /, *, tenant_id: str | None) -> PrincipalStats | None: ...

    def principal_stats(
        self, of: Principal | UserContext | str, /, *, tenant_id: str | Unset | None = UNSET
    ) -> PrincipalStats | None:
        """Return the counters of principal ``of``, or ``None`` if it has no live connection.

        ``of`` is a :class:`~isolation.Principal` or a :class:`~isolation.UserContext`;
        a user id ``str`` with ``tenant_id=`` is deprecated, without it refused
        (``UsageError``), as in :meth:`publish`.
        """
        principal = principal_of(of, tenant_id, "principal_stats")
        self._sweep_expired()
        totals = self._totals.get(principal)
        if totals is None:
            return None
        conns = [c for c in self._live if c._principal == principal]
        return PrincipalStats(
            connections=len(conns),
            delivered=totals[0] + sum(c._delivered for c in conns),
            dropped=totals[1] + sum(c._dropped for c in conns),
            refused=totals[2] + sum(c._refused for c in conns),
        )

    @overload
    def connections(self, of: Principal | UserContext, /) -> tuple[Connection, ...]: ...

    @overload
    @deprecated("pass isolation.Principal(tenant_id, user_id) or ctx.principal")
    def connections(self, of: str, /, *, tenant_id: str | None) -> tuple[Connection, ...]: ...

    def connections(
        self, of: Principal | UserContext | str, /, *, tenant_id: str | Unset | None = UNSET
    ) -> tuple[Connection, ...]:
        """Return the live connections of principal ``of`` (as :meth:`principal_stats` takes it)."""
        principal = principal_of(of, tenant_id, "connections")
        return tuple(c for c in self._live if c._principal == principal)

    # -- closing ----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the router again after :meth:`aclose`: a new start of the app.

        The backend is attached again (the built-in backends reopen, on the
        running event loop when they need one); connections closed by
        ``aclose()`` stay closed. Nothing to do on an open router.
        :func:`isolation.integrations.starlette.lifespan` calls it at startup.

        Raises:
            ConfigurationError: The backend cannot be attached again (build the
                router in the app's lifespan instead).
        """
        if not self._closed:
            return
        self._backend.attach(_Inbox(self))
        self._closed = False

    async def aclose(self) -> None:
        """Close every connection (reason ``ROUTER_CLOSED``) and the backend. Idempotent;
        :meth:`start` opens it again."""
        if self._closed:
            return
        self._closed = True
        for conn in list(self._live):
            conn._close(CloseReason.ROUTER_CLOSED)
        self._routes.clear()
        self._totals.clear()
        _clock.get_clock().unwatch(self._clock_moved)
        await self._backend.aclose()

    async def __aenter__(self) -> EventRouter:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


@final
class _Inbox:
    """What a backend is given by :meth:`EventBackend.attach`: the router's entry points.

    See :class:`isolation.events.Deliver`.
    """

    __slots__ = ("_router",)

    def __init__(self, router: EventRouter) -> None:
        self._router = router

    def __call__(self, envelope: Envelope) -> Awaitable[PublishResult]:
        return self._router._deliver(envelope)

    def offer(self, envelope: Envelope) -> PublishResult | Awaitable[PublishResult]:
        return self._router._offer(envelope)

    def gap(
        self, principal: Principal, *, reason: str, connections: Sequence[Any] | None = None
    ) -> int:
        return self._router._queue_gap(principal, reason, connections)

    def __repr__(self) -> str:
        return f"<isolation.events.Deliver of {self._router!r}>"


class _Waiting:
    """What a fan-out left waiting for room (``BLOCK``): the counts so far and the waits."""

    __slots__ = ("delivered", "dropped", "waits")

    def __init__(
        self, delivered: int, dropped: int, waits: list[tuple[Connection, Putter]]
    ) -> None:
        self.delivered = delivered
        self.dropped = dropped
        self.waits = waits


def _open_history(backend: EventBackend, history: object) -> HistoryStore:
    """The backend's history store for the router's ``history`` setting."""
    if type(history) is not History:
        raise ConfigurationError(
            f"history must be an isolation.events.History or None, got {type(history).__name__}"
        )
    open_history = getattr(backend, "open_history", None)
    if open_history is None:
        raise ConfigurationError(
            f"{type(backend).__name__} cannot keep event history (it has no open_history())",
            hint="Use the in-memory backend, or a backend that provides a HistoryStore",
        )
    store = open_history(history)
    if not isinstance(store, HistoryStore):
        raise ConfigurationError(
            f"{type(backend).__name__}.open_history() returned {type(store).__name__}, "
            "not a HistoryStore"
        )
    return store


def _until(ctx: UserContext, ticket_expiry: float | None) -> float | None:
    """When a connection authenticated by ``ctx`` (from a ticket expiring then) expires.

    A ticket is a credential like any token: the connection it opens or
    re-authenticates ends with it (or with the context, if that is sooner),
    unless re-authenticated again.
    """
    expires_at = ctx.expires_at
    if ticket_expiry is None:
        return expires_at
    return ticket_expiry if expires_at is None else min(expires_at, ticket_expiry)


def counters(router: EventRouter) -> RouterStats:
    """``router.stats()`` without the expiry sweep: reads only, never closes a connection.

    For ``isolation.telemetry``'s callbacks, which run in whatever thread the metric
    reader collects in (a router is used from one event loop): a connection past
    its expiry counts as live until the router's own next sweep.
    """
    return router._stats_now()


def _check_ticket_live(ticket_expiry: float | None, expires_at: float) -> None:
    """A connection would expire at once: ``TokenExpiredError`` if the ticket is why."""
    if ticket_expiry is not None and expires_at == ticket_expiry:
        raise TokenExpiredError("the ticket has expired", hint="Ask for a new ticket")


def _check_kind(kind: object) -> None:
    if type(kind) is not str or not kind:
        raise UsageError(f"kind must be a non-empty str, got {kind!r:.40}")
    if kind == GAP:
        raise UsageError(
            'kind "gap" is reserved: gaps are reported by the router and its backends',
            hint="Use another kind for application events",
        )


def _closer(group: set[Connection]) -> Callable[[BaseException | None], None]:
    def close_scoped_connections(exc: BaseException | None) -> None:
        reason = CloseReason.EXPIRED if isinstance(exc, ContextExpiredError) else CloseReason.CLOSED
        for conn in list(group):
            conn._close(reason)

    return close_scoped_connections


EventRouter.__module__ = "isolation.events"
