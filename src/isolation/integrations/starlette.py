"""Starlette and FastAPI: a pure ASGI middleware that runs each request in its user's scope.

``IsolationMiddleware`` is pure ASGI, never ``BaseHTTPMiddleware``: Starlette's
``BaseHTTPMiddleware`` returns from ``dispatch`` before a streaming body or a
``BackgroundTask`` has run (Kludex/starlette#1081, fastapi/fastapi#2776), so a
scope entered there would end — committing and closing its sessions — while
the response is still being produced. Here the whole ASGI call, streaming body
and background tasks included, runs inside ``isolation.scope``.

* HTTP: ``authenticate(conn)`` returns a :class:`~isolation.UserContext` (the
  request runs in its scope), ``None`` or an expired context (401), raises
  ``InvalidContextError`` or ``TokenError`` (401, logged without the value), or
  ``PermissionError`` (403). CORS preflights carry no credentials: they pass
  through unauthenticated, outside any scope; a ``CORSMiddleware`` inside the
  middleware is refused when it is made (``_cors``). The scope's work is
  finished (:meth:`~isolation.Scope.finish`: provided sessions commit) before
  the status of a complete response and before the last chunk of a streaming
  one, so a failed commit is a 500 or a cut-off response, never a success.
  When the context's deadline passes before the response has started,
  the client gets **503** with ``Retry-After: 1``; after it has started, the
  response is cut off (the server closes the connection without the final
  chunk), so the client never mistakes it for complete; after it is complete
  (a ``BackgroundTask`` still running), the work is cancelled and a warning
  logged. :func:`middleware_stats` counts the three.
* WebSocket: a refused handshake for each refusal above. An
  accepted socket runs in a ``CONNECTION`` scope **without a deadline** —
  expiry of a socket is the router connection's job, so
  ``Connection.reauthenticate`` can extend it; the authenticated context, with
  its deadline, is :func:`websocket_context`. An expiry that escapes the
  endpoint closes the socket with :attr:`CloseCode.EXPIRED` (4001).
* :func:`pump` forwards a router :class:`~isolation.events.Connection` to the
  socket as JSON until either side closes, runs each inbound frame in its own
  ``REQUEST`` scope, and closes the socket with the code of the connection's
  :class:`~isolation.events.CloseReason` (:meth:`CloseCode.of`).
* Lifespan events pass through untouched; :func:`lifespan` starts the router,
  the session manager and the registry (again, on a later start of the app)
  and closes them at shutdown.
"""

from __future__ import annotations

import contextlib
import enum
import inspect
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any, Final

import anyio
import anyio.abc
import attrs
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from isolation import _clock
from isolation._counters import Counter
from isolation._deprecated import moved as _moved
from isolation._errors import (
    ConfigurationError,
    ConnectionClosedError,
    ContextExpiredError,
    InvalidContextError,
    TokenError,
    UsageError,
)
from isolation._lifetime import Lifetime
from isolation.context._model import UserContext
from isolation.context._scope import Scope
from isolation.events import CloseReason, Connection, Event
from isolation.factories._registry import Registry
from isolation.integrations._cors import cors_inside, is_preflight
from isolation.integrations._middleware_stats import MiddlewareStats as _MiddlewareStats

__all__ = [
    "CloseCode",
    "IsolationMiddleware",
    "authenticated_context",
    "lifespan",
    "middleware_stats",
    "pump",
    "websocket_context",
]

logger = logging.getLogger("isolation.context")
_events_logger = logging.getLogger("isolation.events")

ASGIScope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[ASGIScope, Receive, Send], Awaitable[None]]
_Authenticate = Callable[[HTTPConnection], "Awaitable[UserContext | None] | UserContext | None"]
"""``authenticate(conn)``, sync or async: the request's context, or ``None`` (401)."""


class CloseCode(enum.IntEnum):
    """The WebSocket close codes this module sends (ints: ``websocket.close(code)``)."""

    NORMAL = 1000
    """The connection was closed by its owner (``CloseReason.CLOSED``)."""
    GOING_AWAY = 1001
    """The router is shutting down."""
    POLICY = 1008
    """A policy refusal or a failed re-authentication."""
    MESSAGE_TOO_BIG = 1009
    """An inbound frame larger than the configured bound."""
    INTERNAL_ERROR = 1011
    """The ``on_message`` callback of :func:`pump` raised."""
    TRY_AGAIN_LATER = 1013
    """The connection was disconnected for overflow (a slow consumer)."""
    EXPIRED = 4001
    """The connection's context expired (the 4000 range is the application's)."""

    @classmethod
    def of(cls, reason: CloseReason) -> CloseCode:
        """Return the close code for a router connection's close reason.

        ``CLOSED`` 1000 (:attr:`NORMAL`), ``ROUTER_CLOSED`` 1001 (:attr:`GOING_AWAY`),
        ``REAUTH_FAILED`` 1008 (:attr:`POLICY`), ``OVERFLOW`` 1013
        (:attr:`TRY_AGAIN_LATER`), ``EXPIRED`` 4001 (:attr:`EXPIRED`): a client can
        tell "log in again" (4001) from "reconnect later" (1001, 1013).

        Raises:
            ConfigurationError: ``reason`` is not a :class:`~isolation.events.CloseReason`.
        """
        try:
            return _CLOSE_CODES[CloseReason(reason)]
        except ValueError:
            raise ConfigurationError(
                f"CloseCode.of() takes an isolation.events.CloseReason, got {reason!r}"
            ) from None


_DEFAULT_MAX_FRAME_BYTES: Final = 64 * 1024
"""The largest inbound frame :func:`pump` accepts by default, in bytes."""

_OnMessage = Callable[[str | bytes], "Awaitable[None] | None"]
"""``on_message(data)``, sync or async: handles one inbound frame (text or bytes)."""

# Names that left the surface (issue 19): they warn for one release.
__getattr__ = _moved(
    __name__,
    {
        **{
            f"CLOSE_{code.name}": ("isolation.integrations.starlette", f"CloseCode.{code.name}")
            for code in CloseCode
        },
        "Authenticate": ("isolation.integrations.starlette", "_Authenticate"),
        "DEFAULT_MAX_FRAME_BYTES": ("isolation.integrations.starlette", "_DEFAULT_MAX_FRAME_BYTES"),
        "MiddlewareStats": ("isolation.integrations._middleware_stats", "MiddlewareStats"),
        "OnMessage": ("isolation.integrations.starlette", "_OnMessage"),
        "close_code": ("isolation.integrations.starlette", "CloseCode.of"),
    },
)

_STATE_KEY: Final = "isolation.context"
_CLOSE_CODES: Final = {
    CloseReason.CLOSED: CloseCode.NORMAL,
    CloseReason.OVERFLOW: CloseCode.TRY_AGAIN_LATER,
    CloseReason.EXPIRED: CloseCode.EXPIRED,
    CloseReason.REAUTH_FAILED: CloseCode.POLICY,
    CloseReason.ROUTER_CLOSED: CloseCode.GOING_AWAY,
}


_expired_before_response = Counter()
_cut_off = Counter()
_cancelled_after_response = Counter()


def middleware_stats() -> _MiddlewareStats:
    """Return a snapshot of :class:`IsolationMiddleware`'s deadline counters.

    Its fields: ``expired_before_response`` (answered 503), ``cut_off`` (the
    deadline passed while the response was being sent) and
    ``cancelled_after_response`` (a ``BackgroundTask`` cancelled after a complete
    response).
    """
    return _MiddlewareStats(
        expired_before_response=_expired_before_response.value,
        cut_off=_cut_off.value,
        cancelled_after_response=_cancelled_after_response.value,
    )


def authenticated_context(conn: HTTPConnection | ASGIScope) -> UserContext:
    """Return the context ``authenticate`` gave this request or WebSocket, as it was.

    That is the context before the middleware capped an HTTP request's deadline
    with ``ttl``, and with the deadline a WebSocket's scope leaves out: issue
    tickets for it (``router.issue_ticket(authenticated_context(request))``),
    or the connection would expire with the request that asked for the ticket.

    Raises:
        ConfigurationError: No ``IsolationMiddleware`` authenticated this connection.
    """
    if not isinstance(conn, HTTPConnection | Mapping):
        raise UsageError(
            f"authenticated_context() takes a Request, a WebSocket or an ASGI scope, "
            f"got {type(conn).__name__}"
        )
    scope = conn.scope if isinstance(conn, HTTPConnection) else conn
    state = scope.get("state")
    ctx = state.get(_STATE_KEY) if isinstance(state, Mapping) else None
    if not isinstance(ctx, UserContext):
        raise ConfigurationError(
            "no authenticated context on this connection",
            hint="Install IsolationMiddleware in front of this endpoint",
        )
    return ctx


def websocket_context(conn: HTTPConnection | ASGIScope) -> UserContext:
    """Return the authenticated context of a WebSocket (with its deadline).

    The WebSocket's scope has no deadline, so connect the router with this
    context explicitly: ``await router.connect(websocket_context(ws))``. The
    same as :func:`authenticated_context`.
    """
    return authenticated_context(conn)


def _reason(refused: PermissionError) -> str:
    """The detail of a 403: a plain ``PermissionError("reason")`` is the app's reason to show.

    Subclasses (``CrossContextAccessError``) and operating-system errors (a key
    file that cannot be read) may name internals: those say ``forbidden``.
    """
    if type(refused) is PermissionError and refused.errno is None and len(refused.args) == 1:
        reason = refused.args[0]
        if isinstance(reason, str) and reason:
            return reason
    return "forbidden"


def _log_refused(scope: ASGIScope, error: InvalidContextError | TokenError) -> None:
    """Log a credential that did not give a valid context: its kind and rule, never its ids."""
    extra: dict[str, Any] = {
        "event": "authentication_refused",
        "error": type(error).__name__,
        "method": scope.get("method"),
    }
    if isinstance(error, InvalidContextError):
        # field and rule only: the message also quotes the start of the bad value.
        extra.update(field=error.field, rule=error.rule)
        logger.warning(
            "authenticate() built an invalid context (%s %s); answered 401",
            error.field,
            error.rule,
            extra=extra,
        )
    else:
        logger.info(
            "authenticate() refused a token (%s); answered 401", type(error).__name__, extra=extra
        )


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


def _paths(paths: Iterable[str]) -> tuple[str, ...]:
    if isinstance(paths, str):
        raise ConfigurationError(
            f"public_paths takes a list of paths, not one string: {paths!r}",
            hint=f"Write public_paths=({paths!r},)",
        )
    if isinstance(paths, bytes | bytearray) or not isinstance(paths, Iterable):
        raise ConfigurationError(
            f"public_paths must be an iterable of str paths, got {type(paths).__name__}"
        )
    checked = tuple(paths)
    for path in checked:
        # Checked here: a bytes or int path would fail every request, not this one call.
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigurationError(
                f"public_paths must hold str paths starting with '/', got {path!r:.80}",
                hint="Write an exact path ('/health') or a prefix ending in '/' ('/static/')",
            )
    return checked


def _ttl(ttl: object) -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl < math.inf:
        # inf would pass "> 0" and then make every request's deadline invalid.
        raise ConfigurationError(f"ttl must be finite seconds > 0, or None, got {ttl!r:.40}")
    return float(ttl)


@attrs.define(eq=False)
class IsolationMiddleware:
    """Authenticate each HTTP request and WebSocket and run it in its user's scope.

    Args:
        app: The ASGI app to wrap.
        authenticate: ``authenticate(conn)``, sync or async: a context, ``None``
            (not authenticated: 401), ``InvalidContextError`` or ``TokenError``
            (401), or ``PermissionError`` (403; a plain one's message is the
            detail). Anything else it raises is the app's 500.
        registry: Given to every scope, so endpoints can ``scope.get(T)``.
        ttl: Caps each context's deadline at ``now + ttl`` seconds (HTTP
            only): finite and > 0.
        public_paths: Paths served outside any scope (login, health, static
            files): ``str`` paths starting with ``/``, each an exact path or a
            prefix ending in ``/``.

    Raises:
        ConfigurationError: A bad argument, named, or a ``CORSMiddleware``
            inside this one, when the middleware is made (never at the first
            request).
    """

    app: ASGIApp
    authenticate: _Authenticate = attrs.field(kw_only=True)
    registry: Registry | None = attrs.field(default=None, kw_only=True)
    ttl: float | None = attrs.field(default=None, kw_only=True, converter=_ttl)
    public_paths: tuple[str, ...] = attrs.field(default=(), kw_only=True, converter=_paths)

    def __attrs_post_init__(self) -> None:
        if not callable(self.app):
            raise ConfigurationError(f"app must be an ASGI app, got {type(self.app).__name__}")
        if not callable(self.authenticate):
            raise ConfigurationError("authenticate must be a callable")
        if self.registry is not None and not isinstance(self.registry, Registry):
            raise ConfigurationError(
                f"registry must be an isolation.Registry or None, got {type(self.registry).__name__}"
            )
        if cors_inside(self.app):
            raise ConfigurationError(
                "CORSMiddleware is inside IsolationMiddleware: the isolation middleware's "
                "401, 403 and 503 would carry no CORS headers, so a browser front end sees "
                "network errors instead",
                hint=(
                    "Put CORSMiddleware outside: app.add_middleware() makes the middleware "
                    "added last the outermost, so add CORSMiddleware after IsolationMiddleware; "
                    "in Starlette(middleware=[...]) list it before IsolationMiddleware"
                ),
            )

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if (
            kind not in ("http", "websocket")
            or _is_public(scope.get("path", ""), self.public_paths)
            or (kind == "http" and is_preflight(scope))
        ):
            # A CORS preflight carries no credentials by the Fetch standard: it is
            # never authenticated, and runs outside any scope like a public path.
            await self.app(scope, receive, send)
            return
        try:
            ctx = await self._authenticate(scope)
        except PermissionError as refused:
            await self._refuse(kind, send, receive, 403, _reason(refused))
            return
        except (InvalidContextError, TokenError) as invalid:
            _log_refused(scope, invalid)
            await self._refuse(kind, send, receive, 401, "not authenticated")
            return
        if ctx is None or (ctx.expires_at is not None and ctx.expires_at <= _clock._now()):
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
            await send({"type": "websocket.close", "code": CloseCode.POLICY, "reason": reason})

    async def _http(self, ctx: UserContext, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if self.ttl is not None:
            cap = _clock._now() + self.ttl
            if ctx.expires_at is None or ctx.expires_at > cap:
                ctx = attrs.evolve(ctx, expires_at=cap)
        started = completed = streaming = False
        held: Message | None = None
        request_scope: Scope | None = None

        async def finishing_send(message: Message) -> None:
            # The status waits for the first body message: a complete body means the
            # scope's work is finished (sessions commit) first, so that a failed commit
            # is the app's 500, never a 2xx; a streaming one finishes before its last
            # chunk, so that a failure cuts the response off.
            nonlocal started, completed, streaming, held
            kind = message["type"]
            if kind == "http.response.start":
                held = message
                return
            more = kind == "http.response.body" and message.get("more_body", False)
            if held is not None:
                start, held = held, None
                if more:
                    streaming = True
                else:
                    assert request_scope is not None
                    await request_scope.finish()
                started = True
                await send(start)
            elif streaming and kind == "http.response.body" and not more:
                assert request_scope is not None
                await request_scope.finish()
            if kind == "http.response.body" and not more:
                completed = True
            await send(message)

        try:
            async with Scope(ctx, registry=self.registry) as request_scope:
                await self.app(scope, receive, finishing_send)
        except ContextExpiredError:
            # Never the user id in these records: the request id links them to the request.
            extra = {"request_id": ctx.request_id, "method": scope.get("method")}
            if completed:
                # The client has its whole response; what ran on (a BackgroundTask) was
                # cancelled. Said, and counted, so that it is never silent.
                _cancelled_after_response.increment()
                logger.warning(
                    "work of a request still running at its deadline was cancelled after "
                    "the response was sent",
                    extra={"event": "cancelled_after_response", **extra},
                )
                return
            if started:
                _cut_off.increment()
                raise  # the response is cut off: the client cannot take it as complete
            _expired_before_response.increment()
            logger.warning("request deadline passed", extra={"event": "request_expired", **extra})
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
                await send(
                    {"type": "websocket.close", "code": CloseCode.EXPIRED, "reason": "expired"}
                )


async def pump(
    websocket: WebSocket,
    connection: Connection,
    *,
    max_frame_bytes: int = _DEFAULT_MAX_FRAME_BYTES,
    on_message: _OnMessage | None = None,
) -> int | None:
    """Forward a router connection to a WebSocket as JSON until either side closes.

    Accepts the socket if the endpoint has not (connect to the router first,
    then accept, so that no event published after the handshake is missed).
    Each :class:`~isolation.events.Event` goes out as one text frame, a JSON
    object with ``id``, ``kind``, ``seq``, ``created_at`` and ``payload``.
    Inbound frames are read at the same time: one larger than
    ``max_frame_bytes`` closes the socket with 1009; ``on_message(data)``
    (sync or async) handles the others, one at a time, each in its own
    ``REQUEST`` scope of the connection's context (a child of the middleware's
    ``CONNECTION`` scope, so ``scope.get(T)`` gives a fresh request product).

    When the router closes the connection, the socket is closed with
    :meth:`CloseCode.of` its reason: 1000 ``CLOSED``, 1013 ``OVERFLOW``,
    4001 ``EXPIRED``, 1008 ``REAUTH_FAILED``, 1001 ``ROUTER_CLOSED``. When the
    client goes away, the router connection is closed. Either way the router
    connection is closed when this returns, also on cancellation.

    A socket that stops draining blocks the send in progress; the overflow
    that follows is seen, and the 1013 sent, when the send completes (the
    server's keep-alive ping ends a client that never reads again).

    Args:
        websocket: The Starlette WebSocket (accepted or not).
        connection: The router connection, bound to the socket's user.
        max_frame_bytes: The largest inbound frame accepted (UTF-8 bytes for text).
        on_message: Handles each inbound frame; ``None`` ignores them. If it
            raises ``ContextExpiredError`` the socket closes with 4001; if the
            connection was closed under it (a failed ``reauthenticate``), with
            that reason's code; anything else closes it with 1011 and is re-raised.

    Returns:
        The close code sent, or ``None`` when the client closed first.

    Raises:
        ConfigurationError: ``max_frame_bytes`` is not a positive int, or
            ``on_message`` is not callable.
        UsageError: ``websocket`` or ``connection`` is not of its type.
    """
    if isinstance(max_frame_bytes, bool) or not isinstance(max_frame_bytes, int):
        raise ConfigurationError(f"max_frame_bytes must be an int >= 1, got {max_frame_bytes!r}")
    if max_frame_bytes < 1:
        raise ConfigurationError(f"max_frame_bytes must be an int >= 1, got {max_frame_bytes!r}")
    if on_message is not None and not callable(on_message):
        raise ConfigurationError("on_message must be a callable or None")
    if not isinstance(websocket, WebSocket):
        raise UsageError(f"pump() takes a starlette WebSocket, got {type(websocket).__name__}")
    if not isinstance(connection, Connection):
        raise UsageError(
            f"pump() takes an isolation.events.Connection, got {type(connection).__name__}"
        )
    run = _Pump(websocket, connection, max_frame_bytes, on_message)
    try:
        if websocket.application_state is WebSocketState.CONNECTING:
            await websocket.accept()
        async with anyio.create_task_group() as tasks:
            run.tasks = tasks
            tasks.start_soon(run.forward)
            tasks.start_soon(run.read)
    finally:
        connection.close()
    if run.code is not None and _can_close(websocket):
        # The client may vanish between the decision and the close frame.
        with contextlib.suppress(WebSocketDisconnect, OSError):
            await websocket.close(code=run.code, reason=run.reason)
    if run.error is not None:
        raise run.error
    return run.code


def _can_close(websocket: WebSocket) -> bool:
    return (
        websocket.application_state is WebSocketState.CONNECTED
        and websocket.client_state is not WebSocketState.DISCONNECTED
    )


def _encode(event: Event) -> str:
    return json.dumps(
        {
            "id": event.id,
            "kind": event.kind,
            "seq": event.seq,
            "created_at": event.created_at,
            "payload": event.payload,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def _too_big(data: str | bytes, limit: int) -> bool:
    size = len(data)
    if isinstance(data, bytes) or size > limit:
        return size > limit
    # A str of n characters is at most 4n UTF-8 bytes: encode only when that could matter.
    return size * 4 > limit and len(data.encode("utf-8", "surrogatepass")) > limit


class _Pump:
    """The two halves of :func:`pump`; the first to decide how it ends wins."""

    def __init__(
        self,
        websocket: WebSocket,
        connection: Connection,
        max_frame_bytes: int,
        on_message: _OnMessage | None,
    ) -> None:
        self.websocket = websocket
        self.connection = connection
        self.max_frame_bytes = max_frame_bytes
        self.on_message = on_message
        self.tasks: anyio.abc.TaskGroup | None = None
        self.decided = False
        self.code: int | None = None
        self.reason = ""
        self.error: BaseException | None = None

    def decide(
        self, code: int | None, reason: str = "", error: BaseException | None = None
    ) -> None:
        if not self.decided:
            self.decided = True
            self.code, self.reason, self.error = code, reason, error
        assert self.tasks is not None
        self.tasks.cancel_scope.cancel()

    async def forward(self) -> None:
        connection, send = self.connection, self.websocket.send_text
        while True:
            try:
                event = await connection.receive()
            except ConnectionClosedError as exc:
                self.decide(CloseCode.of(exc.reason), exc.reason.value)
                return
            try:
                text = _encode(event)
            except (TypeError, ValueError) as exc:
                self.decide(CloseCode.INTERNAL_ERROR, "internal error", exc)
                return
            try:
                await send(text)
            except (WebSocketDisconnect, OSError):  # the client went away mid-send
                self.decide(None)
                return

    async def read(self) -> None:
        receive, limit = self.websocket.receive, self.max_frame_bytes
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.decide(None)
                return
            text = message.get("text")
            data: str | bytes = text if text is not None else (message.get("bytes") or b"")
            if _too_big(data, limit):
                self.decide(CloseCode.MESSAGE_TOO_BIG, "frame too large")
                return
            if self.on_message is not None and not await self._handle(data):
                return

    async def _handle(self, data: str | bytes) -> bool:
        """Run ``on_message`` in a REQUEST scope; return whether to keep reading."""
        connection = self.connection
        assert self.on_message is not None
        try:
            async with Scope(connection.context):
                result = self.on_message(data)
                if inspect.isawaitable(result):
                    await result
        except ContextExpiredError:
            self.decide(CloseCode.EXPIRED, CloseReason.EXPIRED.value)
            return False
        except ConnectionClosedError as exc:
            if connection.closed and connection.close_reason is not None:
                reason = connection.close_reason
                self.decide(CloseCode.of(reason), reason.value)
            else:
                self.decide(CloseCode.INTERNAL_ERROR, "internal error", exc)
            return False
        except Exception as exc:
            _events_logger.warning(
                "on_message failed on the connection %s; closing the socket with %d",
                connection.id,
                CloseCode.INTERNAL_ERROR,
                extra={"event": "on_message_failed", "connection_id": connection.id},
            )
            self.decide(CloseCode.INTERNAL_ERROR, "internal error", exc)
            return False
        return True


def lifespan(*resources: Any) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """A Starlette ``lifespan=`` that starts each resource, and closes it at shutdown, last first.

    Each resource has ``aclose()`` (an ``EventRouter``, a ``SessionManager``, a
    ``Registry``) or ``close()``. At startup, ``start()`` is called (and
    awaited) on each resource that has one, first to last: the session
    manager's startup checks run before the app serves, and resources closed
    by an earlier start of the app (a module-scoped ``TestClient`` starts it
    once per test module, each time on a new event loop) open again. A
    failure to start is raised (the app does not start); failures to close are
    logged and the rest still close.

    Raises:
        ConfigurationError: A resource has neither ``aclose()`` nor ``close()``
            (checked here, not at shutdown).
    """
    for resource in resources:
        if not callable(getattr(resource, "aclose", None) or getattr(resource, "close", None)):
            raise ConfigurationError(
                f"lifespan() takes resources with aclose() or close(), got {type(resource).__name__}"
            )

    @contextlib.asynccontextmanager
    async def manage(app: Any) -> AsyncIterator[None]:
        try:
            for resource in resources:
                start = getattr(resource, "start", None)
                if callable(start):
                    result = start()
                    if inspect.isawaitable(result):
                        await result
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
