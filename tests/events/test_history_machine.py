"""History and resume against a model: publish, drop, resume (own, stale, foreign, forged
points), expiry on a FakeClock, and a router restart (the history is lost).

The model holds each principal's stream: its generation (a new one when the
router restarts or the stream was untouched for ``ttl``), its last offset, and
when each event was published. Every connection's expected events (offsets,
or one gap with its reason) are computed from it; the property is that every
connection receives exactly them, in order: 0 lost within history, 0
duplicated, 0 cross-user, offset order per connection.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import anyio
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, invariant, precondition, rule

import isolation._clock
from isolation import Principal, UsageError, UserContext
from isolation.events import Connection, EventRouter, History, ResumePoint
from isolation.testing import AsyncRuleBasedStateMachine, FakeClock

KEY = b"0123456789abcdef" * 2
SIZE = 4
TTL = 50.0
PRINCIPALS = [Principal("a", "alice"), Principal("b", "alice"), Principal("a", "bob")]


@dataclass
class Stream:
    generation: int
    touched: float
    times: list[float] = field(default_factory=list)  # times[i]: when offset i + 1 was published
    epoch: str | None = None  # learned from what connections receive

    @property
    def last(self) -> int:
        return len(self.times)


@dataclass
class Client:
    principal: Principal
    conn: Connection | None = None
    point: ResumePoint | None = None
    expected: deque[Any] = field(default_factory=deque)


class HistoryMachine(AsyncRuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.previous = isolation._clock.set_clock(self.clock)
        self.router = self._router()
        self.streams: dict[Principal, Stream] = {}
        self.generations = 0
        self.epochs: dict[int, str] = {}
        self.clients: list[Client] = []

    def _router(self) -> EventRouter:
        return EventRouter(
            history=History(size=SIZE, ttl=TTL),
            keys=[KEY],
            queue_size=10_000,
            max_connections_per_user=10_000,
        )

    clients_bundle = Bundle("clients")

    # -- the model's stream ------------------------------------------------------

    def _touch(self, principal: Principal) -> Stream:
        """The store's rule: a stream untouched for ttl is forgotten; a touch renews it."""
        now = self.clock.time()
        stream = self.streams.get(principal)
        if stream is None or stream.touched <= now - TTL:
            self.generations += 1
            stream = self.streams[principal] = Stream(self.generations, now)
        stream.touched = now
        return stream

    def _learn(self, principal: Principal, generation: int, epoch: str | None) -> None:
        """Record the epoch of a generation of a stream; one epoch per generation, never reused."""
        assert epoch is not None
        known = self.epochs.setdefault(generation, epoch)
        assert known == epoch, "the epoch changed within one stream"
        assert list(self.epochs.values()).count(epoch) == 1, "an epoch was reused"
        stream = self.streams.get(principal)
        if stream is not None and stream.generation == generation:
            stream.epoch = epoch

    # -- rules ---------------------------------------------------------------------

    @rule(target=clients_bundle, principal=st.sampled_from(PRINCIPALS))
    async def connect(self, principal: Principal) -> Client:
        client = Client(principal)
        client.conn = await self.router.connect(
            UserContext.new(principal.user_id, tenant_id=principal.tenant_id)
        )
        self.clients.append(client)
        return client

    @rule(principal=st.sampled_from(PRINCIPALS))
    async def publish(self, principal: Principal) -> None:
        stream = self._touch(principal)
        stream.times.append(self.clock.time())
        await self.router.publish(principal, {"offset": stream.last})
        for client in self.clients:
            if client.conn is not None and client.principal == principal:
                client.expected.append(("message", stream.last, stream.generation))

    @rule(client=clients_bundle, most=st.integers(1, 5))
    async def receive(self, client: Client, most: int) -> None:
        await self._take(client, most)

    async def _take(self, client: Client, most: int) -> None:
        conn = client.conn
        if conn is None:
            return
        for _ in range(most):
            if not conn.stats().queued:
                assert not client.expected, f"lost: {list(client.expected)}"
                return
            event = await conn.receive()
            assert (event.tenant_id, event.recipient) == client.principal, "cross-user"
            assert client.expected, f"unexpected {event.kind} {event.offset}"
            want = client.expected.popleft()
            if event.kind == "gap":
                assert want[:3] == ("gap", event.payload["reason"], event.payload["offset"]), (
                    want,
                    event.payload,
                )
                self._learn(client.principal, want[3], event.epoch)
                assert event.payload["epoch"] == event.epoch
                client.point = ResumePoint(event.payload["epoch"], event.payload["offset"])
            else:
                assert want[:2] == ("message", event.offset), (want, event.offset)
                assert event.payload == {"offset": event.offset}
                self._learn(client.principal, want[2], event.epoch)
                client.point = ResumePoint(event.epoch or "", event.offset or 0)

    @rule(client=clients_bundle, read_first=st.integers(0, 5))
    async def drop(self, client: Client, read_first: int) -> None:
        """The client reads a few events (so it has a point), then its connection drops."""
        if client.conn is not None:
            await self._take(client, read_first)
            client.conn.close()
            client.conn = None
            client.expected.clear()

    def _expect_resume(self, principal: Principal, point: ResumePoint) -> list[Any] | None:
        """What a resume from ``point`` must give now; ``None`` for a UsageError."""
        stream = self._touch(principal)
        now = self.clock.time()
        if stream.epoch is None or point.epoch != stream.epoch:
            return [("gap", "history_lost", stream.last, stream.generation)]
        if point.offset > stream.last:
            return None
        held = [
            offset
            for offset in range(max(1, stream.last - SIZE + 1), stream.last + 1)
            if stream.times[offset - 1] > now - TTL
        ]
        first = held[0] if held else stream.last + 1
        if point.offset < first - 1:
            return [("gap", "too_old", stream.last, stream.generation)]
        return [("message", offset, stream.generation) for offset in held if offset > point.offset]

    async def _resume(self, client: Client, point: ResumePoint, via_ticket: bool) -> None:
        expected = self._expect_resume(client.principal, point)
        ctx = UserContext.new(client.principal.user_id, tenant_id=client.principal.tenant_id)
        try:
            if via_ticket:
                ticket = self.router.issue_ticket(ctx, resume=point, ttl=1e6)
                conn = await self.router.connect(token=ticket)
            else:
                conn = await self.router.connect(ctx, resume=point)
        except UsageError:
            assert expected is None, "a resume point within the stream was refused"
            return
        assert expected is not None, "a point beyond the stream's end was accepted"
        client.conn = conn
        client.expected = deque(expected)

    def _down(self, pick: int) -> Client:
        down = [c for c in self.clients if c.conn is None]
        return down[pick % len(down)]

    @precondition(lambda self: any(c.conn is None for c in self.clients))
    @rule(pick=st.integers(0, 99), via_ticket=st.booleans())
    async def resume_own(self, pick: int, via_ticket: bool) -> None:
        client = self._down(pick)
        point = client.point or ResumePoint("never-seen", 0)
        await self._resume(client, point, via_ticket)

    @precondition(lambda self: any(c.conn is None for c in self.clients))
    @rule(pick=st.integers(0, 99), donor_pick=st.integers(0, 99), via_ticket=st.booleans())
    async def resume_foreign(self, pick: int, donor_pick: int, via_ticket: bool) -> None:
        """A client resumes with a point of another principal's client (or of its own)."""
        client = self._down(pick)
        donors = [c for c in self.clients if c.point is not None]
        if not donors:
            return
        donor = donors[donor_pick % len(donors)]
        assert donor.point is not None
        await self._resume(client, donor.point, via_ticket)

    @precondition(lambda self: any(c.conn is None for c in self.clients))
    @rule(
        pick=st.integers(0, 99),
        via_ticket=st.booleans(),
        beyond=st.integers(0, 3),
        forged=st.one_of(st.none(), st.text("0123456789abcdef", min_size=1, max_size=16)),
    )
    async def resume_forged(
        self, pick: int, via_ticket: bool, beyond: int, forged: str | None
    ) -> None:
        """A point the client made up: a random epoch, or the current one past the end."""
        client = self._down(pick)
        stream = self.streams.get(client.principal)
        if forged is not None or stream is None or stream.epoch is None:
            point = ResumePoint(forged or "f", beyond)
        else:
            point = ResumePoint(stream.epoch, stream.last + beyond)
        await self._resume(client, point, via_ticket)

    @rule(seconds=st.sampled_from([1.0, 5.0, 20.0, 60.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(die=st.integers(0, 9))
    async def restart(self, die: int) -> None:
        """A new router: every stream's history is lost (a process restart, in memory).

        One draw in ten, so that most runs also resume within a stream.
        """
        if die:
            return
        await self.router.aclose()
        self.router = self._router()
        self.streams.clear()
        for client in self.clients:
            client.conn = None
            client.expected.clear()

    @invariant()
    def no_more_queued_than_expected(self) -> None:
        for client in self.clients:
            if client.conn is not None:
                assert client.conn.stats().queued == len(client.expected), (
                    client.conn.stats(),
                    list(client.expected),
                )

    async def ateardown(self) -> None:
        with anyio.fail_after(10):  # a hang guard only
            for client in self.clients:
                if client.conn is not None:
                    await self._take(client, 10_000)
            await self.router.aclose()

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            isolation._clock.set_clock(self.previous)


TestHistoryMachine = HistoryMachine.TestCase
