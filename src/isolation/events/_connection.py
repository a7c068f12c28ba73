"""``Connection``: one consumer's bounded queue, bound to one principal for life.

The router fans events out into connections; a connection hands them to its
consumer after the last-step check (:func:`isolation.events._routing.verdict`):
the event must be for the connection's own principal, and the connection's
context must not have expired. Everything here runs on the router's event loop
and never blocks; waiting is in :mod:`isolation.events._wake`.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, final

import anyio

from isolation import _clock
from isolation._errors import (
    ConnectionClosedError,
    CrossContextAccessError,
    UsageError,
)
from isolation._redact import redact_principal
from isolation.context._interface import bound_scope, context_of
from isolation.context._model import Principal, UserContext
from isolation.events._model import (
    GAP,
    CloseReason,
    ConnectionState,
    ConnectionStats,
    Event,
    Overflow,
    Packed,
    event_id,
    make_event,
)
from isolation.events._queue import Action, decide
from isolation.events._routing import Verdict, transition, verdict
from isolation.events._snapshot import Json, _scan
from isolation.events._wake import Park, Wake

if TYPE_CHECKING:
    from isolation.events._router import EventRouter

__all__ = ["Connection"]

logger = logging.getLogger("isolation.events")

_OPEN: Final = ConnectionState.OPEN
_CLOSED: Final = ConnectionState.CLOSED
_QUIET_REASONS: Final = frozenset({CloseReason.CLOSED, CloseReason.ROUTER_CLOSED})


class _Blocked:
    """One ``BLOCK`` publish waiting for room on one or more connections."""

    __slots__ = ("done", "remaining")

    def __init__(self) -> None:
        self.remaining = 0
        self.done = anyio.Event()


class Putter:
    """An event of a blocked publisher, waiting for room on one connection."""

    __slots__ = ("blocked", "outcome", "packed", "payload", "seq")

    WAITING: Final = 0
    ADMITTED: Final = 1
    DROPPED: Final = 2

    def __init__(self, packed: Packed, payload: Any, seq: int, blocked: _Blocked) -> None:
        self.packed = packed
        self.payload = payload
        self.seq = seq
        self.blocked = blocked
        self.outcome = Putter.WAITING
        blocked.remaining += 1

    def resolve(self, outcome: int) -> None:
        self.outcome = outcome
        blocked = self.blocked
        blocked.remaining -= 1
        if blocked.remaining == 0:
            blocked.done.set()


@final
class Connection:
    """A connection of one principal: a bounded queue of :class:`Event`, read by one consumer.

    Made only by :meth:`EventRouter.connect`, bound to one principal for life:
    it is never rebound, and once closed never reopened. Use it as an async
    context manager (closing it at exit) and as an async iterator::

        async with await router.connect(ctx) as conn:
            async for event in conn:
                ...

    ``receive()`` returns at once, **without a checkpoint**, when an event is
    ready, which is what lets a consumer keep up with the publisher; it waits
    (a cancellable checkpoint) only when the queue is empty. Cancelling a
    waiting ``receive()`` loses nothing: the event stays queued for the next call.

    **Not safe to share between tasks**: one task receives; a second task
    waiting at the same time raises :class:`~isolation.UsageError`. Using the
    connection inside the scope of another principal raises
    :class:`~isolation.CrossContextAccessError`.
    """

    __slots__ = (
        "__weakref__",
        "_alive_until",
        "_capacity",
        "_ctx",
        "_delivered",
        "_dropped",
        "_expires_at",
        "_group",
        "_holding",
        "_id",
        "_park",
        "_payloads",
        "_policy",
        "_principal",
        "_putters",
        "_queue",
        "_reason",
        "_receiving",
        "_refused",
        "_room",
        "_router",
        "_seq",
        "_seqs",
        "_state",
        "_tenant_id",
        "_user_id",
        "_waiter",
        "_wake",
    )

    _router: EventRouter
    _ctx: UserContext
    _principal: Principal
    _user_id: str
    _tenant_id: str | None
    _expires_at: float | None
    _queue: deque[Packed]
    _payloads: deque[Any]
    _seqs: deque[int]
    _putters: deque[Putter]
    _capacity: int
    _room: int
    _alive_until: float
    _policy: Overflow
    _state: ConnectionState
    _reason: CloseReason | None
    _waiter: Any
    _receiving: bool
    _park: Park
    _wake: Wake
    _seq: int
    _delivered: int
    _dropped: int
    _refused: int
    _group: set[Connection] | None
    _holding: list[tuple[Packed, Any]] | None
    _id: str

    def __init__(self) -> None:
        raise UsageError(
            "a Connection is made by an EventRouter",
            hint="Use `await router.connect(ctx)`",
        )

    @classmethod
    def _create(
        cls,
        router: EventRouter,
        ctx: UserContext,
        *,
        expires_at: float | None,
        capacity: int,
        policy: Overflow,
        park: Park,
        wake: Wake,
    ) -> Connection:
        self = object.__new__(cls)
        self._router = router
        self._id = os.urandom(8).hex()
        self._ctx = ctx
        self._principal = ctx.principal
        self._user_id = ctx.user_id
        self._tenant_id = ctx.tenant_id
        self._expires_at = expires_at
        self._alive_until = math.inf if expires_at is None else expires_at
        self._queue = deque()
        self._payloads = deque()
        self._seqs = deque()
        self._putters = deque()
        self._capacity = capacity
        self._room = 0
        self._policy = policy
        self._state = ConnectionState.CONNECTING
        self._reason = None
        self._waiter = None
        self._receiving = False
        self._park = park
        self._wake = wake
        self._seq = 0
        self._delivered = 0
        self._dropped = 0
        self._refused = 0
        self._group = None
        self._holding = None
        return self

    def _opened(self) -> None:
        self._state = transition(self._state, _OPEN)
        self._refresh_room()

    def _refresh_room(self) -> None:
        """Keep ``_room`` (the publishers' fast-path test) true to the state.

        ``_room`` is the capacity while the connection is open and no publisher
        waits, else 0, so the router's hot path needs one comparison.
        """
        self._room = (
            self._capacity
            if self._state is _OPEN and not self._putters and self._holding is None
            else 0
        )

    # -- what a connection tells ------------------------------------------------

    @property
    def id(self) -> str:
        """A random id for logs (64 bits, hex)."""
        return self._id

    @property
    def principal(self) -> Principal:
        """The :class:`~isolation.Principal` this connection is bound to, for life."""
        return self._principal

    @property
    def user_id(self) -> str:
        """The bound user id."""
        return self._user_id

    @property
    def tenant_id(self) -> str | None:
        """The bound tenant id."""
        return self._tenant_id

    @property
    def context(self) -> UserContext:
        """The bound context (the newer one after :meth:`reauthenticate`)."""
        return self._ctx

    @property
    def expires_at(self) -> float | None:
        """Epoch seconds when the connection closes with ``EXPIRED``, or ``None``."""
        return self._expires_at

    @property
    def state(self) -> ConnectionState:
        """``CONNECTING``, ``OPEN`` or ``CLOSED``."""
        return self._state

    @property
    def close_reason(self) -> CloseReason | None:
        """Why the connection closed, or ``None`` while it is open."""
        return self._reason

    @property
    def closed(self) -> bool:
        """Whether the connection is closed."""
        return self._state is _CLOSED

    def stats(self) -> ConnectionStats:
        """Return a snapshot of this connection's counters."""
        return ConnectionStats(
            seq=self._seq,
            delivered=self._delivered,
            dropped=self._dropped,
            refused=self._refused,
            queued=len(self._queue),
            waiting=len(self._putters),
        )

    def __repr__(self) -> str:
        reason = f" ({self._reason.value})" if self._reason is not None else ""
        return (
            f"<isolation.events.Connection {self._id} of {redact_principal(self._principal)} "
            f"{self._state.value}{reason}>"
        )

    # -- receiving ----------------------------------------------------------------

    async def receive(self) -> Event:
        """Return the next event for this connection, waiting if none is queued.

        Returns at once, without a checkpoint, when an event is ready. Every
        event passes the last-step check first: one for another principal is
        refused (logged without its payload, counted in ``refused``) and never
        returned; past the context's expiry the connection closes instead.

        Raises:
            ConnectionClosedError: The connection is closed; ``reason`` says why.
            CrossContextAccessError: Called inside the scope of another principal.
            UsageError: Another task is already waiting on this connection.
        """
        scope = bound_scope()
        if scope is not None:
            bound = context_of(scope)
            if bound.user_id != self._user_id or bound.tenant_id != self._tenant_id:
                raise self._foreign_scope(bound)
        queue = self._queue
        while True:
            if queue:
                packed = queue.popleft()
                payload = self._payloads.popleft()
                seq = self._seqs.popleft()
                if self._putters:
                    self._admit()
                expires_at = self._expires_at
                # The accepting case of _routing.verdict(), inlined: the hot path.
                if (
                    packed[1] == self._user_id
                    and packed[2] == self._tenant_id
                    and (expires_at is None or _clock._now() < expires_at)
                ):
                    self._delivered += 1
                    # This consumer's own copy of the snapshot (_snapshot.thaw, inlined).
                    kind = type(payload)
                    if kind is dict or kind is list:
                        payload = payload.copy()
                    elif kind is Json:
                        payload = _scan(payload, 0)[0]
                    return make_event(packed, payload, seq)
                self._last_step_refused(packed)
            elif self._state is not _OPEN:
                raise self._closed_error()
            elif self._expires_at is not None and _clock._now() >= self._expires_at:
                self._close(CloseReason.EXPIRED)
            else:
                await self._wait()

    def __aiter__(self) -> Connection:
        return self

    async def __anext__(self) -> Event:
        """The next event; the iteration ends quietly on ``CLOSED`` and ``ROUTER_CLOSED``.

        Raises:
            ConnectionClosedError: The connection closed for another reason
                (``OVERFLOW``, ``EXPIRED``, ``REAUTH_FAILED``).
        """
        try:
            return await self.receive()
        except ConnectionClosedError as exc:
            if exc.reason in _QUIET_REASONS:
                raise StopAsyncIteration from None
            raise

    async def _wait(self) -> None:
        if self._receiving:
            raise UsageError(
                f"another task is already receiving on {self!r}",
                hint="Receive from one task per connection",
            )
        timeout: float | None = None
        expires_at = self._expires_at
        if expires_at is not None:
            # A clock that moves when told to (FakeClock) wakes us through the router
            # when it passes the expiry; one whose time passes on its own times us out.
            self._router._watch_clock()
            sleep = _clock.get_clock().deadline_to_sleep_time(expires_at)
            timeout = None if sleep == math.inf else sleep
        self._receiving = True
        try:
            await self._park(self, timeout)
        finally:
            self._receiving = False

    def _admit(self) -> None:
        """Move blocked publishers' events into the freed room, in ``seq`` order."""
        queue, putters, capacity = self._queue, self._putters, self._capacity
        while putters and len(queue) < capacity:
            putter = putters.popleft()
            queue.append(putter.packed)
            self._payloads.append(putter.payload)
            self._seqs.append(putter.seq)
            putter.resolve(Putter.ADMITTED)
        if not putters:
            self._refresh_room()

    def _last_step_refused(self, packed: Packed) -> None:
        number, recipient, tenant_id = packed[0], packed[1], packed[2]
        decision = verdict(
            event_tenant=tenant_id,
            event_user=recipient,
            bound_tenant=self._tenant_id,
            bound_user=self._user_id,
            expires_at=self._expires_at,
            now=_clock._now(),
        )
        if decision is Verdict.FOREIGN:
            self._refused += 1
            self._router._refused_now += 1
            logger.warning(
                "event %s refused at delivery: it is for %s, the connection %s is bound to %s",
                event_id(number),
                redact_principal((tenant_id, recipient)),
                self._id,
                redact_principal(self._principal),
                extra={
                    "event": "delivery_refused",
                    "event_id": event_id(number),
                    "connection_id": self._id,
                },
            )
        elif decision is Verdict.EXPIRED:
            self._dropped += 1
            self._close(CloseReason.EXPIRED)
        else:  # pragma: no cover - the inlined rule and verdict() agree (tested)
            raise AssertionError("the inlined last-step rule disagrees with verdict()")

    def _foreign_scope(self, bound: UserContext) -> CrossContextAccessError:
        return CrossContextAccessError(
            f"the connection of {redact_principal(self._principal)} was used inside the "
            f"scope of {redact_principal(bound.principal)}",
            hint="A connection belongs to its principal for life; open one per user",
        )

    def _closed_error(self) -> ConnectionClosedError:
        reason = self._reason or CloseReason.CLOSED
        return ConnectionClosedError(
            f"the connection {self._id} of {redact_principal(self._principal)} is closed "
            f"({reason.value})",
            reason=reason,
        )

    # -- overflow (the router calls this when the fast path has no room) ----------

    def _overflow(
        self, packed: Packed, payload: Any, seq: int, blocked: _Blocked | None
    ) -> tuple[int, int, Putter | None]:
        """Apply the policy to the event ``seq``; return ``(delivered, dropped, putter)``."""
        action = decide(
            self._policy,
            queued=len(self._queue),
            capacity=self._capacity,
            waiting=len(self._putters),
        )
        if action is Action.ACCEPT:
            self._queue.append(packed)
            self._payloads.append(payload)
            self._seqs.append(seq)
            self._wake_consumer()
            return 1, 0, None
        if action is Action.WAIT:
            assert blocked is not None
            putter = Putter(packed, payload, seq, blocked)
            self._putters.append(putter)
            self._room = 0
            return 0, 0, putter
        if action is Action.DROP_NEW:
            self._dropped += 1
            return 0, 1, None
        if action is Action.EVICT_OLDEST:
            queue = self._queue
            if queue[0][3] == GAP and len(queue) > 1:
                # Keep an unread gap notice at the head: evict the event after it.
                del queue[1]
                del self._payloads[1]
                del self._seqs[1]
            else:
                queue.popleft()
                self._payloads.popleft()
                self._seqs.popleft()
            self._dropped += 1
            self._queue.append(packed)
            self._payloads.append(payload)
            self._seqs.append(seq)
            self._wake_consumer()
            return 1, 1, None
        self._dropped += 1
        return 0, 1 + self._close(CloseReason.OVERFLOW), None

    def _push_gap(self, packed: Packed, payload: Any) -> bool:
        """Queue a ``"gap"`` notice even if the queue is full; ``False`` if one is unread already.

        It takes the next ``seq``. With ``BLOCK`` publishers waiting it goes
        behind them (a putter nobody waits on), so ``seq`` stays in order; else
        at the tail, at most one over capacity.
        """
        if self._state is not _OPEN:
            return False
        holding = self._holding
        if holding is not None:
            if not any(held[0][3] == GAP for held in holding):
                holding.append((packed, payload))
            return True
        if any(queued[3] == GAP for queued in self._queue) or any(
            putter.packed[3] == GAP for putter in self._putters
        ):
            return False
        seq = self._seq + 1
        self._seq = seq
        if self._putters:
            self._putters.append(Putter(packed, payload, seq, _Blocked()))
            return True
        self._queue.append(packed)
        self._payloads.append(payload)
        self._seqs.append(seq)
        self._wake_consumer()
        return True

    # -- resuming (a connection opened with a resume point) ------------------------------

    def _hold(self) -> None:
        """Until :meth:`_resumed`: keep live events aside, while the history is read."""
        self._holding = []
        self._room = 0

    def _held(self, packed: Packed, payload: Any) -> None:
        """A live event published while the history is read (the router's fan-out)."""
        assert self._holding is not None
        self._holding.append((packed, payload))

    def _resumed(self, first: list[tuple[Packed, Any]], epoch: str, seen: int) -> tuple[int, int]:
        """Queue ``first`` (the gap or the replay), then the live events kept aside.

        A live event of stream ``epoch`` with an offset up to ``seen`` was read
        from the history already, or is older than what the connection resumes
        after: it is dropped here, so nothing arrives twice across the seam.
        Everything is queued whatever the capacity (the replay is bounded by the
        history's ``size``): it was accepted when published. Returns
        ``(queued, dropped at the seam)``.
        """
        held, self._holding = self._holding or [], None
        queue, payloads, seqs = self._queue, self._payloads, self._seqs
        fresh = [item for item in held if not _seen(item[0], epoch, seen)]
        duplicates = len(held) - len(fresh)
        queued = 0
        for packed, payload in (*first, *fresh):
            self._seq += 1
            queue.append(packed)
            payloads.append(payload)
            seqs.append(self._seq)
            queued += 1
        self._refresh_room()
        return queued, duplicates

    def _wake_consumer(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            self._wake(waiter)

    def _withdraw(self, putter: Putter) -> bool:
        """A blocked publisher gave up: drop its event if still waiting (counted as dropped)."""
        if putter.outcome != Putter.WAITING:
            return False
        self._putters.remove(putter)
        putter.outcome = Putter.DROPPED
        self._dropped += 1
        self._admit()
        return True

    # -- closing --------------------------------------------------------------------

    def _close(self, reason: CloseReason) -> int:
        """Close with ``reason``; return how many queued or waiting events were dropped."""
        if self._state is _CLOSED:
            return 0
        self._state = transition(self._state, _CLOSED)
        self._room = 0
        self._reason = reason
        dropped = len(self._queue)
        self._queue.clear()
        self._payloads.clear()
        self._seqs.clear()
        putters = self._putters
        while putters:
            putters.popleft().resolve(Putter.DROPPED)
            dropped += 1
        self._dropped += dropped
        group = self._group
        if group is not None:
            group.discard(self)
            self._group = None
        self._router._detach(self, reason)
        self._wake_consumer()
        return dropped

    def close(self) -> None:
        """Close the connection (reason ``CLOSED``); queued events are dropped. Idempotent."""
        self._close(CloseReason.CLOSED)

    async def aclose(self) -> None:
        """Close the connection (reason ``CLOSED``); the async twin of :meth:`close`."""
        self._close(CloseReason.CLOSED)

    async def __aenter__(self) -> Connection:
        if self._state is _CLOSED:
            raise self._closed_error()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close(CloseReason.CLOSED)

    # -- re-authentication --------------------------------------------------------------

    async def reauthenticate(self, token: str | bytes) -> None:
        """Prove the same principal again with a fresh token; extend the connection's life.

        ``token`` is resolved as in :meth:`EventRouter.connect`: a ticket first
        (single use), else the router's ``authenticate`` callable. It must yield
        this connection's principal; the connection then lives until the new
        context's ``expires_at`` (or a ticket's expiry, if that is sooner). Anything else (another principal, a replayed,
        foreign-purpose, forged or expired token) closes the connection with
        ``REAUTH_FAILED``.

        Raises:
            ConnectionClosedError: The connection was closed, or is now closed
                with ``REAUTH_FAILED`` (the cause is chained).
        """
        if self._state is not _OPEN:
            raise self._closed_error()
        try:
            ctx, expires_at = await self._router._context_from_token(
                token, principal=self._principal
            )
        except Exception as exc:  # fail closed, whatever the authenticator raised
            self._close(CloseReason.REAUTH_FAILED)
            raise self._closed_error() from exc
        if self._state is not _OPEN:  # closed while the token was checked
            raise self._closed_error()
        self._ctx = ctx
        self._router._set_expiry(self, expires_at)


def _seen(packed: Packed, epoch: str, seen: int) -> bool:
    """Whether ``packed`` is an event of stream ``epoch`` with an offset up to ``seen``."""
    if len(packed) < 7 or packed[6] != epoch:
        return False
    offset = packed[5]
    return offset is not None and offset <= seen


Connection.__module__ = "isolation.events"
