"""Three OS processes on one Redis: two servers holding connections, one publisher.

The servers hold connections of the same user ids in two tenants (the
look-alikes that matter most); the publisher interleaves events to all of
them and to a third tenant nobody holds. Each principal must receive exactly
its events, in publish order, without duplicates, and 0 events anywhere else.
"""

from __future__ import annotations

import json
import selectors
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
USERS = 10
COUNT = 50
READY = 30.0


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The next line of ``proc``'s stdout, waiting at most ``timeout`` seconds."""
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise TimeoutError(f"no line from {proc.args!r} within {timeout} s")
            line = proc.stdout.readline()
            if line:
                return line.strip()
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
    finally:
        selector.close()


def spawn(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HERE / script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def children() -> Any:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_three_processes(live_redis: str, namespace: str, children: list[Any]) -> None:
    """Each principal receives exactly its events in order; 0 reach another principal."""
    servers = {"acme": spawn("proc_server.py", live_redis, namespace, "acme", str(USERS))}
    servers["-"] = spawn("proc_server.py", live_redis, namespace, "-", str(USERS))
    children.extend(servers.values())
    for proc in servers.values():
        assert read_line(proc, READY) == "ready"
    publisher = spawn(
        "proc_publisher.py", live_redis, namespace, str(USERS), str(COUNT), "acme", "-", "globex"
    )
    children.append(publisher)
    assert read_line(publisher, READY) == "done"
    for tenant, proc in servers.items():
        report = json.loads(read_line(proc, READY))
        assert report["foreign"] == 0
        expected_tenant = None if tenant == "-" else tenant
        for n in range(USERS):
            got = report["received"][f"u{n}"]
            assert got == [[expected_tenant, f"u{n}", k] for k in range(COUNT)], (tenant, n)
        assert proc.wait(timeout=READY) == 0
    assert publisher.wait(timeout=READY) == 0
