"""Helpers shared by the Redis backend's tests and their child processes."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading

KEY = b"redis-backend-test-key-0123456789abcdef"
OTHER_KEY = b"another-key-nobody-shares-0123456789abc"
READY_TIMEOUT = 10.0


def ping(url: str) -> bool:
    """Whether a Redis answers at ``url`` (one short try)."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _read_log(process: subprocess.Popen[bytes], ready: threading.Event) -> None:
    assert process.stdout is not None
    with process.stdout:
        for line in process.stdout:
            if b"Ready to accept connections" in line:
                ready.set()
    ready.set()  # the process ended: start() sees it has


class OwnRedis:
    """A private redis-server on 127.0.0.1 that a test may stop and start."""

    def __init__(self, port: int, directory: str) -> None:
        self.port = port
        self.directory = directory
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.directory,
                "--enable-debug-command",
                "yes",
                "--loglevel",
                "notice",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.starts += 1
        # Redis says when it listens; a thread reads its log (to the end, so the
        # pipe never fills) and sets `ready` then, or when the process ends.
        ready = threading.Event()
        threading.Thread(
            target=_read_log, args=(self.process, ready), daemon=True, name="redis-log"
        ).start()
        if not ready.wait(READY_TIMEOUT) or self.process.poll() is not None:
            raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            process.wait(timeout=READY_TIMEOUT)
