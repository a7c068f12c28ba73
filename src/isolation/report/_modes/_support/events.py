"""Scenario helpers shared by the event router's failure-mode checks (FM10, 13, 14, 15, 16).

The checks drive a *router-like* subject: ``await connect(ctx=None, *, token=None)``,
``await publish(to, payload)`` (``to`` a ``Principal`` or a ``UserContext``)
returning something with ``delivered`` and ``dropped``, ``stats()``,
``aclose()``; its connections have
``principal``, ``await receive()`` (events with ``recipient``, ``tenant_id``,
``seq`` and ``payload``), ``stats()`` and ``aclose()``. The library's subject
is :class:`isolation.events.EventRouter`; each mode's mutant is a separate,
deliberately broken router of the same shape.
"""

from __future__ import annotations

from typing import Any

import anyio

from isolation._errors import ConnectionClosedError

__all__ = ["Drained", "drain", "drain_all", "principal_of"]


def principal_of(event: Any) -> tuple[str | None, str]:
    """The principal an event says it is for."""
    return (event.tenant_id, event.recipient)


class Drained:
    """What one connection handed over before it was closed."""

    __slots__ = ("conn", "error", "events")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.events: list[Any] = []
        self.error: BaseException | None = None


async def drain_all(conns: list[Any]) -> list[Drained]:
    """Receive everything each connection hands over, then close them all.

    A consumer task per connection receives until it would wait; once every
    task waits (``wait_all_tasks_blocked``, no sleeping), the connections are
    closed, which ends the consumers. A connection closed before (by a policy)
    records the error its ``receive()`` raised.
    """
    results = [Drained(conn) for conn in conns]

    async def consume(result: Drained) -> None:
        try:
            while True:
                result.events.append(await result.conn.receive())
        except ConnectionClosedError as exc:
            result.error = exc

    async with anyio.create_task_group() as tg:
        for result in results:
            tg.start_soon(consume, result)
        await anyio.wait_all_tasks_blocked()
        for conn in conns:
            await conn.aclose()
    return results


async def drain(conn: Any) -> Drained:
    """:func:`drain_all` for one connection."""
    [result] = await drain_all([conn])
    return result
