"""Bad arguments refused at the call, with typed errors (issue 16, low findings).

``set_redactor(5)`` was accepted, after which every library error became a
``TypeError``; ``scope(ctx, registry="x")`` failed late with ``AttributeError``;
``current_context_or_none()`` and ``current_context()`` must agree on every state.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

import isolation
import isolation.logging as ilog
from isolation import (
    ContextExpiredError,
    NoContextError,
    ScopeEndedError,
    UsageError,
    UserContext,
    current_context,
    current_context_or_none,
)
from isolation._redact import Redactor
from isolation.testing import FakeClock


@pytest.fixture
def restore_redactor() -> Iterator[None]:
    previous = ilog.set_redactor(None)
    try:
        yield
    finally:
        ilog.set_redactor(previous)


@pytest.mark.usefixtures("restore_redactor")
class TestSetRedactor:
    @pytest.mark.parametrize("bad", [5, "hmac", b"key"])
    def test_non_callable_refused_at_the_call(self, bad: object) -> None:
        """set_redactor(5) raises UsageError at once and installs nothing, so the next
        library error is still the library's own."""
        with pytest.raises(UsageError, match="callable"):
            ilog.set_redactor(bad)  # type: ignore[arg-type]
        with pytest.raises(isolation.InvalidContextError):
            UserContext.new("")
        with pytest.raises(NoContextError):
            current_context()

    @pytest.mark.parametrize(
        "redactor",
        [lambda value: 5, lambda value: None, lambda value: 1 / 0],
        ids=["returns-int", "returns-none", "raises"],
    )
    def test_failing_redactor_never_replaces_the_error(self, redactor: Redactor) -> None:
        """A redactor that raises or returns a non-str shows a fixed placeholder: the
        library's error is still raised, and the id is not shown."""
        ilog.set_redactor(redactor)
        with (
            pytest.raises(isolation.ContextSwitchError) as info,
            isolation.scope(UserContext.new("alice@example.com")),
            isolation.scope(UserContext.new("bob@example.com")),
        ):
            pass
        assert "example.com" not in str(info.value)
        assert "<unredactable id>" in str(info.value)


class TestScopeArguments:
    @pytest.mark.parametrize("registry", ["x", object(), {}])
    def test_registry_refused_at_construction(self, registry: object) -> None:
        """scope(ctx, registry="x") raises UsageError when built, not AttributeError later."""
        with pytest.raises(UsageError, match=r"isolation\.Registry"):
            isolation.scope(UserContext.new("alice"), registry=registry)  # type: ignore[arg-type]

    def test_a_registry_is_accepted(self) -> None:
        """A real Registry still works."""
        registry = isolation.Registry()
        with isolation.scope(UserContext.new("alice"), registry=registry) as bound:
            assert bound.registry is registry

    @pytest.mark.parametrize("flag", ["no", 1, None])
    def test_allow_switch_must_be_a_bool(self, flag: object) -> None:
        """A truthy non-bool such as "no" would silently allow switching users."""
        with pytest.raises(UsageError, match="allow_switch"):
            isolation.scope(UserContext.new("alice"), allow_switch=flag)  # type: ignore[arg-type]


class TestOrNoneAgrees:
    """current_context_or_none() is None exactly where current_context() raises
    NoContextError, and raises whatever else current_context() raises."""

    @staticmethod
    def _both() -> tuple[object, object]:
        def outcome(fn: object) -> object:
            try:
                return fn()  # type: ignore[operator]
            except isolation.IsolationError as exc:
                return type(exc)

        return outcome(current_context), outcome(current_context_or_none)

    def test_no_scope(self) -> None:
        """No scope: NoContextError and None."""
        assert self._both() == (NoContextError, None)

    def test_executor_that_drops_the_context(self) -> None:
        """A bare executor gives its worker no scope: the same two answers there, and
        ContextThreadPoolExecutor carries the scope (the documented fix)."""
        with isolation.scope(UserContext.new("alice")) as bound:
            with ThreadPoolExecutor(1) as pool:
                assert pool.submit(self._both).result(timeout=30) == (NoContextError, None)
            with isolation.ContextThreadPoolExecutor(1) as pool:
                both = pool.submit(self._both).result(timeout=30)
            assert both == (bound.context, bound.context)

    def test_ended_copy(self) -> None:
        """A copy of an ended scope: ScopeEndedError from both."""
        with isolation.scope(UserContext.new("alice")):
            copy = contextvars.copy_context()
        assert copy.run(self._both) == (ScopeEndedError, ScopeEndedError)

    def test_expired(self, fake_clock: FakeClock) -> None:
        """An expired scope: ContextExpiredError from both."""
        with (
            pytest.raises(ContextExpiredError),
            isolation.scope(UserContext.new("alice", ttl=1)),
        ):
            fake_clock.advance(2)
            assert self._both() == (ContextExpiredError, ContextExpiredError)
