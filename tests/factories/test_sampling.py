"""Registry values and sampling (issue 16, findings 9 and 14, and the low ``sample_every=True``).

- A value is one object: ``provide_value`` at ``REQUEST`` or ``CONNECTION``
  handed the same ``Cart`` to every user, never walked; it is refused.
- ``check="sampled"`` counted builds with one counter for every provider, so
  with ``sample_every=2`` and the build order Clean, Leaky the leaky provider
  was never walked (refused 0 times in 1,000 pairs). Each provider now draws
  from its own generator.
"""

from __future__ import annotations

import typing

import pytest

import isolation
from isolation import Lifetime, Registry, UserContext
from isolation.factories._sampling import schedule_for

SHARED: dict[str, str] = {}


class Clean:
    def __init__(self, ctx: UserContext) -> None:
        self.cache: dict[str, str] = {}


class Leaky:
    def __init__(self, ctx: UserContext) -> None:
        self.cache = SHARED  # one dict for every user


class Cart:
    def __init__(self) -> None:
        self.items: list[str] = []


def alice(registry: Registry) -> isolation.Scope:
    return isolation.scope(UserContext.new("alice"), registry=registry)


def bob(registry: Registry) -> isolation.Scope:
    """Bob's scope, entered while alice's is live (as a second request at once)."""
    return isolation.scope(UserContext.new("bob"), registry=registry, allow_switch=True)


class TestValuesAreApp:
    @pytest.mark.parametrize("lifetime", [Lifetime.REQUEST, Lifetime.CONNECTION])
    def test_value_with_a_shorter_lifetime_is_refused(self, lifetime: Lifetime) -> None:
        """The issue's shape: provide_value(Cart(), lifetime=REQUEST) gave alice's cart to bob."""
        registry = Registry()
        with pytest.raises(isolation.ConfigurationError, match="provide\\(") as info:
            registry.provide_value(Cart(), lifetime=lifetime)
        assert lifetime.name in str(info.value)
        # Nothing was registered: the type can still get a factory.
        registry.provide(Cart)
        with alice(registry) as a:
            cart = a.get(Cart)
            with bob(registry) as b:
                assert b.get(Cart) is not cart

    def test_app_value_is_shared_by_declaration(self) -> None:
        """At APP (the default) the one object is every user's, declared shareable."""
        registry = Registry()
        settings = Cart()
        registry.provide_value(settings)
        with alice(registry) as a:
            assert a.get(Cart) is settings
            with bob(registry) as b:
                assert b.get(Cart) is settings


class TestBadOptions:
    @pytest.mark.parametrize("provides", ["Cart", 3, Cart()])
    def test_provides_must_be_a_type(self, provides: object) -> None:
        """provide_value(provides=...) names the type resolved: a string is refused."""
        with pytest.raises(isolation.ConfigurationError, match="provides"):
            Registry().provide_value(Cart(), provides=provides)  # type: ignore[arg-type]

    def test_provides_a_generic_alias_or_new_type(self) -> None:
        """What a return annotation may be, provides may be too."""
        upstream = typing.NewType("upstream", str)
        registry = Registry()
        registry.provide_value(["a"], provides=list[str])
        registry.provide_value("https://api", provides=upstream)  # type: ignore[arg-type]
        with isolation.scope(UserContext.new("alice"), registry=registry) as s:
            assert s.get(list[str]) == ["a"]
            assert s.get(upstream) == "https://api"

    @pytest.mark.parametrize(
        ("kwargs", "name"),
        [
            ({"sample_every": True}, "sample_every"),
            ({"sample_every": False}, "sample_every"),
            ({"sample_every": 2.0}, "sample_every"),
            ({"sample_every": -1}, "sample_every"),
            ({"check": ["full"]}, "check"),
            ({"check": None}, "check"),
            ({"sample_seed": "7"}, "sample_seed"),
            ({"sample_seed": True}, "sample_seed"),
        ],
    )
    def test_refused_at_construction(self, kwargs: dict[str, object], name: str) -> None:
        """A bool is an int, but Registry(sample_every=True) is a mistake: named, typed."""
        with pytest.raises(isolation.ConfigurationError, match=name):
            Registry(**kwargs)  # type: ignore[arg-type]


def _pairs(registry: Registry, pairs: int) -> int:
    """The issue's order: alice builds Clean then Leaky, then bob does; bob's refusals."""
    refused = 0
    for _ in range(pairs):
        with alice(registry) as a:
            a.get(Clean)
            a.get(Leaky)
            with bob(registry) as b:
                b.get(Clean)
                try:
                    b.get(Leaky)
                except isolation.SharedStateError:
                    refused += 1
    return refused


class TestSampledPerProvider:
    def test_periodic_order_does_not_starve_a_provider(self) -> None:
        """sample_every=2, Clean then Leaky: Leaky was refused 0 times in 1,000 pairs."""
        registry = Registry(check="sampled", sample_every=2, sample_seed=16)
        registry.provide(Clean)
        registry.provide(Leaky)
        refused = _pairs(registry, 1000)
        # Both of a pair's Leaky builds walked: chance 1/4 each pair.
        assert 150 <= refused <= 350, refused

    @pytest.mark.parametrize("seed", range(10))
    def test_every_provider_walked_within_a_bound(self, seed: int) -> None:
        """Four providers built in turn, sample_every=4: with each seed every one is walked,
        never more than 40 of its builds apart (10 x sample_every; at random, a gap that
        long has chance about e^-10)."""
        every, rounds = 4, 500
        walked: dict[str, list[int]] = {}

        class Counting(Registry):
            def _walk(self, owner: isolation.Scope, product: object, name: str) -> None:
                walked.setdefault(name, []).append(built[name])

        registry = Counting(check="sampled", sample_every=every, sample_seed=seed)
        kinds = [type(f"P{i}", (Clean,), {}) for i in range(4)]
        for kind in kinds:
            registry.provide(kind)
        built = {kind.__qualname__: 0 for kind in kinds}
        for _ in range(rounds):
            with alice(registry) as a:
                for kind in kinds:
                    built[kind.__qualname__] += 1
                    a.get(kind)
        assert sorted(walked) == sorted(built)
        for builds in walked.values():
            gaps = [b - a for a, b in zip([0, *builds], [*builds, rounds + 1], strict=True)]
            assert max(gaps) <= 10 * every, gaps
            assert rounds / every / 2 <= len(builds) <= rounds / every * 2

    def test_providers_draw_independently(self) -> None:
        """Two providers of one registry do not share a generator or a counter."""
        registry = Registry(check="sampled", sample_every=2)
        registry.provide(Clean)
        registry.provide(Leaky)
        with alice(registry) as a:
            a.get(Clean)
            a.get(Leaky)
        schedules = list(registry._schedules.values())
        assert len(schedules) == 2
        assert schedules[0].draw.__self__ is not schedules[1].draw.__self__  # type: ignore[attr-defined]

    def test_seeded_is_reproducible_unseeded_is_not(self) -> None:
        """The same seed and name walk the same builds; without a seed, each draws anew."""
        same = [schedule_for(3, "p", 5) for _ in range(2)]
        assert [same[0].due() for _ in range(64)] == [same[1].due() for _ in range(64)]
        fresh = [schedule_for(3, "p") for _ in range(2)]
        assert [fresh[0].due() for _ in range(256)] != [fresh[1].due() for _ in range(256)]


class TestRequestScopedSampled:
    def test_alternating_users_are_both_walked(self) -> None:
        """@request_scoped(check="sampled", sample_every=2), alice then bob each round:
        a counter walked every alice build and never bob's, so Leaky was never refused."""
        make = isolation.request_scoped(Leaky, check="sampled", sample_every=2)
        refused = 0
        for _ in range(400):
            with isolation.scope(UserContext.new("alice")):
                make()
                with bob(Registry()):
                    try:
                        make()
                    except isolation.SharedStateError:
                        refused += 1
        assert refused > 0
