"""The chat example (examples/chat), in process and under a real uvicorn server.

The example is imported as ``examples.chat.app`` with the project root on
``sys.path``, as its README runs it. The ``chat_server`` fixture starts it
under uvicorn on 127.0.0.1 (a free port) in a subprocess, once per module,
and ends it at teardown; its log (uvicorn at INFO) is captured to a file.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from isolation import UserContext, tokens

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STARTUP_TIMEOUT = 30.0
"""Seconds the server may take to answer /health: a hang guard."""


class ChatServer:
    """A running example: its URLs, its secret, every credential handed out, and its log."""

    def __init__(self, port: int, secret: bytes, log_path: Path) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"
        self.secret = secret
        self.log_path = log_path
        self.credentials: list[str] = []
        """Every token and ticket the tests made or received: none may reach the log."""

    def token(self, user_id: str, *, tenant_id: str | None = "acme", ttl: float = 600) -> str:
        """A bearer token, as the service's login would issue it."""
        token = tokens.dumps(
            UserContext.new(user_id, tenant_id=tenant_id, ttl=ttl),
            key=self.secret,
            purpose="chat",
        )
        self.credentials.append(token)
        return token

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def _listening_socket() -> socket.socket:
    """A socket bound to a free port on 127.0.0.1 and already listening.

    uvicorn serves it (``--fd``), so a request made before uvicorn is up waits
    in the kernel's backlog instead of being refused: readiness needs no poll.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    return listener


def _wait_ready(process: subprocess.Popen[bytes], server: ChatServer) -> None:
    """One /health request, answered once uvicorn accepts it from the backlog.

    The server holds the only copy of the listening socket, so if it dies first
    the request is refused at once; ``STARTUP_TIMEOUT`` only guards a hang.
    """
    import httpx

    try:
        status = httpx.get(f"{server.base_url}/health", timeout=STARTUP_TIMEOUT).status_code
    except httpx.TransportError as exc:
        status = None
        problem = f"{type(exc).__name__}: {exc}"
    if status == 200:
        return
    if status is not None:
        problem = f"/health answered {status}"
    if process.poll() is not None:
        problem = f"the chat server exited with {process.returncode}"
    pytest.fail(f"the chat server did not start ({problem}):\n{server.log()}")


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatServer]:
    """The example under uvicorn on 127.0.0.1, with a fresh SQLite file and secret."""
    pytest.importorskip("uvicorn", reason="needs uvicorn (the tests extra)")
    directory = tmp_path_factory.mktemp("chat")
    secret = os.urandom(32)
    listener = _listening_socket()
    server = ChatServer(listener.getsockname()[1], secret, directory / "server.log")
    env = {
        **os.environ,
        "CHAT_SECRET": secret.hex(),
        "CHAT_DATABASE_URL": f"sqlite+aiosqlite:///{directory / 'chat.db'}",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("CHAT_QUEUE_SIZE", None)
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "examples.chat.app:app",
        "--fd",
        str(listener.fileno()),
        "--log-level",
        "info",
        "--timeout-graceful-shutdown",
        "5",
    ]
    with listener, server.log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(listener.fileno(),),
        )
    try:
        _wait_ready(process, server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
