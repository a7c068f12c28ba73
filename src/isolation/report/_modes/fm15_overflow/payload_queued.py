"""FM15, payload aliasing in full queues: what a queue keeps is what was published.

``payload-aliasing-queued``: mode 10's payload-aliasing scenario
(:mod:`..fm10_routing.payload_snapshot`) with queues of 3 under ``DROP_OLDEST``,
the reused dict mutated while its copies wait in the queues: the kept payloads
arrive as published. Mutant: the router that queues the published object itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from isolation.events._router import EventRouter
from isolation.report._modes._support.registration import add_check
from isolation.report._modes.fm10_routing import payload_snapshot
from isolation.report._registry import ModeRegistry, Settings

__all__ = ["check_payload_queued", "register"]


async def check_payload_queued(make: Callable[..., Any], settings: Settings) -> list[str]:
    """Queues of 3 under DROP_OLDEST: the kept payloads as published."""
    return await payload_snapshot.check_payload_snapshot(make, settings, queued=True)


def register(registry: ModeRegistry) -> None:
    """Register ``payload-aliasing-queued`` under mode 15."""
    add_check(
        registry,
        15,
        "payload-aliasing-queued",
        check_payload_queued,
        library=lambda: EventRouter,
        mutant=payload_snapshot.aliasing_router,
        description=payload_snapshot.DESCRIPTION
        + "; queues of 3 under drop-oldest, mutated while queued",
    )
