"""``ContextLocal``: state per scope, never shared between users (failure mode 9).

Unlike a raw :class:`~contextvars.ContextVar`, whose writes stay in the task
or copied context that made them, a ``ContextLocal`` stores its value in the
bound **scope**: what a scope writes is seen by its child tasks and threads,
and by nothing outside it. Another scope — another user, or a later request of
the same user, or a child scope — starts from ``default_factory`` again. The
value is dropped when the scope ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar, final

from isolation._errors import NoContextError, UsageError
from isolation.context._once import once
from isolation.context._scope import Scope, _current, _Pending, current_scope

__all__ = ["ContextLocal"]

T = TypeVar("T")


@final
class ContextLocal(Generic[T]):
    """A value per scope: ``get()`` and ``set(value)`` read and write the bound scope's.

    ``default_factory`` runs at most once per scope, even when threads race to
    the first ``get()``. **Writes are shared within the scope**: a child task or
    a thread started with :func:`isolation.to_thread` sees and changes the same
    value, so guard compound updates (read, then write) with your own lock.

    Args:
        default_factory: Makes the first value of each scope; without it,
            ``get()`` before ``set()`` raises :class:`NoContextError`.
        name: Shown in ``repr()`` and errors.

    Raises:
        NoContextError: No scope is bound (fail closed), or no value and no factory.
        ScopeEndedError: The scope bound here has ended.
    """

    __slots__ = ("__weakref__", "_default_factory", "_name", "_resolve")

    def __init__(
        self, default_factory: Callable[[], T] | None = None, *, name: str | None = None
    ) -> None:
        if default_factory is not None and not callable(default_factory):
            raise UsageError(
                f"ContextLocal(default_factory=...) takes a callable, "
                f"got {type(default_factory).__name__}"
            )
        self._default_factory = default_factory
        self._name = name or f"ContextLocal@{id(self):x}"
        # The first value of each scope: built once (isolation.context._once).
        self._resolve = once(self, self._first_value, name=self._name)

    def _first_value(self, scope: Scope) -> T:
        if self._default_factory is None:
            raise NoContextError(
                f"{self._name} has no value in this scope and no default_factory",
                hint="Call .set(value) first in this scope, or give a default_factory",
            )
        return self._default_factory()

    @property
    def name(self) -> str:
        """The name given, or one made from the object's id."""
        return self._name

    def get(self) -> T:
        """Return this scope's value, making it with ``default_factory`` on first use."""
        scope = _current.get()
        # Fast path: an active scope without a deadline that already holds a value.
        if scope is not None and scope._fast is not None:
            data = scope._data
            if data is not None:
                try:  # a subscript, not .get(): the hit is the common case
                    value = data[self]
                except KeyError:
                    pass
                else:
                    if type(value) is not _Pending:
                        return value  # type: ignore[no-any-return]
        return self._resolve(current_scope())

    def set(self, value: T) -> None:
        """Set this scope's value (seen by the scope's tasks and threads)."""
        data, lock = current_scope()._storage()
        with lock:
            data[self] = value

    def __repr__(self) -> str:
        return f"<isolation.ContextLocal {self._name}>"


ContextLocal.__module__ = "isolation"
