"""The one injectable clock: system time by default, a FakeClock in tests."""

from __future__ import annotations

import math
import time

import pytest

from isolation import Clock, ConfigurationError, UserContext, _clock
from isolation.testing import FakeClock, use_clock


class TestSystemClock:
    def test_default_is_system_time(self) -> None:
        """By default the library reads wall-clock epoch seconds."""
        assert _clock.get_clock() is _clock.SYSTEM_CLOCK
        before = time.time()
        assert before <= _clock.now() <= time.time()
        assert before <= _clock.SYSTEM_CLOCK.time() <= time.time()
        assert repr(_clock.SYSTEM_CLOCK) == "SystemClock()"

    def test_protocol(self) -> None:
        """Anything with time() -> float is a Clock (runtime-checkable)."""
        assert isinstance(_clock.SYSTEM_CLOCK, Clock)
        assert isinstance(FakeClock(), Clock)
        assert not isinstance(object(), Clock)


class TestSetClock:
    def test_set_returns_previous_and_none_restores(self) -> None:
        """set_clock() returns the previous clock; None restores the system clock."""
        fake = FakeClock(100.0)
        previous = _clock.set_clock(fake)
        try:
            assert previous is _clock.SYSTEM_CLOCK
            assert _clock.get_clock() is fake
            assert _clock.now() == 100.0
            assert UserContext.new("alice").issued_at == 100.0
        finally:
            assert _clock.set_clock(None) is fake
        assert _clock.get_clock() is _clock.SYSTEM_CLOCK

    def test_any_clock_object(self) -> None:
        """A user's own Clock drives contexts too."""

        class Fixed:
            def time(self) -> float:
                return 42.0

        with use_clock(Fixed()):
            assert UserContext.new("alice", ttl=1).expires_at == 43.0
        assert _clock.get_clock() is _clock.SYSTEM_CLOCK

    def test_use_clock_restores_on_error(self) -> None:
        """use_clock() restores the previous clock even when the block raises."""
        with pytest.raises(KeyError), use_clock(FakeClock()) as fake:
            assert _clock.get_clock() is fake
            raise KeyError("x")
        assert _clock.get_clock() is _clock.SYSTEM_CLOCK


class TestFakeClock:
    def test_moves_only_when_told(self) -> None:
        """A FakeClock starts where asked and moves by advance() only."""
        fake = FakeClock(start=10)
        assert fake.time() == 10.0
        assert isinstance(fake.time(), float)
        fake.advance(2.5)
        fake.advance(0)
        assert fake.time() == 12.5
        assert repr(fake) == "FakeClock(12.5)"
        assert type(fake).__module__ == "isolation.testing"

    @pytest.mark.parametrize("seconds", [-1, -1e-9, math.nan])
    def test_never_backwards(self, seconds: float) -> None:
        """advance() refuses negative and NaN steps: time never runs backwards."""
        fake = FakeClock()
        with pytest.raises(ConfigurationError, match="seconds >= 0"):
            fake.advance(seconds)
        assert fake.time() == FakeClock().time()

    def test_expires_contexts(self, fake_clock: FakeClock) -> None:
        """Advancing the fixture's clock expires contexts without sleeping."""
        ctx = UserContext.new("alice", ttl=60)
        fake_clock.advance(59.5)
        assert not ctx.expired
        fake_clock.advance(0.5)
        assert ctx.expired


class TestClockInterface:
    """Production code asks the clock (sleep to a deadline, watchers); it never tests its type."""

    def test_a_clock_whose_time_passes_sleeps_to_the_deadline(self) -> None:
        """The default: real seconds until the deadline, never negative; no watchers."""

        class Offset(Clock):
            def time(self) -> float:
                return 1000.0

        clock = Offset()
        assert clock.deadline_to_sleep_time(1002.5) == 2.5
        assert clock.deadline_to_sleep_time(900.0) == 0.0
        clock.watch(clock.time)  # accepted and ignored: nothing to wake
        clock.unwatch(clock.time)
        assert _clock.SYSTEM_CLOCK.deadline_to_sleep_time(math.inf) == math.inf

    def test_fake_clock_never_sleeps_and_calls_its_watchers(self) -> None:
        """A FakeClock reaches a deadline only through advance(), which calls the watchers."""
        calls: list[float] = []

        class Watcher:
            def moved(self) -> None:
                calls.append(fake.time())

        fake = FakeClock(0)
        assert fake.deadline_to_sleep_time(1.0) == math.inf
        watcher = Watcher()
        fake.watch(watcher.moved)
        fake.watch(watcher.moved)  # idempotent
        fake.advance(1)
        assert calls == [1.0]
        fake.unwatch(watcher.moved)
        fake.unwatch(watcher.moved)  # not watching: ignored
        fake.advance(1)
        assert calls == [1.0]

    def test_watchers_are_held_weakly(self) -> None:
        """A watcher that is gone stops watching: the clock keeps no scope alive."""
        import gc
        import weakref

        class Watcher:
            def moved(self) -> None:
                raise AssertionError("a collected watcher was called")

        fake = FakeClock(0)
        watcher = Watcher()
        fake.watch(watcher.moved)
        ref = weakref.ref(watcher)
        del watcher
        gc.collect()
        assert ref() is None
        fake.advance(1)

    def test_a_watcher_is_a_bound_method(self) -> None:
        """A plain function cannot be held weakly through an object: refused, typed."""
        with pytest.raises(ConfigurationError, match="bound method"):
            FakeClock().watch(lambda: None)

    @pytest.mark.anyio
    async def test_any_clock_that_moves_when_told_expires_scopes(self) -> None:
        """Not only FakeClock: a user's Clock that never sleeps and calls its watchers
        cancels an expired scope's body (production code asks, it does not check the type)."""
        import anyio

        import isolation

        class Manual(Clock):
            def __init__(self) -> None:
                self.t = 0.0
                self.watchers: list[object] = []

            def time(self) -> float:
                return self.t

            def deadline_to_sleep_time(self, deadline: float) -> float:
                return math.inf

            def watch(self, callback: object) -> None:
                self.watchers.append(callback)

            def move(self, seconds: float) -> None:
                self.t += seconds
                for callback in list(self.watchers):
                    callback()  # type: ignore[operator]

        clock = Manual()
        outlived = False
        with use_clock(clock), pytest.raises(isolation.ContextExpiredError):
            async with isolation.scope(UserContext.new("alice", ttl=3600)):
                clock.move(3601)  # an hour of its time: no real sleep reaches it
                with anyio.move_on_after(5):  # hang guard: the body must be cancelled first
                    await anyio.sleep_forever()
                outlived = True
        assert not outlived

    def test_a_duck_typed_clock_is_a_clock_whose_time_passes(self) -> None:
        """An object with time() only (no Clock subclass) is installed as a real-time clock."""

        class Fixed:
            def time(self) -> float:
                return 42.0

        fixed = Fixed()
        with use_clock(fixed):
            clock = _clock.get_clock()
            assert isinstance(clock, Clock)
            assert repr(clock) == repr(fixed)
            assert clock.deadline_to_sleep_time(50.0) == 8.0
