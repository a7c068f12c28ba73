"""The pure parts of the router: Event values, the overflow decision, the last-step verdict."""

from __future__ import annotations

import copy
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

import isolation
from isolation import UserContext
from isolation.events import Event, EventRouter, Overflow
from isolation.events._model import ConnectionState, event_id, make_event
from isolation.events._queue import Action, burst, decide
from isolation.events._routing import TRANSITIONS, Verdict, transition, verdict


def sample(**overrides: object) -> Event:
    fields: dict[str, object] = {
        "id": "e-1",
        "recipient": "alice",
        "tenant_id": "acme",
        "kind": "message",
        "seq": 1,
        "created_at": 1.5,
        "payload": {"a": [1]},
    }
    fields.update(overrides)
    return Event(**fields)  # type: ignore[arg-type]


class TestEvent:
    def test_immutable(self) -> None:
        """No field can be set or deleted."""
        event = sample()
        with pytest.raises(AttributeError):
            event.recipient = "mallory"  # type: ignore[misc]
        with pytest.raises(AttributeError):
            del event.seq
        with pytest.raises(AttributeError):
            event.extra = 1  # type: ignore[attr-defined]

    def test_fast_constructor_makes_the_same_value(self) -> None:
        """make_event() (the hot path) builds an Event equal to the validated constructor's."""
        fast = make_event(("e-1", "alice", "acme", "message", 1.5), {"a": [1]}, 1)
        assert type(fast) is Event
        assert fast == sample()
        assert hash(fast) == hash(sample())
        with pytest.raises(AttributeError):
            fast.seq = 2  # type: ignore[misc]

    def test_numbered_id(self) -> None:
        """An event published here carries a number rendered as a process-unique id."""
        fast = make_event((7, "alice", None, "message", 1.0), None, 1)
        assert fast.id == event_id(7)
        assert fast.id != event_id(8)
        assert event_id("from-a-backend") == "from-a-backend"

    @pytest.mark.parametrize(
        "bad",
        [
            {"id": ""},
            {"id": 3},
            {"recipient": ""},
            {"tenant_id": 5},
            {"kind": ""},
            {"seq": 0},
            {"seq": True},
            {"created_at": float("nan")},
        ],
    )
    def test_validated(self, bad: dict[str, object]) -> None:
        """The public constructor refuses bad fields."""
        with pytest.raises(isolation.UsageError):
            sample(**bad)

    def test_equality_and_copy(self) -> None:
        """Equality is by every field; copies and pickles round-trip."""
        event = sample()
        assert event != sample(seq=2)
        assert event != "not an event"
        assert copy.copy(event) is event
        assert pickle.loads(pickle.dumps(event)) == event

    def test_repr_has_no_payload(self) -> None:
        """The repr leaves the payload out."""
        assert "[1]" not in repr(sample())


class TestDecide:
    @given(
        policy=st.sampled_from(Overflow),
        capacity=st.integers(1, 50),
        queued=st.integers(0, 60),
        waiting=st.integers(0, 5),
    )
    def test_rules(self, policy: Overflow, capacity: int, queued: int, waiting: int) -> None:
        """Room and nobody waiting: accept; otherwise the policy's one action, never another."""
        action = decide(policy, queued=queued, capacity=capacity, waiting=waiting)
        if queued < capacity and not waiting:
            assert action is Action.ACCEPT
        else:
            assert (
                action
                is {
                    Overflow.BLOCK: Action.WAIT,
                    Overflow.DROP_NEWEST: Action.DROP_NEW,
                    Overflow.DROP_OLDEST: Action.EVICT_OLDEST,
                    Overflow.DISCONNECT: Action.DISCONNECT,
                }[policy]
            )

    @given(
        policy=st.sampled_from(Overflow),
        capacity=st.integers(1, 20),
        count=st.integers(0, 80),
    )
    def test_burst_accounts_for_every_event(
        self, policy: Overflow, capacity: int, count: int
    ) -> None:
        """In a burst every seq is kept, dropped or waiting, exactly once (until a disconnect)."""
        outcome = burst(policy, capacity, range(1, count + 1))
        assert len(outcome.kept) <= capacity
        if outcome.disconnected:
            assert policy is Overflow.DISCONNECT
            assert outcome.dropped == capacity + 1
        else:
            assert len(outcome.kept) + outcome.dropped + len(outcome.waiting) == count
        if policy is Overflow.DROP_OLDEST:
            assert outcome.kept == tuple(range(max(1, count - capacity + 1), count + 1))
        if policy is Overflow.DROP_NEWEST:
            assert outcome.kept == tuple(range(1, min(count, capacity) + 1))


class TestVerdict:
    principals = st.tuples(st.sampled_from([None, "acme", "globex"]), st.sampled_from(["a", "b"]))

    @given(
        event=principals,
        bound=principals,
        expires_at=st.one_of(st.none(), st.floats(0, 10)),
        now=st.floats(0, 10),
    )
    def test_rule(
        self,
        event: tuple[str | None, str],
        bound: tuple[str | None, str],
        expires_at: float | None,
        now: float,
    ) -> None:
        """Foreign beats everything; then expiry; else deliver."""
        result = verdict(
            event_tenant=event[0],
            event_user=event[1],
            bound_tenant=bound[0],
            bound_user=bound[1],
            expires_at=expires_at,
            now=now,
        )
        if event != bound:
            assert result is Verdict.FOREIGN
        elif expires_at is not None and now >= expires_at:
            assert result is Verdict.EXPIRED
        else:
            assert result is Verdict.DELIVER

    @given(
        event=principals,
        bound=principals,
        expires_at=st.one_of(st.none(), st.floats(0, 10)),
        now=st.floats(0, 10),
    )
    def test_inlined_rule_agrees(
        self,
        event: tuple[str | None, str],
        bound: tuple[str | None, str],
        expires_at: float | None,
        now: float,
    ) -> None:
        """The connection's inlined fast check accepts exactly when verdict() says DELIVER."""
        with isolation.testing.use_clock(isolation.testing.FakeClock(now)):
            router = EventRouter()
            ctx = UserContext(user_id=bound[1], tenant_id=bound[0], issued_at=0)
            conn = _open(router, ctx, expires_at)
            conn._queue.append((1, event[1], event[0], "message", now))
            conn._payloads.append(None)
            conn._seqs.append(1)
            delivered = _try_receive(conn)
        expected = verdict(
            event_tenant=event[0],
            event_user=event[1],
            bound_tenant=bound[0],
            bound_user=bound[1],
            expires_at=expires_at,
            now=now,
        )
        assert delivered == (expected is Verdict.DELIVER)
        assert conn.stats().refused == (expected is Verdict.FOREIGN)


def _open(
    router: EventRouter, ctx: UserContext, expires_at: float | None
) -> isolation.events.Connection:
    from isolation.events._connection import Connection

    async def park(conn: object, timeout: float | None) -> None:  # noqa: ASYNC109
        raise _WouldWait

    def wake(handle: object) -> None:
        raise AssertionError("nothing waits here")

    conn = Connection._create(
        router,
        ctx,
        expires_at=expires_at,
        capacity=10,
        policy=Overflow.BLOCK,
        park=park,
        wake=wake,
    )
    router._register(conn, conn.principal)
    return conn


class _WouldWait(Exception):
    pass


def _try_receive(conn: isolation.events.Connection) -> bool:
    """Drive receive() without an event loop: True if it returned an event at once."""
    coro = conn.receive()
    try:
        coro.send(None)
    except StopIteration:
        return True
    except (isolation.ConnectionClosedError, _WouldWait):
        return False
    raise AssertionError("receive() suspended")


class TestTransitions:
    @pytest.mark.parametrize("current", list(ConnectionState))
    @pytest.mark.parametrize("target", list(ConnectionState))
    def test_only_forward(self, current: ConnectionState, target: ConnectionState) -> None:
        """Only CONNECTING->OPEN, CONNECTING->CLOSED and OPEN->CLOSED are allowed."""
        if (current, target) in TRANSITIONS:
            assert transition(current, target) is target
        else:
            with pytest.raises(isolation.UsageError):
                transition(current, target)
        assert len(TRANSITIONS) == 3


class TestWake:
    def test_unknown_loop(self) -> None:
        """Only asyncio and trio have parkers."""
        from isolation.events._wake import for_backend

        with pytest.raises(isolation.UnsupportedBackendError):
            for_backend("curio")

    def test_no_running_loop(self) -> None:
        """Outside an event loop there is nothing to park on."""
        from isolation.events._wake import current_backend

        with pytest.raises(isolation.UnsupportedBackendError):
            current_backend()
