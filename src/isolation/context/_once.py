"""Build once per scope: the one implementation of failure mode 7's guarantee.

A value stored in a scope (a ``ContextLocal``'s default, a ``@request_scoped``
instance, a Registry's ``REQUEST`` or ``CONNECTION`` product) is built by
**exactly one caller per scope**, whoever asks at the same moment: threads,
tasks of one event loop, tasks of other threads' event loops, sync and async
callers alike. The first caller puts a :class:`~isolation.context._scope._Pending`
marker in the scope's storage (``dict.setdefault`` is atomic) and builds; the
others wait for it and then read what it stored, or, if the build failed,
race again to build it themselves.

Waiting, by where the waiter runs:

* another thread, sync: a :class:`threading.Event`, made on demand;
* another thread, async (its own event loop): the same threading event,
  waited for in a worker thread (an anyio event wakes only its own loop);
* the builder's thread, another task: an :class:`anyio.Event`;
* the builder itself (the build asks for its own value): refused with
  :class:`UsageError`, never a deadlock.

The builder takes no lock: it stores its value, then wakes the waiters whose
events it finds; a waiter puts its event on the marker, then reads the storage
again (see :func:`_wait_event`), so none misses its wake-up. The scope's lock
is taken only by waiters and failed builds, never across a build or an await
(a ``ContextLocal.set()`` racing with the first build may be overwritten by
it, as by any other racing write). The build runs **as the scope that owns
the value** (bound as the current scope), so ``@owned`` instances it makes
record the right owner; a build that ends after its scope has ended is not
stored, and raises :class:`ScopeEndedError`.

``event_factory`` (the model is dishka's ``lock_factory=``) makes the
threading events other threads wait on: a check that must know when every
other caller is waiting (failure mode 7's, in the report) injects an event
that notes its waiters.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import anyio
import anyio.to_thread

from isolation._errors import UsageError
from isolation.context._scope import (
    _ACTIVE,
    Scope,
    _current,
    _ended,
    _Pending,
    _task_key,
    current_scope,
)

__all__ = ["EventFactory", "ain_current", "aonce", "in_current", "once"]

T = TypeVar("T")

EventFactory = Callable[[], threading.Event]
"""Makes the event that callers in other threads wait on (``threading.Event``)."""

_MISSING: Final = object()
_get_ident = threading.get_ident


def _recursion(name: str) -> UsageError:
    return UsageError(
        f"{name} called itself (directly or through another factory) while it was "
        "being built in this scope",
        hint="Break the cycle between the factories",
    )


def _wait_event(
    scope: Scope,
    data: dict[object, Any],
    key: object,
    other: _Pending,
    here: bool,
    event_factory: EventFactory | None,
) -> anyio.Event | threading.Event | None:
    """The event to wait on for ``other``'s build, or ``None`` if it is over already.

    The event is put on ``other`` first, then the storage is read again: the
    builder stores its value first, then reads the events (:meth:`_Pending.wake`),
    so either it sees this event or this reads its value. The scope's lock only
    keeps two waiters from making two events.
    """
    lock = scope._lock
    assert lock is not None
    with lock:
        if here:
            done: anyio.Event | threading.Event | None = other.done
            if done is None:
                done = other.done = anyio.Event()
        else:
            done = other.done_elsewhere
            if done is None:
                make = threading.Event if event_factory is None else event_factory
                done = other.done_elsewhere = make()
    return done if data.get(key) is other else None


def _abandon(scope: Scope, data: dict[object, Any], key: object, pending: _Pending) -> None:
    """Drop a failed build's marker, so that a waiter may build; wake the waiters."""
    lock = scope._lock
    assert lock is not None
    with lock:
        if data.get(key) is pending:
            del data[key]
    pending.wake()


def _refuse_ended(scope: Scope, data: dict[object, Any], key: object, pending: _Pending) -> None:
    _abandon(scope, data, key, pending)
    raise _ended(scope)


def _store(scope: Scope, data: dict[object, Any], key: object, pending: _Pending, value: T) -> T:
    """Keep a finished build's ``value`` for the scope and wake its waiters; a scope
    that ended during the build gets nothing stored (``ScopeEndedError``)."""
    if scope._state != _ACTIVE:
        _refuse_ended(scope, data, key, pending)
    data[key] = value
    if pending.done is not None or pending.done_elsewhere is not None:
        pending.wake()
    return value


def once(
    key: object,
    build: Callable[[Scope], T],
    *,
    name: str,
    event_factory: EventFactory | None = None,
) -> Callable[[Scope], T]:
    """A resolver of ``key`` in a given scope: the stored value, built by ``build(scope)`` once.

    For sync callers. ``build`` may register the value's finalizer on the scope
    (:func:`isolation.context._interface.add_finalizer`); it runs with the scope
    bound. ``name`` names the value in errors.
    """

    def resolve(scope: Scope) -> T:
        data = scope._data
        if data is None:  # made with the scope's lock, which is never dropped
            data = scope._storage()[0]
        value = data.get(key, _MISSING)
        if value is not _MISSING and type(value) is not _Pending:
            return value  # type: ignore[no-any-return]
        pending = _Pending()
        pending.thread = _get_ident()
        value = data.setdefault(key, pending)
        while value is not pending:
            if type(value) is not _Pending:
                return value  # type: ignore[no-any-return]
            if value.thread == _get_ident():
                # A sync build never yields to another task of its thread: this is it.
                raise _recursion(name)
            done = _wait_event(scope, data, key, value, False, event_factory)
            if done is not None:
                done.wait()
            value = data.setdefault(key, pending)
        token = _current.set(scope) if _current.get() is not scope else None
        try:
            value = build(scope)
        except BaseException:
            _abandon(scope, data, key, pending)
            raise
        finally:
            if token is not None:
                _current.reset(token)
        return _store(scope, data, key, pending, value)

    return resolve


def aonce(
    key: object,
    build: Callable[[Scope], Awaitable[T]],
    *,
    name: str,
    event_factory: EventFactory | None = None,
) -> Callable[[Scope], Awaitable[T]]:
    """The async twin of :func:`once`: ``await resolve(scope)``; ``build`` is awaited."""

    async def aresolve(scope: Scope) -> T:
        data = scope._data
        if data is None:  # made with the scope's lock, which is never dropped
            data = scope._storage()[0]
        value = data.get(key, _MISSING)
        if value is not _MISSING and type(value) is not _Pending:
            return value  # type: ignore[no-any-return]
        me = _task_key()
        pending = _Pending()
        pending.thread, pending.task = me
        value = data.setdefault(key, pending)
        while value is not pending:
            if type(value) is not _Pending:
                return value  # type: ignore[no-any-return]
            here = value.thread == me[0]
            if here and (value.task is None or value.task is pending.task):
                raise _recursion(name)
            done = _wait_event(scope, data, key, value, here, event_factory)
            if isinstance(done, anyio.Event):
                await done.wait()
            elif done is not None:
                await anyio.to_thread.run_sync(done.wait, abandon_on_cancel=True)
            value = data.setdefault(key, pending)
        token = _current.set(scope) if _current.get() is not scope else None
        try:
            value = await build(scope)
        except BaseException:
            _abandon(scope, data, key, pending)
            raise
        finally:
            if token is not None:
                _current.reset(token)
        return _store(scope, data, key, pending, value)

    return aresolve


def in_current(key: object, resolve: Callable[[Scope], T]) -> Callable[[], T]:
    """``resolve`` in the current scope, with the stored value read in one dict lookup.

    Raises what :func:`~isolation.context._scope.current_scope` raises when no
    scope, or no usable one, is bound here.
    """

    def get() -> T:
        scope = _current.get()
        if scope is not None and scope._fast is not None:
            data = scope._data
            if data is not None:
                try:  # a subscript, not .get(): the hit is the common case
                    value = data[key]
                except KeyError:
                    pass
                else:
                    if type(value) is not _Pending:
                        return value  # type: ignore[no-any-return]
        return resolve(current_scope())

    return get


def ain_current(
    key: object, resolve: Callable[[Scope], Awaitable[T]]
) -> Callable[[], Awaitable[T]]:
    """The async twin of :func:`in_current`."""

    async def aget() -> T:
        scope = _current.get()
        if scope is not None and scope._fast is not None:
            data = scope._data
            if data is not None:
                try:  # a subscript, not .get(): the hit is the common case
                    value = data[key]
                except KeyError:
                    pass
                else:
                    if type(value) is not _Pending:
                        return value  # type: ignore[no-any-return]
        return await resolve(current_scope())

    return aget
