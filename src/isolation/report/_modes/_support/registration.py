"""Registering checks: the one shape every mode's ``register(registry)`` takes.

A mode package registers its parts in the order the report lists them
(:func:`register_parts`); a part registers each check with :func:`add_check`,
which fills in what most checks share (the in-memory backend, no extra).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from isolation.report._registry import Backend, Check, CheckFn, ModeRegistry

__all__ = ["add_check", "register_parts"]


def register_parts(registry: ModeRegistry, *parts: ModuleType) -> None:
    """Call each part's ``register(registry)``, in order."""
    for part in parts:
        part.register(registry)


def add_check(
    registry: ModeRegistry,
    mode_id: int,
    name: str,
    run: CheckFn,
    *,
    library: Callable[[], Any],
    mutant: Callable[..., Any],
    description: str,
    backend: Backend = Backend.MEMORY,
    requires: tuple[str, ...] = (),
) -> None:
    """Register the check ``name`` of mode ``mode_id`` (see :class:`~isolation.report.Check`)."""
    registry.register(
        mode_id,
        Check(
            name=name,
            backend=backend,
            run=run,
            library=library,
            mutant=mutant,
            requires=requires,
            description=description,
        ),
    )
