"""CORS and ``IsolationMiddleware``: preflights are not authenticated, and CORS goes outside.

A CORS preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``)
never carries credentials (Fetch standard), so authenticating it can only
refuse it. And a ``CORSMiddleware`` *inside* the isolation middleware never
adds its headers to the middleware's own 401, 403 and 503: the browser then
hides them from the front end as network errors. Starlette's and FastAPI's
``add_middleware`` makes the middleware added **last** the outermost, so adding
``CORSMiddleware`` first is the trap; :func:`cors_inside` finds it when the
isolation middleware is made.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import Any, Final

from starlette.middleware.cors import CORSMiddleware

__all__ = ["cors_inside", "is_preflight"]

_MAX_DEPTH: Final = 64


def is_preflight(scope: MutableMapping[str, Any]) -> bool:
    """Whether an HTTP request is a CORS preflight: ``OPTIONS`` with both CORS headers."""
    if scope.get("method") != "OPTIONS":
        return False
    origin = request_method = False
    headers: Iterable[tuple[bytes, bytes]] = scope.get("headers") or ()
    for name, _ in headers:
        if name == b"origin":
            origin = True
        elif name == b"access-control-request-method":
            request_method = True
    return origin and request_method


def cors_inside(app: object) -> bool:
    """Whether a Starlette ``CORSMiddleware`` is wrapped by the middleware whose inner app is ``app``.

    Follows the ``app`` attribute every Starlette middleware keeps, and looks
    into the ``user_middleware`` of a whole Starlette or FastAPI app wrapped by
    hand. A CORS layer inside a ``Mount`` is not seen (its preflights still
    pass through: see :func:`is_preflight`).
    """
    seen: set[int] = set()
    for _ in range(_MAX_DEPTH):
        if app is None or id(app) in seen:
            return False
        if isinstance(app, CORSMiddleware):
            return True
        seen.add(id(app))
        for declared in getattr(app, "user_middleware", None) or ():
            cls = getattr(declared, "cls", None)
            if isinstance(cls, type) and issubclass(cls, CORSMiddleware):
                return True
        app = getattr(app, "app", None)
    return False
