"""Test-only checks and registries: deliberately passing, failing, missed and crashing ones."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import pytest

from isolation.report import Settings
from isolation.report._registry import Backend, Check, ModeRegistry


class CheckFactory(Protocol):
    def __call__(
        self,
        name: str = ...,
        *,
        found: Sequence[str] = ...,
        mutant_found: Sequence[str] = ...,
        backend: Backend = ...,
        requires: tuple[str, ...] = ...,
        crash: bool = ...,
        mutant_crash: bool = ...,
        is_async: bool = ...,
        seen: list[Settings] | None = ...,
        raises: BaseException | None = ...,
    ) -> Check: ...


RegistryFactory = Callable[[dict[int, Iterable[Check]]], ModeRegistry]


def _make_check(
    name: str = "check",
    *,
    found: Sequence[str] = (),
    mutant_found: Sequence[str] = ("the mutant leaked",),
    backend: Backend = Backend.MEMORY,
    requires: tuple[str, ...] = (),
    crash: bool = False,
    mutant_crash: bool = False,
    is_async: bool = False,
    seen: list[Settings] | None = None,
    raises: BaseException | None = None,
) -> Check:
    """A check whose subject is "library" or "mutant" and whose findings are fixed.

    ``raises`` is raised by every run, of the library and of the mutant.
    """

    def judge(subject: str, settings: Settings) -> list[str]:
        if seen is not None:
            seen.append(settings)
        if raises is not None:
            raise raises
        if subject == "library":
            if crash:
                raise RuntimeError("the scenario broke")
            return list(found)
        if mutant_crash:
            raise RuntimeError("the mutant broke the scenario")
        return list(mutant_found)

    async def ajudge(subject: str, settings: Settings) -> list[str]:
        return judge(subject, settings)

    run: Any = ajudge if is_async else judge
    return Check(
        name=name,
        backend=backend,
        run=run,
        library=lambda: "library",
        mutant=lambda: "mutant",
        requires=requires,
        description=f"test-only check {name}",
    )


def _make_registry(checks: dict[int, Iterable[Check]]) -> ModeRegistry:
    registry = ModeRegistry()
    for mode_id, mode_checks in checks.items():
        for check in mode_checks:
            registry.register(mode_id, check)
    return registry


@pytest.fixture
def make_check() -> CheckFactory:
    """Build a test-only Check (see _make_check for the knobs)."""
    return _make_check


@pytest.fixture
def make_registry() -> RegistryFactory:
    """Build a sixteen-mode registry with the given checks per mode id."""
    return _make_registry


@pytest.fixture
def all_passing() -> ModeRegistry:
    """Every mode with one passing check whose mutant is caught."""
    return _make_registry({mode_id: [_make_check(f"ok-{mode_id}")] for mode_id in range(1, 17)})
