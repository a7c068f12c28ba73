"""The FastAPI dependencies read the middleware's scope."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="needs FastAPI")

from typing import Annotated

from fastapi import Depends, FastAPI
from starlette.requests import HTTPConnection
from starlette.testclient import TestClient

from isolation import Registry, UserContext
from isolation.integrations.fastapi import CurrentContext, _provided, from_scope
from isolation.integrations.starlette import IsolationMiddleware


class Assistant:
    def __init__(self, ctx: UserContext) -> None:
        self.owner = ctx.user_id


AssistantOfRequest = Annotated[Assistant, Depends(from_scope(Assistant))]


def test_context_and_product() -> None:
    """An endpoint gets the current context and a REQUEST product of its user."""
    registry = Registry()
    registry.provide(Assistant)
    app = FastAPI()

    @app.get("/me")
    async def me(ctx: CurrentContext, assistant: _provided(Assistant)) -> dict[str, str]:  # type: ignore[valid-type]
        return {"user": ctx.user_id, "assistant_of": assistant.owner}

    @app.get("/typed")
    async def typed(assistant: AssistantOfRequest, again: AssistantOfRequest) -> dict[str, object]:
        return {"assistant_of": assistant.owner, "same": assistant is again}

    @app.get("/me-sync")
    def me_sync(ctx: CurrentContext) -> dict[str, str]:
        return {"user": ctx.user_id}

    def authenticate(conn: HTTPConnection) -> UserContext | None:
        user = conn.headers.get("x-user")
        return None if user is None else UserContext.new(user)

    app.add_middleware(IsolationMiddleware, authenticate=authenticate, registry=registry)
    with TestClient(app) as client:
        assert client.get("/me", headers={"x-user": "alice"}).json() == {
            "user": "alice",
            "assistant_of": "alice",
        }
        assert client.get("/typed", headers={"x-user": "carol"}).json() == {
            "assistant_of": "carol",
            "same": True,  # one REQUEST product per request
        }
        assert client.get("/me-sync", headers={"x-user": "bob"}).json() == {"user": "bob"}
        assert client.get("/me").status_code == 401
