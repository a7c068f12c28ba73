"""``shareable(obj)``: declare an object, or a type, that every user may share.

The shared-state walk neither enters nor compares a declared object, nor
anything reachable only through it. Declare what is shared on purpose and
read-only in practice: a connection pool, a compiled model, a settings object.

A declared object that supports weak references is remembered weakly; any
other (a ``dict``, a ``list``) is kept alive for the life of the process, so
declare long-lived objects, not per-request ones.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, TypeVar

__all__ = ["declared_shareable", "is_shareable_type", "shareable"]

T = TypeVar("T")

_lock = threading.Lock()
# id -> the object itself (not weak-referenceable) or a weak reference to it.
# Keeping the object (or a live weak reference) is what makes the id trustworthy.
_strong: dict[int, object] = {}
_weak: dict[int, weakref.ref[Any]] = {}
_types: set[type] = set()
# Bumped whenever _types changes, so per-walk caches of type decisions stay right.
_generation = [0]


def _forget(ref: weakref.ref[Any], key: int) -> None:
    # Called when a declared object dies: only drop the entry if it is still ours.
    if _weak.get(key) is ref:
        _weak.pop(key, None)


def shareable(obj: T) -> T:
    """Declare ``obj`` shareable between users; return it unchanged.

    The shared-state walk skips ``obj`` and everything reachable only through
    it. Given a type, it skips every instance of that type and its subclasses.
    Works as a class decorator too.

    Example::

        http = isolation.shareable(httpx.AsyncClient())  # one pool for everyone
    """
    with _lock:
        if isinstance(obj, type):
            _types.add(obj)
            _generation[0] += 1
            return obj
        key = id(obj)

        def forget(ref: weakref.ref[Any]) -> None:
            _forget(ref, key)

        try:
            ref = weakref.ref(obj, forget)
        except TypeError:
            _strong[key] = obj
        else:
            _weak[key] = ref
    return obj


def declared_shareable(obj: object) -> bool:
    """Whether ``obj`` itself was declared with :func:`shareable` (its type is not consulted)."""
    key = id(obj)
    if key in _strong:
        return _strong.get(key) is obj
    ref = _weak.get(key)
    return ref is not None and ref() is obj


def is_shareable_type(cls: type) -> bool:
    """Whether ``cls`` or one of its bases was declared with :func:`shareable`."""
    if not _types:
        return False
    return any(base in _types for base in cls.__mro__)


def generation() -> int:
    """A number that changes whenever a type is declared shareable."""
    return _generation[0]
