"""Shared fixtures: anyio backends, Hypothesis profiles, and the real services.

Tests that need PostgreSQL or Redis read ``ISOLATION_TEST_POSTGRES_URL`` and
``ISOLATION_TEST_REDIS_URL``. When a URL is unset they are skipped with a
visible reason, unless ``ISOLATION_REQUIRE_SERVICES=1``, when they fail: a CI
run never passes by skipping.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

import isolation._clock
from isolation.testing import FakeClock

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=50,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

pytest_plugins = ["pytester"]

REQUIRE_SERVICES = os.environ.get("ISOLATION_REQUIRE_SERVICES") == "1"

COVERAGE_FLOOR = 90.0
"""Branch coverage of the package that a run with ISOLATION_REQUIRE_SERVICES=1 must reach."""


def pytest_configure(config: pytest.Config) -> None:
    """Enforce COVERAGE_FLOOR when services are required and pytest-cov measures the run.

    pytest-cov reads its options before this conftest loads, from its own copy of
    the namespace, so the floor is set on the plugin (registered as ``_cov``).
    An explicit ``--cov-fail-under`` wins.
    """
    plugin = config.pluginmanager.get_plugin("_cov")
    options = getattr(plugin, "options", None)
    if not REQUIRE_SERVICES or options is None or getattr(options, "no_cov", False):
        return
    if not getattr(options, "cov_fail_under", None):
        options.cov_fail_under = COVERAGE_FLOOR


def _service_url(variable: str) -> str:
    url = os.environ.get(variable)
    if url:
        return url
    message = f"{variable} is not set: this test needs a real server"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message}, and ISOLATION_REQUIRE_SERVICES=1 forbids skipping it")
    pytest.skip(message)


@pytest.fixture
def postgres_url() -> str:
    """The PostgreSQL URL of a role that can create roles (skip or fail when unset)."""
    return _service_url("ISOLATION_TEST_POSTGRES_URL")


@pytest.fixture
def redis_url() -> str:
    """The Redis URL (skip or fail when unset)."""
    return _service_url("ISOLATION_TEST_REDIS_URL")


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param("trio", id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every async test on asyncio and trio (asyncio-only parts override this)."""
    return str(request.param)


@pytest.fixture
def fake_clock() -> Iterator[FakeClock]:
    """Install a FakeClock as the library's clock for one test."""
    clock = FakeClock()
    previous = isolation._clock.set_clock(clock)
    try:
        yield clock
    finally:
        isolation._clock.set_clock(previous)
