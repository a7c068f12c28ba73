"""A server process of the three-process test: holds connections, reports what they received.

Usage: ``python proc_server.py URL NAMESPACE TENANT USERS``. Connects one
connection per user id ``u0 .. u{USERS-1}`` of ``TENANT`` ("-" for none),
prints ``ready``, receives on every connection until an event whose payload is
``"end"``, then prints one JSON line: ``{user: [payloads...]}`` and a count of
events that were not for the connection's principal.
"""

from __future__ import annotations

import asyncio
import json
import sys

from isolation import UserContext
from isolation.events import EventRouter
from isolation.events.backends.redis import RedisBackend

KEY = b"redis-backend-test-key-0123456789abcdef"


async def main(url: str, namespace: str, tenant: str | None, users: int) -> None:
    router = EventRouter(
        backend=RedisBackend(url, keys=[KEY], namespace=namespace), queue_size=10_000
    )
    conns = {
        f"u{n}": await router.connect(UserContext.new(f"u{n}", tenant_id=tenant))
        for n in range(users)
    }
    print("ready", flush=True)
    received: dict[str, list[object]] = {user: [] for user in conns}
    foreign = 0

    async def consume(user: str) -> None:
        nonlocal foreign
        conn = conns[user]
        while True:
            event = await conn.receive()
            if (event.tenant_id, event.recipient) != (tenant, user):
                foreign += 1
            if event.payload == "end":
                return
            received[user].append(event.payload)

    async with asyncio.timeout(60):
        await asyncio.gather(*(consume(user) for user in conns))
    print(json.dumps({"received": received, "foreign": foreign}), flush=True)
    await router.aclose()


if __name__ == "__main__":
    url, namespace, tenant, users = sys.argv[1:5]
    asyncio.run(main(url, namespace, None if tenant == "-" else tenant, int(users)))
