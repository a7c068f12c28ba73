"""Starlette and FastAPI: a pure ASGI middleware that runs each request in its user's scope.

``IsolationMiddleware`` is pure ASGI, never ``BaseHTTPMiddleware``: Starlette's
``BaseHTTPMiddleware`` returns from ``dispatch`` before a streaming body or a
``BackgroundTask`` has run (Kludex/starlette#1081, fastapi/fastapi#2776), so a
scope entered there would end — committing and closing its sessions — while
the response is still being produced. Here the whole ASGI call, streaming body
and background tasks included, runs inside ``isolation.scope``.

* HTTP: ``authenticate(conn)`` returns a :class:`~isolation.UserContext` (the
  request runs in its scope), ``None`` (401), or raises ``PermissionError``
  (403). When the context's deadline passes before the response has started,
  the client gets **503** with ``Retry-After: 1``; after it has started, the
  response is cut off (the server closes the connection without the final
  chunk), so the client never mistakes it for complete.
* WebSocket: refused handshakes for ``None`` and ``PermissionError``. An
  accepted socket runs in a ``CONNECTION`` scope **without a deadline** —
  expiry of a socket is the router connection's job, so
  ``Connection.reauthenticate`` can extend it; the authenticated context, with
  its deadline, is :func:`websocket_context`. An expiry that escapes the
  endpoint closes the socket with :data:`CLOSE_EXPIRED` (4001).
* :func:`pump` forwards a router :class:`~isolation.events.Connection` to the
  socket as JSON until either side closes, runs each inbound frame in its own
  ``REQUEST`` scope, and closes the socket with the code of the connection's
  :class:`~isolation.events.CloseReason` (:func:`close_code`).
* Lifespan events pass through untouched; :func:`lifespan` closes the router,
  the session manager and the registry at shutdown.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Final

import attrs
from starlette.requests import HTTPConnection

from isolation import _clock
from isolation._errors import ConfigurationError, ContextExpiredError
from isolation._lifetime import Lifetime
from isolation.context._model import UserContext
from isolation.context._scope import Scope
from isolation.factories._registry import Registry

__all__ = [
    "Authenticate",
    "CLOSE_EXPIRED",
    "CLOSE_GOING_AWAY",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_POLICY",
    "CLOSE_TRY_AGAIN_LATER",
    "IsolationMiddleware",
    "lifespan",
    "websocket_context",
]

logger = logging.getLogger("isolation.context")

ASGIScope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[ASGIScope, Receive, Send], Awaitable[None]]
Authenticate = Callable[[HTTPConnection], "Awaitable[UserContext | None] | UserContext | None"]

CLOSE_POLICY: Final = 1008
"""A policy refusal or a failed re-authentication."""
CLOSE_MESSAGE_TOO_BIG: Final = 1009
"""An inbound frame larger than the configured bound."""
CLOSE_GOING_AWAY: Final = 1001
"""The router is shutting down."""
CLOSE_TRY_AGAIN_LATER: Final = 1013
"""The connection was disconnected for overflow (a slow consumer)."""
CLOSE_EXPIRED: Final = 4001
"""The connection's context expired (the 4000 range is the application's)."""

_STATE_KEY: Final = "isolation.context"


def websocket_context(conn: HTTPConnection | ASGIScope) -> UserContext:
    """Return the authenticated context of a WebSocket (with its deadline).

    The WebSocket's scope has no deadline, so connect the router with this
    context explicitly: ``await router.connect(websocket_context(ws))``.
    """
    scope = conn.scope if isinstance(conn, HTTPConnection) else conn
    ctx = scope.get("state", {}).get(_STATE_KEY)
    if not isinstance(ctx, UserContext):
        raise ConfigurationError(
            "no authenticated context on this connection",
            hint="Install IsolationMiddleware in front of this endpoint",
        )
    return ctx


def _is_public(path: str, public_paths: tuple[str, ...]) -> bool:
    for public in public_paths:
        if path == public or (public.endswith("/") and path.startswith(public)):
            return True
    return False


async def _plain_response(
    send: Send, status: int, body: str, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    payload = json.dumps({"detail": body}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


@attrs.define(eq=False)
class IsolationMiddleware:
    """Authenticate each HTTP request and WebSocket and run it in its user's scope.

    Args:
        app: The ASGI app to wrap.
        authenticate: ``authenticate(conn)``, sync or async: a context, ``None``
            (not authenticated), or ``PermissionError`` (forbidden).
        registry: Given to every scope, so endpoints can ``scope.get(T)``.
        ttl: Caps each context's deadline at ``now + ttl`` seconds (HTTP only).
        public_paths: Paths served outside any scope (login, health, static
            files): an exact path, or a prefix ending in ``/``.
    """

    app: ASGIApp
    authenticate: Authenticate = attrs.field(kw_only=True)
    registry: Registry | None = attrs.field(default=None, kw_only=True)
    ttl: float | None = attrs.field(default=None, kw_only=True)
    public_paths: tuple[str, ...] = attrs.field(default=(), kw_only=True, converter=tuple)

    def __attrs_post_init__(self) -> None:
        if not callable(self.authenticate):
            raise ConfigurationError("authenticate must be a callable")
        if self.ttl is not None and not (isinstance(self.ttl, int | float) and self.ttl > 0):
            raise ConfigurationError(f"ttl must be a positive number of seconds, got {self.ttl!r}")

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or _is_public(
            scope.get("path", ""), self.public_paths
        ):
            await self.app(scope, receive, send)
            return
        try:
            ctx = await self._authenticate(scope)
        except PermissionError:
            await self._refuse(kind, send, receive, 403, "forbidden")
            return
        if ctx is None:
            await self._refuse(kind, send, receive, 401, "not authenticated")
            return
        scope.setdefault("state", {})[_STATE_KEY] = ctx
        if kind == "http":
            await self._http(ctx, scope, receive, send)
        else:
            await self._websocket(ctx, scope, receive, send)

    async def _authenticate(self, scope: ASGIScope) -> UserContext | None:
        result = self.authenticate(HTTPConnection(scope))
        if inspect.isawaitable(result):
            result = await result
        if result is not None and not isinstance(result, UserContext):
            raise ConfigurationError(
                f"authenticate() returned {type(result).__name__}; it must return a "
                "UserContext or None (or raise PermissionError)"
            )
        return result

    @staticmethod
    async def _refuse(kind: str, send: Send, receive: Receive, status: int, reason: str) -> None:
        if kind == "http":
            headers = [(b"www-authenticate", b"Bearer")] if status == 401 else []
            await _plain_response(send, status, reason, headers)
        else:
            # Closing before accepting refuses the handshake (the server answers 403).
            await send({"type": "websocket.close", "code": CLOSE_POLICY, "reason": reason})

    async def _http(self, ctx: UserContext, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if self.ttl is not None:
            cap = _clock._now() + self.ttl
            if ctx.expires_at is None or ctx.expires_at > cap:
                ctx = attrs.evolve(ctx, expires_at=cap)
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            async with Scope(ctx, registry=self.registry):
                await self.app(scope, receive, tracking_send)
        except ContextExpiredError:
            if started:
                raise  # the response is cut off: the client cannot take it as complete
            logger.warning("request deadline passed", extra={"event": "request_expired"})
            await _plain_response(send, 503, "request deadline exceeded", [(b"retry-after", b"1")])

    async def _websocket(
        self, ctx: UserContext, scope: ASGIScope, receive: Receive, send: Send
    ) -> None:
        # The socket's scope has no deadline: the router connection expires it.
        connection_ctx = ctx if ctx.expires_at is None else attrs.evolve(ctx, expires_at=None)
        closed = False

        async def tracking_send(message: Message) -> None:
            nonlocal closed
            if message["type"] == "websocket.close":
                closed = True
            await send(message)

        try:
            async with Scope(connection_ctx, registry=self.registry, lifetime=Lifetime.CONNECTION):
                await self.app(scope, receive, tracking_send)
        except ContextExpiredError:
            if not closed:
                await send({"type": "websocket.close", "code": CLOSE_EXPIRED, "reason": "expired"})


def lifespan(*resources: Any) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """A Starlette ``lifespan=`` that closes each resource at shutdown, last first.

    Each resource has ``aclose()`` (an ``EventRouter``, a ``SessionManager``, a
    ``Registry``) or ``close()``; failures are logged and the rest still close.
    """

    @contextlib.asynccontextmanager
    async def manage(app: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            for resource in reversed(resources):
                try:
                    closer = getattr(resource, "aclose", None) or resource.close
                    result = closer()
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    logger.exception("closing %r at shutdown failed", resource)

    return manage
