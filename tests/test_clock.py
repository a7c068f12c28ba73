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
