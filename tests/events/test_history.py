"""Per-principal history: offsets and epochs, and resuming a connection after a drop.

Each rule of issue 20's first slice (in memory): offsets per principal assigned
before any overflow decision and kept without a live connection; a resume
replays the bound principal's own missed events once, in order, then live ones
with no gap or duplicate at the seam; a stale epoch or a point older than the
history gives exactly one ``"gap"``; a point beyond the stream's end, or a
malformed one, is a ``UsageError``; a resume point in a ticket is signed and
bound to the ticket's principal.
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest

import isolation
from isolation import ConfigurationError, Principal, UsageError, UserContext
from isolation.events import Event, EventRouter, History, Overflow, ResumePoint
from isolation.events._history import RESUME_ATTRIBUTE
from isolation.events.backends._history import MemoryHistory, Replay
from isolation.testing import FakeClock

pytestmark = pytest.mark.anyio

KEY = b"0123456789abcdef" * 2
ALICE = Principal("acme", "alice")
BOB = Principal("acme", "bob")
ALICE_ELSEWHERE = Principal("globex", "alice")  # the same user id in another tenant


def ctx_of(principal: Principal) -> UserContext:
    return UserContext.new(principal.user_id, tenant_id=principal.tenant_id)


def router(size: int = 100, ttl: float = 3600.0, **kwargs: Any) -> EventRouter:
    return EventRouter(history=History(size=size, ttl=ttl), keys=[KEY], **kwargs)


async def drain(conn: isolation.events.Connection) -> list[Event]:
    """Every event queued now, without waiting."""
    events = []
    while conn.stats().queued:
        events.append(await conn.receive())
    return events


def offsets(events: list[Event]) -> list[int | None]:
    return [e.offset for e in events]


async def publish(r: EventRouter, to: Principal, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        await r.publish(to, {"n": i})


class TestSettings:
    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [
            ({"size": 0, "ttl": 1.0}, "size"),
            ({"size": True, "ttl": 1.0}, "size"),
            ({"size": "10", "ttl": 1.0}, "size"),
            ({"size": 1, "ttl": 0}, "ttl"),
            ({"size": 1, "ttl": float("inf")}, "ttl"),
            ({"size": 1, "ttl": float("nan")}, "ttl"),
            ({"size": 1, "ttl": True}, "ttl"),
        ],
    )
    def test_history_is_validated(self, kwargs: dict[str, Any], field: str) -> None:
        with pytest.raises(ConfigurationError, match=f"History {field}"):
            History(**kwargs)

    def test_history_is_frozen(self) -> None:
        history = History(size=3, ttl=1)
        with pytest.raises(AttributeError):
            history.size = 4  # type: ignore[misc]

    @pytest.mark.parametrize(
        "args",
        [
            ("e", -1),
            ("e", 1.0),
            ("e", True),
            ("e", "1"),
            (1, 1),
            ("", 1),
            ("x" * 129, 1),
            ("has space", 1),
            ("caf\u00e9", 1),
        ],
    )
    def test_resume_point_is_validated(self, args: tuple[Any, Any]) -> None:
        with pytest.raises(UsageError, match="ResumePoint"):
            ResumePoint(*args)

    def test_resume_point_limits(self) -> None:
        assert ResumePoint("x" * 128, 0).offset == 0
        with pytest.raises(AttributeError):
            ResumePoint("e", 1).offset = 2  # type: ignore[misc]

    async def test_router_history_is_validated(self) -> None:
        with pytest.raises(ConfigurationError, match="History"):
            EventRouter(history=(10, 10))  # type: ignore[arg-type]
        assert EventRouter().history is None
        assert router(size=7).history == History(size=7, ttl=3600.0)

    async def test_a_backend_without_storage_is_refused(self) -> None:
        class NoStore:
            shared = False

            def attach(self, deliver: object) -> None: ...
            async def publish(self, envelope: object) -> object: ...
            def watch(self, principal: object) -> None: ...
            def unwatch(self, principal: object) -> None: ...
            async def claim_ticket(self, token: str, *, expires_at: float) -> bool: ...
            async def aclose(self) -> None: ...

        with pytest.raises(ConfigurationError, match="cannot keep event history"):
            EventRouter(backend=NoStore(), history=History(size=1, ttl=1))  # type: ignore[arg-type]

    def test_redis_is_refused_in_this_release(self) -> None:
        redis = pytest.importorskip("isolation.events.backends.redis")
        backend = redis.RedisBackend("redis://127.0.0.1:1/0", keys=[KEY])
        with pytest.raises(ConfigurationError, match="history on Redis is not supported yet"):
            EventRouter(backend=backend, history=History(size=1, ttl=1))

    async def test_resume_needs_history(self) -> None:
        plain = EventRouter(keys=[KEY])
        with pytest.raises(ConfigurationError, match="without history"):
            await plain.connect(ctx_of(ALICE), resume=ResumePoint("e", 0))
        with pytest.raises(ConfigurationError, match="without history"):
            plain.issue_ticket(ctx_of(ALICE), resume=ResumePoint("e", 0))
        assert plain.stats().connections == 0

    async def test_resume_must_be_a_resume_point(self) -> None:
        r = router()
        with pytest.raises(UsageError, match="ResumePoint"):
            await r.connect(ctx_of(ALICE), resume=("e", 0))  # type: ignore[arg-type]
        with pytest.raises(UsageError, match="ResumePoint"):
            r.issue_ticket(ctx_of(ALICE), resume={"epoch": "e", "offset": 0})  # type: ignore[arg-type]


class TestOffsets:
    async def test_no_history_no_offset(self) -> None:
        r = EventRouter()
        conn = await r.connect(ctx_of(ALICE))
        await r.publish(ALICE, 1)
        event = await conn.receive()
        assert (event.offset, event.epoch) == (None, None)

    async def test_offsets_count_per_principal(self) -> None:
        r = router()
        conns = {p: await r.connect(ctx_of(p)) for p in (ALICE, BOB, ALICE_ELSEWHERE)}
        await publish(r, ALICE, 3)
        await publish(r, BOB, 2)
        await publish(r, ALICE_ELSEWHERE, 1)
        await publish(r, ALICE, 1)
        got = {p: await drain(c) for p, c in conns.items()}
        assert offsets(got[ALICE]) == [1, 2, 3, 4]
        assert offsets(got[BOB]) == [1, 2]
        assert offsets(got[ALICE_ELSEWHERE]) == [1]
        epochs = {p: {e.epoch for e in events} for p, events in got.items()}
        assert all(len(e) == 1 for e in epochs.values())
        assert len(set().union(*epochs.values())) == 3  # a stream per principal

    async def test_every_connection_sees_the_same_offset(self) -> None:
        r = router()
        one, two = await r.connect(ctx_of(ALICE)), await r.connect(ctx_of(ALICE))
        await publish(r, ALICE, 2)
        first, second = await drain(one), await drain(two)
        assert [(e.id, e.offset, e.epoch) for e in first] == [
            (e.id, e.offset, e.epoch) for e in second
        ]
        assert [e.seq for e in first] == [1, 2]

    async def test_offsets_are_kept_without_a_live_connection(self) -> None:
        r = router()
        result = await r.publish(ALICE, "while away")
        assert result.delivered == 0
        conn = await r.connect(ctx_of(ALICE))
        await r.publish(ALICE, "back")
        assert offsets(await drain(conn)) == [2]

    async def test_offset_is_assigned_before_the_overflow_decision(self) -> None:
        r = router(queue_size=1, overflow=Overflow.DROP_NEWEST)
        conn = await r.connect(ctx_of(ALICE))
        await publish(r, ALICE, 3)  # the second and third are dropped here
        first = await conn.receive()
        await r.publish(ALICE, "after")
        assert offsets([first, *await drain(conn)]) == [1, 4]
        # ...and the dropped ones are still in the history.
        again = await r.connect(ctx_of(ALICE), resume=ResumePoint(first.epoch or "", 1))
        assert [e.payload for e in await drain(again)] == [{"n": 1}, {"n": 2}, "after"]

    async def test_a_new_router_has_a_new_epoch(self) -> None:
        epochs = set()
        for _ in range(2):
            r = router()
            conn = await r.connect(ctx_of(ALICE))
            await r.publish(ALICE, 1)
            epochs.add((await conn.receive()).epoch)
        assert len(epochs) == 2

    def test_event_carries_offset_and_epoch(self) -> None:
        fields: dict[str, Any] = {
            "id": "x",
            "recipient": "alice",
            "tenant_id": "acme",
            "kind": "message",
            "seq": 1,
            "created_at": 0.0,
            "payload": {},
        }
        event = Event(**fields, offset=3, epoch="e1")
        assert pickle.loads(pickle.dumps(event)) == event
        assert event != Event(**fields, offset=4, epoch="e1")
        assert Event(**fields).offset is None
        with pytest.raises(UsageError, match="offset"):
            Event(**fields, offset=0)
        with pytest.raises(UsageError, match="epoch"):
            Event(**fields, epoch="")


class TestResume:
    async def test_missed_events_then_live(self) -> None:
        r = router()
        conn = await r.connect(ctx_of(ALICE))
        await publish(r, ALICE, 2)
        seen = (await drain(conn))[-1]
        conn.close()
        await publish(r, ALICE, 3, start=2)  # missed
        await publish(r, BOB, 2)  # never Alice's
        back = await r.connect(
            ctx_of(ALICE), resume=ResumePoint(seen.epoch or "", seen.offset or 0)
        )
        await r.publish(ALICE, "live")
        events = await drain(back)
        assert offsets(events) == [3, 4, 5, 6]
        assert [e.payload for e in events] == [{"n": 2}, {"n": 3}, {"n": 4}, "live"]
        assert {e.principal for e in [back]} == {ALICE}
        assert all((e.tenant_id, e.recipient) == ALICE for e in events)
        assert [e.seq for e in events] == [1, 2, 3, 4]
        assert back.stats().seq == 4

    async def test_resume_at_the_end_replays_nothing(self) -> None:
        r = router()
        conn = await r.connect(ctx_of(ALICE))
        await publish(r, ALICE, 2)
        last = (await drain(conn))[-1]
        back = await r.connect(ctx_of(ALICE), resume=ResumePoint(last.epoch or "", 2))
        assert await drain(back) == []

    async def test_resume_from_zero_replays_the_whole_history(self) -> None:
        r = router()
        probe = await r.connect(ctx_of(ALICE))
        await publish(r, ALICE, 3)
        epoch = (await probe.receive()).epoch or ""
        back = await r.connect(ctx_of(ALICE), resume=ResumePoint(epoch, 0))
        assert offsets(await drain(back)) == [1, 2, 3]

    async def test_no_gap_and_no_duplicate_at_the_seam(self) -> None:
        """Events published while the history is read arrive once, in offset order."""
        r = router()
        probe = await r.connect(ctx_of(ALICE))
        await publish(r, ALICE, 2)
        epoch = (await drain(probe))[-1].epoch or ""
        store = r._history
        assert isinstance(store, MemoryHistory)

        class Racing:
            """Publishes while the read is in flight: before it (held and read) and after."""

            def append(self, principal: Principal, packed: Any, payload: Any) -> Any:
                return store.append(principal, packed, payload)

            async def read(self, principal: Principal, after: int) -> Replay:
                await publish(r, ALICE, 2, start=10)  # held live AND in the history read
                replay = await store.read(principal, after)
                await publish(r, ALICE, 2, start=20)  # held live, after the read
                return replay

        r._history = Racing()
        back = await r.connect(ctx_of(ALICE), resume=ResumePoint(epoch, 1))
        events = await drain(back)
        assert offsets(events) == [2, 3, 4, 5, 6]
        assert [e.payload["n"] for e in events] == [1, 10, 11, 20, 21]

    async def test_stale_epoch_gets_exactly_one_gap(self) -> None:
        r = router()
        await publish(r, ALICE, 3)
        back = await r.connect(ctx_of(ALICE), resume=ResumePoint("0123456789abcdef", 2))
        await r.publish(ALICE, "live")
        events = await drain(back)
        assert [e.kind for e in events] == ["gap", "message"]
        gap = events[0]
        assert gap.payload["reason"] == "history_lost"
        assert gap.payload["offset"] == 3
        assert gap.payload["epoch"] == events[1].epoch
        assert gap.offset is None
        assert gap.epoch == events[1].epoch
        assert events[1].offset == 4

    async def test_an_epoch_of_an_earlier_router_gets_history_lost(self) -> None:
        old = router()
        conn = await old.connect(ctx_of(ALICE))
        await publish(old, ALICE, 5)
        seen = (await drain(conn))[-1]
        await old.aclose()
        new = router()
        back = await new.connect(ctx_of(ALICE), resume=ResumePoint(seen.epoch or "", 5))
        events = await drain(back)
        assert [(e.kind, e.payload["reason"]) for e in events] == [("gap", "history_lost")]

    async def test_older_than_the_history_gets_too_old(self) -> None:
        r = router(size=3)
        probe = await r.connect(ctx_of(ALICE))
        await publish(r, ALICE, 10)
        epoch = (await drain(probe))[-1].epoch or ""
        back = await r.connect(ctx_of(ALICE), resume=ResumePoint(epoch, 6))
        await r.publish(ALICE, "live")
        events = await drain(back)
        assert [e.kind for e in events] == ["gap", "message"]
        assert events[0].payload == {"reason": "too_old", "epoch": epoch, "offset": 10}
        assert events[1].offset == 11
        # The history holds 9, 10 and 11 now: from 8 on, replayed with no gap.
        held = await r.connect(ctx_of(ALICE), resume=ResumePoint(epoch, 8))
        assert offsets(await drain(held)) == [9, 10, 11]

    async def test_beyond_the_end_is_a_usage_error(self) -> None:
        r = router()
        probe = await r.connect(ctx_of(ALICE))
        await publish(r, ALICE, 2)
        epoch = (await drain(probe))[-1].epoch or ""
        with pytest.raises(UsageError, match="beyond the end"):
            await r.connect(ctx_of(ALICE), resume=ResumePoint(epoch, 3))
        assert r.connections(ALICE) == (probe,)

    async def test_ttl_expires_history(self, fake_clock: FakeClock) -> None:
        r = router(ttl=60)
        probe = await r.connect(ctx_of(ALICE))
        await publish(r, ALICE, 2)
        fake_clock.advance(30)
        await publish(r, ALICE, 1, start=2)
        epoch = (await drain(probe))[-1].epoch or ""
        probe.close()
        fake_clock.advance(31)  # the first two are past the ttl, the third is not
        back = await r.connect(ctx_of(ALICE), resume=ResumePoint(epoch, 2))
        assert offsets(await drain(back)) == [3]
        too_old = await r.connect(ctx_of(ALICE), resume=ResumePoint(epoch, 0))
        assert [e.payload["reason"] for e in await drain(too_old)] == ["too_old"]

    async def test_a_forgotten_stream_starts_a_new_epoch(self, fake_clock: FakeClock) -> None:
        r = router(ttl=60)
        probe = await r.connect(ctx_of(ALICE))
        await publish(r, ALICE, 2)
        seen = (await drain(probe))[-1]
        probe.close()
        fake_clock.advance(61)
        await r.publish(ALICE, "new stream")
        back = await r.connect(ctx_of(ALICE), resume=ResumePoint(seen.epoch or "", 2))
        events = await drain(back)
        assert [e.kind for e in events] == ["gap"]
        assert events[0].payload["reason"] == "history_lost"
        assert events[0].epoch != seen.epoch
        assert events[0].payload["offset"] == 1

    async def test_stale_streams_are_forgotten(self, fake_clock: FakeClock) -> None:
        r = router(ttl=10)
        for i in range(50):
            await r.publish(Principal("acme", f"u{i}"), "x")
        store = r._history
        assert isinstance(store, MemoryHistory)
        assert store.streams == 50
        fake_clock.advance(11)
        await r.publish(ALICE, "x")
        assert store.streams == 1


class TestNeverAnotherPrincipal:
    async def test_a_foreign_resume_point_reads_only_the_own_stream(self) -> None:
        r = router()
        bob = await r.connect(ctx_of(BOB))
        elsewhere = await r.connect(ctx_of(ALICE_ELSEWHERE))
        await publish(r, BOB, 5)
        await publish(r, ALICE_ELSEWHERE, 5)
        for foreign in ((await drain(bob))[0], (await drain(elsewhere))[0]):
            conn = await r.connect(ctx_of(ALICE), resume=ResumePoint(foreign.epoch or "", 0))
            events = await drain(conn)
            assert [(e.kind, e.payload["reason"]) for e in events] == [("gap", "history_lost")]
            assert all((e.tenant_id, e.recipient) == ALICE for e in events)

    async def test_a_foreign_point_with_a_reachable_offset_is_still_history_lost(self) -> None:
        r = router()
        await publish(r, ALICE, 5)
        bob = await r.connect(ctx_of(BOB))
        await publish(r, BOB, 1)
        bob_epoch = (await bob.receive()).epoch or ""
        conn = await r.connect(ctx_of(ALICE), resume=ResumePoint(bob_epoch, 1))
        assert [e.payload["reason"] for e in await drain(conn)] == ["history_lost"]


class TestTickets:
    async def test_a_ticket_carries_a_signed_resume_point(self) -> None:
        r = router()
        conn = await r.connect(ctx_of(ALICE))
        await publish(r, ALICE, 2)
        seen = (await drain(conn))[-1]
        conn.close()
        await publish(r, ALICE, 2, start=2)
        ticket = r.issue_ticket(ctx_of(ALICE), resume=ResumePoint(seen.epoch or "", 2))
        back = await r.connect(token=ticket)
        assert offsets(await drain(back)) == [3, 4]
        assert RESUME_ATTRIBUTE not in back.context.attributes
        with pytest.raises(isolation.TokenReplayedError):
            await r.connect(token=ticket)

    async def test_a_ticket_resume_point_is_bound_to_its_principal(self) -> None:
        """Bob's ticket with Alice's resume point reads Bob's stream: a gap, nothing of Alice's."""
        r = router()
        alice = await r.connect(ctx_of(ALICE))
        await publish(r, ALICE, 3)
        alice_epoch = (await drain(alice))[-1].epoch or ""
        ticket = r.issue_ticket(ctx_of(BOB), resume=ResumePoint(alice_epoch, 0))
        conn = await r.connect(token=ticket)
        events = await drain(conn)
        assert [e.payload["reason"] for e in events] == ["history_lost"]
        assert all((e.tenant_id, e.recipient) == BOB for e in events)

    async def test_a_tampered_ticket_is_refused(self) -> None:
        r = router()
        ticket = r.issue_ticket(ctx_of(ALICE), resume=ResumePoint("abc", 0))
        head, purpose, body, signature = ticket.split(".")
        forged = ".".join(
            (head, purpose, body[:-2] + ("AA" if body[-2:] != "AA" else "BB"), signature)
        )
        with pytest.raises(isolation.TokenError):
            await r.connect(token=forged)
        assert r.stats().connections == 0

    async def test_a_context_attribute_is_not_a_resume_point(self) -> None:
        """Only issue_ticket(resume=...) writes the signed point: an app's attribute is dropped."""
        r = router()
        probe = await r.connect(ctx_of(ALICE))
        await publish(r, ALICE, 3)
        epoch = (await drain(probe))[-1].epoch or ""
        ctx = UserContext.new(
            "alice", tenant_id="acme", attributes={RESUME_ATTRIBUTE: f"0:{epoch}"}
        )
        conn = await r.connect(token=r.issue_ticket(ctx))
        assert await drain(conn) == []  # nothing replayed
        assert RESUME_ATTRIBUTE not in conn.context.attributes
        # and connect(ctx) ignores it too
        direct = await r.connect(ctx)
        assert await drain(direct) == []

    async def test_a_ticket_with_a_point_and_resume_is_refused(self) -> None:
        r = router()
        ticket = r.issue_ticket(ctx_of(ALICE), resume=ResumePoint("abc", 0))
        with pytest.raises(UsageError, match="carries a resume point"):
            await r.connect(token=ticket, resume=ResumePoint("abc", 0))

    async def test_reauthenticating_with_a_resume_ticket_replays_nothing(self) -> None:
        r = router()
        conn = await r.connect(ctx_of(ALICE))
        await publish(r, ALICE, 2)
        epoch = (await drain(conn))[-1].epoch or ""
        await conn.reauthenticate(r.issue_ticket(ctx_of(ALICE), resume=ResumePoint(epoch, 0)))
        assert await drain(conn) == []
        assert RESUME_ATTRIBUTE not in conn.context.attributes


class TestMultiTab:
    async def test_each_connection_resumes_independently(self) -> None:
        r = router()
        tabs = [await r.connect(ctx_of(ALICE)) for _ in range(3)]
        await publish(r, ALICE, 2)
        seen = [await drain(tabs[0]), (await drain(tabs[1]))[:1], []]
        await drain(tabs[2])
        epoch = seen[0][0].epoch or ""
        for tab in tabs[:2]:
            tab.close()
        await publish(r, ALICE, 2, start=2)
        resumed = [
            await r.connect(ctx_of(ALICE), resume=ResumePoint(epoch, 2)),
            await r.connect(ctx_of(ALICE), resume=ResumePoint(epoch, 1)),
        ]
        await r.publish(ALICE, "live")
        assert offsets(await drain(resumed[0])) == [3, 4, 5]
        assert offsets(await drain(resumed[1])) == [2, 3, 4, 5]
        assert offsets(await drain(tabs[2])) == [3, 4, 5]  # the tab that never dropped
