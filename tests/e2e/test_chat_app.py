"""The chat example in process, with Starlette's test client: configuration, auth, the parts.

Fast companions of test_chat_server.py: what needs no real server is tested
here (the example's sessions run on asyncio, the test client's default).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("fastapi", reason="needs FastAPI (the tests extra)")
pytest.importorskip("aiosqlite", reason="needs the sqlalchemy extra")

from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

import isolation
from isolation import Registry, UserContext, tokens
from isolation.events import Overflow
from isolation.integrations.starlette import CloseCode
from isolation.testing import assert_no_shared_state


@pytest.fixture
def chat_module(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ModuleType:
    """``examples.chat.app``, imported with a valid environment."""
    monkeypatch.setenv("CHAT_SECRET", os.urandom(32).hex())
    monkeypatch.setenv("CHAT_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'module.db'}")
    monkeypatch.delenv("CHAT_QUEUE_SIZE", raising=False)
    return importlib.import_module("examples.chat.app")


class Chat:
    """A test client on a fresh app, and the secret to make its bearer tokens."""

    def __init__(self, client: TestClient, secret: bytes) -> None:
        self.client = client
        self.secret = secret

    def token(self, user_id: str, *, tenant_id: str | None = "acme") -> str:
        ctx = UserContext.new(user_id, tenant_id=tenant_id, ttl=600)
        return tokens.dumps(ctx, key=self.secret, purpose="chat")

    def auth(self, user_id: str, *, tenant_id: str | None = "acme") -> dict[str, str]:
        return {"authorization": f"Bearer {self.token(user_id, tenant_id=tenant_id)}"}

    def ticket(self, user_id: str, *, tenant_id: str | None = "acme") -> str:
        response = self.client.post("/ws-ticket", headers=self.auth(user_id, tenant_id=tenant_id))
        assert response.status_code == 200
        return str(response.json()["ticket"])


@pytest.fixture
def chat(chat_module: ModuleType, tmp_path: Path) -> Iterator[Chat]:
    secret = os.urandom(32)
    app = chat_module.create_app(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}", secret=secret
    )
    with TestClient(app) as client:
        yield Chat(client, secret)


class TestConfiguration:
    @pytest.mark.parametrize(
        ("value", "message"),
        [
            (None, "CHAT_SECRET is not set"),
            ("zz" * 32, "not hexadecimal"),
            ("ab" * 16, "fewer than 64"),
        ],
    )
    def test_import_needs_a_good_secret(
        self, monkeypatch: pytest.MonkeyPatch, value: str | None, message: str
    ) -> None:
        """Importing the module without a usable CHAT_SECRET is a clear ConfigurationError."""
        if value is None:
            monkeypatch.delenv("CHAT_SECRET", raising=False)
        else:
            monkeypatch.setenv("CHAT_SECRET", value)
        monkeypatch.delitem(sys.modules, "examples.chat.app", raising=False)
        with pytest.raises(isolation.ConfigurationError, match=message) as info:
            importlib.import_module("examples.chat.app")
        assert "CHAT_SECRET" in str(info.value)
        if value is not None:
            assert value not in str(info.value)  # a secret is never echoed

    def test_short_secret(self, chat_module: ModuleType) -> None:
        """create_app refuses a secret under 32 bytes."""
        with pytest.raises(isolation.ConfigurationError, match="32 bytes"):
            chat_module.create_app(database_url="sqlite+aiosqlite://", secret=b"short")

    def test_router_settings(
        self, chat_module: ModuleType, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The router disconnects slow consumers; its queue is CHAT_QUEUE_SIZE, default 16."""
        app = chat_module.create_app(database_url="sqlite+aiosqlite://", secret=os.urandom(32))
        assert app.state.router.queue_size == 16
        assert app.state.router.overflow is Overflow.DISCONNECT
        monkeypatch.setenv("CHAT_QUEUE_SIZE", "4")
        app = chat_module.create_app(database_url="sqlite+aiosqlite://", secret=os.urandom(32))
        assert app.state.router.queue_size == 4
        for bad in ("0", "many"):
            monkeypatch.setenv("CHAT_QUEUE_SIZE", bad)
            with pytest.raises(isolation.ConfigurationError, match="CHAT_QUEUE_SIZE"):
                chat_module.create_app(database_url="sqlite+aiosqlite://", secret=os.urandom(32))

    def test_module_level_app(self, chat_module: ModuleType) -> None:
        """The module exposes an app built from the environment."""
        assert chat_module.app.state.router.overflow is Overflow.DISCONNECT


class TestHTTP:
    def test_health_is_public(self, chat: Chat) -> None:
        """/health answers without credentials."""
        assert chat.client.get("/health").json() == {"status": "ok"}

    @pytest.mark.parametrize("kind", ["none", "basic", "forged", "other purpose", "ticket"])
    def test_refused_credentials(self, chat: Chat, kind: str) -> None:
        """Anything but a valid bearer token of purpose "chat" gets 401."""
        ctx = UserContext.new("alice", tenant_id="acme")
        header = {
            "none": None,
            "basic": "Basic YWxpY2U6c2VjcmV0",
            "forged": "Bearer " + tokens.dumps(ctx, key=os.urandom(32), purpose="chat"),
            "other purpose": "Bearer " + tokens.dumps(ctx, key=chat.secret, purpose="job"),
            "ticket": "Bearer " + chat.ticket("alice"),
        }[kind]
        headers = {} if header is None else {"authorization": header}
        response = chat.client.get("/messages", headers=headers)
        assert response.status_code == 401

    @pytest.mark.parametrize("where", [12, -3])
    def test_non_ascii_bearer_is_401(self, chat: Chat, where: int) -> None:
        """A bearer token with a non-ASCII character is refused (401), not a 500."""
        token = chat.token("alice").encode()
        tampered = token[:where] + "\u00e9".encode("latin-1") + token[where + 1 :]
        response = chat.client.get("/messages", headers={"authorization": b"Bearer " + tampered})
        assert response.status_code == 401

    @pytest.mark.parametrize("path", ["/messages", "/ws-ticket"])
    def test_valid_token_without_a_tenant_is_403(self, chat: Chat, path: str) -> None:
        """A valid token of a tenant-less context is refused at authentication: 403 with a
        reason, never the 500 of the sessions refusing a model protected by a tenant column."""
        headers = chat.auth("alice", tenant_id=None)
        for method in ("GET", "POST"):
            response = chat.client.request(method, path, headers=headers, json={"text": "hi"})
            assert response.status_code == 403
            assert response.json() == {
                "detail": "this service needs a token of a context with a tenant_id"
            }

    def test_ticket_without_a_tenant_is_refused(self, chat: Chat) -> None:
        """A ticket of a tenant-less context (issued elsewhere with the key) is refused too."""
        ticket = chat.client.app.state.router.issue_ticket(UserContext.new("alice", ttl=600))  # type: ignore[attr-defined]
        with (
            pytest.raises(WebSocketDisconnect) as info,
            chat.client.websocket_connect(f"/ws?ticket={ticket}"),
        ):
            pass
        assert info.value.code == CloseCode.POLICY

    def test_each_user_reads_their_own_messages(self, chat: Chat) -> None:
        """POST stores for the caller (201); GET returns the caller's rows, in posting order."""
        posts = {
            ("acme", "alice"): ["a1", "a2", "a3"],
            ("acme", "bob"): ["b1"],
            ("globex", "alice"): ["other tenant"],
        }
        for (tenant, user), texts in posts.items():
            for text in texts:
                response = chat.client.post(
                    "/messages", headers=chat.auth(user, tenant_id=tenant), json={"text": text}
                )
                assert response.status_code == 201
                assert response.json()["text"] == text
        for (tenant, user), texts in posts.items():
            rows = chat.client.get("/messages", headers=chat.auth(user, tenant_id=tenant)).json()
            assert [row["text"] for row in rows] == texts

    @pytest.mark.parametrize("text", ["", "x" * 65_537])
    def test_text_is_validated(self, chat: Chat, text: str) -> None:
        """Empty or over-long text is refused (422) and nothing is stored."""
        response = chat.client.post("/messages", headers=chat.auth("alice"), json={"text": text})
        assert response.status_code == 422
        assert chat.client.get("/messages", headers=chat.auth("alice")).json() == []

    def test_assistant_replies(self, chat: Chat) -> None:
        """A message to the assistant is stored with the assistant's reply after it."""
        chat.client.post("/messages", headers=chat.auth("alice"), json={"text": "@assistant hi"})
        chat.client.post("/messages", headers=chat.auth("alice"), json={"text": "just me"})
        rows = chat.client.get("/messages", headers=chat.auth("alice")).json()
        assert [(row["author"], row["text"]) for row in rows] == [
            ("user", "@assistant hi"),
            ("assistant", "You said: hi"),
            ("user", "just me"),
        ]


class TestWebSocket:
    def test_events_reach_the_callers_socket(self, chat: Chat) -> None:
        """A ticket opens a socket that gets the caller's message events, and not bob's."""
        with chat.client.websocket_connect(f"/ws?ticket={chat.ticket('alice')}") as socket:
            chat.client.post("/messages", headers=chat.auth("bob"), json={"text": "bob's"})
            chat.client.post("/messages", headers=chat.auth("alice"), json={"text": "alice's"})
            event = socket.receive_json()
        assert (event["kind"], event["seq"], event["payload"]["text"]) == ("message", 1, "alice's")

    def test_a_ticket_works_once(self, chat: Chat) -> None:
        """A redeemed ticket is refused before the handshake completes."""
        ticket = chat.ticket("alice")
        with chat.client.websocket_connect(f"/ws?ticket={ticket}"):
            pass
        with (
            pytest.raises(WebSocketDisconnect) as info,
            chat.client.websocket_connect(f"/ws?ticket={ticket}"),
        ):
            pass
        assert info.value.code == CloseCode.POLICY

    @pytest.mark.parametrize("kind", ["bearer token", "forged", "missing", "non-ASCII"])
    def test_refused_handshakes(self, chat: Chat, kind: str) -> None:
        """A bearer token in place of a ticket, a forged, non-ASCII or no ticket: refused."""
        ticket = chat.ticket("alice")
        query = {
            "bearer token": f"?ticket={chat.token('alice')}",
            "forged": f"?ticket={ticket[:-2]}{'AA' if ticket[-2:] != 'AA' else 'BB'}",
            "missing": "",
            "non-ASCII": f"?ticket={ticket[:-3]}%C3%A9{ticket[-2:]}",
        }[kind]
        with pytest.raises(WebSocketDisconnect), chat.client.websocket_connect(f"/ws{query}"):
            pass

    def test_reauthentication_over_the_socket(self, chat: Chat) -> None:
        """A {"ticket": ...} frame of the same user keeps the socket; another user's closes it 1008."""
        with chat.client.websocket_connect(f"/ws?ticket={chat.ticket('alice')}") as socket:
            socket.send_json({"ticket": chat.ticket("alice")})
            socket.send_text("not json: ignored")
            chat.client.post("/messages", headers=chat.auth("alice"), json={"text": "still"})
            assert socket.receive_json()["payload"]["text"] == "still"
            socket.send_json({"ticket": chat.ticket("bob")})
            with pytest.raises(WebSocketDisconnect) as info:
                socket.receive_json()
        assert info.value.code == CloseCode.POLICY


class TestParts:
    def test_assistant_is_checked_for_shared_state(self) -> None:
        """The example's registry passes the audit; an assistant sharing a list would not."""
        assistant = importlib.import_module("examples.chat.assistant")
        assert_no_shared_state(assistant.make_registry(), users=4, threads=2)

        shared: list[str] = []

        class LeakyAssistant:
            def __init__(self, ctx: UserContext) -> None:
                self.notes = shared  # every user's assistant writes to one list

        leaky = Registry()
        leaky.provide(LeakyAssistant)
        with pytest.raises(AssertionError, match="notes"):
            assert_no_shared_state(leaky, users=4, threads=2)
