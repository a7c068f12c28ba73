"""Issue 16, finding 10 (memory): a ticket is single-use at every instant, its expiry included.

Before the fix, the ticket's verification (in ``tokens.loads``) and the
purge of expired records (in the claim) read the clock separately, and the
record was forgotten exactly when the ticket stopped being accepted: a replay
whose verification read the clock at the last accepted instant and whose
claim read it a moment later found no record and opened a second connection.
A real clock always moves between two reads; :class:`TickingClock` does so
deterministically, and the replay is tried at every placement of the
boundary between the reads.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import isolation
import isolation.events
from isolation import Principal, UserContext, tokens
from isolation.events import EventRouter
from isolation.events.backends import MemoryBackend
from isolation.report._modes.fm16_tokens.ticket_expiry import STEP, TickingClock
from isolation.testing import FakeClock, use_clock

pytestmark = pytest.mark.anyio

KEY = b"ticket-expiry-test-key-0123456789abcdef"
TTL = 30


@pytest.fixture
def ticking() -> Iterator[TickingClock]:
    clock = TickingClock()
    with use_clock(clock):
        yield clock


def alice() -> UserContext:
    return UserContext.new("alice", tenant_id="acme")


@pytest.mark.parametrize("steps_before_edge", range(12))
async def test_replay_at_the_expiry_instant_is_refused(
    ticking: TickingClock, steps_before_edge: int
) -> None:
    """Redeemed once; replayed so that the edge (expiry + LEEWAY) falls between any two reads."""
    router = EventRouter(keys=[KEY])
    ticket = router.issue_ticket(alice(), ttl=TTL)
    expires_at = ticking.time() + TTL
    first = await router.connect(token=ticket)
    assert first.user_id == "alice"
    edge = expires_at + tokens.LEEWAY
    ticking.advance(edge - steps_before_edge * STEP - ticking.time())
    ticking.ticking = True
    with pytest.raises((isolation.TokenReplayedError, isolation.TokenExpiredError)):
        await router.connect(token=ticket)
    assert router.stats().opened == 1


async def test_record_kept_past_the_last_accepted_instant(fake_clock: FakeClock) -> None:
    """At expiry + LEEWAY (the last instant a token verifier accepts it) the record is there."""
    backend = MemoryBackend()
    router = EventRouter(keys=[KEY], backend=backend)
    ticket = router.issue_ticket(alice(), ttl=TTL)
    expires_at = fake_clock.time() + TTL
    await router.connect(token=ticket)
    fake_clock.advance(TTL + tokens.LEEWAY)
    assert backend.tickets_recorded == 1
    assert await backend.claim_ticket(ticket, expires_at=expires_at) is False
    fake_clock.advance(STEP)  # one moment later: expired, whatever the record says
    with pytest.raises(isolation.TokenExpiredError):
        await backend.claim_ticket(ticket, expires_at=expires_at)
    assert backend.tickets_recorded == 1
    fake_clock.advance(tokens.LEEWAY)  # only now forgotten
    assert backend.tickets_recorded == 0


async def test_claim_refuses_an_expired_ticket_at_its_own_reading(fake_clock: FakeClock) -> None:
    """The backend decides expiry at the claim's reading, whatever the verifier read before."""
    backend = MemoryBackend()
    EventRouter(backend=backend)
    expires_at = fake_clock.time()
    assert await backend.claim_ticket("t1", expires_at=expires_at) is True
    fake_clock.advance(tokens.LEEWAY)
    assert await backend.claim_ticket("t1", expires_at=expires_at) is False
    fake_clock.advance(STEP)
    with pytest.raises(isolation.TokenExpiredError):
        await backend.claim_ticket("t2", expires_at=expires_at)


# -- Issue 16, finding 11 (WebSocket part): a connection expires with its ticket --


async def test_connection_from_a_ticket_closes_when_the_ticket_expires(
    fake_clock: FakeClock,
) -> None:
    """The context never expires; the ticket does, in 30 s: so does the connection."""
    import anyio

    router = EventRouter(keys=[KEY])
    forever = UserContext.new("alice", tenant_id="acme")  # no expires_at at all
    conn = await router.connect(token=router.issue_ticket(forever, ttl=TTL))
    assert conn.expires_at == fake_clock.time() + TTL
    await router.publish(Principal("acme", "alice"), "before")
    assert (await conn.receive()).payload == "before"
    outcome: list[BaseException] = []

    async def wait_for_events() -> None:
        try:
            await conn.receive()
        except isolation.ConnectionClosedError as exc:
            outcome.append(exc)

    with anyio.fail_after(10):  # a hang guard: the clock's advance wakes the receiver
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for_events)
            await anyio.wait_all_tasks_blocked()
            fake_clock.advance(TTL)
    [closed] = outcome
    assert isinstance(closed, isolation.ConnectionClosedError)
    assert closed.reason is isolation.events.CloseReason.EXPIRED
    assert (await router.publish(Principal("acme", "alice"), "after")).delivered == 0
    assert router.stats().expired == 1


async def test_reauthentication_extends_a_ticket_connection(fake_clock: FakeClock) -> None:
    """A fresh ticket before expiry: the connection lives until the new ticket's expiry."""
    router = EventRouter(keys=[KEY])
    ctx = UserContext.new("alice", tenant_id="acme")
    conn = await router.connect(token=router.issue_ticket(ctx, ttl=TTL))
    fake_clock.advance(TTL - 1)
    await conn.reauthenticate(router.issue_ticket(ctx, ttl=2 * TTL))
    assert conn.expires_at == fake_clock.time() + 2 * TTL
    fake_clock.advance(TTL)  # past the first ticket's expiry
    await router.publish(Principal("acme", "alice"), "still here")
    assert (await conn.receive()).payload == "still here"
    fake_clock.advance(TTL)
    with pytest.raises(isolation.ConnectionClosedError) as info:
        await conn.receive()
    assert info.value.reason is isolation.events.CloseReason.EXPIRED


async def test_context_sooner_than_the_ticket_still_wins(fake_clock: FakeClock) -> None:
    """The ticket never extends its context: the earlier of the two expiries applies."""
    router = EventRouter(keys=[KEY])
    ctx = UserContext.new("alice", tenant_id="acme", ttl=10)
    conn = await router.connect(token=router.issue_ticket(ctx, ttl=TTL))
    assert conn.expires_at == pytest.approx(fake_clock.time() + 10)


async def test_a_ticket_at_its_expiry_is_refused_unconsumed(fake_clock: FakeClock) -> None:
    """At the ticket's expiry connect() refuses it (TokenExpiredError) before claiming it."""
    backend = MemoryBackend()
    router = EventRouter(keys=[KEY], backend=backend)
    ticket = router.issue_ticket(alice(), ttl=TTL)
    fake_clock.advance(TTL)
    with pytest.raises(isolation.TokenExpiredError):
        await router.connect(token=ticket)
    assert backend.tickets_recorded == 0
