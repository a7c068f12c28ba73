"""Helpers for the factory tests: several users' scopes live at once in one thread."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from isolation import Scope, UserContext

T = TypeVar("T")


class Live:
    """One user's scope, live in its own context copy until closed."""

    def __init__(self, ctx: UserContext) -> None:
        self.ctx = ctx
        self.copy = contextvars.Context()
        self.scope = Scope(ctx)
        self.copy.run(self.scope.__enter__)

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn(*args)`` inside this scope."""
        return self.copy.run(fn, *args)

    def close(self) -> None:
        """End the scope."""
        if self.scope.active:
            self.copy.run(self.scope.__exit__, None, None, None)


@pytest.fixture
def live() -> Iterator[Callable[..., Live]]:
    """Open live scopes (``live("alice")``); all are closed at the end of the test."""
    opened: list[Live] = []

    def open_scope(user_id: str, tenant_id: str | None = None) -> Live:
        scope = Live(UserContext.new(user_id, tenant_id=tenant_id))
        opened.append(scope)
        return scope

    yield open_scope
    for scope in reversed(opened):
        scope.close()
