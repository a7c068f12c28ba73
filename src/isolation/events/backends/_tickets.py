"""The single-use ticket record's rules, shared by the backends: one clock reading per claim.

A ticket is accepted until its expiry plus :data:`isolation.tokens.LEEWAY`
(clock skew between the issuing and the redeeming process). Its used-ticket
record must outlive that by at least the same tolerance, or a replay at the
edge (verified a moment before the record is forgotten, or by a process whose
clock is behind the claimant's) would find no record and be accepted again.
So a claim reads the clock once, refuses at that instant a ticket already past
its acceptance window, and keeps the record at least :data:`RECORD_SLACK`
past the ticket's expiry, by that same reading.
"""

from __future__ import annotations

import math
from typing import Final

from isolation._errors import TokenExpiredError
from isolation.tokens import LEEWAY

__all__ = ["CLAIM_MARGIN", "RECORD_SLACK", "check_claimable", "record_ms"]

RECORD_SLACK: Final = 2 * LEEWAY
"""Seconds a used-ticket record outlives its ticket's expiry: the acceptance window
(``LEEWAY``) plus the skew tolerance again."""
CLAIM_MARGIN: Final = 1.0
"""Seconds more a record in a shared store (Redis) lives, for the round trip and rounding."""


def check_claimable(expires_at: float, now: float) -> None:
    """Refuse, at the claim's own clock reading, a ticket past its acceptance window.

    Raises:
        TokenExpiredError: ``now`` is past ``expires_at + LEEWAY``.
    """
    if now > expires_at + LEEWAY:
        raise TokenExpiredError("the ticket has expired", hint="Ask for a new ticket")


def record_ms(expires_at: float, now: float) -> int:
    """The lifetime in milliseconds of a used-ticket record stored ``now`` (local clock).

    ``expires_at - now + RECORD_SLACK + CLAIM_MARGIN``, never less than
    ``RECORD_SLACK``: with the claimant's clock up to ``LEEWAY`` ahead of another
    process's, the record still lives past the last instant that process accepts
    the ticket (its ``expires_at + LEEWAY``).
    """
    return math.ceil(max(expires_at - now + RECORD_SLACK + CLAIM_MARGIN, RECORD_SLACK) * 1000)
