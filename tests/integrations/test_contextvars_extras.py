"""The contextvars-extras integration: registry values follow isolation scopes."""

from __future__ import annotations

import contextvars

import pytest

import isolation
from isolation import UserContext

pytest.importorskip("contextvars_extras", reason="needs the contextvars-extras extra")

from contextvars_extras import ContextVarDescriptor, ContextVarsRegistry

from isolation.integrations.contextvars_extras import isolate


@pytest.fixture
def current() -> ContextVarsRegistry:
    @isolate
    class Vars(ContextVarsRegistry):
        _registry_allocate_on_setattr = False
        locale: str = "en"
        cart: list[str]
        memory = ContextVarDescriptor(deferred_default=list)

    return Vars()


class TestIsolate:
    def test_value_within_its_scope(self, current: ContextVarsRegistry) -> None:
        """A value written in a scope reads back there, by attribute and by key."""
        with isolation.scope(UserContext.new("alice")):
            current.locale = "fr"  # type: ignore[attr-defined]
            assert current.locale == "fr"  # type: ignore[attr-defined]
            assert current["locale"] == "fr"

    def test_reset_at_scope_boundary(self, current: ContextVarsRegistry) -> None:
        """A later scope of the same user reads the default, not the old value."""
        with isolation.scope(UserContext.new("alice")):
            current.locale = "fr"  # type: ignore[attr-defined]
            copied = contextvars.copy_context()

        def later_request() -> str:
            with isolation.scope(UserContext.new("alice")):
                return current.locale  # type: ignore[attr-defined,no-any-return]

        assert copied.run(later_request) == "en"

    def test_no_default_reads_as_unset(self, current: ContextVarsRegistry) -> None:
        """A variable without default written in another scope is 'not set' (AttributeError)."""
        with isolation.scope(UserContext.new("alice")):
            current.cart = ["book"]  # type: ignore[attr-defined]
            copied = contextvars.copy_context()

        def later_request() -> object:
            with isolation.scope(UserContext.new("alice")):
                return current.cart  # type: ignore[attr-defined]

        with pytest.raises(AttributeError):
            copied.run(later_request)

    def test_deferred_default_fresh_per_scope(self, current: ContextVarsRegistry) -> None:
        """A deferred default (a list) is made anew in each scope, never shared."""
        with isolation.scope(UserContext.new("alice")):
            current.memory.append("alice's secret")  # type: ignore[attr-defined]
            assert current.memory == ["alice's secret"]  # type: ignore[attr-defined]
            copied = contextvars.copy_context()

        def bob() -> list[str]:
            with isolation.scope(UserContext.new("bob")):
                return current.memory  # type: ignore[attr-defined,no-any-return]

        with pytest.raises(isolation.CrossContextAccessError):
            copied.run(bob)

    def test_other_principal_refused(self, current: ContextVarsRegistry) -> None:
        """A value written under alice, read under bob in the same context, is refused."""
        with isolation.scope(UserContext.new("alice")):
            current.locale = "fr"  # type: ignore[attr-defined]
            copied = contextvars.copy_context()

        def bob() -> str:
            with isolation.scope(UserContext.new("bob")):
                return current.locale  # type: ignore[attr-defined,no-any-return]

        with pytest.raises(isolation.CrossContextAccessError, match="alice"):
            copied.run(bob)

    def test_same_user_other_tenant_refused(self, current: ContextVarsRegistry) -> None:
        """alice of another tenant is another principal."""
        with isolation.scope(UserContext.new("alice", tenant_id="a")):
            current.locale = "fr"  # type: ignore[attr-defined]
            copied = contextvars.copy_context()

        def other() -> str:
            with isolation.scope(UserContext.new("alice", tenant_id="b")):
                return current.locale  # type: ignore[attr-defined,no-any-return]

        with pytest.raises(isolation.CrossContextAccessError):
            copied.run(other)

    def test_write_outside_scope_refused(self, current: ContextVarsRegistry) -> None:
        """Writing without a bound scope fails closed."""
        with pytest.raises(isolation.NoContextError):
            current.locale = "fr"  # type: ignore[attr-defined]

    def test_with_registry_call(self, current: ContextVarsRegistry) -> None:
        """`with registry(x=...)` sets a tagged value and restores the old one."""
        with isolation.scope(UserContext.new("alice")):
            with current(locale="de"):  # type: ignore[operator]
                assert current.locale == "de"  # type: ignore[attr-defined]
            assert current.locale == "en"  # type: ignore[attr-defined]

    def test_get_with_explicit_default(self, current: ContextVarsRegistry) -> None:
        """descriptor.get(default) of a value from another scope returns that default."""
        descriptor = type(current)._registry_var_descriptors["locale"]
        with isolation.scope(UserContext.new("alice")):
            current.locale = "fr"  # type: ignore[attr-defined]
            copied = contextvars.copy_context()

        def later() -> str:
            with isolation.scope(UserContext.new("alice")):
                return descriptor.get("fallback")  # type: ignore[no-any-return]

        assert copied.run(later) == "fallback"

    def test_refuses_allocate_on_setattr(self) -> None:
        """A registry that allocates variables on setattr is refused."""

        class Loose(ContextVarsRegistry):
            locale: str = "en"

        with pytest.raises(isolation.ConfigurationError, match="allocates"):
            isolate(Loose)

    def test_refuses_non_registry(self) -> None:
        """isolate() takes registry classes only."""
        with pytest.raises(isolation.ConfigurationError):
            isolate(dict)  # type: ignore[type-var]
