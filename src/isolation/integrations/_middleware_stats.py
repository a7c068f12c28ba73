"""The snapshot type of :func:`isolation.integrations.starlette.middleware_stats`.

Private since issue 19 (the function is the interface; its result is read by
attribute): ``isolation.integrations.starlette.MiddlewareStats`` still gives it,
with a ``DeprecationWarning``, for one release.
"""

from __future__ import annotations

import attrs

__all__ = ["MiddlewareStats"]


@attrs.frozen(kw_only=True)
class MiddlewareStats:
    """Process-wide counts of HTTP requests whose deadline passed (a snapshot).

    Attributes:
        expired_before_response: Answered 503: the deadline passed before the
            response started.
        cut_off: The deadline passed while the response was being sent: cut off.
        cancelled_after_response: The response was complete, but work of the
            request (a ``BackgroundTask``) was still running and was cancelled.
    """

    expired_before_response: int
    cut_off: int
    cancelled_after_response: int
