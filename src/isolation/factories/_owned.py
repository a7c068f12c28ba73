"""``@owned``: an instance may only be used inside the scope that built it.

Construction records the current scope as the owner (and is refused outside
any scope). Every public method (sync, async, generator, async generator),
property and ``__call__`` then checks that the current scope is the owner, or
a scope nested in it of the same principal; otherwise it raises
:class:`~isolation.CrossContextAccessError`: another principal, no scope, or
an owner scope that has ended, **even for a later request of the same user**.
The common case costs one ContextVar read and an identity compare.
"""

from __future__ import annotations

import functools
import inspect
import threading
import types
import weakref
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any, Final, TypeVar

from isolation._errors import CrossContextAccessError, NoContextError, UsageError
from isolation._redact import redact_principal
from isolation.context._scope import _ACTIVE, Scope, _current

__all__ = ["OWNER_ATTRIBUTE", "owned", "owner_of"]

C = TypeVar("C", bound=type)

OWNER_ATTRIBUTE: Final = "__isolation_owner__"
_MARK: Final = "__isolation_owned__"
_GUARDED: Final = "__isolation_guarded__"
_NEW_INSTALLED: Final = "__isolation_new_installed__"

# Dunder methods that hand out or change an instance's data: guarded like public methods.
_GUARDED_DUNDERS: Final = frozenset(
    {
        "__call__",
        "__getitem__",
        "__setitem__",
        "__delitem__",
        "__iter__",
        "__aiter__",
        "__next__",
        "__anext__",
        "__enter__",
        "__aenter__",
        "__contains__",
    }
)

_guard_lock = threading.Lock()

# Owners of instances that have neither a __dict__ nor a slot for the owner:
# id -> (weak reference to the instance, weak reference to its scope).
_weak_owners: dict[int, tuple[weakref.ref[Any], weakref.ref[Scope]]] = {}


def owner_of(instance: object) -> Scope | None:
    """The scope that owns ``instance``, or ``None`` (not ``@owned``, or its owner is gone)."""
    try:
        owner = object.__getattribute__(instance, OWNER_ATTRIBUTE)
    except AttributeError:
        entry = _weak_owners.get(id(instance))
        if entry is None or entry[0]() is not instance:
            return None
        return entry[1]()
    return owner if isinstance(owner, Scope) else None


def _set_owner(instance: object, scope: Scope, weak: bool) -> None:
    if not weak:
        object.__setattr__(instance, OWNER_ATTRIBUTE, scope)
        return
    key = id(instance)

    def forget(ref: weakref.ref[Any]) -> None:
        entry = _weak_owners.get(key)
        if entry is not None and entry[0] is ref:
            _weak_owners.pop(key, None)

    _weak_owners[key] = (weakref.ref(instance, forget), weakref.ref(scope))


def _refusal(
    instance: object, current: Scope | None, owner: Scope | None
) -> CrossContextAccessError:
    what = type(instance).__qualname__
    if owner is None:
        return CrossContextAccessError(
            f"this {what} has no owner scope: it was not built by its @owned constructor "
            "inside a scope"
        )
    whose = redact_principal(owner._ctx.principal)
    if current is None:
        return CrossContextAccessError(f"this {what} of {whose} was used outside any scope")
    if owner._state != _ACTIVE:
        if current._ctx.principal == owner._ctx.principal:
            return CrossContextAccessError(
                f"this {what} was built in an earlier request of {whose}, whose scope has "
                "ended: an instance never outlives its scope, even for the same user"
            )
        return CrossContextAccessError(
            f"this {what} was built in a scope of {whose} that has ended, and was used "
            f"by {redact_principal(current._ctx.principal)}"
        )
    if current._state != _ACTIVE:
        return CrossContextAccessError(
            f"this {what} of {whose} was used from a copy of a scope that has ended"
        )
    if current._ctx.principal != owner._ctx.principal:
        return CrossContextAccessError(
            f"this {what} belongs to {whose} and was used by "
            f"{redact_principal(current._ctx.principal)}"
        )
    return CrossContextAccessError(
        f"this {what} belongs to another live scope of {whose} (another request, or a "
        "child scope), not to the current one or a scope it is nested in"
    )


def _check_slow(instance: object, current: Scope | None, owner: Scope | None) -> None:
    if (
        current is not None
        and owner is not None
        and owner._state == _ACTIVE
        and current._state == _ACTIVE
    ):
        # A nested scope of the same principal: usually zero or one step up.
        scope = current._parent
        while scope is not None:
            if scope is owner:
                return
            scope = scope._parent
    raise _refusal(instance, current, owner)


def _check_weak(instance: object) -> None:
    current = _current.get()
    owner = owner_of(instance)
    if current is owner and owner is not None and owner._state == _ACTIVE:
        return
    _check_slow(instance, current, owner)


def _guard_function(fn: Callable[..., Any], weak: bool) -> Callable[..., Any]:
    """Wrap a method so that each call (and each resume of what it returns) is checked."""
    if weak:
        check = _check_weak
    else:

        def check(instance: object) -> None:
            current = _current.get()
            try:
                owner = instance.__isolation_owner__  # type: ignore[attr-defined]
            except AttributeError:
                owner = None
            if current is owner and owner is not None and owner._state == _ACTIVE:
                return
            _check_slow(instance, current, owner)

    wrapper: Callable[..., Any]
    if inspect.iscoroutinefunction(fn):

        async def guarded_async(self: Any, /, *args: Any, **kwargs: Any) -> Any:
            check(self)
            return await fn(self, *args, **kwargs)

        wrapper = guarded_async
    elif inspect.isasyncgenfunction(fn):

        def guarded_asyncgen(self: Any, /, *args: Any, **kwargs: Any) -> Any:
            check(self)
            return _guard_asyncgen(self, fn(self, *args, **kwargs), check)

        wrapper = guarded_asyncgen
    elif inspect.isgeneratorfunction(fn):

        def guarded_gen(self: Any, /, *args: Any, **kwargs: Any) -> Any:
            check(self)
            return _guard_gen(self, fn(self, *args, **kwargs), check)

        wrapper = guarded_gen
    else:
        get_current = _current.get
        active = _ACTIVE

        def guarded(self: Any, /, *args: Any, **kwargs: Any) -> Any:
            # The common case: one ContextVar read and an identity compare (an
            # ended owner scope is never bound here: its state is checked too).
            current = get_current()
            try:
                owner = self.__isolation_owner__
            except AttributeError:
                owner = None
            if current is owner and owner is not None and owner._state == active:
                return fn(self, *args, **kwargs)
            check(self)
            return fn(self, *args, **kwargs)

        wrapper = guarded if not weak else _plain_guard(fn, check)
    functools.update_wrapper(wrapper, fn)
    setattr(wrapper, _GUARDED, True)
    return wrapper


def _plain_guard(fn: Callable[..., Any], check: Callable[[object], None]) -> Callable[..., Any]:
    def guarded_weak(self: Any, /, *args: Any, **kwargs: Any) -> Any:
        check(self)
        return fn(self, *args, **kwargs)

    return guarded_weak


def _guard_gen(
    instance: object, gen: Generator[Any, Any, Any], check: Callable[[object], None]
) -> Generator[Any, Any, Any]:
    """Delegate to ``gen``, checking the owner before each resume."""
    try:
        check(instance)
        value = next(gen)
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                gen.close()
                raise
            except BaseException as exc:
                check(instance)
                value = gen.throw(exc)
            else:
                check(instance)
                value = gen.send(sent)
    except StopIteration as stop:
        return stop.value
    finally:
        gen.close()


async def _guard_asyncgen(
    instance: object, agen: AsyncGenerator[Any, Any], check: Callable[[object], None]
) -> AsyncGenerator[Any, Any]:
    """Delegate to ``agen``, checking the owner before each resume."""
    try:
        check(instance)
        value = await agen.__anext__()
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                await agen.aclose()
                raise
            except BaseException as exc:
                check(instance)
                value = await agen.athrow(exc)
            else:
                check(instance)
                value = await agen.asend(sent)
    except StopAsyncIteration:
        return
    finally:
        await agen.aclose()


def _guard_property(prop: property, weak: bool) -> property:
    def wrap(fn: Callable[..., Any] | None) -> Callable[..., Any] | None:
        return None if fn is None else _guard_function(fn, weak)

    return property(wrap(prop.fget), wrap(prop.fset), wrap(prop.fdel), prop.__doc__)


def _storage_of(cls: type) -> bool:
    """Whether owners of ``cls``'s instances go in the weak map (else on the instance)."""
    if cls.__dictoffset__ != 0:
        return False
    for klass in cls.__mro__:
        if isinstance(klass.__dict__.get(OWNER_ATTRIBUTE), types.MemberDescriptorType):
            return False
    if cls.__weakrefoffset__ != 0:
        return True
    raise UsageError(
        f"@owned cannot record the owner of {cls.__qualname__} instances: they have "
        "neither a __dict__ nor weak-reference support",
        hint=f"Add {OWNER_ATTRIBUTE!r} (or '__weakref__') to its __slots__",
    )


def _guard_members(cls: type, weak: bool) -> None:
    seen: set[str] = set()
    for klass in cls.__mro__:
        if klass is object or klass.__module__ == "builtins":
            continue
        for name, value in list(klass.__dict__.items()):
            if name in seen:
                continue
            seen.add(name)
            if name.startswith("_") and name not in _GUARDED_DUNDERS:
                continue
            if isinstance(value, types.FunctionType):
                if getattr(value, _GUARDED, False):
                    continue
                setattr(cls, name, _guard_function(value, weak))
            elif isinstance(value, property):
                if value.fget is not None and getattr(value.fget, _GUARDED, False):
                    continue
                setattr(cls, name, _guard_property(value, weak))
            elif isinstance(value, functools.cached_property):
                if getattr(value.func, _GUARDED, False):
                    continue
                guarded = functools.cached_property(_guard_function(value.func, weak))
                guarded.__set_name__(cls, name)
                setattr(cls, name, guarded)


def _guard_class(cls: type) -> None:
    """Guard ``cls``'s members; a subclass of an @owned class is guarded at its first build."""
    with _guard_lock:
        if _MARK in cls.__dict__:
            return
        weak = _storage_of(cls)
        _guard_members(cls, weak)
        setattr(cls, _MARK, weak)


def owned(cls: C) -> C:
    """Make instances of ``cls`` usable only inside the scope that built them.

    Construction records the current scope as the owner; outside any scope it
    raises :class:`~isolation.NoContextError`. Public methods (sync, async,
    generators), properties and ``__call__`` (and the container and context
    manager dunders) then raise :class:`~isolation.CrossContextAccessError`
    unless the current scope is the owner or nested in it (same principal).
    A subclass is guarded too. Put ``@owned`` outermost, above ``@attrs.define``
    or ``@dataclass``.

    Raises:
        UsageError: ``cls`` is not a class, or its instances can hold no owner.
    """
    if not isinstance(cls, type):
        raise UsageError(f"@owned decorates a class, got {type(cls).__name__}")
    _guard_class(cls)
    if _NEW_INSTALLED in cls.__dict__:  # decorated twice: once is enough
        return cls
    original_new: Any = cls.__new__

    def __new__(klass: type, /, *args: Any, **kwargs: Any) -> Any:  # noqa: N807
        current = _current.get()
        if current is None or current._state != _ACTIVE:
            raise NoContextError(
                f"an @owned {klass.__qualname__} can only be built inside a scope",
                hint="Build it inside `with isolation.scope(ctx):`, where it is used",
            )
        if _MARK not in klass.__dict__:
            _guard_class(klass)
        instance: Any
        if original_new is object.__new__:
            instance = object.__new__(klass)
        else:
            instance = original_new(klass, *args, **kwargs)
        _set_owner(instance, current, klass.__dict__[_MARK])
        return instance

    cls.__new__ = staticmethod(__new__)  # type: ignore[method-assign]
    setattr(cls, _NEW_INSTALLED, True)
    return cls
