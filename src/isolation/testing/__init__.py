"""Tools to test your own service for isolation (extra ``testing`` for strategies).

:class:`FakeClock` needs nothing beyond the core. The Hypothesis strategies live
in :mod:`isolation.testing.strategies` and need the ``testing`` extra.
"""

from isolation._clock import FakeClock as FakeClock
from isolation._clock import use_clock as use_clock

__all__ = ["FakeClock", "use_clock"]

FakeClock.__module__ = "isolation.testing"
