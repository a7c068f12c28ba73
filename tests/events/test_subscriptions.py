"""The Redis backend's subscription state machine, without Redis.

Scenario tables for each decision (when to subscribe, resubscribe and
unsubscribe, when a channel is confirmed, when a gap is owed), the backoff,
and a Hypothesis rule-based machine that drives
:class:`~isolation.events.backends._subscriptions.Subscriptions` with a fake
Redis (commands processed in order, replies and messages read in order, the
connection lost at any point) and the router's connections, and compares it
with a model: every connection whose channel was not confirmed continuously
since its last delivery gets exactly one gap, before its next event.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from isolation import Principal
from isolation.events.backends._envelope import channel_name
from isolation.events.backends._subscriptions import (
    SUBSCRIBE_BATCH,
    Backoff,
    Confirmed,
    Subscriptions,
    Watched,
)

NS = "ns"
ALICE = Principal("acme", "alice")
BOB = Principal("globex", "alice")  # the same user id in another tenant
CAROL = Principal(None, "carol")


def name(principal: Principal) -> bytes:
    return channel_name(NS, principal).encode("ascii")


def confirmed_once(subs: Subscriptions, principal: Principal) -> None:
    """Watch ``principal`` on an open connection and read the reply."""
    assert subs.watch(principal) is Watched.NEW_WAIT
    assert subs.take_commands() == [(b"SUBSCRIBE", name(principal))]
    assert subs.subscribed(name(principal)) == Confirmed(principal, gap=False)


@pytest.fixture
def subs() -> Subscriptions:
    """A state machine with its subscriber connection open (nothing to resubscribe)."""
    machine = Subscriptions(NS)
    assert machine.open() == []
    return machine


class TestWatch:
    def test_first_watch_subscribes_and_the_reply_confirms(self, subs: Subscriptions) -> None:
        assert subs.watch(ALICE) is Watched.NEW_WAIT
        assert subs.has_commands
        assert not subs.is_confirmed(ALICE)
        assert subs.take_commands() == [(b"SUBSCRIBE", name(ALICE))]
        assert not subs.has_commands
        assert subs.subscribed(name(ALICE)) == Confirmed(ALICE, gap=False)
        assert subs.is_confirmed(ALICE)
        assert subs.watch(ALICE) is Watched.CONFIRMED
        assert (subs.confirmed, subs.wanted, len(subs)) == (1, 1, 1)

    def test_a_second_watch_before_the_reply_waits_for_the_same_subscription(
        self, subs: Subscriptions
    ) -> None:
        assert subs.watch(ALICE) is Watched.NEW_WAIT
        assert subs.watch(ALICE) is Watched.WAIT
        assert subs.take_commands() == [(b"SUBSCRIBE", name(ALICE))]
        assert subs.watch(ALICE) is Watched.WAIT
        assert subs.take_commands() == []
        assert subs.subscribed(name(ALICE)) == Confirmed(ALICE, gap=False)

    def test_two_tenants_of_one_user_id_have_two_channels(self, subs: Subscriptions) -> None:
        confirmed_once(subs, ALICE)
        assert subs.watch(BOB) is Watched.NEW_WAIT
        assert subs.take_commands() == [(b"SUBSCRIBE", name(BOB))]
        assert name(ALICE) != name(BOB)
        assert subs.recipient(name(ALICE)) == ALICE
        assert subs.recipient(name(BOB)) == BOB  # wanted, even before its confirmation
        assert not subs.is_confirmed(BOB)

    def test_a_reply_for_an_unknown_channel_confirms_nothing(self, subs: Subscriptions) -> None:
        assert subs.subscribed(b"ns:other") is None
        assert subs.unsubscribed(b"ns:other") is None

    def test_recipient_only_for_wanted_channels(self, subs: Subscriptions) -> None:
        subs.watch(ALICE)
        assert subs.recipient(name(ALICE)) == ALICE
        assert subs.recipient(name(CAROL)) is None
        subs.take_commands()
        subs.unwatch(ALICE)
        assert subs.recipient(name(ALICE)) is None


class TestUnwatch:
    def test_unwatch_while_connected_unsubscribes_and_the_reply_forgets(
        self, subs: Subscriptions
    ) -> None:
        confirmed_once(subs, ALICE)
        assert subs.unwatch(ALICE) is False  # on the wire: forgotten at the reply
        assert subs.take_commands() == [(b"UNSUBSCRIBE", name(ALICE))]
        assert subs.knows(ALICE)
        assert subs.unsubscribed(name(ALICE)) == ALICE
        assert not subs.knows(ALICE)

    def test_unwatch_of_an_unwatched_channel_does_nothing(self, subs: Subscriptions) -> None:
        assert subs.unwatch(ALICE) is False
        assert not subs.has_commands

    def test_unwatch_then_watch_before_the_writer_keeps_the_subscription(
        self, subs: Subscriptions
    ) -> None:
        confirmed_once(subs, ALICE)
        subs.unwatch(ALICE)
        assert subs.watch(ALICE) is Watched.NEW_WAIT
        # The UNSUBSCRIBE is dropped (wanted again); the SUBSCRIBE confirms anew.
        assert subs.take_commands() == [(b"SUBSCRIBE", name(ALICE))]
        assert subs.subscribed(name(ALICE)) == Confirmed(ALICE, gap=False)

    def test_watch_then_unwatch_before_the_writer_only_unsubscribes(
        self, subs: Subscriptions
    ) -> None:
        subs.watch(ALICE)
        subs.unwatch(ALICE)
        assert subs.take_commands() == [(b"UNSUBSCRIBE", name(ALICE))]

    def test_an_unsubscribe_reply_while_wanted_again_keeps_the_channel(
        self, subs: Subscriptions
    ) -> None:
        confirmed_once(subs, ALICE)
        subs.unwatch(ALICE)
        assert subs.take_commands() == [(b"UNSUBSCRIBE", name(ALICE))]
        assert subs.watch(ALICE) is Watched.NEW_WAIT
        assert subs.take_commands() == [(b"SUBSCRIBE", name(ALICE))]
        assert subs.unsubscribed(name(ALICE)) is None
        assert subs.subscribed(name(ALICE)) == Confirmed(ALICE, gap=False)

    def test_a_confirmation_waits_for_the_latest_subscribe(self, subs: Subscriptions) -> None:
        """SUBSCRIBE, UNSUBSCRIBE, SUBSCRIBE on the wire: only the last reply confirms
        (Redis holds the channel again only after it)."""
        assert subs.watch(ALICE) is Watched.NEW_WAIT
        assert subs.take_commands() == [(b"SUBSCRIBE", name(ALICE))]
        subs.unwatch(ALICE)
        assert subs.take_commands() == [(b"UNSUBSCRIBE", name(ALICE))]
        assert subs.watch(ALICE) is Watched.WAIT  # the first wait goes on
        assert subs.take_commands() == [(b"SUBSCRIBE", name(ALICE))]
        assert subs.subscribed(name(ALICE)) is None
        assert not subs.is_confirmed(ALICE)
        assert subs.unsubscribed(name(ALICE)) is None  # wanted again: kept
        assert subs.subscribed(name(ALICE)) == Confirmed(ALICE, gap=False)

    @pytest.mark.parametrize("unsubscribe_read_by_redis", [True, False])
    def test_a_reply_from_before_an_unsubscribe_does_not_confirm_a_new_watch(
        self, subs: Subscriptions, *, unsubscribe_read_by_redis: bool
    ) -> None:
        """A connection gives up waiting (its channel is unsubscribed) and another of the
        principal connects before the first SUBSCRIBE's reply is read: that reply is
        followed on the wire by the UNSUBSCRIBE, so it must not confirm the new watch
        (the old rule, "no SUBSCRIBE written is unanswered", did: events were lost
        without a gap until the new SUBSCRIBE reached Redis)."""
        assert subs.watch(ALICE) is Watched.NEW_WAIT
        assert subs.take_commands() == [(b"SUBSCRIBE", name(ALICE))]
        subs.unwatch(ALICE)
        assert subs.take_commands() == [(b"UNSUBSCRIBE", name(ALICE))]
        assert subs.watch(ALICE) is Watched.WAIT  # the new SUBSCRIBE is queued, not written
        if not unsubscribe_read_by_redis:
            assert subs.subscribed(name(ALICE)) is None
        assert subs.take_commands() == [(b"SUBSCRIBE", name(ALICE))]
        if unsubscribe_read_by_redis:
            assert subs.subscribed(name(ALICE)) is None
        assert subs.unsubscribed(name(ALICE)) is None
        assert not subs.is_confirmed(ALICE)
        assert subs.subscribed(name(ALICE)) == Confirmed(ALICE, gap=False)

    def test_a_subscribe_dropped_before_it_is_written_is_not_awaited(
        self, subs: Subscriptions
    ) -> None:
        subs.watch(ALICE)
        subs.unwatch(ALICE)
        assert subs.take_commands() == [(b"UNSUBSCRIBE", name(ALICE))]
        assert subs.unsubscribed(name(ALICE)) == ALICE

    def test_an_unwatch_while_resubscribing_cancels_the_gap_owed(self, subs: Subscriptions) -> None:
        """The last connection leaves while the channel is resubscribed after a loss:
        the next connection never had the channel, so it is owed no gap."""
        confirmed_once(subs, ALICE)
        subs.lost()
        assert subs.open() == [[name(ALICE)]]
        assert subs.unwatch(ALICE) is False  # the SUBSCRIBE is on the wire
        assert subs.watch(ALICE) is Watched.WAIT
        assert subs.take_commands() == [(b"SUBSCRIBE", name(ALICE))]
        assert subs.subscribed(name(ALICE)) is None
        assert subs.subscribed(name(ALICE)) == Confirmed(ALICE, gap=False)

    def test_an_unwatch_during_an_outage_forgets_at_once(self) -> None:
        subs = Subscriptions(NS)
        subs.open()
        confirmed_once(subs, ALICE)
        subs.lost()
        assert subs.unwatch(ALICE) is True
        assert not subs.knows(ALICE)
        assert subs.open() == []  # nothing to resubscribe, and no gap owed later
        assert subs.watch(ALICE) is Watched.NEW_WAIT
        subs.take_commands()
        assert subs.subscribed(name(ALICE)) == Confirmed(ALICE, gap=False)


class TestReconnect:
    def test_a_lost_confirmed_channel_is_resubscribed_with_a_gap(self, subs: Subscriptions) -> None:
        confirmed_once(subs, ALICE)
        subs.lost()
        assert not subs.is_confirmed(ALICE)
        assert subs.is_wanted(ALICE)
        assert subs.watch(ALICE) is Watched.NEW_WAIT  # a connection arriving in the outage
        assert subs.open() == [[name(ALICE)]]
        assert subs.take_commands() == []  # the queued command was for the old connection
        assert subs.subscribed(name(ALICE)) == Confirmed(ALICE, gap=True)
        assert subs.watch(ALICE) is Watched.CONFIRMED

    def test_a_channel_never_confirmed_is_resubscribed_without_a_gap(
        self, subs: Subscriptions
    ) -> None:
        subs.watch(ALICE)
        subs.take_commands()
        subs.lost()
        assert subs.open() == [[name(ALICE)]]
        assert subs.subscribed(name(ALICE)) == Confirmed(ALICE, gap=False)

    def test_two_losses_before_the_resubscription_owe_one_gap(self, subs: Subscriptions) -> None:
        confirmed_once(subs, ALICE)
        subs.lost()
        subs.open()
        subs.lost()  # before the reply
        assert subs.open() == [[name(ALICE)]]
        assert subs.subscribed(name(ALICE)) == Confirmed(ALICE, gap=True)
        subs.lost()
        subs.open()
        assert subs.subscribed(name(ALICE)) == Confirmed(ALICE, gap=True)  # a new loss

    def test_a_stale_reply_of_the_old_connection_does_not_confirm(
        self, subs: Subscriptions
    ) -> None:
        subs.watch(ALICE)
        subs.take_commands()
        subs.take_commands()
        subs.lost()
        subs.open()
        subs.watch(BOB)
        subs.take_commands()
        # One SUBSCRIBE of ALICE on the new connection: its reply confirms once.
        assert subs.subscribed(name(ALICE)) == Confirmed(ALICE, gap=False)
        assert subs.subscribed(name(ALICE)) is None

    def test_a_channel_unwatched_with_its_unsubscribe_in_flight_is_forgotten_at_the_loss(
        self, subs: Subscriptions
    ) -> None:
        confirmed_once(subs, ALICE)
        subs.unwatch(ALICE)
        subs.take_commands()
        subs.lost()
        assert not subs.knows(ALICE)

    def test_resubscriptions_are_batched(self, subs: Subscriptions) -> None:
        principals = [Principal("t", f"u{i}") for i in range(2 * SUBSCRIBE_BATCH + 6)]
        for principal in principals:
            subs.watch(principal)
        subs.lost()
        batches = subs.open()
        assert [len(b) for b in batches] == [SUBSCRIBE_BATCH, SUBSCRIBE_BATCH, 6]
        assert [n for b in batches for n in b] == [name(p) for p in principals]
        for principal in principals:
            assert subs.subscribed(name(principal)) == Confirmed(principal, gap=False)
        assert subs.confirmed == len(principals)


class TestLiveness:
    def test_a_ping_is_unanswered_until_its_pong(self, subs: Subscriptions) -> None:
        assert not subs.unanswered
        subs.ping()
        assert subs.unanswered
        assert subs.take_commands() == [(b"PING",)]
        subs.pong()
        assert not subs.unanswered

    def test_commands_queued_in_an_outage_are_not_written_twice(self) -> None:
        subs = Subscriptions(NS)
        subs.open()
        confirmed_once(subs, ALICE)
        subs.lost()
        assert subs.watch(BOB) is Watched.NEW_WAIT  # queued, but the connection is gone
        assert subs.open() == [[name(ALICE), name(BOB)]]
        assert subs.take_commands() == []
        assert subs.subscribed(name(ALICE)) == Confirmed(ALICE, gap=True)
        assert subs.subscribed(name(BOB)) == Confirmed(BOB, gap=False)

    def test_a_new_connection_starts_liveness_afresh(self, subs: Subscriptions) -> None:
        subs.ping()
        subs.lost()
        subs.open()
        assert not subs.unanswered
        assert subs.take_commands() == []

    def test_clear_forgets_everything(self, subs: Subscriptions) -> None:
        confirmed_once(subs, ALICE)
        subs.watch(BOB)
        subs.ping()
        subs.clear()
        assert (len(subs), subs.has_commands, subs.unanswered) == (0, False, False)


@pytest.mark.parametrize(
    ("jitters", "pauses"),
    [
        ([1.0] * 8, [0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.0, 1.0]),
        ([0.5, 0.5, 1.0], [0.01, 0.02, 0.08]),
    ],
)
def test_backoff_doubles_up_to_its_maximum(jitters: list[float], pauses: list[float]) -> None:
    backoff = Backoff(0.02, 1.0)
    assert [backoff.failed(j) for j in jitters] == pytest.approx(pauses)


def test_backoff_starts_again_after_a_success() -> None:
    backoff = Backoff(0.02, 1.0)
    backoff.failed(1.0)
    backoff.failed(1.0)
    backoff.succeeded()
    assert backoff.failed(1.0) == pytest.approx(0.02)


# -- the machine against a fake Redis and a model ---------------------------------------

PRINCIPALS = [ALICE, BOB]  # one user id in two tenants: two channels
MAX_CONNECTIONS = 2  # per principal: the last one leaves often


class Conn:
    """A router connection, as the model sees it."""

    def __init__(self, principal: Principal, *, ready: bool) -> None:
        self.principal = principal
        self.ready = ready  # connect() returned: it is owed every event from now on
        self.open = True
        self.missed = False  # an event for it was lost, and no gap came since
        self.gaps = 0
        self.losses = 0  # connection losses seen while open (bounds its gaps)


class SubscriptionMachine(RuleBasedStateMachine):
    """Subscriptions driven by a fake Redis, connections and losses; checked against a model."""

    def __init__(self) -> None:
        super().__init__()
        self.subs = Subscriptions(NS)
        self.live = False  # a subscriber connection is open
        self.to_server: deque[tuple[bytes, ...]] = deque()
        self.to_client: deque[tuple[Any, ...]] = deque()
        self.server_subscribed: set[bytes] = set()
        self.conns: list[Conn] = []
        self.owed: set[Principal] = set()  # the model: a gap is owed to these principals
        self.event = 0

    def registered(self, principal: Principal) -> list[Conn]:
        return [c for c in self.conns if c.open and c.principal == principal]

    # -- the router ---------------------------------------------------------------------

    @precondition(lambda self: len([c for c in self.conns if c.open]) < 2 * MAX_CONNECTIONS)
    @rule(data=st.data())
    def connect(self, data: st.DataObject) -> None:
        principal = data.draw(
            st.sampled_from([p for p in PRINCIPALS if len(self.registered(p)) < MAX_CONNECTIONS])
        )
        conn = Conn(principal, ready=False)
        conn.losses = principal in self.owed  # it joins an outage of its channel
        self.conns.append(conn)  # registered before watch(), as the router does
        watched = self.subs.watch(principal)
        conn.ready = watched is Watched.CONFIRMED

    @precondition(lambda self: any(c.open for c in self.conns))
    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from([c for c in self.conns if c.open]))
        conn.open = False
        if not self.registered(conn.principal):
            self.subs.unwatch(conn.principal)
            self.owed.discard(conn.principal)

    # -- the wire -------------------------------------------------------------------------

    @precondition(lambda self: not self.live)
    @rule()
    def open_connection(self) -> None:
        self.live = True
        for names in self.subs.open():
            self.to_server.append((b"SUBSCRIBE", *names))

    @precondition(lambda self: self.live)
    @rule()
    def lose_connection(self) -> None:
        for reply in self.to_client:
            if reply[0] == "message":
                for conn in self.registered(reply[2]):
                    conn.missed = conn.missed or conn.ready
        for principal in PRINCIPALS:
            if any(c.ready for c in self.registered(principal)):
                self.owed.add(principal)  # it had a confirmed subscription, now lost
        for conn in self.conns:
            conn.losses += conn.open
        self.live = False
        self.to_server.clear()
        self.to_client.clear()
        self.server_subscribed.clear()
        self.subs.lost()

    @precondition(lambda self: self.live)
    @rule()
    def write(self) -> None:
        self.to_server.extend(self.subs.take_commands())

    @precondition(lambda self: self.live)
    @rule()
    def ping(self) -> None:
        self.subs.ping()

    @precondition(lambda self: bool(self.to_server))
    @rule()
    def server_reads(self) -> None:
        command, *names = self.to_server.popleft()
        if command == b"PING":
            self.to_client.append(("pong",))
        for channel in names:
            if command == b"SUBSCRIBE":
                self.server_subscribed.add(channel)
                self.to_client.append(("subscribe", channel))
            else:
                self.server_subscribed.discard(channel)
                self.to_client.append(("unsubscribe", channel))

    @rule(principal=st.sampled_from(PRINCIPALS))
    def publish(self, principal: Principal) -> None:
        self.event += 1
        if name(principal) in self.server_subscribed:
            self.to_client.append(("message", name(principal), principal))
        else:
            for conn in self.registered(principal):
                conn.missed = conn.missed or conn.ready

    @precondition(lambda self: bool(self.to_client))
    @rule()
    def client_reads(self) -> None:
        kind, *rest = self.to_client.popleft()
        if kind == "pong":
            self.subs.pong()
        elif kind == "subscribe":
            self.confirmed(self.subs.subscribed(rest[0]))
        elif kind == "unsubscribe":
            self.subs.unsubscribed(rest[0])
        else:
            channel, principal = rest
            recipient = self.subs.recipient(channel)
            if recipient is None:
                return
            assert recipient == principal  # never another principal's channel
            for conn in self.registered(recipient):
                # A delivery after a silent loss: the loss must have been announced.
                assert not conn.missed, "an event after a lost one, without a gap between"

    def confirmed(self, confirmed: Confirmed | None) -> None:
        if confirmed is None:
            return
        principal = confirmed.principal
        # Confirmed means held by Redis from now on: subscribed, and no UNSUBSCRIBE
        # of it still on its way there.
        assert name(principal) in self.server_subscribed
        assert (b"UNSUBSCRIBE", name(principal)) not in self.to_server
        assert confirmed.gap == (principal in self.owed), (confirmed, self.owed)
        self.owed.discard(principal)
        for conn in self.registered(principal):
            conn.ready = True
            if confirmed.gap:
                conn.gaps += 1
                conn.missed = False
                assert conn.gaps <= conn.losses, "more gaps than losses"

    # -- properties ----------------------------------------------------------------------

    @invariant()
    def confirmed_means_subscribed_at_the_server(self) -> None:
        for principal in PRINCIPALS:
            if self.subs.is_confirmed(principal):
                assert self.live
                assert name(principal) in self.server_subscribed
                assert principal not in self.owed

    @invariant()
    def owed_only_while_wanted(self) -> None:
        for principal in self.owed:
            assert self.subs.is_wanted(principal)

    @rule()
    def quiesce(self) -> None:
        """Let everything settle: then every wanted channel is confirmed, every gap
        owed was given, no connection missed an event unannounced, and Redis holds
        exactly the wanted channels."""
        if not self.live:
            self.open_connection()
        while self.subs.has_commands or self.to_server or self.to_client:
            self.write()
            while self.to_server:
                self.server_reads()
            while self.to_client:
                self.client_reads()
        wanted = {p for p in PRINCIPALS if self.registered(p)}
        assert {p for p in PRINCIPALS if self.subs.is_confirmed(p)} == wanted
        assert self.server_subscribed == {name(p) for p in wanted}
        assert not self.owed
        assert not self.subs.unanswered
        assert len(self.subs) == len(wanted)
        for conn in self.conns:
            if conn.open:
                assert conn.ready
                assert not conn.missed


SubscriptionMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=60, deadline=None
)
TestSubscriptionMachine = SubscriptionMachine.TestCase
