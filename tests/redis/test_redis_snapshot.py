"""Issue 16, finding 8 on Redis: the publishing process's own connections get snapshots too.

Before the fix the Redis backend handed its local connections the publisher's
object itself, after awaiting Redis: a payload mutated after ``publish``
reached them mutated, and two local connections shared one object.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from isolation import Principal, UsageError, UserContext
from isolation.events import EventRouter

pytestmark = pytest.mark.anyio


async def test_local_recipients_get_the_payload_as_published(
    routers: Callable[..., EventRouter],
) -> None:
    """Reused dict, mutated after each publish; two local connections per user."""
    router = routers()
    users = [f"user-{i}" for i in range(3)]
    conns = {
        u: (await router.connect(UserContext.new(u)), await router.connect(UserContext.new(u)))
        for u in users
    }
    payload: dict[str, Any] = {"type": "digest", "nested": {"n": 0}}
    for u in users:
        payload["text"] = f"private digest of {u}"
        payload["nested"]["n"] += 1
        await router.publish(Principal(None, u), payload)
    payload["text"] = "changed after publishing"
    for n, (u, (first, second)) in enumerate(conns.items(), start=1):
        expected = {"type": "digest", "nested": {"n": n}, "text": f"private digest of {u}"}
        mine = (await first.receive()).payload
        assert mine == expected
        mine["nested"]["n"] = -1
        assert (await second.receive()).payload == expected


async def test_refused_payloads_as_in_memory(routers: Callable[..., EventRouter]) -> None:
    """A payload JSON cannot carry (here a cycle) is a UsageError on Redis too."""
    router = routers()
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(UsageError):
        await router.publish(Principal(None, "alice"), loop)
