"""The router's failure-mode checks (FM10, 13, 14, 15, 16): silent on the library, loud on mutants.

The registry runs the checks on asyncio; here the async ones also run on trio.
"""

from __future__ import annotations

from typing import Any

import pytest

from isolation.report import Settings, default_registry
from isolation.report._registry import Backend, Check
from isolation.report.modes import fm10_routing
from isolation.report.modes.fm10_routing import Op, run_operations

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


class TestOperations:
    check = next(c for c in REGISTRY.mode(10).checks if c.name == "operations")

    def test_library_passes(self) -> None:
        """Hypothesis sequences over 200 principals agree with the model."""
        assert self.check.run(self.check.library(), SETTINGS) == []

    def test_mutant_caught(self) -> None:
        """Routing by user id alone is caught by the explicit example, every run."""
        violations = self.check.run(self.check.mutant(), SETTINGS)
        assert violations
        assert any("user-0" in v for v in violations)  # type: ignore[union-attr]

    @pytest.mark.anyio
    async def test_same_user_two_tenants(self, anyio_backend: str) -> None:
        """The explicit example, run directly on asyncio and trio."""
        from isolation.events import EventRouter

        ops = list(fm10_routing.SAME_USER_TWO_TENANTS)
        assert await run_operations(EventRouter, ops) == []
        assert await run_operations(fm10_routing._UserKeyedRouter, ops)

    @pytest.mark.anyio
    async def test_expiry_and_disconnect(self) -> None:
        """Expired and disconnected connections refuse, live ones keep their events."""
        from isolation.events import EventRouter

        ops = [
            Op("connect", 4, 1),  # ttl 5
            Op("connect", 4, 0),  # no ttl
            Op("connect", 5, 2),  # ttl 20, same user id in the other tenant
            Op("publish", 4),
            Op("publish", 5),
            Op("expire", 5),
            Op("receive", 0),
            Op("receive", 1),
            Op("disconnect", 2),
            Op("receive", 2),
            Op("publish", 4),
            Op("cancel_receive", 1),
        ]
        assert await run_operations(EventRouter, ops) == []


def test_principals() -> None:
    """FM10 runs over 200 principals, each user id in two tenants."""
    principals: Any = fm10_routing.PRINCIPALS
    assert len(set(principals)) == 200
    assert len({user for _, user in principals}) == 100
