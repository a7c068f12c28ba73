"""UNSAFE test hooks: corrupt a router's routing state on purpose, to test the last step.

Nothing in the library calls this; it exists so a test (yours, or failure mode
14's check) can show that a wrong routing entry turns into refused, counted
events and never into a delivery to the wrong user. Never call it in a service.
"""

from __future__ import annotations

from isolation._errors import UsageError
from isolation.context._model import Principal
from isolation.events._router import EventRouter

__all__ = ["unsafe_corrupt_routing"]


def unsafe_corrupt_routing(
    router: EventRouter, *, publish_to: Principal, deliver_to: Principal
) -> None:
    """UNSAFE: make publishes to ``publish_to`` land in the connections of ``deliver_to``.

    Overwrites the router's routing entry for ``publish_to`` (a
    ``(tenant_id, user_id)`` pair) with the live connections of ``deliver_to``,
    as a bug or a memory corruption might. Each such event is then refused
    by those connections at the last step, logged and counted in
    ``router.stats().refused``; none is delivered.

    Raises:
        UsageError: ``deliver_to`` has no live connection in ``router``.
    """
    if type(router) is not EventRouter:
        raise UsageError(
            f"unsafe_corrupt_routing() takes an EventRouter, got {type(router).__name__}"
        )
    # The live connections of deliver_to, from the router's own record of them
    # (not from the routing table, which may already be corrupted).
    target = tuple(conn for conn in router._live if conn._principal == deliver_to)
    if not target:
        raise UsageError("unsafe_corrupt_routing(): deliver_to has no live connection to point at")
    router._routes[publish_to] = target
