"""The hold watchdog: log and count session blocks held past ``hold_warning``.

A block that holds its connection for long (a slow await inside it: streaming,
a call to another service) starves the other users of the pool. The watchdog
runs while the manager is started; each pass warns once per block
(``event="session_held"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterable
from typing import final

import anyio

from isolation import _clock
from isolation._redact import redact_principal
from isolation.sessions._owner import Owner

__all__ = ["Watchdog"]

logger = logging.getLogger("isolation.sessions")


@final
class Watchdog:
    """Passes over the blocks being held; ``warnings`` counts the blocks it warned about."""

    __slots__ = ("_holding", "_task", "hold_warning", "interval", "warnings")

    def __init__(
        self, holding: Callable[[], Iterable[Owner]], *, hold_warning: float, interval: float
    ) -> None:
        # A snapshot of the owners of the blocks admitted now.
        self._holding = holding
        self.hold_warning = hold_warning
        self.interval = interval
        self.warnings = 0
        self._task: asyncio.Task[None] | None = None

    def check(self) -> int:
        """One pass: log and count blocks held past ``hold_warning``; how many were new."""
        now = _clock._now()
        found = 0
        for owner in self._holding():
            if owner.warned or now - owner.started < self.hold_warning:
                continue
            owner.warned = True
            found += 1
            self.warnings += 1
            logger.warning(
                "a session block of %s has been open for %.1f s (hold_warning %g s)",
                redact_principal(owner.principal),
                now - owner.started,
                self.hold_warning,
                extra={"event": "session_held", "held_seconds": now - owner.started},
            )
        return found

    async def _watch(self) -> None:
        while True:
            await anyio.sleep(self.interval)
            self.check()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the passes on ``loop`` (once; started again after :meth:`stop`)."""
        if self._task is None:
            # A fresh context: the watchdog must not keep the caller's scope alive.
            self._task = loop.create_task(self._watch(), context=contextvars.Context())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
