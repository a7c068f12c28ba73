"""assert_exactly_once catches a factory that builds more than once per scope."""

from __future__ import annotations

import itertools

import pytest

from isolation import ContextLocal
from isolation.testing import assert_exactly_once


class Engine:
    """Something expensive, built per scope."""


def test_passes_a_once_per_scope_factory() -> None:
    """A factory cached per scope under a lock passes."""
    built = itertools.count()

    def build() -> Engine:
        next(built)
        return Engine()

    local: ContextLocal[Engine] = ContextLocal(build)

    def count_calls() -> int:
        return int(repr(built)[6:-1])

    assert_exactly_once(local.get, scopes=5, threads=6, count_calls=count_calls)
    assert count_calls() == 5


def test_catches_a_factory_without_caching() -> None:
    """A factory that builds on every call fails, naming the scope."""
    runs = [0]

    def factory() -> Engine:
        runs[0] += 1
        return Engine()

    with pytest.raises(AssertionError, match="scope 0"):
        assert_exactly_once(factory, scopes=3, threads=4, count_calls=lambda: runs[0])


def test_catches_a_factory_that_runs_twice_but_returns_one() -> None:
    """The count must grow by exactly one per scope, even if one object is returned."""
    shared = Engine()
    runs = [0]

    def factory() -> Engine:
        runs[0] += 1
        return shared

    with pytest.raises(AssertionError, match="ran"):
        assert_exactly_once(factory, scopes=2, threads=3, count_calls=lambda: runs[0])


LEAKED: dict[str, str] = {}


class LeakyAgent:
    def __init__(self) -> None:
        self.memory = LEAKED


class CleanAgent:
    def __init__(self) -> None:
        self.memory: dict[str, str] = {}


def test_no_shared_state_catches_a_leaky_factory() -> None:
    """A factory whose instances share a dict fails, naming the attribute."""
    from isolation.testing import assert_no_shared_state

    with pytest.raises(AssertionError, match="memory"):
        assert_no_shared_state(LeakyAgent, users=4, threads=2)


def test_no_shared_state_passes_a_clean_factory() -> None:
    """A factory that builds fresh state per user passes."""
    from isolation.testing import assert_no_shared_state

    assert_no_shared_state(CleanAgent, users=4, threads=2)
