"""A process that redeems one ticket on a Redis-backed router, its clock set by the test.

Usage: ``python proc_ticket.py URL NAMESPACE CLOCK``. Installs a frozen fake
clock reading ``CLOCK`` (epoch seconds: the test skews it against another
process's), makes a router on the Redis backend, prints ``ready``, then reads
one ticket per line from stdin and prints, for each, ``redeemed`` or the name
of the error that refused it. An empty line ends it.
"""

from __future__ import annotations

import asyncio
import sys

import isolation
from isolation.events import EventRouter
from isolation.events.backends.redis import RedisBackend
from isolation.testing import FakeClock, use_clock

KEY = b"redis-backend-test-key-0123456789abcdef"
TICKET_KEY = b"redis-ticket-test-key-0123456789abcdef"


async def main(url: str, namespace: str) -> None:
    backend = RedisBackend(url, keys=[KEY], namespace=namespace)
    router = EventRouter(backend=backend, keys=[TICKET_KEY])
    try:
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        while ticket := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
            try:
                await router.connect(token=ticket)
            except isolation.IsolationError as exc:
                print(type(exc).__name__, flush=True)
            else:
                print("redeemed", flush=True)
    finally:
        await router.aclose()


if __name__ == "__main__":
    url, namespace, clock = sys.argv[1:4]
    with use_clock(FakeClock(float(clock))):
        asyncio.run(main(url, namespace))
