"""The pytest plugin of :mod:`isolation` (entry point ``pytest11: isolation``).

This module imports nothing from :mod:`isolation` or Hypothesis when pytest
loads it: every import happens inside a fixture or hook, so coverage of the
package stays correct and the plugin loads without the ``testing`` extra.

Fixtures:
    ``user_context``: a fresh ``UserContext`` for one test.
    ``isolation_scope``: that context bound with ``with isolation.scope(...)``
    for the test (sync tests; async tests should enter their own scope).

Option:
    ``--isolation-strict``: fail a test, at its teardown, that leaves a scope,
    session or connection of the library open (the library's own counters).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from isolation import Scope, UserContext

_STASH = pytest.StashKey[dict[str, int]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("isolation")
    group.addoption(
        "--isolation-strict",
        action="store_true",
        default=False,
        help="fail a test that leaves an isolation scope, session or connection open",
    )


def _strict(item: pytest.Item) -> bool:
    return bool(item.config.getoption("--isolation-strict"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, Any, Any]:
    if _strict(item):
        from isolation._counters import open_resources

        item.stash[_STASH] = open_resources()
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, Any, Any]:
    result = yield
    before = item.stash.get(_STASH, None)
    if before is None:
        return result
    from isolation._counters import counted, open_resources

    after = open_resources()
    left = {
        name: after[name] - before.get(name, 0)
        for name in after
        if after[name] > before.get(name, 0)
    }
    if left:
        listed = ", ".join(counted(count, name) for name, count in sorted(left.items()))
        pytest.fail(f"--isolation-strict: this test left open {listed}", pytrace=False)
    return result


@pytest.fixture
def user_context() -> UserContext:
    """A fresh context for ``test-user`` of tenant ``test-tenant``."""
    from isolation import UserContext

    return UserContext.new("test-user", tenant_id="test-tenant")


@pytest.fixture
def isolation_scope(user_context: UserContext) -> Iterator[Scope]:
    """``user_context`` bound in a scope for the test."""
    from isolation import scope

    with scope(user_context) as bound:
        yield bound
