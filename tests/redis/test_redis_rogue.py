"""Rogue input published straight into the channels: none delivered, each counted.

Whoever can PUBLISH on the Redis (a compromised neighbour, a wrong ACL) can put
any bytes in any channel. The receiving process must deliver nothing it cannot
verify: each rogue message below is published with a plain Redis client into
alice's channel, followed by one genuine event; once the genuine event is
received, every rogue message before it has been read (one channel, one
connection: Redis keeps the order), and none of them reached alice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import anyio
import pytest
import redis.asyncio as aioredis
from redis_support import KEY, OTHER_KEY

from isolation import Principal, UserContext
from isolation.events import EventRouter
from isolation.events.backends import Envelope
from isolation.events.backends._envelope import _MAGIC, Codec, _derive, _sign
from isolation.events.backends.redis import RedisBackend

pytestmark = pytest.mark.anyio

Make = Callable[..., EventRouter]


def sign(body: bytes, key: bytes = KEY) -> bytes:
    return _MAGIC + _sign(_derive(key), body) + b"." + body


def fields(**changes: object) -> bytes:
    now = time.time()
    base: dict[str, object] = {
        "id": f"rogue-{time.monotonic_ns()}",
        "t": "acme",
        "u": "alice",
        "k": "message",
        "iat": now,
        "exp": now + 10,
        "o": "rogue",
        "p": {"secret": "from mallory"},
    }
    base.update(changes)
    return json.dumps(base).encode()


def envelope_for(user: str, tenant: str | None) -> Envelope:
    return Envelope(
        id=f"rogue-{time.monotonic_ns()}",
        recipient=user,
        tenant_id=tenant,
        kind="message",
        created_at=time.time(),
        payload={"secret": "for someone else"},
    )


async def test_rogue_messages_dropped_and_counted(routers: Make, live_redis: str) -> None:
    """Unsigned, forged, wrong-key, wrong-recipient, expired, replayed, non-JSON, oversized: 0 delivered."""
    receiver = routers(backend_options={"max_envelope_bytes": 4096})
    backend = receiver.backend
    assert isinstance(backend, RedisBackend)
    alice = await receiver.connect(UserContext.new("alice", tenant_id="acme"))
    channel = backend.channel(Principal("acme", "alice"))
    genuine_codec = Codec([KEY])
    replayable = genuine_codec.encode(
        envelope_for("alice", "acme"), origin="elsewhere", now=time.time()
    )
    rogue: list[tuple[str, bytes]] = [
        ("malformed", fields()),  # unsigned JSON
        ("malformed", b"\x80\x04\x95pickle"),  # a pickle
        ("malformed", b"iev1.short"),
        ("signature", _MAGIC + b"A" * 43 + b"." + fields()),  # forged signature
        ("signature", sign(fields(), OTHER_KEY)),  # signed with a key nobody shares
        ("signature", replayable[:-3] + b"99}"),  # tampered after signing
        (
            "wrong_recipient",
            genuine_codec.encode(envelope_for("bob", "acme"), origin="x", now=time.time()),
        ),
        (
            "wrong_recipient",
            genuine_codec.encode(envelope_for("alice", "globex"), origin="x", now=time.time()),
        ),
        ("expired", sign(fields(iat=time.time() - 100, exp=time.time() - 50))),
        ("expired", sign(fields(iat=time.time() + 100, exp=time.time() + 110))),
        ("not_json", sign(b"not json at all")),
        ("invalid", sign(fields(u=None))),
        ("invalid", sign(fields(k="gap"))),
        ("too_large", sign(fields(p="x" * 5000))),
        ("too_large", b"x" * 10_000),
    ]
    client = aioredis.Redis.from_url(live_redis)
    try:
        await client.publish(channel, replayable)  # genuine the first time
        for _, data in rogue:
            await client.publish(channel, data)
        await client.publish(channel, replayable)  # the replay
        sender = routers()
        await sender.publish(Principal("acme", "alice"), "genuine")
    finally:
        await client.aclose()
    with anyio.fail_after(5):
        first = await alice.receive()
        second = await alice.receive()
    assert first.payload == {"secret": "for someone else"}  # the genuine original, once
    assert second.payload == "genuine"
    assert alice.stats().queued == 0
    dropped = backend.stats().dropped
    expected: dict[str, int] = {}
    for reason, _ in rogue:
        expected[reason] = expected.get(reason, 0) + 1
    expected["replayed"] = 1
    assert {k: v for k, v in dropped.items() if v} == expected
    assert receiver.stats().refused == 0  # nothing even reached the last-step check


async def test_drops_logged_without_payload(
    routers: Make, live_redis: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A dropped message is logged with its reason and channel, never its payload."""
    receiver = routers()
    backend = receiver.backend
    assert isinstance(backend, RedisBackend)
    alice = await receiver.connect(UserContext.new("alice", tenant_id="acme"))
    client = aioredis.Redis.from_url(live_redis)
    try:
        with caplog.at_level("WARNING", logger="isolation.events"):
            await client.publish(backend.channel(Principal("acme", "alice")), fields())
            await routers().publish(Principal("acme", "alice"), "marker")
            with anyio.fail_after(5):
                assert (await alice.receive()).payload == "marker"
    finally:
        await client.aclose()
    [record] = [r for r in caplog.records if r.__dict__.get("event") == "envelope_dropped"]
    assert record.__dict__["reason"] == "malformed"
    assert "mallory" not in record.getMessage()
