"""A registry-provided session commits before the response's status is sent.

``SessionManager.provide_to(registry)`` ends the scope's session block when the
scope ends; for a request, that was after the response: a client got
``200 {"created": true}`` while the commit failed and nothing was written.
``IsolationMiddleware`` now finishes the scope's work (``Scope.finish()``)
before the status of a complete response, and before the last chunk of a
streaming one. Real SQLite files through aiosqlite; FastAPI and Starlette.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any

import anyio
import pytest

pytest.importorskip("starlette", reason="needs the starlette extra")
pytest.importorskip("aiosqlite", reason="needs the sqlalchemy extra")

from fastapi import Depends, FastAPI
from sqlalchemy import String, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

import isolation
from _support.databases import sqlite_engine
from isolation import Registry, UserContext
from isolation.integrations.fastapi import from_scope
from isolation.integrations.starlette import IsolationMiddleware
from isolation.sessions import SessionManager


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "commit_items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)


def authenticate(conn: HTTPConnection) -> UserContext | None:
    user = conn.headers.get("x-user") or conn.query_params.get("user")
    return None if user is None else UserContext.new(user)


Session = Annotated[AsyncSession, Depends(from_scope(AsyncSession))]


class Service:
    """One database, its manager and registry, and a reader that bypasses them."""

    def __init__(self, path: Path, engine: AsyncEngine) -> None:
        self.path = path
        self.engine = engine
        self.manager = SessionManager(engine)
        self.registry = Registry()
        self.manager.provide_to(self.registry)

    def names(self) -> list[str]:
        """The committed rows, read with a connection of its own."""
        # closing(): a sqlite3 connection's own `with` commits but never closes it.
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            return [row[0] for row in db.execute("SELECT name FROM commit_items ORDER BY id")]

    def fastapi(self) -> FastAPI:
        api = FastAPI()
        api.add_middleware(IsolationMiddleware, authenticate=authenticate, registry=self.registry)

        @api.post("/items/{name}")
        async def create(name: str, session: Session) -> dict[str, bool]:
            session.add(Item(name=f"audit of {name}"))  # a second row of the same transaction
            session.add(Item(name=name))
            return {"created": True}

        return api


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    path = tmp_path / "items.sqlite"
    engine = sqlite_engine(str(path))

    async def create() -> None:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        await engine.dispose()

    anyio.run(create, backend="asyncio")
    yield Service(path, engine)
    anyio.run(engine.dispose, backend="asyncio")


class TestCompleteResponse:
    def test_failed_commit_is_a_500_and_nothing_is_written(self, service: Service) -> None:
        """The unique constraint fails at the commit: the client sees 500, not 200."""
        with TestClient(service.fastapi(), raise_server_exceptions=False) as client:
            first = client.post("/items/a", headers={"x-user": "alice"})
            duplicate = client.post("/items/a", headers={"x-user": "alice"})
        assert (first.status_code, first.json()) == (200, {"created": True})
        assert duplicate.status_code == 500
        assert "created" not in duplicate.text
        assert service.names() == ["audit of a", "a"]  # neither row of the failed request

    def test_failed_commit_reaches_the_server(self, service: Service) -> None:
        """The commit's error is raised to the server (logged there), after the app's 500."""
        with TestClient(service.fastapi()) as client:
            client.post("/items/b", headers={"x-user": "alice"})
            with pytest.raises(IntegrityError):
                client.post("/items/b", headers={"x-user": "alice"})

    def test_commit_happens_before_the_status_is_sent(self, service: Service) -> None:
        """When the status leaves the middleware, the row is already committed."""
        api = service.fastapi()
        at_status: list[list[str]] = []

        async def outermost(scope: Any, receive: Any, send: Any) -> None:
            async def watching(message: Any) -> None:
                if message["type"] == "http.response.start":
                    at_status.append(service.names())
                await send(message)

            await api(scope, receive, watching)

        with TestClient(outermost) as client:
            response = client.post("/items/c", headers={"x-user": "alice"})
        assert response.status_code == 200
        assert at_status == [["audit of c", "c"]]

    def test_a_session_left_unused_costs_nothing(self, service: Service) -> None:
        """A request that never asks for a session answers as before."""
        api = service.fastapi()

        @api.get("/ping")
        async def ping() -> dict[str, str]:
            return {"user": isolation.current_context().user_id}

        with TestClient(api) as client:
            assert client.get("/ping", headers={"x-user": "bob"}).json() == {"user": "bob"}
        assert service.manager.stats().commits == 0


def _starlette(service: Service, routes: list[Any]) -> Starlette:
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(IsolationMiddleware, authenticate=authenticate, registry=service.registry)
        ],
    )


async def _drive(
    app: Any, path: str, spec_version: str = "2.4"
) -> tuple[list[dict[str, Any]], BaseException | None]:
    """Run one GET through the ASGI app; return what it sent, and what it raised.

    Under ASGI spec 2.4 Starlette streams in the request's task; before, in a task
    of its own beside a disconnect listener.
    """
    sent: list[dict[str, Any]] = []
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": spec_version},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"x-user", b"alice")],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }
    raised: BaseException | None = None
    try:
        with anyio.fail_after(30):  # a hang guard only
            await app(scope, receive, send)
    except Exception as exc:
        raised = exc
    return sent, raised


class TestStreamingResponse:
    @staticmethod
    def app(service: Service, name: str) -> Starlette:
        async def export(request: Request) -> StreamingResponse:
            session = await isolation.current_scope().aget(AsyncSession)
            session.add(Item(name=name))

            async def lines() -> AsyncIterator[str]:
                for n in range(3):
                    yield f"line {n}\n"

            return StreamingResponse(lines())

        return _starlette(service, [Route("/export", export)])

    @pytest.mark.anyio
    @pytest.mark.parametrize("anyio_backend", ["asyncio"])
    @pytest.mark.parametrize("spec_version", ["2.0", "2.4"])
    async def test_failed_commit_cuts_the_response_off(
        self, service: Service, spec_version: str
    ) -> None:
        """The body streams; the commit runs before the last chunk, and its failure means the
        last chunk is never sent: the client sees an incomplete response, never a complete one."""
        sent, raised = await _drive(self.app(service, "s"), "/export", spec_version)
        assert raised is None
        assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
        assert service.names() == ["s"]

        sent, raised = await _drive(self.app(service, "s"), "/export", spec_version)
        assert isinstance(raised, IntegrityError)
        assert sent[0]["type"] == "http.response.start"
        assert sent[0]["status"] == 200
        assert [m["body"] for m in sent[1:]] == [b"line 0\n", b"line 1\n", b"line 2\n"]
        assert all(m.get("more_body") for m in sent[1:])  # no final chunk: cut off
        assert service.names() == ["s"]

    @pytest.mark.anyio
    @pytest.mark.parametrize("anyio_backend", ["asyncio"])
    async def test_status_of_a_stream_is_sent_before_the_commit(self, service: Service) -> None:
        """A stream's status goes out with its first chunk; the row is committed by its end."""
        at_status: list[list[str]] = []
        app = self.app(service, "t")

        async def outermost(scope: Any, receive: Any, send: Any) -> None:
            async def watching(message: Any) -> None:
                if message["type"] == "http.response.start":
                    at_status.append(service.names())
                await send(message)

            await app(scope, receive, watching)

        sent, raised = await _drive(outermost, "/export")
        assert raised is None
        assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
        assert at_status == [[]]
        assert service.names() == ["t"]


class TestAfterTheResponse:
    def test_background_task_opens_its_own_block(self, service: Service) -> None:
        """The request's session block is finished when the response goes out; a
        BackgroundTask that writes opens a block of its own, committed at its end."""
        failures: list[BaseException] = []

        async def create(request: Request) -> JSONResponse:
            session = await isolation.current_scope().aget(AsyncSession)
            session.add(Item(name="request"))

            async def later() -> None:
                try:
                    await session.scalar(select(Item.name))
                except isolation.UsageError as exc:
                    failures.append(exc)
                async with service.manager.session() as own:
                    own.add(Item(name="background"))

            return JSONResponse({"created": True}, background=BackgroundTask(later))

        with TestClient(_starlette(service, [Route("/create", create)])) as client:
            assert client.get("/create", headers={"x-user": "alice"}).status_code == 200
        assert service.names() == ["request", "background"]
        [failure] = failures
        assert "outside its `async with manager.session()` block" in str(failure)

    def test_websocket_session_commits_when_the_socket_ends(self, service: Service) -> None:
        """A WebSocket has no response to order against: its scope's session commits when the
        socket ends, as before."""

        async def socket(websocket: WebSocket) -> None:
            await websocket.accept()
            session = await isolation.current_scope().aget(AsyncSession)
            session.add(Item(name=await websocket.receive_text()))
            await websocket.send_text("stored")
            await websocket.close()

        with TestClient(_starlette(service, [WebSocketRoute("/ws", socket)])) as client:
            with client.websocket_connect("/ws?user=alice") as ws:
                ws.send_text("from a socket")
                assert ws.receive_text() == "stored"
        assert service.names() == ["from a socket"]

    def test_rows_are_read_back_through_the_session(self, service: Service) -> None:
        """Committed rows are visible to the next request's session."""
        api = service.fastapi()

        @api.get("/items")
        async def items(session: Session) -> list[str]:
            return list((await session.scalars(select(Item.name).order_by(Item.id))).all())

        with TestClient(api) as client:
            client.post("/items/d", headers={"x-user": "alice"})
            assert client.get("/items", headers={"x-user": "alice"}).json() == ["audit of d", "d"]
