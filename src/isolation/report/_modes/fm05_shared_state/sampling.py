"""FM5, factory instances share internal state: a sampled walk reaches every provider.

Subject: a :class:`isolation.Registry` class, built with ``check="sampled"``.
Two users' scopes are live at once and build the same providers in a fixed,
periodic order; each provider that leaks (one dict for every user) must be
refused at least once:

- the issue's order: ``Clean`` then ``Leaky``, ``sample_every=2``, 1,000
  pairs (200 quick);
- four leaky providers built in turn, ``sample_every=4``, 400 rounds.

With per-provider random sampling each pair of a provider's builds is walked
with chance ``1/sample_every**2``, so a provider goes unrefused with chance
below ``1e-11``. The mutant counts builds with one counter for every provider
(the code before issue 16): the periodic order walks ``Clean`` (or the first
provider) every time and never the others.
"""

from __future__ import annotations

import itertools
from typing import Any

from isolation._errors import SharedStateError
from isolation.context._model import UserContext
from isolation.context._scope import Scope
from isolation.factories._registry import Registry, _Provider
from isolation.factories._sampling import Schedule
from isolation.report._modes._support.registration import add_check
from isolation.report._registry import ModeRegistry, Settings

__all__ = ["register"]


def _kinds(count: int) -> list[type]:
    """``count`` leaky classes, each with its own dict shared by every user."""

    def make(i: int) -> type:
        shared: dict[str, str] = {}

        def __init__(self: Any, ctx: UserContext) -> None:  # noqa: N807
            self.cache = shared

        return type(f"Leaky{i}", (), {"__init__": __init__})

    return [make(i) for i in range(count)]


class _Clean:
    def __init__(self, ctx: UserContext) -> None:
        self.cache: dict[str, str] = {}


def _refusals(registry: Registry, order: list[type], leaky: list[type], rounds: int) -> set[type]:
    """Alice then bob (both live) build ``order`` each round; the leaky kinds refused."""
    refused: set[type] = set()
    for _ in range(rounds):
        with Scope(UserContext.new("fm5-alice", tenant_id="fm5"), registry=registry) as alice:
            for kind in order:
                alice.get(kind)
            with Scope(
                UserContext.new("fm5-bob", tenant_id="fm5"), registry=registry, allow_switch=True
            ) as bob:
                for kind in order:
                    try:
                        bob.get(kind)
                    except SharedStateError:
                        refused.add(kind)
    return refused & set(leaky)


def check_sampled_reaches_every_provider(
    registry_class: type[Registry], settings: Settings
) -> list[str]:
    """Periodic build orders under ``check="sampled"``: every leaky provider is refused."""
    violations: list[str] = []
    pairs = 200 if settings.quick else 1000
    (leaky,) = _kinds(1)
    registry = registry_class(check="sampled", sample_every=2)
    registry.provide(_Clean)
    registry.provide(leaky)
    if not _refusals(registry, [_Clean, leaky], [leaky], pairs):
        violations.append(
            f"sample_every=2, Clean then Leaky: Leaky refused 0 times in {pairs} pairs"
        )
    kinds = _kinds(4)
    registry = registry_class(check="sampled", sample_every=4)
    for kind in kinds:
        registry.provide(kind)
    missed = set(kinds) - _refusals(registry, kinds, kinds, 400)
    if missed:
        names = ", ".join(sorted(kind.__name__ for kind in missed))
        violations.append(
            f"sample_every=4, 4 leaky providers in turn: {names} never refused in 400 rounds"
        )
    return violations


class _GlobalCounterRegistry(Registry):
    """Mutant: one build counter for every provider, one build in ``sample_every`` walked."""

    def _schedule(self, provider: _Provider) -> Schedule:
        counter = self.__dict__.setdefault("_fm5_builds", itertools.count())
        every = self._sample_every

        def draw() -> float:
            return 0.0 if next(counter) % every == 0 else 1.0

        return Schedule(draw, 0.5)


def _library() -> type[Registry]:
    return Registry


def _mutant() -> type[Registry]:
    return _GlobalCounterRegistry


def register(registry: ModeRegistry) -> None:
    """Register FM5's sampling check."""
    add_check(
        registry,
        5,
        "sampled-reaches-every-provider",
        check_sampled_reaches_every_provider,
        library=_library,
        mutant=_mutant,
        description=(
            "check='sampled', periodic build orders of two live users (Clean then Leaky, "
            "sample_every=2; 4 leaky providers in turn): every leaky provider refused"
        ),
    )
