"""End to end: the chat example under uvicorn, driven by real clients (websockets, httpx).

Failure modes 10, 13, 15 and 16 through the whole stack: events reach all of
their user's sockets and no other's, HTTP reads return the caller's rows only,
an expired context and a slow consumer close the socket with their documented
codes, tickets open one socket once, and no credential reaches the server log.
Waits are on the frames themselves (the close frame included), each under a
generous ``anyio.fail_after`` that only guards against a hang.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import anyio
import pytest

pytest.importorskip("websockets", reason="needs websockets (the tests extra)")
pytest.importorskip("uvicorn", reason="needs uvicorn (the tests extra)")

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from isolation.integrations.starlette import CloseCode

from .conftest import ChatServer

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

USERS = [(tenant, f"fan-{n}") for tenant in ("acme", "globex") for n in range(4)]
"""8 users: the same four user ids in two tenants, so tenant separation is tested too."""
SOCKETS_PER_USER = 3
MESSAGES_PER_USER = 3
HANG_GUARD = 30.0


@pytest.fixture
def anyio_backend() -> str:
    """uvicorn, the websockets client and the example's sessions run on asyncio."""
    return "asyncio"


@pytest.fixture
async def http(chat_server: ChatServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=chat_server.base_url, timeout=HANG_GUARD) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def ticket_for(server: ChatServer, http: httpx.AsyncClient, token: str) -> str:
    response = await http.post("/ws-ticket", headers=bearer(token))
    assert response.status_code == 200, response.text
    ticket = response.json()["ticket"]
    server.credentials.append(ticket)
    return str(ticket)


async def open_socket(
    server: ChatServer, http: httpx.AsyncClient, token: str, **options: Any
) -> ClientConnection:
    ticket = await ticket_for(server, http, token)
    return await connect(f"{server.ws_url}/ws?ticket={ticket}", **options)


async def post(http: httpx.AsyncClient, token: str, text: str) -> dict[str, Any]:
    response = await http.post("/messages", headers=bearer(token), json={"text": text})
    assert response.status_code == 201, response.text
    return dict(response.json())


async def refused(server: ChatServer, query: str) -> int:
    """Try a handshake; return the HTTP status it was refused with."""
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"{server.ws_url}/ws{query}"):
            pass
    return int(info.value.response.status_code)


async def test_every_message_reaches_all_and_only_its_users_sockets(
    chat_server: ChatServer, http: httpx.AsyncClient
) -> None:
    """8 users x 3 sockets: each socket gets exactly its user's messages, in order, no other's."""
    tokens = {user: chat_server.token(user[1], tenant_id=user[0]) for user in USERS}
    sockets = {
        user: [await open_socket(chat_server, http, tokens[user]) for _ in range(SOCKETS_PER_USER)]
        for user in USERS
    }
    received: dict[tuple[tuple[str, str], int], list[dict[str, Any]]] = {}

    def text(user: tuple[str, str], what: object) -> str:
        return f"{user[0]}/{user[1]}/{what}"

    async def read_until_sentinel(user: tuple[str, str], index: int) -> None:
        frames = received.setdefault((user, index), [])
        while True:
            frame = json.loads(await sockets[user][index].recv())
            frames.append(frame)
            if frame["payload"]["text"] == text(user, "end"):
                return

    async def post_all(user: tuple[str, str]) -> None:
        for number in range(MESSAGES_PER_USER):
            result = await post(http, tokens[user], text(user, number))
            assert result["delivered"] == SOCKETS_PER_USER

    try:
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as readers:
                for user in USERS:
                    for index in range(SOCKETS_PER_USER):
                        readers.start_soon(read_until_sentinel, user, index)
                async with anyio.create_task_group() as posters:
                    for user in USERS:
                        posters.start_soon(post_all, user)
                # Everyone's messages are published: a misrouted one would now sit in a
                # socket's queue ahead of its own sentinel, which ends each reader.
                for user in USERS:
                    await post(http, tokens[user], text(user, "end"))
    finally:
        for user_sockets in sockets.values():
            for socket in user_sockets:
                await socket.close()

    expected_count = MESSAGES_PER_USER + 1
    for (user, _index), frames in received.items():
        expected = [text(user, n) for n in range(MESSAGES_PER_USER)] + [text(user, "end")]
        assert [f["payload"]["text"] for f in frames] == expected
        assert [f["seq"] for f in frames] == list(range(1, expected_count + 1))
        assert {f["kind"] for f in frames} == {"message"}
    assert len(received) == len(USERS) * SOCKETS_PER_USER

    for user in USERS:
        response = await http.get("/messages", headers=bearer(tokens[user]))
        assert response.status_code == 200
        expected = [text(user, n) for n in range(MESSAGES_PER_USER)] + [text(user, "end")]
        assert [row["text"] for row in response.json()] == expected


async def test_assistant_reply_reaches_the_sockets(
    chat_server: ChatServer, http: httpx.AsyncClient
) -> None:
    """A message to the assistant sends the post and the reply to the caller's socket."""
    token = chat_server.token("asker")
    with anyio.fail_after(HANG_GUARD):
        async with await open_socket(chat_server, http, token) as socket:
            await post(http, token, "@assistant what time is it")
            frames = [json.loads(await socket.recv()) for _ in range(2)]
    assert [(f["payload"]["author"], f["payload"]["text"]) for f in frames] == [
        ("user", "@assistant what time is it"),
        ("assistant", "You said: what time is it"),
    ]
    rows = (await http.get("/messages", headers=bearer(token))).json()
    assert [row["author"] for row in rows] == ["user", "assistant"]


async def test_tickets_open_one_socket_once(
    chat_server: ChatServer, http: httpx.AsyncClient
) -> None:
    """A used ticket, a forged ticket, a bearer token in place of a ticket, or none: refused."""
    token = chat_server.token("ticket-holder")
    ticket = await ticket_for(chat_server, http, token)
    with anyio.fail_after(HANG_GUARD):
        async with connect(f"{chat_server.ws_url}/ws?ticket={ticket}"):
            pass
        assert await refused(chat_server, f"?ticket={ticket}") == 403  # used
        signature = ticket.rsplit(".", 1)[1]
        forged = ticket[: -len(signature)] + ("A" if signature[0] != "A" else "B") + signature[1:]
        chat_server.credentials.append(forged)
        assert await refused(chat_server, f"?ticket={forged}") == 403
        assert await refused(chat_server, f"?ticket={token}") == 403  # a bearer token
        assert await refused(chat_server, "") == 403
    fresh = await ticket_for(chat_server, http, token)
    assert (await http.get("/messages", headers=bearer(fresh))).status_code == 401


async def test_expired_token_closes_the_socket_with_4001(
    chat_server: ChatServer, http: httpx.AsyncClient
) -> None:
    """A socket opened with a short-lived token is closed with CloseCode.EXPIRED when it expires."""
    token = chat_server.token("short-lived", ttl=3)
    with anyio.fail_after(HANG_GUARD):
        socket = await open_socket(chat_server, http, token)
        await post(http, token, "before expiry")
        assert json.loads(await socket.recv())["payload"]["text"] == "before expiry"
        with pytest.raises(ConnectionClosed) as info:
            await socket.recv()  # the close frame, when the context expires
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == CloseCode.EXPIRED


async def test_slow_consumer_is_disconnected_with_1013(
    chat_server: ChatServer, http: httpx.AsyncClient
) -> None:
    """A socket that stops reading is disconnected with 1013; another user's socket carries on.

    The slow client never reads: its buffers fill, the server's send blocks,
    the router queue (16) fills, and the next publish disconnects it, which
    the POST reports as ``delivered == 0``. Only then does the client read, up
    to the close frame.
    """
    slow_token, other_token = chat_server.token("slow"), chat_server.token("steady")
    big = "x" * 60_000
    with anyio.fail_after(HANG_GUARD):
        # No compression: permessage-deflate would squeeze the repetitive text to nothing.
        slow = await open_socket(chat_server, http, slow_token, max_queue=1, compression=None)
        other = await open_socket(chat_server, http, other_token)
        posts = 0
        while (await post(http, slow_token, big))["delivered"] == 1:
            posts += 1
            if posts % 10 == 0:  # the other user is served all along
                await post(http, other_token, f"still here {posts}")
                frame = json.loads(await other.recv())
                assert frame["payload"]["text"] == f"still here {posts}"
            assert posts < 2_000, "the slow socket was never disconnected"
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await slow.recv()
        await post(http, other_token, "after")
        assert json.loads(await other.recv())["payload"]["text"] == "after"
        await other.close()
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == CloseCode.TRY_AGAIN_LATER


async def test_no_token_or_ticket_reaches_the_log(
    chat_server: ChatServer, http: httpx.AsyncClient
) -> None:
    """With uvicorn at INFO logging WebSocket paths and query strings, no credential is logged."""
    token = chat_server.token("logged")
    with anyio.fail_after(HANG_GUARD):
        ticket = await ticket_for(chat_server, http, token)
        async with connect(f"{chat_server.ws_url}/ws?ticket={ticket}"):
            pass
        assert await refused(chat_server, f"?ticket={ticket}") == 403
        encoded = await ticket_for(chat_server, http, token)
        async with connect(f"{chat_server.ws_url}/ws?ticket={encoded.replace('.', '%2E')}"):
            pass
        assert await refused(chat_server, f"?ticket={quote(token, safe='')}") == 403
        # The shape: the name and the value percent-encoded, which the app decodes.
        disguised = await ticket_for(chat_server, http, token)
        async with connect(f"{chat_server.ws_url}/ws?tick%65t=%69{disguised[1:]}"):
            pass
        await http.get(f"/messages?token={token}", headers=bearer(token))
        await http.get("/messages", headers=bearer(ticket))  # a ticket is not a bearer token

    log = chat_server.log()
    assert '"WebSocket /ws?ticket=[redacted]" [accepted]' in log  # the lines are there
    assert '"WebSocket /ws?ticket=[redacted]" 403' in log
    # The access line too, formatted by uvicorn's AccessFormatter (which unpacks the
    # record's arguments): masked, not lost to a "--- Logging error ---".
    assert '"GET /messages?token=[redacted] HTTP/1.1" 200' in log
    assert "Logging error" not in log
    assert "iso1" not in log.lower()
    for credential in chat_server.credentials:
        _version, _purpose, payload, signature = credential.split(".")
        for form in (
            credential,
            quote(credential, safe=""),
            credential.replace(".", "%2E"),
            payload,
            signature,
        ):
            assert form not in log
