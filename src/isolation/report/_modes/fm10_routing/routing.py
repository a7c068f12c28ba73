"""FM10, events delivered to the wrong user under load: delivery checks the recipient last.

Subject: a router class (``make(**options)``, see :mod:`.._support.events`). Two checks.

``under-load``: 200 principals (100 user ids, each in two tenants) with one
connection each, queues of 4 under ``BLOCK`` so publishers block and
interleave with consumers, and 8 publisher tasks each sending one event to
every principal. The property: 0 events reach another principal's
connection, and every connection gets exactly its 8 events, each publisher's
in order (0 lost, 0 duplicated).

``operations``: sequences of operations (connect, disconnect, publish,
receive, cancel a receive, let contexts expire) over the same 200 principals,
drawn by Hypothesis and run on one event loop against a model of what each
connection must receive. The property: every receive returns exactly the
model's next event, closed and expired connections refuse, and nothing else is
ever queued. An explicit first example touches the same user id in two
tenants, so the mutant is caught every run.

The mutant routes by user id alone, ignoring the tenant.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import attrs

from isolation._clock import FakeClock, use_clock
from isolation._errors import ConnectionClosedError
from isolation.context._model import Principal, UserContext
from isolation.events._model import (
    CloseReason,
    ConnectionStats,
    Event,
    PublishResult,
    make_event,
    next_event_number,
)
from isolation.events._router import EventRouter
from isolation.report._modes._support.events import principal_of
from isolation.report._registry import Backend, Check, ModeRegistry, Settings

__all__ = ["Op", "PRINCIPALS", "check_operations", "check_under_load", "register", "run_operations"]

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


# -- operation sequences against a model ------------------------------------------


@attrs.frozen
class Op:
    """One operation: ``kind`` and two small integer arguments, as Hypothesis draws them."""

    kind: str
    a: int = 0
    b: int = 0


KINDS = ("connect", "disconnect", "publish", "receive", "cancel_receive", "expire")
TTLS = (None, 5.0, 20.0)


class _Model:
    __slots__ = ("closed", "conn", "expected", "expires_at", "principal")

    def __init__(self, conn: Any, principal: Principal, expires_at: float | None) -> None:
        self.conn = conn
        self.principal = principal
        self.expected: deque[int] = deque()
        self.closed = False
        self.expires_at = expires_at


async def run_operations(make: Callable[..., Any], ops: Sequence[Op]) -> list[str]:
    """Run ``ops`` against a router made by ``make`` and a model; return the violations.

    Installs a :class:`FakeClock` for the run (``expire`` advances it).
    """
    clock = FakeClock()
    with use_clock(clock):
        router = make(queue_size=len(ops) + 1, max_connections_per_user=len(ops) + 1)
        try:
            return await _run(router, clock, ops)
        finally:
            await router.aclose()


async def _run(router: Any, clock: FakeClock, ops: Sequence[Op]) -> list[str]:
    violations: list[str] = []
    models: list[_Model] = []
    counter = 0

    def live() -> list[_Model]:
        return [m for m in models if not m.closed]

    def expire_models() -> None:
        for m in models:
            if not m.closed and m.expires_at is not None and clock.time() >= m.expires_at:
                m.closed = True
                m.expected.clear()

    def check_event(m: _Model, event: Any, where: str) -> None:
        if principal_of(event) != m.principal:
            violations.append(
                f"{where}: the connection of {m.principal} was handed an event for "
                f"{principal_of(event)}"
            )
            return
        want = m.expected.popleft() if m.expected else None
        if event.payload != want:
            violations.append(f"{where}: {m.principal} got event {event.payload}, expected {want}")

    for step, op in enumerate(ops):
        where = f"step {step} ({op.kind})"
        if op.kind == "connect":
            principal = PRINCIPALS[op.a % len(PRINCIPALS)]
            ttl = TTLS[op.b % len(TTLS)]
            ctx = UserContext.new(principal.user_id, tenant_id=principal.tenant_id, ttl=ttl)
            conn = await router.connect(ctx)
            models.append(_Model(conn, principal, ctx.expires_at))
        elif op.kind == "publish":
            principal = PRINCIPALS[op.a % len(PRINCIPALS)]
            tenant, user = principal
            counter += 1
            result = await router.publish(principal, counter)
            targets = [m for m in live() if m.principal == principal]
            for m in targets:
                m.expected.append(counter)
            if result.delivered != len(targets) or result.dropped:
                violations.append(
                    f"{where}: publish to {user} ({tenant}) reported {result}, "
                    f"expected delivered={len(targets)}"
                )
        elif op.kind == "expire":
            clock.advance(float(op.a % 25))
            expire_models()
        elif models:
            m = models[op.a % len(models)]
            if op.kind == "disconnect":
                await m.conn.aclose()
                m.closed = True
                m.expected.clear()
            elif op.kind == "receive" and (m.closed or m.expected):
                try:
                    event = await m.conn.receive()
                except ConnectionClosedError:
                    if not m.closed:
                        violations.append(f"{where}: a live connection of {m.principal} refused")
                else:
                    if m.closed:
                        violations.append(
                            f"{where}: a closed connection of {m.principal} delivered"
                        )
                    else:
                        check_event(m, event, where)
            elif op.kind in ("receive", "cancel_receive") and not m.closed:
                await _cancelled_receive(m, where, check_event)
    # At the end every live connection holds exactly what the model expects, nothing more.
    expire_models()
    for m in live():
        while m.expected:
            check_event(m, await m.conn.receive(), "final drain")
        await _cancelled_receive(m, "final drain", check_event)
    return violations


async def _cancelled_receive(
    m: _Model, where: str, check_event: Callable[[_Model, Any, str], None]
) -> None:
    """Start a receive, let it wait, cancel it: it returns an event only if one was queued."""
    got: list[Any] = []

    async def receive() -> None:
        got.append(await m.conn.receive())

    async with anyio.create_task_group() as tg:
        tg.start_soon(receive)
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    for event in got:
        check_event(m, event, f"{where} (cancelled receive)")


SAME_USER_TWO_TENANTS = (
    Op("connect", 0),  # user-0 in fm10-a
    Op("connect", 1),  # user-0 in fm10-b
    Op("publish", 0),
    Op("receive", 1),
    Op("publish", 1),
    Op("cancel_receive", 0),
    Op("receive", 0),
)


def check_operations(make: Callable[..., Any], settings: Settings) -> list[str]:
    """Hypothesis-drawn operation sequences over 200 principals against a model."""
    from hypothesis import HealthCheck, Phase, example, given
    from hypothesis import settings as hypothesis_settings
    from hypothesis import strategies as st

    ops = st.lists(
        st.builds(
            Op,
            st.sampled_from(KINDS),
            st.integers(0, len(PRINCIPALS) - 1),
            st.integers(0, len(TTLS) - 1),
        ),
        max_size=40,
    )

    @hypothesis_settings(
        max_examples=settings.examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=list(HealthCheck),
    )
    @example(list(SAME_USER_TWO_TENANTS))
    @given(ops)
    def property_holds(sequence: list[Op]) -> None:
        found = anyio.run(run_operations, make, sequence)
        if found:
            raise AssertionError("\n".join(found))

    try:
        property_holds()
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
            if self.closed or (self.expires_at is not None and _now() >= self.expires_at):
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


def _now() -> float:
    from isolation import _clock

    return _clock._now()


class _UserKeyedRouter:
    """Mutant: routes by user id alone (two tenants' "alice" share one route)."""

    def __init__(self, **options: Any) -> None:
        self.routes: dict[str, list[_UserConnection]] = {}

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

    async def aclose(self) -> None:
        for conns in self.routes.values():
            for conn in conns:
                await conn.aclose()
        self.routes.clear()


def register(registry: ModeRegistry) -> None:
    """Register FM10's checks."""
    registry.register(
        10,
        Check(
            name="under-load",
            backend=Backend.MEMORY,
            run=check_under_load,
            library=lambda: EventRouter,
            mutant=lambda: _UserKeyedRouter,
            description=(
                "200 principals (100 user ids x 2 tenants), 8 publishers, queues of 4 under "
                "BLOCK: 0 misrouted, 0 lost, 0 duplicated"
            ),
        ),
    )
    registry.register(
        10,
        Check(
            name="operations",
            backend=Backend.MEMORY,
            run=check_operations,
            library=lambda: EventRouter,
            mutant=lambda: _UserKeyedRouter,
            requires=("hypothesis",),
            description=(
                "Hypothesis sequences of connect, disconnect, publish, receive, cancelled "
                "receive and expiry over 200 principals agree with a model"
            ),
        ),
    )
