"""Scope-aware ``ContextVarsRegistry`` (extra ``contextvars-extras``).

Services that keep request state in a :class:`contextvars_extras.ContextVarsRegistry`
can make it follow :mod:`isolation` scopes with :func:`isolate`: every value
written is tagged with the scope that wrote it, and every read checks the tag.

* A value written in another scope of the **same** principal (an earlier
  request, a parent or child scope) reads as reset: the declared default, or
  "not set".
* A value written under **another** principal raises
  :class:`~isolation.CrossContextAccessError` (for example a worker thread of a
  bare pool still holding the last user's value).
* Writing outside a scope raises :class:`~isolation.NoContextError`.

Upstream marks ``contextvars-extras`` as no longer maintained, and its registry
costs several times a raw ``ContextVar`` (2.9x for attribute access and 15.6x
for ``with registry(...)`` in this project's measurements; the tags add a
Python call per access). Prefer :class:`isolation.ContextLocal` for new code;
use this to make existing code safe.
"""

from __future__ import annotations

import weakref
from typing import Any, TypeVar

from contextvars_extras import ContextVarsRegistry
from contextvars_extras.context_var_ext import NO_DEFAULT

from isolation._compat import cve_allocates_on_setattr, cve_var_descriptors
from isolation._errors import ConfigurationError, CrossContextAccessError, NoContextError
from isolation._redact import redact_principal
from isolation.context._scope import Scope, current_scope

__all__ = ["isolate"]

R = TypeVar("R", bound=type[ContextVarsRegistry])


class _Tagged:
    """A value with the scope and principal that wrote it."""

    __slots__ = ("principal", "scope", "value")

    def __init__(self, scope: Scope, value: Any) -> None:
        self.scope = weakref.ref(scope)
        self.principal = scope.context.principal
        self.value = value


def _patch(descriptor: Any, registry_name: str) -> None:
    original_get = descriptor.get
    original_set = descriptor.set
    static_default = descriptor.default
    deferred_default = descriptor.deferred_default
    name = f"{registry_name}.{descriptor.name.rsplit('.', 1)[-1]}"

    def set_tagged(value: Any) -> Any:
        return original_set(_Tagged(current_scope(), value))

    def get_checked(default: Any = NO_DEFAULT) -> Any:
        value = original_get() if default is NO_DEFAULT else original_get(default)
        if type(value) is not _Tagged:
            if deferred_default is not None and value is not default:
                # A deferred default made in some earlier scope: make a fresh one here.
                fresh = deferred_default()
                set_tagged(fresh)
                return fresh
            return value
        scope = current_scope()
        if value.principal != scope.context.principal:
            raise CrossContextAccessError(
                f"{name} was written under {redact_principal(value.principal)} and read "
                f"under {redact_principal(scope.context.principal)}"
            )
        if value.scope() is scope:
            return value.value
        # Written by another scope of the same user: reads as reset.
        if default is not NO_DEFAULT:
            return default
        if static_default is not NO_DEFAULT:
            return static_default
        if deferred_default is not None:
            fresh = deferred_default()
            set_tagged(fresh)
            return fresh
        raise NoContextError(
            f"{name} has no value in this scope (a value set in another scope of the "
            "same user reads as unset)",
            hint=f"Set {name} in this scope, or give it a default",
        )

    descriptor.get = get_checked
    descriptor.set = set_tagged


def isolate(registry: R) -> R:
    """Make a ``ContextVarsRegistry`` subclass follow isolation scopes; returns it.

    Use as a class decorator. Every variable must be declared in the class (an
    annotation), and ``_registry_allocate_on_setattr = False`` set, so that no
    variable can appear later without the check::

        @isolate
        class Current(ContextVarsRegistry):
            _registry_allocate_on_setattr = False
            locale: str = "en"

    Raises:
        ConfigurationError: Not a registry class, or it allocates on setattr.
    """
    if not (isinstance(registry, type) and issubclass(registry, ContextVarsRegistry)):
        raise ConfigurationError(
            f"isolate() takes a ContextVarsRegistry subclass, got {registry!r}"
        )
    if cve_allocates_on_setattr(registry):
        raise ConfigurationError(
            f"{registry.__name__} allocates variables on setattr, which would bypass the check",
            hint="Declare each variable with an annotation and set "
            "_registry_allocate_on_setattr = False",
        )
    for descriptor in cve_var_descriptors(registry):
        _patch(descriptor, registry.__name__)
    return registry
