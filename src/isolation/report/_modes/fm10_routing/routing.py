"""FM10, events delivered to the wrong user under load: delivery checks the recipient last.

Subject: a router class (``make(**options)``, see :mod:`.._support.events`). Two checks.

``under-load``: 200 principals (100 user ids, each in two tenants) with one
connection each, queues of 4 under ``BLOCK`` so publishers block and
interleave with consumers, and 8 publisher tasks each sending one event to
every principal. The property: 0 events reach another principal's
connection, and every connection gets exactly its 8 events, each publisher's
in order (0 lost, 0 duplicated).

``operations``: the shipped :class:`~isolation.testing.RouterMachine` (the
conformance machine users point at their own routers) over the same 200
principals, with contexts that expire (ttls of 5 and 20 seconds on a fake
clock): Hypothesis sequences of connect, close, publish, receive, consumer
tasks, cancelled receives and expiry, on one event loop, against the
machine's model. The property: every receive returns exactly the model's next
event, closed and expired connections refuse, and nothing else is ever
queued. Every run first connects the same user id in two tenants
(``initial_connections``), so the mutant is caught every run.

The mutant routes by user id alone, ignoring the tenant.
"""

from __future__ import annotations

import types
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from isolation import _clock
from isolation._errors import ConnectionClosedError
from isolation.context._model import Principal, UserContext
from isolation.events._model import (
    CloseReason,
    ConnectionStats,
    Event,
    PublishResult,
    RouterStats,
    make_event,
    next_event_number,
)
from isolation.events._router import EventRouter
from isolation.report._modes._support.events import principal_of
from isolation.report._modes._support.registration import add_check
from isolation.report._registry import ModeRegistry, Settings

if TYPE_CHECKING:
    from isolation.testing import RouterMachine

__all__ = [
    "PRINCIPALS",
    "SAME_USER_TWO_TENANTS",
    "check_operations",
    "check_under_load",
    "operations_machine",
    "register",
]

USER_IDS = 100
TENANTS = ("fm10-a", "fm10-b")
PRINCIPALS: tuple[Principal, ...] = tuple(
    Principal(tenant, f"user-{i}") for i in range(USER_IDS) for tenant in TENANTS
)
"""200 principals: each user id in two tenants."""
PUBLISHERS = 8
STEPS = (1, 3, 7, 9, 11, 13, 17, 19)
QUEUE = 4


async def check_under_load(make: Callable[..., Any], settings: Settings) -> list[str]:
    """200 principals, 8 publishers, queues of 4 under BLOCK: 0 misrouted, 0 lost, 0 duplicated."""
    violations: list[str] = []
    router = make(queue_size=QUEUE, publish_timeout=60, max_connections_per_user=4)
    try:
        conns = [
            await router.connect(UserContext.new(user, tenant_id=tenant))
            for tenant, user in PRINCIPALS
        ]

        async def publisher(number: int) -> None:
            # Each publisher walks all the principals in its own order (a step
            # coprime with 200 visits each once).
            step = STEPS[number]
            for k in range(len(PRINCIPALS)):
                principal = PRINCIPALS[(k * step + number) % len(PRINCIPALS)]
                await router.publish(principal, (*principal, number))

        received: dict[int, list[Event]] = {id(conn): [] for conn in conns}

        async def consumer(conn: Any) -> None:
            try:
                while True:
                    received[id(conn)].append(await conn.receive())
            except ConnectionClosedError:
                pass

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for conn in conns:
                    tg.start_soon(consumer, conn)
                async with anyio.create_task_group() as publishers:
                    for number in range(PUBLISHERS):
                        publishers.start_soon(publisher, number)
                await anyio.wait_all_tasks_blocked()
                for conn in conns:
                    await conn.aclose()
        for conn in conns:
            owner = conn.principal
            events = received[id(conn)]
            for event in events:
                if principal_of(event) != owner or tuple(event.payload[:2]) != owner:
                    violations.append(
                        f"the connection of {owner[1]} ({owner[0]}) was handed an event for "
                        f"{event.payload[1]} ({event.payload[0]})"
                    )
            mine = sorted(e.payload[2] for e in events if tuple(e.payload[:2]) == owner)
            if mine != list(range(PUBLISHERS)):
                violations.append(
                    f"{owner[1]} ({owner[0]}) received publishers {mine}, expected each of "
                    f"0..{PUBLISHERS - 1} once"
                )
    finally:
        await router.aclose()
    return violations


# -- operation sequences: the shipped RouterMachine ------------------------------


TTLS = (None, 5.0, 20.0)
SAME_USER_TWO_TENANTS = (PRINCIPALS[0], PRINCIPALS[1])
"""user-0 in fm10-a and in fm10-b: connected before the first step of every run."""
STEPS_PER_RUN = 40


def operations_machine(make: Callable[..., Any]) -> type[RouterMachine]:
    """:class:`~isolation.testing.RouterMachine` over 200 principals, for routers made by ``make``.

    Every run first connects :data:`SAME_USER_TWO_TENANTS`; contexts are drawn
    with the ttls of :data:`TTLS` (a fake clock, advanced by the machine).
    """
    from isolation.testing import RouterMachine  # needs Hypothesis

    class OperationsMachine(RouterMachine):
        principals = PRINCIPALS
        initial_connections = SAME_USER_TWO_TENANTS
        ttls = TTLS

        def make_router(self) -> EventRouter:
            # Queues never fill and no principal reaches its connection limit.
            router: EventRouter = make(queue_size=4 * STEPS_PER_RUN, max_connections_per_user=64)
            return router

    return OperationsMachine


def check_operations(make: Callable[..., Any], settings: Settings) -> list[str]:
    """Hypothesis-drawn sequences of the shipped RouterMachine over 200 principals."""
    from hypothesis import HealthCheck, Phase
    from hypothesis import settings as hypothesis_settings
    from hypothesis.stateful import run_state_machine_as_test

    try:
        run_state_machine_as_test(
            operations_machine(make),
            settings=hypothesis_settings(
                max_examples=settings.examples,
                stateful_step_count=STEPS_PER_RUN,
                derandomize=True,
                database=None,
                deadline=None,
                phases=(Phase.generate,),  # found is enough: no shrinking
                suppress_health_check=list(HealthCheck),
                print_blob=False,
            ),
        )
    except AssertionError as exc:
        return [line for line in str(exc).splitlines() if line.strip()][:20]
    return []


# -- the mutant: routing by user id alone --


class _UserConnection:
    def __init__(self, ctx: UserContext) -> None:
        self.principal = ctx.principal
        self.expires_at = ctx.expires_at
        self.queue: deque[Event] = deque()
        self.seq = 0
        self.closed = False
        self.wakeup: anyio.Event | None = None

    async def receive(self) -> Event:
        while True:
            if self.closed or (self.expires_at is not None and _clock.now() >= self.expires_at):
                raise ConnectionClosedError("closed", reason=CloseReason.CLOSED)
            if self.queue:
                return self.queue.popleft()
            self.wakeup = anyio.Event()
            await self.wakeup.wait()

    def wake(self) -> None:
        if self.wakeup is not None:
            self.wakeup.set()

    def stats(self) -> ConnectionStats:
        return ConnectionStats(
            seq=self.seq, delivered=0, dropped=0, refused=0, queued=len(self.queue), waiting=0
        )

    async def aclose(self) -> None:
        self.closed = True
        self.wake()


class _UserKeyedRouter:
    """Mutant: routes by user id alone (two tenants' "alice" share one route)."""

    backend = types.SimpleNamespace(shared=False)  # what RouterMachine asks of a router

    def __init__(self, **options: Any) -> None:
        self.routes: dict[str, list[_UserConnection]] = {}
        self.queue_size: int = options.get("queue_size", 100)
        self.max_connections_per_user: int = options.get("max_connections_per_user", 100)

    async def connect(self, ctx: UserContext) -> _UserConnection:
        conn = _UserConnection(ctx)
        self.routes.setdefault(ctx.user_id, []).append(conn)
        return conn

    async def publish(self, to: Principal, payload: Any) -> PublishResult:
        tenant_id, user_id = to
        number = next_event_number()
        delivered = 0
        for conn in self.routes.get(user_id, ()):
            if conn.closed:
                continue
            conn.seq += 1
            conn.queue.append(
                make_event((number, user_id, tenant_id, "message", 0.0), payload, conn.seq)
            )
            conn.wake()
            delivered += 1
        return PublishResult(delivered=delivered, dropped=0)

    def stats(self) -> RouterStats:
        live = [c for conns in self.routes.values() for c in conns if not c.closed]
        return RouterStats(
            connections=len(live),
            principals=len({c.principal for c in live}),
            opened=0,
            closed=0,
            published=0,
            undeliverable=0,
            delivered=0,
            dropped=0,
            refused=0,
            expired=0,
            overflow_disconnects=0,
        )

    async def aclose(self) -> None:
        for conns in self.routes.values():
            for conn in conns:
                await conn.aclose()
        self.routes.clear()


def register(registry: ModeRegistry) -> None:
    """Register FM10's checks."""
    add_check(
        registry,
        10,
        "under-load",
        check_under_load,
        library=lambda: EventRouter,
        mutant=lambda: _UserKeyedRouter,
        description=(
            "200 principals (100 user ids x 2 tenants), 8 publishers, queues of 4 under "
            "BLOCK: 0 misrouted, 0 lost, 0 duplicated"
        ),
    )
    add_check(
        registry,
        10,
        "operations",
        check_operations,
        library=lambda: EventRouter,
        mutant=lambda: _UserKeyedRouter,
        requires=("hypothesis",),
        description=(
            "Hypothesis sequences of connect, disconnect, publish, receive, cancelled "
            "receive and expiry over 200 principals agree with a model"
        ),
    )
