"""``isolation.Principal``: one canonical, hashable identity (issue 19, item 3).

A principal is built only through the rules of a ``UserContext``'s ids, from
any entry point (the constructor, ``_make``, ``_replace``, unpickling); it is a
tuple equal to the plain ``(tenant_id, user_id)`` pair, and ``UserContext.principal``
returns one.
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import isolation
import isolation.logging
from isolation import InvalidContextError, Principal, UserContext
from isolation.testing.strategies import _tenant_ids as tenant_ids
from isolation.testing.strategies import _user_ids as user_ids
from isolation.testing.strategies import confusable_pairs, hostile_ids


def _refusal(build: Any) -> tuple[str, str] | None:
    """The (field, rule) ``build()`` is refused with, or None if it is accepted."""
    try:
        build()
    except InvalidContextError as exc:
        return (exc.field, exc.rule)
    return None


class TestValue:
    def test_public_and_a_tuple_of_its_ids(self) -> None:
        """isolation.Principal is (tenant_id, user_id): fields, unpacking, keywords."""
        p = Principal("acme", "alice")
        assert isolation.Principal is Principal
        assert Principal.__module__ == "isolation"
        assert (p.tenant_id, p.user_id) == ("acme", "alice")
        tenant, user = p
        assert (tenant, user) == ("acme", "alice")
        assert Principal(user_id="alice", tenant_id=None) == (None, "alice")

    def test_the_tenant_is_never_defaulted(self) -> None:
        """Both ids are required: Principal("alice") is a TypeError, not tenant None."""
        with pytest.raises(TypeError):
            Principal("alice")  # type: ignore[call-arg]

    def test_equal_and_hashing_like_the_plain_pair(self) -> None:
        """A Principal and the plain pair are one dict key; other tenants are others."""
        p = Principal("acme", "alice")
        assert p == ("acme", "alice")
        assert hash(p) == hash(("acme", "alice"))
        assert {("acme", "alice"): 1}[p] == 1
        assert {p: 1}[("acme", "alice")] == 1
        assert len({p, Principal("globex", "alice"), Principal(None, "alice")}) == 3

    def test_immutable(self) -> None:
        """Its fields cannot be set, and it holds no per-instance dict."""
        p = Principal("acme", "alice")
        with pytest.raises(AttributeError):
            p.user_id = "mallory"  # type: ignore[misc]
        with pytest.raises(AttributeError):
            p.extra = 1  # type: ignore[attr-defined]

    def test_context_principal(self) -> None:
        """UserContext.principal is a Principal equal to its ids."""
        ctx = UserContext.new("alice", tenant_id="acme")
        assert type(ctx.principal) is Principal
        assert ctx.principal == Principal("acme", "alice")
        assert type(UserContext.new("bob").principal) is Principal
        assert UserContext.new("bob").principal == Principal(None, "bob")

    def test_repr_goes_through_the_redactor(self) -> None:
        """repr() shows the ids through the installed redactor, as a context does."""
        previous = isolation.logging.set_redactor(lambda text: f"<{len(text)}>")
        try:
            shown = repr(Principal("acme", "alice@example.com"))
        finally:
            isolation.logging.set_redactor(previous)
        assert "alice" not in shown
        assert shown == "isolation.Principal(tenant_id='<4>', user_id='<17>')"
        assert repr(Principal(None, "a")) == "isolation.Principal(tenant_id=None, user_id='a')"


class TestCanonical:
    @settings(max_examples=200)
    @given(hostile_ids())
    def test_same_rules_as_a_context_for_the_user_id(self, value: Any) -> None:
        """A user id is refused by Principal exactly when UserContext.new refuses it,
        for the same field and rule."""
        refused = _refusal(lambda: Principal(None, value))
        assert refused is not None
        assert refused == _refusal(lambda: UserContext.new(value))

    @settings(max_examples=200)
    @given(hostile_ids().filter(lambda v: v is not None))
    def test_same_rules_as_a_context_for_the_tenant_id(self, value: Any) -> None:
        """So is a tenant id (None is a tenant: the single-tenant service)."""
        refused = _refusal(lambda: Principal(value, "alice"))
        assert refused is not None
        assert refused == _refusal(lambda: UserContext.new("alice", tenant_id=value))

    @settings(max_examples=100)
    @given(tenant_ids(), user_ids())
    def test_valid_ids_are_kept_exactly(self, tenant: str | None, user: str) -> None:
        """Ids a context accepts are accepted and kept as given: the context's principal."""
        assert Principal(tenant, user) == UserContext.new(user, tenant_id=tenant).principal

    @settings(max_examples=100)
    @given(confusable_pairs(), st.booleans())
    def test_confusables_are_refused_or_two_principals(
        self, pair: tuple[str, str], as_tenant: bool
    ) -> None:
        """Two spellings of one id (NFC/NFD, U+212B, case, fullwidth): a non-NFC one is
        refused like a context's; accepted ones stay two principals."""
        made = []
        for spelling in pair:
            ids = (spelling, "alice") if as_tenant else ("acme", spelling)
            refused = _refusal(lambda ids=ids: Principal(*ids))
            assert refused == _refusal(lambda ids=ids: UserContext.new(ids[1], tenant_id=ids[0]))
            if refused is None:
                made.append(Principal(*ids))
        assert len(set(made)) == len(made)

    def test_no_unchecked_path(self) -> None:
        """_make, _replace and unpickling check the ids too; a str subclass becomes a str."""
        with pytest.raises(InvalidContextError):
            Principal._make(("acme", "\u212blice"))
        with pytest.raises(InvalidContextError):
            Principal("acme", "alice")._replace(user_id="a\u200bb")
        forged = tuple.__new__(Principal, ("acme", "A\u030alice"))
        with pytest.raises(InvalidContextError):
            pickle.loads(pickle.dumps(forged))
        p = Principal("acme", "alice")
        assert pickle.loads(pickle.dumps(p)) == p
        assert type(pickle.loads(pickle.dumps(p))) is Principal

        class Sneaky(str):
            def __hash__(self) -> int:
                return 0

        assert type(Principal(Sneaky("acme"), Sneaky("alice")).user_id) is str
