"""The chat service: FastAPI, ``IsolationMiddleware``, the registry, sessions and the router.

Interface (see ``README.md``):

* ``Authorization: Bearer <token>`` on HTTP, where the token is
  ``isolation.tokens.dumps(ctx, key=secret, purpose="chat")``;
* ``POST /ws-ticket`` returns ``{"ticket": ...}``, a single-use ticket for
  ``WS /ws?ticket=<ticket>``;
* ``POST /messages`` with ``{"text": ...}`` stores a message (201) and sends
  it, and the assistant's reply if any, to every WebSocket of the caller;
* ``GET /messages`` returns the caller's conversation in posting order;
* ``GET /health`` runs outside any scope.

``app`` is built from the environment: ``CHAT_SECRET`` (required, at least 64
hex characters), ``CHAT_DATABASE_URL`` (default: ``chat.db`` in the working
directory) and ``CHAT_QUEUE_SIZE`` (default 16). Run it with::

    CHAT_SECRET=$(python -c 'import secrets; print(secrets.token_hex(32))') \\
        uvicorn examples.chat.app:app
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Final

from fastapi import Depends, FastAPI, Request, WebSocket
from pydantic import BaseModel, Field
from sqlalchemy import select
from starlette.requests import HTTPConnection

import isolation
from isolation import UserContext, tokens
from isolation.events import TICKET_PURPOSE, Connection, EventRouter, Overflow
from isolation.integrations.fastapi import CurrentContext, from_scope
from isolation.integrations.starlette import (
    CloseCode,
    IsolationMiddleware,
    authenticated_context,
    lifespan,
    pump,
)
from isolation.logging import install_secrets_filter
from isolation.sessions import SessionManager

from .assistant import Assistant, make_registry
from .models import Base, Message, make_engine

__all__ = [
    "DEFAULT_DATABASE_URL",
    "DEFAULT_QUEUE_SIZE",
    "MAX_FRAME_BYTES",
    "MAX_TEXT",
    "NO_TENANT",
    "REQUEST_TTL",
    "TOKEN_PURPOSE",
    "app",
    "create_app",
]

logger = logging.getLogger("examples.chat")

TOKEN_PURPOSE: Final = "chat"  # noqa: S105 - a token purpose, not a password
"""The purpose of the bearer tokens this service accepts."""
DEFAULT_DATABASE_URL: Final = "sqlite+aiosqlite:///chat.db"
DEFAULT_QUEUE_SIZE: Final = 16
"""Events a WebSocket may fall behind before it is disconnected (close code 1013)."""
REQUEST_TTL: Final = 30.0
"""Seconds an HTTP request may run (its scope's deadline)."""
MAX_TEXT: Final = 65_536
"""The longest message, in characters."""
MAX_FRAME_BYTES: Final = 16 * 1024
"""The largest frame a client may send on its WebSocket (close code 1009 beyond)."""
MIN_SECRET_BYTES: Final = 32
NO_TENANT: Final = "this service needs a token of a context with a tenant_id"
"""The reason of the 403 for a valid token whose context has no tenant."""


class NewMessage(BaseModel):
    text: str = Field(min_length=1, max_length=MAX_TEXT)


# Resolved from the scope IsolationMiddleware entered for the request (with the
# registry): a fresh Assistant per request, checked for shared state.
AssistantOfRequest = Annotated[Assistant, Depends(from_scope(Assistant))]


def _bearer(conn: HTTPConnection) -> str | None:
    scheme, _, credentials = conn.headers.get("authorization", "").partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        return None
    return credentials


def create_app(*, database_url: str, secret: bytes, queue_size: int | None = None) -> FastAPI:
    """Build the chat service.

    Args:
        database_url: An async SQLAlchemy URL (``sqlite+aiosqlite:///chat.db``).
        secret: At least 32 random bytes: it signs and verifies the bearer
            tokens (purpose ``"chat"``) and the WebSocket tickets (their own
            purpose, so neither is accepted as the other).
        queue_size: Events a WebSocket may fall behind before it is
            disconnected; ``CHAT_QUEUE_SIZE`` or 16 when ``None``.

    Raises:
        isolation.ConfigurationError: A short secret or a bad queue size.
    """
    if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
        raise isolation.ConfigurationError(
            f"the chat secret must be at least {MIN_SECRET_BYTES} bytes",
            hint="Use secrets.token_bytes(32), or 64 hex characters in CHAT_SECRET",
        )
    if queue_size is None:
        queue_size = _queue_size_from_environment()
    keys = [secret]
    install_secrets_filter("examples.chat")  # tickets in /ws URLs reach uvicorn's log

    engine = make_engine(database_url)
    manager = SessionManager(engine)
    manager.protect(Message, user_column="owner", tenant_column="tenant")
    registry = make_registry()
    router = EventRouter(keys=keys, queue_size=queue_size, overflow=Overflow.DISCONNECT)

    def authenticate(conn: HTTPConnection) -> UserContext | None:
        """Bearer tokens on HTTP; a ticket in the query string on the WebSocket.

        The ticket is only verified here; ``router.connect(token=...)`` in the
        endpoint redeems it (once). Refusals are ``None``: a 401, or a refused
        handshake. A valid token of a context without a tenant is refused here
        with 403 (messages are protected by their tenant column), never later
        by the sessions, which would be a 500 on every request.
        """
        if conn.scope["type"] == "websocket":
            token, purpose = conn.query_params.get("ticket"), TICKET_PURPOSE
        else:
            token, purpose = _bearer(conn), TOKEN_PURPOSE
        if not token:
            return None
        try:
            ctx = tokens.loads(token, keys=keys, purpose=purpose)
        except isolation.TokenError:
            return None
        if ctx.tenant_id is None:
            raise PermissionError(NO_TENANT)
        return ctx

    @contextlib.asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        install_secrets_filter(
            "examples.chat"
        )  # again: a server may set up its handlers after the import
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        try:
            # Started first to last (the sessions' checks run before the app serves), and
            # closed last first: the router (every socket gets 1001), the sessions, the registry.
            async with lifespan(registry, manager, router)(app):
                yield
        finally:
            await engine.dispose()

    app = FastAPI(title="isolation chat example", lifespan=run)
    app.add_middleware(
        IsolationMiddleware,
        authenticate=authenticate,
        registry=registry,
        ttl=REQUEST_TTL,
        public_paths=("/health",),
    )
    app.state.router = router
    app.state.sessions = manager
    app.state.registry = registry

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/ws-ticket")
    async def ws_ticket(request: Request) -> dict[str, str]:
        # The context as authenticated: the request's own is capped at REQUEST_TTL.
        # A connection lives until its ticket expires; the client re-authenticates
        # over the socket with a fresh ticket before then (see _reauthenticate).
        return {"ticket": router.issue_ticket(authenticated_context(request))}

    @app.post("/messages", status_code=201)
    async def post_message(
        body: NewMessage, ctx: CurrentContext, assistant: AssistantOfRequest
    ) -> dict[str, Any]:
        now = time.time()
        reply_text = assistant.reply_to(body.text)
        async with manager.session() as session:
            posted = Message(author="user", text=body.text, created_at=now)
            session.add(posted)
            reply = None
            if reply_text is not None:
                reply = Message(author="assistant", text=reply_text, created_at=now)
                session.add(reply)
            await session.flush()
        # Committed: now tell every socket of the caller, and no one else.
        result = await router.publish(ctx, posted.to_json())
        if reply is not None:
            await router.publish(ctx, reply.to_json())
        return {**posted.to_json(), "delivered": result.delivered}

    @app.get("/messages")
    async def list_messages() -> list[dict[str, Any]]:
        async with manager.session() as session:
            rows = (await session.scalars(select(Message).order_by(Message.id))).all()
        return [row.to_json() for row in rows]

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        # Register with the router first, then accept (pump() does): an event
        # published right after the handshake is never missed.
        try:
            connection = await router.connect(token=websocket.query_params["ticket"])
        except (isolation.TokenError, isolation.ConnectionLimitError, isolation.ContextError):
            await websocket.close(code=CloseCode.POLICY)  # before accept: a refused handshake
            return
        await pump(
            websocket,
            connection,
            max_frame_bytes=MAX_FRAME_BYTES,
            on_message=_reauthenticate(connection),
        )

    return app


def _reauthenticate(connection: Connection) -> Any:
    """Handle ``{"ticket": ...}`` frames: prove the same user again, extending the socket's life.

    A ticket of anyone else closes the socket with 1008; other frames are ignored.
    """

    async def on_message(data: str | bytes) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            return
        if isinstance(message, dict) and isinstance(message.get("ticket"), str):
            await connection.reauthenticate(message["ticket"])

    return on_message


def _queue_size_from_environment() -> int:
    raw = os.environ.get("CHAT_QUEUE_SIZE")
    if raw is None:
        return DEFAULT_QUEUE_SIZE
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if size < 1:
        raise isolation.ConfigurationError(
            f"CHAT_QUEUE_SIZE must be a whole number >= 1, got {raw!r}",
            hint="Unset it for the default of 16",
        )
    return size


def _secret_from_environment() -> bytes:
    raw = os.environ.get("CHAT_SECRET", "").strip()
    hint = 'Set CHAT_SECRET to 64 hex characters: python -c "import secrets; print(secrets.token_hex(32))"'
    if not raw:
        raise isolation.ConfigurationError("CHAT_SECRET is not set", hint=hint)
    try:
        secret = bytes.fromhex(raw)
    except ValueError:
        # Never echo the value: it is meant to be a secret.
        raise isolation.ConfigurationError("CHAT_SECRET is not hexadecimal", hint=hint) from None
    if len(secret) < MIN_SECRET_BYTES:
        raise isolation.ConfigurationError(
            f"CHAT_SECRET has {len(raw)} hex characters, fewer than {2 * MIN_SECRET_BYTES}",
            hint=hint,
        )
    return secret


app = create_app(
    database_url=os.environ.get("CHAT_DATABASE_URL") or DEFAULT_DATABASE_URL,
    secret=_secret_from_environment(),
)
