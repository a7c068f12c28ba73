"""The index of live scopes' walked objects: atomic compare-and-register, removal at scope end."""

from __future__ import annotations

import gc
from typing import Any, ClassVar

import pytest

from isolation import Scope, ScopeEndedError, UserContext
from isolation.factories._graph import walk
from isolation.factories._index import SharedStateIndex


class Engine:
    """An engine with a class-level cache."""

    cache: ClassVar[dict[str, int]] = {}


def scope_of(user: str) -> Scope:
    """A scope object for ``user`` (never entered: the index only reads its state)."""
    return Scope(UserContext.new(user))


class TestAdd:
    """Compare, then register, or return the conflict and register nothing."""

    def test_conflict_names_both_sides(self) -> None:
        """The second principal's walk conflicts at the shallowest shared object."""
        index = SharedStateIndex()
        alice, bob = scope_of("alice"), scope_of("bob")
        alice._state = bob._state = 1  # active, as the library's scopes are when they build
        first = index.new_record((None, "alice"), alice)
        assert index.add(first, walk(Engine()), "make_engine") is None
        size = index.size
        second = index.new_record((None, "bob"), bob)
        conflict = index.add(second, walk(Engine()), "make_engine")
        assert conflict is not None
        assert conflict.principals == ((None, "bob"), (None, "alice"))
        assert conflict.paths == (("Engine", "cache"), ("Engine", "cache"))
        assert conflict.shared_type == "dict"
        assert not conflict.same_object
        assert len(second) == 0
        assert index.size == size

    def test_same_principal_is_not_a_conflict(self) -> None:
        """Two records of one principal may hold the same object."""
        index = SharedStateIndex()
        a, b = scope_of("alice"), scope_of("alice")
        a._state = b._state = 1
        assert index.add(index.new_record((None, "alice"), a), walk(Engine()), "f") is None
        assert index.add(index.new_record((None, "alice"), b), walk(Engine()), "f") is None

    def test_close_is_idempotent_and_empties(self) -> None:
        """Closing a record removes its entries; closing again does nothing; adding fails."""
        index = SharedStateIndex()
        scope = scope_of("alice")
        scope._state = 1
        record = index.new_record((None, "alice"), scope)
        index.add(record, walk(Engine()), "f")
        assert index.size == 2
        index.close(record)
        index.close(record)
        assert index.size == 0
        with pytest.raises(ScopeEndedError, match="closed"):
            index.add(record, walk(Engine()), "f")

    def test_stale_record_of_an_ended_scope_is_purged(self) -> None:
        """A record whose scope ended without closing it is ignored and dropped."""
        index = SharedStateIndex()
        alice, bob = scope_of("alice"), scope_of("bob")
        alice._state = bob._state = 1
        stale = index.new_record((None, "alice"), alice)
        index.add(stale, walk(Engine()), "f")
        alice._state = 2  # ended, and its finalizer never ran
        assert index.add(index.new_record((None, "bob"), bob), walk(Engine()), "f") is None
        assert stale.closed

    def test_record_of_a_collected_scope_is_dropped(self) -> None:
        """When a scope object dies, its record leaves the index at the next add."""
        index = SharedStateIndex()
        scope: Any = scope_of("alice")
        scope._state = 1
        record = index.new_record((None, "alice"), scope)
        index.add(record, walk(Engine()), "f")
        del scope
        gc.collect()
        other = scope_of("bob")
        other._state = 1
        assert index.add(index.new_record((None, "bob"), other), walk(Engine()), "f") is None
        assert record.closed
        assert not record.live()
