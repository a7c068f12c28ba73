"""UserContext: fields, ``new()``, identity, immutability, and no unchecked way to make one."""

from __future__ import annotations

import copy
import math
import pickle
import re
import weakref

import attrs
import pytest

import isolation
from isolation import InvalidContextError, UsageError, UserContext
from isolation.context._model import Attributes
from isolation.testing import FakeClock


class TestNew:
    def test_defaults(self, fake_clock: FakeClock) -> None:
        """new() fills every field: no tenant, no roles, no attributes, no deadline."""
        ctx = UserContext.new("alice")
        assert ctx.user_id == "alice"
        assert ctx.tenant_id is None
        assert ctx.roles == frozenset()
        assert isinstance(ctx.roles, frozenset)
        assert ctx.attributes == {}
        assert isinstance(ctx.attributes, Attributes)
        assert ctx.issued_at == fake_clock.time()
        assert ctx.expires_at is None

    def test_every_argument(self, fake_clock: FakeClock) -> None:
        """new() keeps tenant, roles and attributes and turns ttl into expires_at."""
        ctx = UserContext.new(
            "alice",
            tenant_id="acme",
            ttl=30,
            roles=["admin", "reader", "admin"],
            attributes={"plan": "gold"},
        )
        assert ctx.tenant_id == "acme"
        assert ctx.roles == frozenset({"admin", "reader"})
        assert ctx.attributes == {"plan": "gold"}
        assert ctx.expires_at == fake_clock.time() + 30.0
        assert isinstance(ctx.expires_at, float)

    def test_keyword_constructor_validates_like_new(self) -> None:
        """The attrs constructor is keyword-only and runs the same validation."""
        with pytest.raises(TypeError):
            UserContext("alice")  # type: ignore[misc]
        with pytest.raises(InvalidContextError):
            UserContext(user_id="")
        ctx = UserContext(user_id="alice", tenant_id="acme", roles=("r",))
        assert ctx.principal == ("acme", "alice")

    def test_expires_at_before_issued_at_refused(self) -> None:
        """A deadline before the issue time is refused, naming expires_at."""
        with pytest.raises(InvalidContextError) as info:
            UserContext(user_id="alice", issued_at=100.0, expires_at=99.0)
        assert info.value.field == "expires_at"

    @pytest.mark.parametrize("field", ["issued_at", "expires_at"])
    @pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, True, "100", None])
    def test_bad_timestamps_refused(self, field: str, value: object) -> None:
        """Timestamps are finite numbers of epoch seconds (``None`` only for expires_at)."""
        kwargs = {"user_id": "alice", "issued_at": 1.0, "expires_at": 2.0, field: value}
        if field == "expires_at" and value is None:
            assert UserContext(**kwargs).expires_at is None  # type: ignore[arg-type]
            return
        with pytest.raises(InvalidContextError) as info:
            UserContext(**kwargs)  # type: ignore[arg-type]
        assert info.value.field == field


class TestTtl:
    @pytest.mark.parametrize(
        "ttl", [math.nan, math.inf, -math.inf, 0, 0.0, -0.0, -1, -1e-9, True, False, "10", b"1"]
    )
    def test_refused(self, ttl: object) -> None:
        """ttl must be a finite positive number: NaN, infinities, 0, negatives and bools refused."""
        with pytest.raises(InvalidContextError) as info:
            UserContext.new("alice", ttl=ttl)  # type: ignore[arg-type]
        assert info.value.field == "ttl"

    @pytest.mark.parametrize("ttl", [1, 0.001, 1e-6, 86_400.0])
    def test_accepted(self, ttl: float, fake_clock: FakeClock) -> None:
        """Any finite positive int or float is a ttl."""
        ctx = UserContext.new("alice", ttl=ttl)
        assert ctx.expires_at == fake_clock.time() + ttl

    def test_expired_and_remaining_follow_the_clock(self, fake_clock: FakeClock) -> None:
        """remaining() counts down with the library's clock and clamps at 0; expired flips."""
        ctx = UserContext.new("alice", ttl=10)
        assert not ctx.expired
        assert ctx.remaining() == 10.0
        fake_clock.advance(4)
        assert ctx.remaining() == 6.0
        fake_clock.advance(6)
        assert ctx.expired
        assert ctx.remaining() == 0.0
        fake_clock.advance(100)
        assert ctx.remaining() == 0.0

    def test_no_deadline(self, fake_clock: FakeClock) -> None:
        """Without a ttl a context never expires and has infinite time left."""
        ctx = UserContext.new("alice")
        fake_clock.advance(1e9)
        assert not ctx.expired
        assert ctx.remaining() == math.inf


class TestRequestId:
    def test_is_32_lowercase_hex(self) -> None:
        """request_id is 128 random bits as 32 lowercase hex characters (a valid trace id)."""
        ctx = UserContext.new("alice")
        assert re.fullmatch(r"[0-9a-f]{32}", ctx.request_id)
        assert int(ctx.request_id, 16) != 0

    def test_unique(self) -> None:
        """Every context gets its own request id."""
        ids = {UserContext.new("alice").request_id for _ in range(2_000)}
        assert len(ids) == 2_000

    def test_never_restored(self) -> None:
        """request_id cannot be passed in, and evolve() generates a new one."""
        with pytest.raises(TypeError):
            UserContext(user_id="alice", request_id="0" * 32)  # type: ignore[call-arg]
        ctx = UserContext.new("alice")
        again = attrs.evolve(ctx)
        assert again.request_id != ctx.request_id
        assert again != ctx


class TestPrincipal:
    def test_is_tenant_and_user(self) -> None:
        """principal is the pair (tenant_id, user_id)."""
        assert UserContext.new("alice", tenant_id="acme").principal == ("acme", "alice")
        assert UserContext.new("alice").principal == (None, "alice")

    def test_same_user_id_in_two_tenants_differ(self) -> None:
        """The same user id in two tenants (or with and without one) is two users."""
        a = UserContext.new("alice", tenant_id="acme")
        b = UserContext.new("alice", tenant_id="globex")
        c = UserContext.new("alice")
        assert len({a.principal, b.principal, c.principal}) == 3

    def test_contexts_are_distinct_even_with_equal_fields(self) -> None:
        """Two contexts of one user are two requests: same principal, yet unequal."""
        a = UserContext.new("alice", tenant_id="acme")
        b = UserContext.new("alice", tenant_id="acme")
        assert a.principal == b.principal
        assert a != b
        assert a == a


class TestImmutable:
    def test_frozen(self) -> None:
        """No field can be reassigned."""
        ctx = UserContext.new("alice")
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            ctx.user_id = "mallory"  # type: ignore[misc]

    def test_slotted_without_dict(self) -> None:
        """A context has no __dict__ to smuggle state in."""
        ctx = UserContext.new("alice")
        assert not hasattr(ctx, "__dict__")
        with pytest.raises((AttributeError, attrs.exceptions.FrozenInstanceError)):
            ctx.extra = 1  # type: ignore[attr-defined]

    def test_hashable(self) -> None:
        """Contexts (attributes and roles included) can be set members and dict keys."""
        ctx = UserContext.new("alice", roles=["r"], attributes={"k": "v"})
        assert {ctx: 1}[ctx] == 1
        assert hash(ctx) == hash(ctx)
        assert len({ctx, ctx}) == 1

    def test_weak_referenceable(self) -> None:
        """A weak reference to a context works and dies with it."""
        ctx = UserContext.new("alice")
        ref = weakref.ref(ctx)
        assert ref() is ctx
        del ctx
        assert ref() is None

    def test_copy_and_deepcopy_return_self(self) -> None:
        """Copies are the same object: there is no second, unvalidated context."""
        ctx = UserContext.new("alice", attributes={"k": "v"})
        assert copy.copy(ctx) is ctx
        assert copy.deepcopy(ctx) is ctx
        holder = copy.deepcopy({"ctx": ctx, "list": [ctx]})
        assert holder["ctx"] is ctx
        assert holder["list"][0] is ctx

    @pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
    def test_pickling_refused(self, protocol: int) -> None:
        """Pickling raises UsageError (a TypeError) that points to isolation.tokens."""
        ctx = UserContext.new("alice", tenant_id="acme")
        with pytest.raises(UsageError) as info:
            pickle.dumps(ctx, protocol=protocol)
        assert isinstance(info.value, TypeError)
        assert "isolation.tokens" in str(info.value)

    def test_reduce_refused(self) -> None:
        """The plain __reduce__ is refused too (copyreg and other serialisers use it)."""
        with pytest.raises(UsageError):
            UserContext.new("alice").__reduce__()

    def test_repr_names_the_public_class(self) -> None:
        """repr shows isolation.UserContext with its ids and sorted roles."""
        ctx = UserContext.new("alice", tenant_id="acme", roles=["b", "a"])
        text = repr(ctx)
        assert text.startswith("isolation.UserContext(user_id='alice', tenant_id='acme', ")
        assert ctx.request_id in text
        assert "roles=['a', 'b']" in text
        assert "tenant_id=None" in repr(UserContext.new("bob"))


class TestAttributes:
    def test_copied_at_construction(self) -> None:
        """Changing the mapping passed in does not change the context."""
        source = {"plan": "gold"}
        ctx = UserContext.new("alice", attributes=source)
        source["plan"] = "free"
        source["admin"] = "yes"
        assert dict(ctx.attributes) == {"plan": "gold"}

    def test_read_only_mapping(self) -> None:
        """Attributes is a Mapping without item assignment."""
        attributes = UserContext.new("alice", attributes={"k": "v"}).attributes
        assert attributes["k"] == "v"
        assert list(attributes) == ["k"]
        assert len(attributes) == 1
        with pytest.raises(TypeError):
            attributes["k"] = "w"  # type: ignore[index]
        with pytest.raises(AttributeError):
            attributes.other = 1  # type: ignore[attr-defined]

    def test_equality_and_hash(self) -> None:
        """Attributes equal each other and plain mappings by content, with a stable hash."""
        a = Attributes({"k": "v", "x": "y"})
        b = Attributes({"x": "y", "k": "v"})
        assert a == b
        assert hash(a) == hash(b)
        assert hash(a) == hash(a)
        assert a == {"k": "v", "x": "y"}
        assert a != {"k": "w"}
        assert a != 1
        assert Attributes() == Attributes(None)

    def test_copy_returns_self_and_repr(self) -> None:
        """Attributes are immutable: copies are the same object."""
        a = Attributes({"k": "v"})
        assert copy.copy(a) is a
        assert copy.deepcopy(a) is a
        assert repr(a) == "Attributes({'k': 'v'})"

    def test_unchecked_attributes_object_is_validated(self) -> None:
        """An Attributes built by hand goes through the same checks as a dict."""
        bad = Attributes({"role": "x\u202ey"})
        with pytest.raises(InvalidContextError):
            UserContext.new("alice", attributes=bad)
        with pytest.raises(InvalidContextError):
            UserContext(user_id="alice", attributes=Attributes({"": "v"}))

    def test_evolve_keeps_checked_attributes(self) -> None:
        """evolve() re-validates and keeps the attributes' content."""
        ctx = UserContext.new("alice", attributes={"k": "v"})
        assert attrs.evolve(ctx, user_id="bob").attributes == {"k": "v"}
        assert UserContext.new("bob", attributes={}).attributes == {}


class TestPublicIdentity:
    def test_module_is_public(self) -> None:
        """The classes print under their public path."""
        assert UserContext.__module__ == "isolation"
        assert Attributes.__module__ == "isolation"
        assert isolation.UserContext is UserContext

    def test_final(self) -> None:
        """UserContext is slotted and attrs-frozen (no subclass can add unchecked state)."""
        assert "__slots__" in vars(UserContext)
        assert "__weakref__" in UserContext.__slots__
