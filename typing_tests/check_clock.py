"""Static checks of the clock's types, run by mypy in CI, never executed."""

from __future__ import annotations

from typing import assert_type

from isolation.testing import FakeClock, use_clock


class TickingClock:
    """A clock of the user's own: any object with ``time()`` is a Clock."""

    def time(self) -> float:
        return 0.0


def use() -> None:
    # The tutorials' own pattern: the clock given comes back with its own type.
    with use_clock(FakeClock()) as clock:
        assert_type(clock, FakeClock)
        clock.advance(5)
    with use_clock(TickingClock()) as ticking:
        assert_type(ticking, TickingClock)
