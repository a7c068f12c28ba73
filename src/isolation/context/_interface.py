"""``Scope``'s declared internal interface: what the other parts of the library may ask.

``factories`` (the Registry, ``@request_scoped``, ``@owned``, the shared-state
index), ``logging``, ``sessions`` and the report use a scope through its public
properties (``context``, ``parent``, ``lifetime``, ``active``, ``ended``,
``deadline``, ``on_close``) and through this module, never through ``Scope``'s
private fields. Each function reads one field, so a change of ``Scope``'s fields
changes this module, not its callers:

* :func:`once`, :func:`aonce`, :func:`in_current`, :func:`ain_current`: the
  per-scope storage and its "build once" primitive (:mod:`._once`);
* :func:`add_finalizer`: a finalizer registered by a build, without
  :meth:`Scope.on_close`'s checks (the build runs in an active scope);
* :func:`is_async`: whether the scope was entered with ``async with``;
* :func:`is_plain`: whether the scope is active and readable without questions
  (no deadline passed, not held across a yield): the fast paths' test;
* :func:`is_held`: whether a generator holds the scope across a yield, or it
  was opened over such a scope (then :func:`current_scope` says what is seen);
* :func:`is_live`: whether the scope was entered and has not ended;
* :func:`storage`: the scope's storage and its lock, for a part that keeps
  more than a built-once value there (the session manager's open sessions,
  whose block depth changes under the lock);
* :func:`holds_itself`: whether a generator holds this very scope across a
  yield (:func:`is_held` without the scopes opened over a held one);
* :func:`body_cancelled`: whether the scope's deadline cancelled its body;
* :func:`cleanup_timeout`: the scope's ``cleanup_timeout=``;
* :func:`bound_scope`: the scope bound here or ``None``, without
  :func:`current_scope`'s checks (a guard that decides itself what to refuse);
* :func:`context_of`: a scope's context, without the property's lookup (the
  event connection's per-receive check).

``is_plain`` is also read inline, as ``scope._fast is not None or scope._timed
is not None``, by ``@owned``'s per-call guard, where a function call would cost
every guarded method call (the one read of ``Scope``'s fields left outside
``context``, counted in ``tests/test_layers.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from isolation.context._model import UserContext
from isolation.context._once import EventFactory, ain_current, aonce, in_current, once
from isolation.context._scope import _ACTIVE, Finalizer, Scope, _current

__all__ = [
    "EventFactory",
    "add_finalizer",
    "ain_current",
    "aonce",
    "body_cancelled",
    "bound_scope",
    "cleanup_timeout",
    "context_of",
    "holds_itself",
    "in_current",
    "is_async",
    "is_held",
    "is_live",
    "is_plain",
    "once",
    "storage",
]

bound_scope: Callable[[], Scope | None] = _current.get
"""The scope bound here or ``None``, unchecked (held, ended or expired alike)."""


def add_finalizer(scope: Scope, fn: Finalizer) -> None:
    """Run ``fn(exc)`` at ``scope``'s exit, as :meth:`Scope.on_close` would, unchecked.

    For a build running in ``scope`` (so the scope is active); an async ``fn``
    only in a scope entered with ``async with`` (:func:`is_async`).
    """
    finalizers = scope._finalizers
    if finalizers is None:
        scope._finalizers = [fn]
    else:
        finalizers.append(fn)


def is_async(scope: Scope) -> bool:
    """Whether ``scope`` was entered with ``async with`` (it may run async finalizers)."""
    return scope._async


def is_plain(scope: Scope) -> bool:
    """Whether ``scope`` is active and neither held across a yield nor bound over a held one.

    A scope has its fast-path fields only in that state (see ``Scope._bind``).
    """
    return scope._fast is not None or scope._timed is not None


def is_held(scope: Scope) -> bool:
    """Whether a generator holds ``scope`` across a yield, or it was opened over such a scope."""
    return scope._held is not None or scope._over is not None


def is_live(scope: Scope) -> bool:
    """Whether ``scope`` was entered and has not ended (held across a yield or not)."""
    return scope._state == _ACTIVE


def storage(scope: Scope) -> tuple[dict[object, Any], threading.RLock]:
    """``scope``'s storage and its lock, made on first use (``ScopeEndedError`` once ended)."""
    return scope._storage()


def holds_itself(scope: Scope) -> bool:
    """Whether a generator holds ``scope`` itself across a yield (see :func:`is_held`)."""
    return scope._held is not None


def body_cancelled(scope: Scope) -> bool:
    """Whether ``scope``'s deadline cancelled its body (an ``async with`` scope's only)."""
    return (cancel_scope := scope._cancel_scope) is not None and cancel_scope.cancel_called


def context_of(scope: Scope) -> UserContext:
    """``scope``'s context (what :attr:`Scope.context` returns)."""
    return scope._ctx


def cleanup_timeout(scope: Scope) -> float:
    """``scope``'s ``cleanup_timeout=``: how long its finalizers may run when cancelled."""
    return scope._cleanup_timeout
