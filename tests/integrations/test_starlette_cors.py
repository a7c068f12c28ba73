"""IsolationMiddleware with Starlette's real CORSMiddleware, in both orders, and preflights."""

from __future__ import annotations

import pytest

pytest.importorskip("starlette", reason="needs the starlette extra")

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

import isolation
from isolation import UserContext
from isolation.integrations.starlette import IsolationMiddleware

ORIGIN = "https://front.example"
PREFLIGHT = {
    "origin": ORIGIN,
    "access-control-request-method": "POST",
    "access-control-request-headers": "authorization",
}
CORS = {
    "allow_origins": [ORIGIN],
    "allow_methods": ["*"],
    "allow_headers": ["*"],
    "allow_credentials": True,
}


def authenticate(conn: HTTPConnection) -> UserContext | None:
    header = conn.headers.get("authorization", "")
    return UserContext.new(header.removeprefix("Bearer ")) if header.startswith("Bearer ") else None


class Endpoint:
    """The endpoint, counting its calls and the context each saw."""

    def __init__(self) -> None:
        self.seen: list[UserContext | None] = []

    async def handle(self, request: Request) -> JSONResponse:
        ctx = isolation.current_context_or_none()
        self.seen.append(ctx)
        return JSONResponse({"user": None if ctx is None else ctx.user_id})


class TestCORSOutside:
    """The documented order: CORSMiddleware outside, IsolationMiddleware inside."""

    @pytest.fixture(params=["starlette", "fastapi"])
    def app(self, request: pytest.FixtureRequest) -> tuple[object, Endpoint]:
        endpoint = Endpoint()
        if request.param == "starlette":
            app: object = Starlette(
                routes=[Route("/items", endpoint.handle, methods=["GET", "POST"])],
                middleware=[
                    Middleware(CORSMiddleware, **CORS),  # listed first: the outermost
                    Middleware(IsolationMiddleware, authenticate=authenticate),
                ],
            )
        else:
            api = FastAPI()
            api.add_api_route("/items", endpoint.handle, methods=["GET", "POST"])
            api.add_middleware(IsolationMiddleware, authenticate=authenticate)
            api.add_middleware(CORSMiddleware, **CORS)  # added last: the outermost
            app = api
        return app, endpoint

    def test_preflight_is_answered_by_cors_and_reaches_no_endpoint(
        self, app: tuple[object, Endpoint]
    ) -> None:
        """A browser's preflight carries no credentials: CORS answers it, 200, no endpoint."""
        asgi, endpoint = app
        with TestClient(asgi) as client:  # type: ignore[arg-type]
            response = client.options("/items", headers=PREFLIGHT)
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == ORIGIN
        assert endpoint.seen == []

    def test_refusals_carry_cors_headers(self, app: tuple[object, Endpoint]) -> None:
        """The middleware's 401 passes through CORS: the front end can read it."""
        asgi, endpoint = app
        with TestClient(asgi) as client:  # type: ignore[arg-type]
            refused = client.post("/items", headers={"origin": ORIGIN})
            accepted = client.post(
                "/items", headers={"origin": ORIGIN, "authorization": "Bearer alice"}
            )
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == ORIGIN
        assert accepted.json() == {"user": "alice"}
        assert accepted.headers["access-control-allow-origin"] == ORIGIN
        assert [ctx.user_id for ctx in endpoint.seen if ctx is not None] == ["alice"]


class TestCORSInside:
    """The trap: IsolationMiddleware added after CORSMiddleware is the outermost."""

    def test_fastapi_add_middleware_in_the_wrong_order_is_refused_at_startup(self) -> None:
        """Appending add_middleware() calls puts isolation outside: refused, naming the order."""
        api = FastAPI()
        api.add_api_route("/items", Endpoint().handle, methods=["GET"])
        api.add_middleware(CORSMiddleware, **CORS)
        api.add_middleware(IsolationMiddleware, authenticate=authenticate)
        with (
            pytest.raises(isolation.ConfigurationError, match="CORSMiddleware is inside") as info,
            TestClient(api),
        ):
            pass
        assert "add CORSMiddleware after IsolationMiddleware" in str(info.value)

    def test_starlette_middleware_list_in_the_wrong_order_is_refused(self) -> None:
        """In middleware=[...], the first is the outermost: CORS listed second is refused."""
        app = Starlette(
            routes=[Route("/items", Endpoint().handle)],
            middleware=[
                Middleware(IsolationMiddleware, authenticate=authenticate),
                Middleware(CORSMiddleware, **CORS),
            ],
        )
        with pytest.raises(isolation.ConfigurationError, match="CORSMiddleware is inside"):
            app.build_middleware_stack()

    def test_an_app_with_cors_wrapped_by_hand_is_refused(self) -> None:
        """IsolationMiddleware(app) around an app that has CORSMiddleware: refused when made."""
        api = FastAPI()
        api.add_middleware(CORSMiddleware, **CORS)
        with pytest.raises(isolation.ConfigurationError, match="CORSMiddleware is inside"):
            IsolationMiddleware(api, authenticate=authenticate)
        plain = FastAPI()
        IsolationMiddleware(plain, authenticate=authenticate)  # no CORS inside: accepted
        CORSMiddleware(IsolationMiddleware(plain, authenticate=authenticate), **CORS)

    def test_preflight_passes_to_cors_in_a_mount(self) -> None:
        """A CORS layer the check cannot see (in a Mount) still answers preflights: they pass
        through the middleware unauthenticated, outside any scope."""
        endpoint = Endpoint()
        api = Starlette(
            routes=[Route("/items", endpoint.handle, methods=["GET", "POST"])],
            middleware=[Middleware(CORSMiddleware, **CORS)],
        )
        app = Starlette(
            routes=[Mount("/api", api)],
            middleware=[Middleware(IsolationMiddleware, authenticate=authenticate)],
        )
        with TestClient(app) as client:
            preflight = client.options("/api/items", headers=PREFLIGHT)
            refused = client.post("/api/items", headers={"origin": ORIGIN})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        assert refused.status_code == 401
        assert endpoint.seen == []


class TestPreflightWithoutCORS:
    def test_preflight_reaches_an_options_endpoint_with_no_scope(self) -> None:
        """Not authenticated, so never in a user's scope: isolation fails closed there."""
        seen: list[object] = []

        async def options(request: Request) -> PlainTextResponse:
            seen.append(isolation.current_context_or_none())
            with pytest.raises(isolation.NoContextError):
                isolation.current_context()
            return PlainTextResponse("", headers={"allow": "GET, OPTIONS"})

        app = Starlette(
            routes=[Route("/items", options, methods=["OPTIONS"])],
            middleware=[Middleware(IsolationMiddleware, authenticate=authenticate)],
        )
        with TestClient(app) as client:
            forged = {**PREFLIGHT, "authorization": "Bearer alice"}
            assert client.options("/items", headers=forged).status_code == 200
        assert seen == [None]  # credentials on a preflight are ignored, never turned into a scope

    @pytest.mark.parametrize(
        "headers",
        [
            {"origin": ORIGIN},
            {"access-control-request-method": "POST"},
            {},
        ],
        ids=["origin-only", "request-method-only", "none"],
    )
    def test_other_options_requests_are_authenticated(self, headers: dict[str, str]) -> None:
        """OPTIONS without both CORS headers is not a preflight: 401 without credentials."""
        endpoint = Endpoint()
        app = Starlette(
            routes=[Route("/items", endpoint.handle, methods=["OPTIONS"])],
            middleware=[Middleware(IsolationMiddleware, authenticate=authenticate)],
        )
        with TestClient(app) as client:
            assert client.options("/items", headers=headers).status_code == 401
            ok = client.options("/items", headers={**headers, "authorization": "Bearer bob"})
        assert ok.json() == {"user": "bob"}

    def test_a_get_with_preflight_headers_is_authenticated(self) -> None:
        """Only OPTIONS is a preflight: the headers on another method change nothing."""
        app = Starlette(
            routes=[Route("/items", Endpoint().handle)],
            middleware=[Middleware(IsolationMiddleware, authenticate=authenticate)],
        )
        with TestClient(app) as client:
            assert client.get("/items", headers=PREFLIGHT).status_code == 401
