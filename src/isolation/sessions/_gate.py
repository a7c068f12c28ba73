"""Admission glue: the asyncio and thread faces over the pure :class:`Admission`.

``_admission.py`` decides who may take a slot and who waits in which order; a
:class:`Gate` parks the waiters (an asyncio future, or a ``threading.Event``
for the sync face), bounds the wait by ``acquire_timeout`` (and a sync wait by
the scope's deadline too: no cancellation reaches a thread), wakes the ones a
release grants, and keeps the set of blocks being held for the watchdog.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import final

import anyio

from isolation import _clock
from isolation._errors import ContextExpiredError, PoolExhaustedError
from isolation._redact import redact_principal
from isolation.context._principal import Principal
from isolation.context._scope import Scope
from isolation.sessions._admission import Admission, Waiter, sync_wait
from isolation.sessions._owner import Owner

__all__ = ["Gate"]


@final
class Gate:
    """A manager's admission: slots, waiters, the blocks held, and who is told when idle."""

    __slots__ = (
        "admission",
        "exhausted",
        "holding",
        "idle",
        "idle_sync",
        "lock",
        "loop",
        "sync",
        "timeout",
    )

    def __init__(
        self, admission: Admission, *, timeout: float, sync: bool, lock: threading.Lock
    ) -> None:
        self.admission = admission
        self.timeout = timeout
        self.sync = sync
        # The manager's lock: the sync face admits and releases from threads.
        self.lock = lock
        self.idle_sync = threading.Condition(lock)
        self.holding: set[Owner] = set()
        self.idle: asyncio.Event | None = None  # set when the last block ends (aclose waits)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.exhausted = 0

    def held_now(self) -> list[Owner]:
        """The owners of the blocks admitted now (a snapshot: the sync face moves it)."""
        with self.lock:
            return list(self.holding)

    @staticmethod
    def _holds(owner: Owner) -> None:
        owner.admitted = True
        owner.started = _clock._now()
        owner.warned = False

    # -- the async face ---------------------------------------------------------------

    async def admit(self, owner: Owner) -> None:
        admission = self.admission
        principal = owner.principal
        if not admission.try_admit(principal):
            await self._wait_for_slot(principal)
        self._holds(owner)
        self.holding.add(owner)

    async def _wait_for_slot(self, principal: Principal) -> None:
        admission = self.admission
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = Waiter(principal, future)
        admission.enqueue(waiter)
        started = time.monotonic()
        try:
            with anyio.move_on_after(self.timeout):
                await future
                return
        except BaseException:
            # Cancelled (the scope's deadline, or from outside) while waiting.
            if not admission.withdraw(waiter):
                self._release_principal(principal)
            raise
        if not admission.withdraw(waiter):
            return  # granted in the same instant the timeout fired: keep it
        self.exhausted += 1
        raise self._exhausted_error(
            principal, admission.held_by(principal), time.monotonic() - started
        )

    def _release_principal(self, principal: Principal) -> None:
        for waiter in self.admission.release(principal):
            future: asyncio.Future[None] = waiter.token  # type: ignore[assignment]
            if not future.done():
                future.set_result(None)
        if not self.admission.in_use and self.idle is not None:
            self.idle.set()

    # -- the sync face ----------------------------------------------------------------

    def admit_sync(self, owner: Owner, scope: Scope) -> None:
        """Admission for a sync block: wait in this thread, bounded by ``acquire_timeout``
        and by the scope's deadline (no cancellation reaches a thread)."""
        admission = self.admission
        principal = owner.principal
        with self.lock:
            admitted = admission.try_admit(principal)
            if not admitted:
                waiter = Waiter(principal, threading.Event())
                admission.enqueue(waiter)
        if not admitted:
            started = time.monotonic()
            limit, expires = sync_wait(self.timeout, scope.deadline, _clock._now())
            granted: threading.Event = waiter.token  # type: ignore[assignment]
            if not granted.wait(limit):
                with self.lock:
                    withdrawn = admission.withdraw(waiter)
                    if withdrawn and not expires:
                        self.exhausted += 1
                    held = admission.held_by(principal)
                if withdrawn:
                    if expires:
                        raise ContextExpiredError(
                            f"the context of {redact_principal(principal)} expired while its "
                            "session block waited for a database connection"
                        )
                    raise self._exhausted_error(principal, held, time.monotonic() - started)
        self._holds(owner)
        with self.lock:
            self.holding.add(owner)

    def wait_idle_sync(self, timeout: float) -> bool:
        """Wait in this thread until no block is admitted; ``False`` after ``timeout``."""
        with self.lock:
            return self.idle_sync.wait_for(lambda: not self.admission.in_use, timeout=timeout)

    # -- both faces -------------------------------------------------------------------

    def release(self, owner: Owner) -> None:
        owner.admitted = False
        if self.sync:
            with self.lock:
                self.holding.discard(owner)
                for waiter in self.admission.release(owner.principal):
                    event_: threading.Event = waiter.token  # type: ignore[assignment]
                    event_.set()
                if not self.admission.in_use:
                    self.idle_sync.notify_all()
            return
        self.holding.discard(owner)
        self._release_principal(owner.principal)

    def release_from_anywhere(self, owner: Owner) -> None:
        """Release from ``__del__``, which may run outside the loop's thread."""
        if self.sync:
            self.release(owner)
            return
        loop = self.loop
        try:
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self.release, owner)
            else:
                self.release(owner)
        except Exception:  # noqa: S110 - the loop is gone; nothing waits on it any more
            pass

    def _exhausted_error(
        self, principal: Principal, held: int, waited: float
    ) -> PoolExhaustedError:
        admission = self.admission
        per_user = held >= admission.per_principal
        if per_user:
            which = f"it holds {held} sessions, its per-user limit of {admission.per_principal}"
        else:
            which = f"all {admission.capacity} connections of the pool are in use"
        return PoolExhaustedError(
            f"no database session for {redact_principal(principal)} after waiting "
            f"{waited:.3f} s (acquire_timeout {self.timeout:g} s): {which}",
            hint=(
                "End session blocks before slow awaits (streaming, calls to other services), "
                "raise per_user_limit or the pool size, or retry later"
            ),
            limit="per_user" if per_user else "pool",
            held=held,
            capacity=admission.per_principal if per_user else admission.capacity,
            waited=waited,
            timeout=self.timeout,
        )
