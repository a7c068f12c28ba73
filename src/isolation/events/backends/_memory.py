"""The in-process backend: one router, no transport, a bounded single-use ticket record."""

from __future__ import annotations

import hashlib
import heapq
import hmac
import os
from typing import Final, final

from isolation import _clock
from isolation._errors import ConfigurationError
from isolation.context._model import Principal
from isolation.events._history import History
from isolation.events._model import Envelope, PublishResult
from isolation.events.backends._history import MemoryHistory
from isolation.events.backends._tickets import RECORD_SLACK, check_claimable

__all__ = ["MemoryBackend"]

_DIGEST_KEY_BYTES: Final = 32


@final
class MemoryBackend:
    """Everything in this process: the router's connections are all there is.

    ``shared`` is ``False``, so the router delivers each publish to its own
    connections directly; :meth:`publish` is the same loopback, for code that
    calls the protocol. Used tickets are remembered as HMAC-SHA256 digests under
    a random per-backend key, each until its ticket's expiry plus twice
    :data:`isolation.tokens.LEEWAY` (a ticket is accepted until its expiry plus
    ``LEEWAY``). One backend serves one router.
    """

    __slots__ = ("_deliver", "_digest_key", "_expiries", "_used")

    def __init__(self) -> None:
        self._deliver: object | None = None
        self._digest_key = os.urandom(_DIGEST_KEY_BYTES)
        self._used: dict[bytes, float] = {}
        self._expiries: list[tuple[float, bytes]] = []

    @property
    def shared(self) -> bool:
        """Always ``False``: no other router sees this backend."""
        return False

    def attach(self, deliver: object) -> None:
        """Remember the router's delivery function; a second router is refused.

        After :meth:`aclose` it may be attached again (its router starting again).
        """
        if self._deliver is not None:
            raise ConfigurationError(
                "this MemoryBackend already serves a router",
                hint="Give each EventRouter its own MemoryBackend (or none: it is the default)",
            )
        self._deliver = deliver

    async def publish(self, envelope: Envelope) -> PublishResult:
        """Hand ``envelope`` straight back to the router (a loopback)."""
        deliver = self._deliver
        if deliver is None:
            raise ConfigurationError("this MemoryBackend is not attached to a router")
        result: PublishResult = await deliver(envelope)  # type: ignore[operator]
        return result

    def open_history(self, history: History) -> MemoryHistory:
        """The store of a router with ``history``: a bounded ring per principal, in this process."""
        return MemoryHistory(history)

    def watch(self, principal: Principal) -> None:
        """Nothing to do: every event is published in this process."""

    def unwatch(self, principal: Principal) -> None:
        """Nothing to do: every event is published in this process."""

    async def claim_ticket(self, token: str, *, expires_at: float) -> bool:
        """Record ``token`` as used (as a keyed digest); ``False`` if it already was.

        One clock reading decides everything: a ticket past its expiry plus
        ``LEEWAY`` then is refused, and records are forgotten only past their
        ticket's expiry plus ``2 * LEEWAY`` then, so no ticket is ever accepted
        after its record is gone.

        Raises:
            TokenExpiredError: The ticket has expired at this claim's reading.
        """
        now = _clock._now()
        check_claimable(expires_at, now)
        self._purge(now)
        digest = hmac.new(self._digest_key, token.encode("ascii"), hashlib.sha256).digest()
        if digest in self._used:
            return False
        self._used[digest] = expires_at
        heapq.heappush(self._expiries, (expires_at, digest))
        return True

    @property
    def tickets_recorded(self) -> int:
        """How many used tickets are remembered now (expired ones are forgotten)."""
        self._purge(_clock._now())
        return len(self._used)

    def _purge(self, now: float) -> None:
        expiries = self._expiries
        while expiries and expiries[0][0] + RECORD_SLACK < now:
            _, digest = heapq.heappop(expiries)
            self._used.pop(digest, None)

    async def aclose(self) -> None:
        """Forget the ticket record and the router."""
        self._used.clear()
        self._expiries.clear()
        self._deliver = None

    def __repr__(self) -> str:
        return f"<isolation.events.MemoryBackend tickets={len(self._used)}>"


MemoryBackend.__module__ = "isolation.events.backends"
