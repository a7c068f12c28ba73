"""The WebSocket pump with Starlette's test client against a real in-memory EventRouter.

Each test runs on asyncio and trio (the test client's ``backend``). The router
is used only from the app's event loop: the test thread drives it through
HTTP routes, never directly.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import pytest

pytest.importorskip("starlette", reason="needs the starlette extra")

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

import isolation
from isolation import Lifetime, Principal, Registry, UserContext, tokens
from isolation.events import TICKET_PURPOSE, CloseReason, Connection, EventRouter, Overflow
from isolation.integrations.starlette import (
    CloseCode,
    IsolationMiddleware,
    authenticated_context,
    pump,
    websocket_context,
)
from isolation.testing import FakeClock

OnMessage = Callable[[str | bytes], Awaitable[None] | None]  # what pump() accepts

LIMIT = 1024
KEY = os.urandom(32)


def authenticate(conn: HTTPConnection) -> UserContext | None:
    user = conn.headers.get("x-user") or conn.query_params.get("user")
    if user is None:
        return None
    ttl = conn.headers.get("x-ttl")
    return UserContext.new(user, tenant_id="acme", ttl=float(ttl) if ttl else None)


class Harness:
    """A Starlette app with one pumped WebSocket route and HTTP routes that drive the router."""

    def __init__(
        self,
        *,
        router: EventRouter | None = None,
        on_message: Callable[[Harness, Connection], OnMessage] | None = None,
        registry: Registry | None = None,
        clock: FakeClock | None = None,
    ) -> None:
        self.router = router or EventRouter(keys=[KEY])
        self.connections: dict[str, Connection] = {}
        self.results: list[int | None] = []
        self.errors: list[BaseException] = []
        self.finished = threading.Event()
        self.clock = clock
        self.make_handler = on_message
        self.app = Starlette(
            routes=[
                WebSocketRoute("/ws", self.ws),
                Route("/publish", self.publish, methods=["POST"]),
                Route("/admin/close-router", self.close_router, methods=["POST"]),
                Route("/admin/advance", self.advance, methods=["POST"]),
            ],
            middleware=[
                Middleware(
                    IsolationMiddleware,
                    authenticate=authenticate,
                    registry=registry,
                    public_paths=("/admin/",),
                )
            ],
        )

    async def ws(self, websocket: WebSocket) -> None:
        # Connect to the router first, then let the pump accept: nothing is missed.
        connection = await self.router.connect(websocket_context(websocket))
        self.connections[connection.user_id] = connection
        handler = None if self.make_handler is None else self.make_handler(self, connection)
        try:
            self.results.append(
                await pump(websocket, connection, max_frame_bytes=LIMIT, on_message=handler)
            )
        except Exception as exc:
            self.errors.append(exc)
            raise
        finally:
            self.finished.set()

    async def publish(self, request: Request) -> JSONResponse:
        """Publish ``n`` events to the caller, with no checkpoint in between."""
        ctx = isolation.current_context()
        payload: Any = request.query_params.get("payload")
        delivered = 0
        for number in range(int(request.query_params.get("n", "1"))):
            result = await self.router.publish(ctx, payload or {"n": number})
            delivered += result.delivered
        return JSONResponse({"delivered": delivered})

    async def close_router(self, request: Request) -> PlainTextResponse:
        await self.router.aclose()
        return PlainTextResponse("closed")

    async def advance(self, request: Request) -> PlainTextResponse:
        assert self.clock is not None
        self.clock.advance(float(request.query_params["seconds"]))
        return PlainTextResponse("advanced")

    def wait_finished(self) -> None:
        """Wait for the WebSocket endpoint to return (a hang guard, not synchronisation)."""
        assert self.finished.wait(timeout=30), "the WebSocket endpoint did not return"


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    """The test client's event loop."""
    return str(request.param)


@pytest.fixture
def harness() -> Harness:
    return Harness()


@pytest.fixture
def client(harness: Harness, backend: str) -> Iterator[TestClient]:
    with TestClient(harness.app, backend=backend) as test_client:
        yield test_client


def close_code_of(socket: Any) -> int:
    """Read from the socket until it closes; return the close code (events before it are skipped)."""
    with pytest.raises(WebSocketDisconnect) as info:
        while True:
            socket.receive_json()
    return info.value.code


class TestForwarding:
    def test_events_reach_the_socket_as_json(self, client: TestClient) -> None:
        """Each event arrives as JSON with id, kind, seq and payload, in order."""
        with client.websocket_connect("/ws?user=alice") as socket:
            assert client.post("/publish?n=2", headers={"x-user": "alice"}).json() == {
                "delivered": 2
            }
            first, second = socket.receive_json(), socket.receive_json()
        assert (first["kind"], first["seq"], first["payload"]) == ("message", 1, {"n": 0})
        assert (second["kind"], second["seq"], second["payload"]) == ("message", 2, {"n": 1})
        assert first["id"] != second["id"]
        assert isinstance(first["created_at"], float)

    def test_no_event_of_another_user(self, client: TestClient) -> None:
        """A socket gets its own user's events only: the first frame bob sees is his own."""
        with (
            client.websocket_connect("/ws?user=alice") as alice,
            client.websocket_connect("/ws?user=bob") as bob,
        ):
            client.post("/publish?n=3&payload=for-alice", headers={"x-user": "alice"})
            client.post("/publish?payload=for-bob", headers={"x-user": "bob"})
            assert bob.receive_json()["payload"] == "for-bob"
            assert [alice.receive_json()["payload"] for _ in range(3)] == ["for-alice"] * 3

    def test_connected_before_the_handshake_completes(self, client: TestClient) -> None:
        """Events published right after the handshake are delivered: the router saw the socket first."""
        with client.websocket_connect("/ws?user=alice") as socket:
            client.post("/publish", headers={"x-user": "alice"})
            assert socket.receive_json()["seq"] == 1


class TestClosing:
    def test_client_disconnect_closes_the_router_connection(
        self, harness: Harness, client: TestClient
    ) -> None:
        """The client leaving closes the router connection (reason CLOSED); nothing is sent."""
        with client.websocket_connect("/ws?user=alice") as socket:
            socket.close(CloseCode.NORMAL)
            harness.wait_finished()
        connection = harness.connections["alice"]
        assert connection.close_reason is CloseReason.CLOSED
        assert harness.results == [None]

    def test_overflow_closes_with_1013(self, backend: str) -> None:
        """A connection disconnected for overflow closes its socket with 1013; others carry on."""
        harness = Harness(router=EventRouter(queue_size=4, overflow=Overflow.DISCONNECT))
        with (
            TestClient(harness.app, backend=backend) as client,
            client.websocket_connect("/ws?user=alice") as alice,
            client.websocket_connect("/ws?user=bob") as bob,
        ):
            # Ten publishes without a checkpoint: the pump cannot drain in between.
            assert client.post("/publish?n=10", headers={"x-user": "alice"}).json() == {
                "delivered": 4
            }
            assert close_code_of(alice) == CloseCode.TRY_AGAIN_LATER
            client.post("/publish?payload=still-here", headers={"x-user": "bob"})
            assert bob.receive_json()["payload"] == "still-here"
        assert harness.connections["alice"].close_reason is CloseReason.OVERFLOW
        assert harness.router.stats().overflow_disconnects == 1

    def test_router_shutdown_closes_with_1001(self, harness: Harness, client: TestClient) -> None:
        """Closing the router closes every socket with 1001."""
        with client.websocket_connect("/ws?user=alice") as socket:
            client.post("/admin/close-router")
            assert close_code_of(socket) == CloseCode.GOING_AWAY

    def test_expiry_closes_with_4001(self, fake_clock: FakeClock, backend: str) -> None:
        """The connection's context expiring closes the socket with CloseCode.EXPIRED."""
        harness = Harness(clock=fake_clock)
        with (
            TestClient(harness.app, backend=backend) as client,
            client.websocket_connect("/ws?user=alice", headers={"x-ttl": "60"}) as socket,
        ):
            client.post("/publish", headers={"x-user": "alice"})
            assert socket.receive_json()["seq"] == 1
            client.post("/admin/advance?seconds=61")
            assert close_code_of(socket) == CloseCode.EXPIRED
        assert harness.connections["alice"].close_reason is CloseReason.EXPIRED

    def test_large_frame_closes_with_1009(self, client: TestClient, harness: Harness) -> None:
        """A frame over max_frame_bytes (counted in UTF-8 bytes) closes the socket with 1009."""
        with client.websocket_connect("/ws?user=alice") as socket:
            socket.send_text("é" * (LIMIT // 2 + 1))  # fewer characters than LIMIT, more bytes
            assert close_code_of(socket) == CloseCode.MESSAGE_TOO_BIG
        harness.wait_finished()
        assert harness.connections["alice"].closed
        assert harness.results == [CloseCode.MESSAGE_TOO_BIG]

    def test_large_binary_frame_closes_with_1009(self, client: TestClient) -> None:
        """The bound applies to binary frames too."""
        with client.websocket_connect("/ws?user=alice") as socket:
            socket.send_bytes(b"x" * (LIMIT + 1))
            assert close_code_of(socket) == CloseCode.MESSAGE_TOO_BIG


class TestOnMessage:
    def test_each_frame_in_its_own_request_scope(self, backend: str) -> None:
        """on_message runs per frame in a REQUEST scope under the socket's CONNECTION scope."""

        class Socket:
            pass

        class Reply:
            def __init__(self, ctx: UserContext) -> None:
                self.user = ctx.user_id

        registry = Registry()
        registry.provide(Socket, lifetime=Lifetime.CONNECTION)
        registry.provide(Reply)
        seen: list[tuple[str, str, str, int, int]] = []
        # Keep every product alive: ids of dead objects can be reused, which would
        # make two products of different frames look the same.
        kept: list[object] = []

        def make(harness: Harness, connection: Connection) -> OnMessage:
            async def on_message(data: str | bytes) -> None:
                scope = isolation.current_scope()
                assert scope.parent is not None
                reply = scope.get(Reply)
                kept.extend((reply, scope.get(Socket)))
                seen.append(
                    (
                        scope.lifetime.name,
                        scope.parent.lifetime.name,
                        reply.user,
                        id(scope.get(Socket)),
                        id(reply),
                    )
                )
                await harness.router.publish(Principal("acme", connection.user_id), data)

            return on_message

        harness = Harness(on_message=make, registry=registry)
        with (
            TestClient(harness.app, backend=backend) as client,
            client.websocket_connect("/ws?user=alice") as socket,
        ):
            socket.send_text("one")
            assert socket.receive_json()["payload"] == "one"
            socket.send_text("two")
            assert socket.receive_json()["payload"] == "two"
        (lifetime, parent, user, socket_id, reply_id), second = seen
        assert (lifetime, parent, user) == ("REQUEST", "CONNECTION", "alice")
        assert second[3] == socket_id  # one CONNECTION product per socket
        assert second[4] != reply_id  # a fresh REQUEST product per frame

    def test_frame_at_the_bound_is_handled(self, backend: str) -> None:
        """A frame of exactly max_frame_bytes reaches on_message."""

        def make(harness: Harness, connection: Connection) -> OnMessage:
            async def on_message(data: str | bytes) -> None:
                await harness.router.publish(Principal("acme", connection.user_id), len(data))

            return on_message

        harness = Harness(on_message=make)
        with (
            TestClient(harness.app, backend=backend) as client,
            client.websocket_connect("/ws?user=alice") as socket,
        ):
            socket.send_text("x" * LIMIT)
            assert socket.receive_json()["payload"] == LIMIT

    def test_failed_reauthentication_closes_with_1008(self, backend: str) -> None:
        """A frame carrying another user's ticket fails re-authentication: 1008."""

        def make(harness: Harness, connection: Connection) -> OnMessage:
            async def on_message(data: str | bytes) -> None:
                await connection.reauthenticate(data)

            return on_message

        harness = Harness(on_message=make)
        bob_ticket = harness.router.issue_ticket(UserContext.new("bob", tenant_id="acme"))
        with (
            TestClient(harness.app, backend=backend) as client,
            client.websocket_connect("/ws?user=alice") as socket,
        ):
            socket.send_text(bob_ticket)
            assert close_code_of(socket) == CloseCode.POLICY
        assert harness.connections["alice"].close_reason is CloseReason.REAUTH_FAILED

    def test_reauthentication_keeps_the_socket(self, backend: str) -> None:
        """A frame with a fresh ticket of the same user re-authenticates; the socket stays."""

        def make(harness: Harness, connection: Connection) -> OnMessage:
            async def on_message(data: str | bytes) -> None:
                await connection.reauthenticate(data)
                await harness.router.publish(Principal("acme", "alice"), "renewed")

            return on_message

        harness = Harness(on_message=make)
        ticket = harness.router.issue_ticket(UserContext.new("alice", tenant_id="acme"))
        with (
            TestClient(harness.app, backend=backend) as client,
            client.websocket_connect("/ws?user=alice", headers={"x-ttl": "60"}) as socket,
        ):
            socket.send_text(ticket)
            assert socket.receive_json()["payload"] == "renewed"
        # The connection now lives as long as the ticket that re-authenticated it.
        renewed = tokens.loads(ticket, keys=[KEY], purpose=TICKET_PURPOSE)
        assert harness.connections["alice"].expires_at == renewed.expires_at

    def test_expired_context_in_on_message_closes_with_4001(self, backend: str) -> None:
        """on_message raising ContextExpiredError closes the socket with CloseCode.EXPIRED."""

        def make(harness: Harness, connection: Connection) -> OnMessage:
            def on_message(data: str | bytes) -> None:
                raise isolation.ContextExpiredError("the user's context expired")

            return on_message

        harness = Harness(on_message=make)
        with (
            TestClient(harness.app, backend=backend) as client,
            client.websocket_connect("/ws?user=alice") as socket,
        ):
            socket.send_text("hello")
            assert close_code_of(socket) == CloseCode.EXPIRED

    def test_error_closes_with_1011_and_propagates(self, backend: str) -> None:
        """Any other error in on_message closes with 1011 and is raised from pump()."""

        def make(harness: Harness, connection: Connection) -> OnMessage:
            def on_message(data: str | bytes) -> None:
                raise ValueError("bad frame")

            return on_message

        harness = Harness(on_message=make)
        with TestClient(harness.app, backend=backend) as client:
            with pytest.raises(ValueError, match="bad frame"):  # raised when the session exits
                with client.websocket_connect("/ws?user=alice") as socket:
                    socket.send_text("hello")
                    assert close_code_of(socket) == CloseCode.INTERNAL_ERROR
        assert [type(e) for e in harness.errors] == [ValueError]
        assert harness.connections["alice"].closed

    def test_unencodable_payload_closes_with_1011(self, backend: str) -> None:
        """An event whose payload is not JSON closes the socket with 1011."""

        def make(harness: Harness, connection: Connection) -> OnMessage:
            async def on_message(data: str | bytes) -> None:
                await harness.router.publish(Principal("acme", "alice"), {1, 2})

            return on_message

        harness = Harness(on_message=make)
        with TestClient(harness.app, backend=backend) as client:
            with pytest.raises(TypeError):  # raised when the session exits
                with client.websocket_connect("/ws?user=alice") as socket:
                    socket.send_text("go")
                    assert close_code_of(socket) == CloseCode.INTERNAL_ERROR


class TestArguments:
    @pytest.mark.parametrize(
        ("reason", "code"),
        [
            (CloseReason.CLOSED, 1000),
            (CloseReason.OVERFLOW, 1013),
            (CloseReason.EXPIRED, 4001),
            (CloseReason.REAUTH_FAILED, 1008),
            (CloseReason.ROUTER_CLOSED, 1001),
        ],
    )
    def test_close_codes(self, reason: CloseReason, code: int) -> None:
        """Each close reason has its documented close code."""
        assert CloseCode.of(reason) == code

    def test_every_reason_has_a_code(self) -> None:
        """No close reason is left unmapped."""
        assert {CloseCode.of(reason) for reason in CloseReason} == {1000, 1001, 1008, 1013, 4001}

    def test_unknown_reason(self) -> None:
        """Something that is not a CloseReason is a ConfigurationError."""
        with pytest.raises(isolation.ConfigurationError):
            CloseCode.of("nope")  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        "kwargs", [{"max_frame_bytes": 0}, {"max_frame_bytes": True}, {"on_message": 3}]
    )
    def test_bad_arguments(self, kwargs: dict[str, Any]) -> None:
        """Bad settings are refused before the socket is touched."""

        async def main() -> None:
            await pump(None, None, **kwargs)  # type: ignore[arg-type]

        with pytest.raises(isolation.ConfigurationError):
            anyio.run(main)

    def test_authenticated_context_is_not_capped(self) -> None:
        """authenticated_context() gives the context as authenticated, before ttl= capped it."""
        seen: list[tuple[float | None, float | None]] = []

        async def endpoint(request: Request) -> PlainTextResponse:
            seen.append(
                (authenticated_context(request).expires_at, isolation.current_scope().deadline)
            )
            return PlainTextResponse("ok")

        app = Starlette(
            routes=[Route("/", endpoint)],
            middleware=[Middleware(IsolationMiddleware, authenticate=authenticate, ttl=5)],
        )
        with TestClient(app) as client:
            client.get("/", headers={"x-user": "alice"})
        ((uncapped, deadline),) = seen
        assert uncapped is None
        assert deadline is not None
