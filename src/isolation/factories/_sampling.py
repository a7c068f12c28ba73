"""Which builds of a ``check="sampled"`` provider are walked: each with chance ``1/every``.

Each provider draws from its own generator, independently at each build, so

- no provider is skipped because of the others: a build order that alternates
  providers (or users) cannot line up with a counter and starve one, as a
  counter shared by every provider did;
- two builds of one provider (alice's and bob's, at once) are both walked with
  chance ``1/every**2`` whatever their order, which is what it takes to find
  state they share;
- the walked builds cannot be lined up with from outside: each generator is
  seeded from :func:`os.urandom`, per process and per provider; an explicit
  seed (with the provider's name) makes them reproducible, for tests.

A provider goes ``k * every`` builds in a row unwalked with chance about
``exp(-k)``. The per-build decision is one C call and a compare.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable

__all__ = ["Schedule", "schedule_for"]


class Schedule:
    """One provider's sampled walks: a build is walked when ``draw() < chance``.

    Attributes:
        draw: Returns a float in ``[0, 1)``; the provider's own generator.
        chance: ``1 / every``.
    """

    __slots__ = ("chance", "draw")

    def __init__(self, draw: Callable[[], float], chance: float) -> None:
        self.draw = draw
        self.chance = chance

    def due(self) -> bool:
        """Whether this build is walked (the compiled resolvers inline this)."""
        return self.draw() < self.chance


def schedule_for(every: int, name: str, seed: int | None = None) -> Schedule:
    """A new schedule for the provider ``name``: from ``seed`` if given, else at random.

    With a seed, the same ``(seed, name)`` walks the same builds, so tests can
    show which; without, each schedule has its own generator seeded from
    :func:`os.urandom`.
    """
    # Not a secret to keep: what matters is that no build order is correlated
    # with the walked builds, which a per-provider random seed gives.
    rng = random.Random(os.urandom(32) if seed is None else f"{seed}/{name}")  # noqa: S311
    return Schedule(rng.random, 1.0 / every)
