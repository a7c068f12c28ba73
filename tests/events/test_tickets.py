"""Tickets (single use, own purpose, bounded record), authenticate, and reauthenticate."""

from __future__ import annotations

import anyio
import pytest

import isolation
from isolation import Principal, UserContext, tokens
from isolation.events import TICKET_PURPOSE, CloseReason, EventRouter
from isolation.events.backends import MemoryBackend
from isolation.testing import FakeClock

pytestmark = pytest.mark.anyio

KEY = b"0123456789abcdef" * 2
OTHER_KEY = b"fedcba9876543210" * 2


def alice(**kwargs: object) -> UserContext:
    return UserContext.new("alice", tenant_id="acme", **kwargs)  # type: ignore[arg-type]


def bob() -> UserContext:
    return UserContext.new("bob", tenant_id="acme")


class TestTickets:
    async def test_ticket_opens_one_connection(self) -> None:
        """A ticket opens a connection bound to its context; a second use is a replay."""
        router = EventRouter(keys=[KEY])
        ticket = router.issue_ticket(alice())
        conn = await router.connect(token=ticket)
        assert conn.principal == ("acme", "alice")
        with pytest.raises(isolation.TokenReplayedError):
            await router.connect(token=ticket)
        with pytest.raises(isolation.TokenReplayedError):
            await router.connect(token=ticket.encode("ascii"))
        assert router.stats().connections == 1

    async def test_tickets_are_distinct(self, fake_clock: FakeClock) -> None:
        """Two tickets for one context at one instant are two tickets."""
        router = EventRouter(keys=[KEY])
        ctx = alice()
        first, second = router.issue_ticket(ctx), router.issue_ticket(ctx)
        assert first != second
        await router.connect(token=first)
        await router.connect(token=second)

    async def test_issue_from_scope(self) -> None:
        """issue_ticket() without a context uses the current scope's."""
        router = EventRouter(keys=[KEY])
        async with isolation.scope(alice()):
            ticket = router.issue_ticket()
        conn = await router.connect(token=ticket)
        assert conn.user_id == "alice"
        with pytest.raises(isolation.NoContextError):
            router.issue_ticket()

    def test_needs_keys(self) -> None:
        """issue_ticket() on a router without keys is a ConfigurationError."""
        with pytest.raises(isolation.ConfigurationError):
            EventRouter().issue_ticket(alice())

    def test_bad_arguments(self) -> None:
        """A non-context, or a bad ttl, is refused."""
        router = EventRouter(keys=[KEY])
        with pytest.raises(isolation.UsageError):
            router.issue_ticket("alice")  # type: ignore[arg-type]
        with pytest.raises(isolation.ConfigurationError):
            router.issue_ticket(alice(), ttl=0)

    async def test_token_without_keys_or_authenticate(self) -> None:
        """A token given to a router with neither keys nor authenticate is a ConfigurationError."""
        with pytest.raises(isolation.ConfigurationError):
            await EventRouter().connect(token="anything")

    async def test_other_purpose(self) -> None:
        """A token of this library made for another purpose is not a ticket."""
        router = EventRouter(keys=[KEY])
        token = tokens.dumps(alice(), key=KEY, purpose="job")
        with pytest.raises(isolation.TokenPurposeError):
            await router.connect(token=token)

    async def test_ticket_is_not_a_token_elsewhere(self) -> None:
        """A ticket is refused where another purpose is expected."""
        ticket = EventRouter(keys=[KEY]).issue_ticket(alice())
        with pytest.raises(isolation.TokenPurposeError):
            tokens.loads(ticket, keys=[KEY], purpose="job")
        assert tokens.loads(ticket, keys=[KEY], purpose=TICKET_PURPOSE).user_id == "alice"

    async def test_forged(self) -> None:
        """A ticket signed with a key the router does not hold is refused."""
        forged = EventRouter(keys=[OTHER_KEY]).issue_ticket(alice())
        with pytest.raises(isolation.TokenSignatureError):
            await EventRouter(keys=[KEY]).connect(token=forged)

    async def test_expired(self, fake_clock: FakeClock) -> None:
        """A ticket past its ttl (plus the tokens' leeway) is refused."""
        router = EventRouter(keys=[KEY])
        ticket = router.issue_ticket(alice(), ttl=5)
        fake_clock.advance(5 + tokens.LEEWAY + 0.1)
        with pytest.raises(isolation.TokenExpiredError):
            await router.connect(token=ticket)

    async def test_ticket_in_other_scope(self) -> None:
        """A ticket of another principal inside a bound scope: ContextSwitchError, not consumed."""
        router = EventRouter(keys=[KEY])
        ticket = router.issue_ticket(bob())
        async with isolation.scope(alice()):
            with pytest.raises(isolation.ContextSwitchError):
                await router.connect(token=ticket)
        assert (await router.connect(token=ticket)).user_id == "bob"

    async def test_record_bounded_by_lifetime(self, fake_clock: FakeClock) -> None:
        """Used tickets are remembered until LEEWAY past their last accepted instant."""
        backend = MemoryBackend()
        router = EventRouter(keys=[KEY], backend=backend)
        for _ in range(20):
            conn = await router.connect(token=router.issue_ticket(alice(), ttl=30))
            await conn.aclose()
        assert backend.tickets_recorded == 20
        fake_clock.advance(30 + tokens.LEEWAY + 0.1)  # refused as expired from here on
        assert backend.tickets_recorded == 20
        fake_clock.advance(tokens.LEEWAY)
        assert backend.tickets_recorded == 0
        assert "tickets=0" in repr(backend)

    async def test_record_stores_digests_only(self) -> None:
        """The record holds keyed digests, never the ticket text."""
        backend = MemoryBackend()
        router = EventRouter(keys=[KEY], backend=backend)
        ticket = router.issue_ticket(alice())
        await router.connect(token=ticket)
        [stored] = backend._used
        assert isinstance(stored, bytes)
        assert len(stored) == 32
        assert stored not in ticket.encode()


class TestAuthenticate:
    @pytest.mark.parametrize("asynchronous", [False, True])
    async def test_authenticate(self, asynchronous: bool) -> None:
        """A non-ticket token goes to authenticate (sync or async), even with keys set."""
        seen: list[object] = []

        def check(token: str | bytes) -> UserContext:
            seen.append(token)
            if token != "good":
                raise isolation.TokenSignatureError("bad token")
            return alice()

        async def acheck(token: str | bytes) -> UserContext:
            await anyio.lowlevel.checkpoint()
            return check(token)

        router = EventRouter(keys=[KEY], authenticate=acheck if asynchronous else check)
        conn = await router.connect(token="good")
        assert conn.principal == ("acme", "alice")
        with pytest.raises(isolation.TokenSignatureError):
            await router.connect(token="bad")
        # A library token of another purpose also falls through to authenticate.
        with pytest.raises(isolation.TokenSignatureError):
            await router.connect(token=tokens.dumps(alice(), key=KEY, purpose="job"))
        assert len(seen) == 3

    async def test_tickets_tried_first(self) -> None:
        """A valid ticket never reaches authenticate."""

        def refuse(token: str | bytes) -> UserContext:
            raise AssertionError("authenticate was called for a ticket")

        router = EventRouter(keys=[KEY], authenticate=refuse)
        await router.connect(token=router.issue_ticket(alice()))

    async def test_authenticate_must_return_a_context(self) -> None:
        """authenticate returning something else is a UsageError."""
        router = EventRouter(authenticate=lambda token: "alice")  # type: ignore[arg-type,return-value]
        with pytest.raises(isolation.UsageError):
            await router.connect(token="x")


class TestReauthenticate:
    async def test_same_principal_extends_life(self, fake_clock: FakeClock) -> None:
        """A fresh ticket of the same principal moves the expiry to the new context's."""
        router = EventRouter(keys=[KEY])
        conn = await router.connect(token=router.issue_ticket(alice(ttl=10)))
        assert conn.expires_at == pytest.approx(fake_clock.time() + 10)
        fake_clock.advance(8)
        await conn.reauthenticate(router.issue_ticket(alice(ttl=60), ttl=60))
        assert conn.expires_at == pytest.approx(fake_clock.time() + 60)
        fake_clock.advance(30)
        await router.publish(Principal("acme", "alice"), "still here")
        assert (await conn.receive()).payload == "still here"
        fake_clock.advance(30)
        with pytest.raises(isolation.ConnectionClosedError) as info:
            await conn.receive()
        assert info.value.reason is CloseReason.EXPIRED

    async def test_other_principal_closes(self) -> None:
        """A token of another principal closes the connection with REAUTH_FAILED."""
        router = EventRouter(keys=[KEY])
        conn = await router.connect(alice())
        with pytest.raises(isolation.ConnectionClosedError) as info:
            await conn.reauthenticate(router.issue_ticket(bob()))
        assert info.value.reason is CloseReason.REAUTH_FAILED
        assert isinstance(info.value.__cause__, isolation.ContextSwitchError)
        assert conn.close_reason is CloseReason.REAUTH_FAILED
        assert conn.principal == ("acme", "alice")

    @pytest.mark.parametrize("problem", ["replayed", "purpose", "expired", "forged", "garbage"])
    async def test_bad_token_closes(self, problem: str, fake_clock: FakeClock) -> None:
        """Replayed, foreign-purpose, expired, forged or malformed tokens all close it."""
        router = EventRouter(keys=[KEY])
        conn = await router.connect(alice())
        if problem == "replayed":
            token = router.issue_ticket(alice())
            await router.connect(token=token)
        elif problem == "purpose":
            token = tokens.dumps(alice(), key=KEY, purpose="job")
        elif problem == "expired":
            token = router.issue_ticket(alice(), ttl=1)
            fake_clock.advance(1 + tokens.LEEWAY + 0.1)
        elif problem == "forged":
            token = EventRouter(keys=[OTHER_KEY]).issue_ticket(alice())
        else:
            token = "not a token"
        with pytest.raises(isolation.ConnectionClosedError) as info:
            await conn.reauthenticate(token)
        assert info.value.reason is CloseReason.REAUTH_FAILED
        assert isinstance(info.value.__cause__, isolation.TokenError)

    async def test_authenticator_failure_closes(self) -> None:
        """Whatever authenticate raises, the connection fails closed."""

        def broken(token: str | bytes) -> UserContext:
            raise RuntimeError("identity provider down")

        router = EventRouter(authenticate=broken)
        conn = await router.connect(alice())
        with pytest.raises(isolation.ConnectionClosedError):
            await conn.reauthenticate("t")
        assert conn.closed

    async def test_closed_connection(self) -> None:
        """reauthenticate() on a closed connection raises with its reason."""
        router = EventRouter(keys=[KEY])
        conn = await router.connect(alice())
        await conn.aclose()
        with pytest.raises(isolation.ConnectionClosedError) as info:
            await conn.reauthenticate(router.issue_ticket(alice()))
        assert info.value.reason is CloseReason.CLOSED
