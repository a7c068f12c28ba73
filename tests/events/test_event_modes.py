"""The router's failure-mode checks (FM10, 13, 14, 15, 16): silent on the library, loud on mutants.

The registry runs the checks on asyncio; here the async ones also run on trio.
"""

from __future__ import annotations

import pytest

from isolation.report import Settings, default_registry
from isolation.report._registry import Backend, Check

SETTINGS = Settings(quick=True)
REGISTRY = default_registry()
ASYNC_CHECKS = [
    pytest.param(check, id=f"fm{mode}-{check.name}")
    for mode in (10, 13, 14, 15, 16)
    for check in REGISTRY.mode(mode).checks
    # Checks on Redis (asyncio only, given a URL) are run by tests/failure_modes and tests/redis.
    if check.name != "operations" and check.backend is Backend.MEMORY
]


def test_every_mode_registered() -> None:
    """Each of the router's five modes has at least one check with a mutant."""
    for mode in (10, 13, 14, 15, 16):
        checks = REGISTRY.mode(mode).checks
        assert checks, mode
        for check in checks:
            assert check.mutant is not check.library


@pytest.mark.anyio
@pytest.mark.parametrize("check", ASYNC_CHECKS)
async def test_library_passes(check: Check) -> None:
    """The library's router passes, on asyncio and trio."""
    violations = await check.run(check.library(), SETTINGS)  # type: ignore[misc]
    assert violations == []


@pytest.mark.anyio
@pytest.mark.parametrize("check", ASYNC_CHECKS)
async def test_mutant_caught(check: Check) -> None:
    """The deliberately broken router is caught, every run."""
    violations = await check.run(check.mutant(), SETTINGS)  # type: ignore[misc]
    assert violations
