"""End to end: the adoption how-to's app under uvicorn, driven by real httpx clients.

The app is the page's own code (docs/how-to/adopt-fastapi-sqlmodel.md, every
block but its closing check), served by uvicorn in a thread from a socket that
already listens: several users create and read items concurrently through
FastAPI's thread pool, and a browser's preflight from the allowed origin gets
CORS headers, never a 401.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

pytest.importorskip("uvicorn", reason="needs uvicorn (the tests extra)")
pytest.importorskip("sqlmodel", reason="needs sqlmodel (the tests extra)")
pytest.importorskip("fastapi", reason="needs fastapi (the tests extra)")

import httpx
import uvicorn
from tests.e2e.conftest import _listening_socket
from tests.test_docs import ROOT, parse_blocks

PAGE = ROOT / "docs" / "how-to" / "adopt-fastapi-sqlmodel.md"
ORIGIN = "https://app.example.com"
USERS_PER_RUN = 3
ITEMS_PER_USER = 6
HANG = 60  # seconds: a hang guard only


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def page_app() -> Iterator[dict[str, Any]]:
    """The page's namespace after every block but the last (its check)."""
    blocks = [
        b for b in parse_blocks(PAGE.read_text(encoding="utf-8"), "adopt") if b.language == "python"
    ]
    namespace: dict[str, Any] = {"__name__": "adopt_page", "__file__": str(PAGE)}
    _forget_page_tables()  # SQLModel's metadata is process-wide: the docs test runs this page too
    for block in blocks[:-1]:
        source = "\n" * (block.first_line - 1) + block.source + "\n"
        exec(compile(source, str(PAGE), "exec", dont_inherit=True), namespace)
    try:
        yield namespace
    finally:
        namespace["engine"].dispose()
        namespace["directory"].cleanup()
        _forget_page_tables()


def _forget_page_tables() -> None:
    from sqlmodel import SQLModel

    for name in ("adopt_item", "adopt_user"):
        table = SQLModel.metadata.tables.get(name)
        if table is not None:
            SQLModel.metadata.remove(table)


@pytest.fixture(scope="module")
def server(page_app: dict[str, Any]) -> Iterator[str]:
    listener = _listening_socket()
    config = uvicorn.Config(page_app["app"], log_level="warning", lifespan="off")
    served = uvicorn.Server(config)
    thread = threading.Thread(target=served.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        served.should_exit = True
        thread.join(HANG)
        listener.close()


def token(page: dict[str, Any], user_id: uuid.UUID, **claims: Any) -> dict[str, str]:
    b64 = page["_b64"]
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": str(user_id), **claims}).encode())
    mac = hmac.new(page["SECRET_KEY"], f"{header}.{body}".encode(), hashlib.sha256).digest()
    return {"authorization": f"Bearer {header}.{body}.{b64(mac)}"}


@pytest.mark.anyio
async def test_concurrent_users_see_only_their_items(page_app: dict[str, Any], server: str) -> None:
    users = [page_app["ALICE"], page_app["BOB"], page_app["ROOT"]]
    created: dict[uuid.UUID, list[str]] = {user: [] for user in users}
    async with httpx.AsyncClient(base_url=server, timeout=HANG) as client:
        with anyio.fail_after(HANG):

            async def create(user: uuid.UUID, n: int) -> None:
                response = await client.post(
                    "/items/", params={"title": f"{user}-{n}"}, headers=token(page_app, user)
                )
                assert response.status_code == 200, response.text
                created[user].append(response.json()["id"])

            async with anyio.create_task_group() as tg:
                for n in range(ITEMS_PER_USER):
                    for user in users:
                        tg.start_soon(create, user, n)

            async def read(user: uuid.UUID) -> None:
                listed = await client.get("/items/", headers=token(page_app, user))
                assert sorted(listed.json()) == sorted(f"{user}-{n}" for n in range(ITEMS_PER_USER))
                for other in users:
                    for item_id in created[other]:
                        one = await client.get(f"/items/{item_id}", headers=token(page_app, user))
                        assert one.status_code == (200 if other == user else 404)

            async with anyio.create_task_group() as tg:
                for user in users:
                    tg.start_soon(read, user)

            admin = await client.get("/admin/items/", headers=token(page_app, users[2], su=True))
            assert admin.json() == len(users) * ITEMS_PER_USER
            refused = await client.get("/admin/items/", headers=token(page_app, users[0]))
            assert refused.status_code == 403


@pytest.mark.anyio
async def test_a_browsers_preflight_and_a_401_carry_cors_headers(server: str) -> None:
    async with httpx.AsyncClient(base_url=server, timeout=HANG) as client:
        with anyio.fail_after(HANG):
            preflight = await client.options(
                "/items/",
                headers={
                    "origin": ORIGIN,
                    "access-control-request-method": "POST",
                    "access-control-request-headers": "authorization",
                },
            )
            assert preflight.status_code == 200
            assert preflight.headers["access-control-allow-origin"] == ORIGIN
            unauthenticated = await client.get("/items/", headers={"origin": ORIGIN})
            assert unauthenticated.status_code == 401
            # The browser can read the 401 (and send the user to log in), not a network error.
            assert unauthenticated.headers["access-control-allow-origin"] == ORIGIN


def test_forged_tokens_are_refused(page_app: dict[str, Any], server: str) -> None:
    forged = token(page_app, page_app["ALICE"])["authorization"][:-4] + "AAAA"
    with httpx.Client(base_url=server, timeout=HANG) as client:
        assert client.get("/items/", headers={"authorization": forged}).status_code == 401
