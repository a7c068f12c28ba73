"""The values of per-principal event history: the router's setting and a client's resume point.

:class:`History` is the router's opt-in (``EventRouter(history=History(...))``):
every event then gets an ``offset`` in its principal's stream and the stream's
``epoch``. :class:`ResumePoint` is the last ``(epoch, offset)`` a client saw;
``connect(ctx, resume=...)`` or a ticket from ``issue_ticket(ctx, resume=...)``
replays what it missed. The storage is the backend's
(:mod:`isolation.events.backends._history`); the rules of a resume are the
router's (:mod:`isolation.events._router`).

A resume point travels in a ticket as one signed context attribute,
:data:`RESUME_ATTRIBUTE`, which only :meth:`EventRouter.issue_ticket` writes
and only ``connect(token=...)`` reads (and removes): it is signed with the
ticket, so it is bound to the ticket's principal and cannot be edited.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final, final

import attrs

from isolation._errors import ConfigurationError, MalformedTokenError, UsageError

__all__ = [
    "History",
    "MAX_EPOCH_LENGTH",
    "RESUME_ATTRIBUTE",
    "ResumePoint",
    "resume_from_attribute",
    "resume_to_attribute",
]

MAX_EPOCH_LENGTH: Final = 128
"""The longest epoch a :class:`ResumePoint` may carry."""
RESUME_ATTRIBUTE: Final = "isolation.resume"
"""The context attribute a ticket carries its resume point in (``"<offset>:<epoch>"``)."""

_EPOCH_RE: Final = re.compile(r"[A-Za-z0-9._:-]+")


def _history_size(_: object, __: object, value: Any) -> None:
    if type(value) is not int or value < 1:
        raise ConfigurationError(f"History size must be an int >= 1, got {value!r:.40}")


def _history_ttl(_: object, __: object, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConfigurationError(f"History ttl must be finite seconds > 0, got {value!r:.40}")


@final
@attrs.frozen
class History:
    """Keep the recent events of every principal, so a reconnecting client can resume.

    ``EventRouter(history=History(size=1000, ttl=3600))``: each principal's
    stream holds at most its ``size`` newest events, each for at most ``ttl``
    seconds (the library's clock), whether or not the principal has a live
    connection. A stream with no event for ``ttl`` seconds is forgotten, and
    the next one starts under a new epoch.

    Raises:
        ConfigurationError: ``size`` is not an int >= 1, or ``ttl`` not finite seconds > 0.
    """

    size: int = attrs.field(validator=_history_size)
    ttl: float = attrs.field(validator=_history_ttl)


def _epoch(_: object, __: object, value: Any) -> None:
    if type(value) is not str:
        raise UsageError(f"ResumePoint epoch must be a str, got {type(value).__name__}")
    if len(value) > MAX_EPOCH_LENGTH:
        raise UsageError(
            f"ResumePoint epoch must be at most {MAX_EPOCH_LENGTH} characters, got {len(value)}"
        )
    if not _EPOCH_RE.fullmatch(value):
        raise UsageError(
            "ResumePoint epoch must be non-empty ASCII letters, digits, '.', '_', ':' or '-'",
            hint="Pass the epoch of the last event received, unchanged",
        )


def _offset(_: object, __: object, value: Any) -> None:
    if type(value) is not int or value < 0:
        raise UsageError(f"ResumePoint offset must be an int >= 0, got {value!r:.40}")


@final
@attrs.frozen
class ResumePoint:
    """The last event a client saw: ``ResumePoint(event.epoch, event.offset)``.

    ``offset`` 0 means "nothing of this epoch yet". Given to
    ``EventRouter.connect(ctx, resume=...)`` or signed into a ticket by
    ``issue_ticket(ctx, resume=...)``, it is always read against the
    connection's own principal's stream.

    Raises:
        UsageError: ``epoch`` is not a str of 1 to 128 of ``[A-Za-z0-9._:-]``,
            or ``offset`` is not an int >= 0.
    """

    epoch: str = attrs.field(validator=_epoch)
    offset: int = attrs.field(validator=_offset)


def resume_to_attribute(point: ResumePoint) -> str:
    """The attribute value a ticket carries ``point`` in."""
    return f"{point.offset}:{point.epoch}"


def resume_from_attribute(value: str) -> ResumePoint:
    """Read back a resume point a ticket carries (signed by this library).

    Raises:
        MalformedTokenError: It is not one this library writes.
    """
    offset, sep, epoch = value.partition(":")
    if not sep or not offset.isascii() or not offset.isdigit() or len(offset) > 20:
        raise MalformedTokenError("the ticket's resume point is malformed")
    try:
        return ResumePoint(epoch, int(offset))
    except UsageError:
        raise MalformedTokenError("the ticket's resume point is malformed") from None


History.__module__ = "isolation.events"
ResumePoint.__module__ = "isolation.events"
