"""The publisher process of the three-process test.

Usage: ``python proc_publisher.py URL NAMESPACE USERS COUNT TENANT [TENANT ...]``.
Publishes ``COUNT`` rounds; each round sends ``[tenant, user, k]`` to every
user of every tenant, interleaved, then ``"end"`` to each. Prints ``done``.
"""

from __future__ import annotations

import asyncio
import sys

from isolation import Principal
from isolation.events import EventRouter
from isolation.events.backends.redis import RedisBackend

KEY = b"redis-backend-test-key-0123456789abcdef"


async def main(url: str, namespace: str, users: int, count: int, tenants: list[str | None]) -> None:
    router = EventRouter(backend=RedisBackend(url, keys=[KEY], namespace=namespace))
    for k in range(count):
        for n in range(users):
            for tenant in tenants:
                await router.publish(Principal(tenant, f"u{n}"), [tenant, f"u{n}", k])
    for n in range(users):
        for tenant in tenants:
            await router.publish(Principal(tenant, f"u{n}"), "end")
    print("done", flush=True)
    await router.aclose()


if __name__ == "__main__":
    url, namespace, users, count, *tenants = sys.argv[1:]
    asyncio.run(
        main(url, namespace, int(users), int(count), [None if t == "-" else t for t in tenants])
    )
