"""Issue 16, finding 10 (Redis): a ticket is single-use across processes whose clocks differ.

Before the fix, the claim's record lived until the ticket's expiry plus
``LEEWAY`` *by the claiming process's clock*: a claimant 0.5 s ahead of
another process, redeeming at its last accepted instant, stored a record that
expired at once (1 ms), and the other process, to which the ticket still had
0.5 s to live, redeemed it again. Two real processes, each with a frozen fake
clock skewed against the other, on the shared Redis.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from typing import Any

import pytest
from test_redis_processes import HERE, READY, read_line

import redis
from isolation import UserContext, tokens
from isolation.events import EventRouter
from isolation.testing import FakeClock, use_clock

TICKET_KEY = b"redis-ticket-test-key-0123456789abcdef"
START = 1_700_000_000.0
TTL = 30.0
EXPIRES = START + TTL
LAST = EXPIRES - 2.0**-10  # the last instant a router opens a connection from the ticket
EDGE = EXPIRES + tokens.LEEWAY  # the last instant a token verifier accepts it


def _issue() -> str:
    with use_clock(FakeClock(START)):
        return EventRouter(keys=[TICKET_KEY]).issue_ticket(UserContext.new("alice"), ttl=TTL)


def _redeem(proc: subprocess.Popen[str], ticket: str) -> str:
    assert proc.stdin is not None
    proc.stdin.write(ticket + "\n")
    proc.stdin.flush()
    return read_line(proc, READY)


def _spawn(live_redis: str, namespace: str, clock: float, children: list[Any]) -> Any:
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "proc_ticket.py"), live_redis, namespace, repr(clock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    children.append(proc)
    assert read_line(proc, READY) == "ready"
    return proc


@pytest.fixture
def children() -> Any:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.stdin is not None and proc.poll() is None:
            proc.stdin.write("\n")
            proc.stdin.close()
        try:
            proc.wait(timeout=READY)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=READY)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize(
    ("claimant", "replayer"),
    [
        pytest.param(LAST, LAST - 0.5, id="claimant-0.5s-ahead"),
        pytest.param(LAST - 0.5, LAST, id="claimant-0.5s-behind"),
        pytest.param(LAST, LAST - tokens.LEEWAY, id="claimant-a-full-leeway-ahead"),
        pytest.param(EDGE, EDGE - 0.5, id="claimant-0.5s-ahead-at-the-leeway-edge"),
    ],
)
def test_ticket_single_use_across_skewed_clocks(
    live_redis: str, namespace: str, children: list[Any], claimant: float, replayer: float
) -> None:
    """Redeemed by one process as late as it accepts it; the other, skewed, is refused."""
    spawn_args = (live_redis, namespace)
    first = _spawn(*spawn_args, claimant, children)
    second = _spawn(*spawn_args, replayer, children)
    ticket = _issue()
    outcome = _redeem(first, ticket)
    if claimant >= EXPIRES:
        # Past the ticket's expiry a connection would be born expired: refused,
        # unclaimed, and still refused by the other process.
        assert outcome == "TokenExpiredError"
        assert _redeem(second, ticket) == "TokenExpiredError"
        return
    assert outcome == "redeemed"
    assert _redeem(second, ticket) == "TokenReplayedError"
    # The record outlives, with a margin, the last instant any process within
    # LEEWAY of the claimant accepts the ticket as a token (EDGE), by the
    # replayer's clock: not computed from the claimant's clock alone.
    client = redis.Redis.from_url(live_redis)
    try:
        key = f"{namespace}:ticket:{hashlib.sha256(ticket.encode('ascii')).hexdigest()}"
        remaining_ms = client.pttl(key)
    finally:
        client.close()
    assert remaining_ms >= (EDGE - replayer) * 1000 + tokens.LEEWAY * 1000 / 2


@pytest.mark.anyio
async def test_claim_decides_expiry_at_its_own_reading(
    routers: Any, live_redis: str, namespace: str
) -> None:
    """At expiry + LEEWAY a used ticket is still recorded; a moment later the claim refuses it."""
    import isolation

    clock = FakeClock(START)
    with use_clock(clock):
        backend = routers().backend
        assert await backend.claim_ticket("iso1.t", expires_at=EXPIRES)
        clock.advance(TTL + tokens.LEEWAY)
        assert await backend.claim_ticket("iso1.t", expires_at=EXPIRES) is False
        clock.advance(2.0**-10)
        with pytest.raises(isolation.TokenExpiredError):
            await backend.claim_ticket("iso1.other", expires_at=EXPIRES)
    client = redis.Redis.from_url(live_redis)
    try:
        assert not client.exists(f"{namespace}:ticket:" + hashlib.sha256(b"iso1.other").hexdigest())
    finally:
        client.close()
