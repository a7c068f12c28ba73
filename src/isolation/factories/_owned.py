"""``@owned``: an instance may only be used inside the scope that built it.

Construction records the current scope as the owner (and is refused outside
any scope). Every public callable member then checks that the current scope
is the owner, or a scope nested in it of the same principal; otherwise it
raises :class:`~isolation.CrossContextAccessError`: another principal, no
scope, or an owner scope that has ended, **even for a later request of the
same user**. The common case costs one ContextVar read and an identity compare.

Guarded: plain functions (sync, async, generators and async generators,
checked at each resume), properties, cached properties (on every read, also
once cached: the guard is a data descriptor, consulted before the instance
dict), any other descriptor (``lru_cache``-wrapped methods,
``partialmethod``, class-based decorators, ``singledispatchmethod``: checked
when bound and when called), callable class attributes, attributes provided
by ``__getattr__`` or a custom ``__getattribute__``, and the protocol dunders
that hand out data (``__call__``, ``__await__``, ``__iter__``, ``__aiter__``,
``__getitem__``, ``__enter__``..., ``__format__``, ``__eq__`` and the other
comparisons; not ``__len__``, so that truth tests work anywhere, nor
``__hash__``, so that an instance stays a dict key anywhere).
Members added to the class (or a base) after decoration are guarded at the
next build. A class deriving from a built-in container
(``dict``, ``list``...) is refused: C code reads its items without calling
any method that could check.
"""

from __future__ import annotations

import functools
import inspect
import operator
import threading
import types
import typing
import weakref
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any, Final, TypeVar

from isolation._errors import CrossContextAccessError, NoContextError, UsageError
from isolation._redact import redact_principal
from isolation.context._interface import bound_scope, is_held, is_live
from isolation.context._scope import Scope, current_scope

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
        "__await__",
        "__getitem__",
        "__setitem__",
        "__delitem__",
        "__iter__",
        "__aiter__",
        "__next__",
        "__anext__",
        "__reversed__",
        "__enter__",
        "__aenter__",
        "__contains__",
        # Formatting and comparisons answer with (or about) the data: f"{agent}",
        # agent == [...]. Not __hash__, so that an instance stays a dict key anywhere.
        "__format__",
        "__bytes__",
        "__eq__",
        "__ne__",
        "__lt__",
        "__le__",
        "__gt__",
        "__ge__",
    }
)
# Hooks that provide attributes by name: guarded for public names.
_ATTRIBUTE_HOOKS: Final = frozenset({"__getattr__", "__getattribute__"})
# Per class: (each class of the MRO, its dict's size) and (dict, name, guard)
# at the last guarding, to notice members added or replaced since.
_FINGERPRINT: Final = "__isolation_owned_fingerprint__"

_guard_lock = threading.Lock()
_HEAPTYPE: Final = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by a class statement

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
    whose = redact_principal(owner.context.principal)
    if current is None:
        return CrossContextAccessError(f"this {what} of {whose} was used outside any scope")
    if is_live(owner) and not owner.active:
        return CrossContextAccessError(
            f"this {what} was built in a scope of {whose} that a generator holds across a "
            "yield, and was used outside that generator (its consumer, another task or "
            "thread, a later job)",
            hint="Use it inside the generator, or build it in the scope that uses it",
        )
    if not is_live(owner):
        if current.context.principal == owner.context.principal:
            return CrossContextAccessError(
                f"this {what} was built in an earlier request of {whose}, whose scope has "
                "ended: an instance never outlives its scope, even for the same user"
            )
        return CrossContextAccessError(
            f"this {what} was built in a scope of {whose} that has ended, and was used "
            f"by {redact_principal(current.context.principal)}"
        )
    if not is_live(current):
        return CrossContextAccessError(
            f"this {what} of {whose} was used from a copy of a scope that has ended"
        )
    if current.context.principal != owner.context.principal:
        return CrossContextAccessError(
            f"this {what} belongs to {whose} and was used by "
            f"{redact_principal(current.context.principal)}"
        )
    return CrossContextAccessError(
        f"this {what} belongs to another live scope of {whose} (another request, or a "
        "child scope), not to the current one or a scope it is nested in"
    )


def _check_slow(instance: object, current: Scope | None, owner: Scope | None) -> None:
    if (
        current is not None
        and owner is not None
        and is_live(owner)
        and is_live(current)
        # Not a scope a generator holds across a yield, seen from outside it.
        and owner.active
    ):
        # The owner, or a nested scope of the same principal: usually zero or one step up.
        scope: Scope | None = current
        while scope is not None:
            if scope is owner:
                return
            scope = scope.parent
    raise _refusal(instance, current, owner)


# The fast paths below pass an owner that is the current scope and readable without
# questions: a scope has ``_fast`` (no deadline) or ``_timed`` (a deadline) only while it
# is active and neither held across a yield nor bound over a held one (see Scope._bind).
# That is isolation.context._interface.is_plain, read inline here: a call would cost
# every guarded method call.


def _check_weak(instance: object) -> None:
    current = bound_scope()
    owner = owner_of(instance)
    if (
        current is owner
        and owner is not None
        and (owner._fast is not None or owner._timed is not None)
    ):
        return
    _check_slow(instance, current, owner)


def _check_attribute(instance: object) -> None:
    current = bound_scope()
    try:
        owner = instance.__isolation_owner__  # type: ignore[attr-defined]
    except AttributeError:
        owner = None
    if (
        current is owner
        and owner is not None
        and (owner._fast is not None or owner._timed is not None)
    ):
        return
    _check_slow(instance, current, owner)


def _checker(weak: bool) -> Callable[[object], None]:
    """The owner check for instances whose owner is in the weak map, or on the instance."""
    return _check_weak if weak else _check_attribute


def _guard_function(fn: Callable[..., Any], weak: bool) -> Callable[..., Any]:
    """Wrap a method so that each call (and each resume of what it returns) is checked."""
    check = _checker(weak)

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
        get_current = bound_scope

        def guarded(self: Any, /, *args: Any, **kwargs: Any) -> Any:
            # The common case: one ContextVar read and an identity compare (an
            # ended owner scope is never bound here: its state is checked too).
            current = get_current()
            try:
                owner = self.__isolation_owner__
            except AttributeError:
                owner = None
            if (
                current is owner
                and owner is not None
                and (owner._fast is not None or owner._timed is not None)
            ):
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


class _GuardedCall:
    """A callable handed out by a guarded descriptor or hook: checked at each call.

    Attribute reads go to the callable (``cache_info`` of an ``lru_cache``
    method, ``__name__``...), so it stands in for the bound method.
    """

    __slots__ = ("__isolation_call__", "_check", "_instance")

    def __init__(
        self, instance: object, call: Callable[..., Any], check: Callable[[object], None]
    ) -> None:
        self._instance = instance
        self._check = check
        self.__isolation_call__ = call

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        self._check(self._instance)
        return _guard_result(self._instance, self.__isolation_call__(*args, **kwargs), self._check)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__isolation_call__, name)

    def __repr__(self) -> str:
        return f"<owned {self.__isolation_call__!r}>"


def _guard_result(instance: object, result: Any, check: Callable[[object], None]) -> Any:
    """A generator or async generator from a guarded call, checked at each resume."""
    if isinstance(result, types.GeneratorType):
        return _guard_gen(instance, result, check)
    if isinstance(result, types.AsyncGeneratorType):
        return _guard_asyncgen(instance, result, check)
    return result


def _handed_out(instance: object, value: Any, check: Callable[[object], None]) -> Any:
    """What a guarded access returns: a callable is wrapped so its calls are checked too."""
    if callable(value) and not isinstance(value, (type, _GuardedCall)):
        return _GuardedCall(instance, value, check)
    return value


class _GuardedDescriptor:
    """Any descriptor or callable class attribute: checked when bound and when called."""

    __slots__ = ("__isolation_raw__", "_check", "_get")

    def __init__(self, raw: Any, check: Callable[[object], None]) -> None:
        self.__isolation_raw__ = raw
        self._check = check
        self._get = getattr(type(raw), "__get__", None)

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        raw = self.__isolation_raw__
        get = self._get
        if instance is None:
            return raw if get is None else get(raw, None, owner)
        self._check(instance)
        value = raw if get is None else get(raw, instance, owner)
        return _handed_out(instance, value, self._check)

    def __set_name__(self, owner: type, name: str) -> None:
        set_name = getattr(self.__isolation_raw__, "__set_name__", None)
        if set_name is not None:
            set_name(owner, name)


def _instance_dict(instance: object) -> dict[str, Any] | None:
    try:
        namespace = object.__getattribute__(instance, "__dict__")
    except AttributeError:
        return None
    return namespace if isinstance(namespace, dict) else None


class _GuardedNonDataDescriptor(_GuardedDescriptor):
    """A descriptor without ``__set__`` (``functools.cached_property``, a method
    decorator, any caching descriptor), or a callable class attribute.

    Guarded as a *data* descriptor, which Python consults before the instance
    dict: a value cached there under the member's name (what a cached property
    stores on its first read), or assigned there, is read through the check too.
    Reads, writes and deletes otherwise behave as they would without the guard.
    """

    __slots__ = ("_name",)

    def __init__(self, raw: Any, check: Callable[[object], None], name: str) -> None:
        super().__init__(raw, check)
        self._name = name

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return super().__get__(None, owner)
        self._check(instance)
        namespace = _instance_dict(instance)
        if namespace is not None and self._name in namespace:
            value = namespace[self._name]
        else:
            raw, get = self.__isolation_raw__, self._get
            value = raw if get is None else get(raw, instance, owner)
        return _handed_out(instance, value, self._check)

    def __set__(self, instance: object, value: Any) -> None:
        self._check(instance)
        namespace = _instance_dict(instance)
        if namespace is None:
            raise AttributeError(
                f"{type(instance).__qualname__!r} object attribute {self._name!r} is read-only"
            )
        namespace[self._name] = value

    def __delete__(self, instance: object) -> None:
        self._check(instance)
        namespace = _instance_dict(instance)
        if namespace is None or self._name not in namespace:
            raise AttributeError(self._name)
        del namespace[self._name]


class _GuardedDataDescriptor(_GuardedDescriptor):
    """A data descriptor (it has ``__set__`` or ``__delete__``): writes are checked too."""

    __slots__ = ()

    def __set__(self, instance: object, value: Any) -> None:
        self._check(instance)
        type(self.__isolation_raw__).__set__(self.__isolation_raw__, instance, value)

    def __delete__(self, instance: object) -> None:
        self._check(instance)
        type(self.__isolation_raw__).__delete__(self.__isolation_raw__, instance)


def _guard_hook(name: str, raw: Any, weak: bool) -> Callable[..., Any]:
    """Guard ``__getattr__`` or ``__getattribute__``: public names are checked.

    Private names (``_x``, dunders, the owner itself) pass unchecked: the check
    reads them, and so do copy, pickle and the walk.
    """
    check = _checker(weak)
    get = getattr(type(raw), "__get__", None)

    def hook(self: Any, attribute: str, /) -> Any:
        original = raw if get is None else get(raw, self, type(self))
        if attribute[:1] == "_":
            return original(attribute)
        check(self)
        return _handed_out(self, original(attribute), check)

    hook.__name__ = hook.__qualname__ = name
    setattr(hook, _GUARDED, True)
    return hook


# Not guarded: classes, static and class methods (they do not see the
# instance), and slots (data, like the attributes in an instance's __dict__).
_UNGUARDED_MEMBERS: Final = (
    type,
    staticmethod,
    classmethod,
    types.MemberDescriptorType,
    types.GetSetDescriptorType,
)


def _is_guarded(value: object) -> bool:
    return isinstance(value, _GuardedDescriptor) or getattr(value, _GUARDED, False) is True


def _guard_value(value: Any, weak: bool, name: str) -> Any:
    """The guarded form of class member ``name``, or None if it needs none (data,
    static, class)."""
    if _is_guarded(value) or isinstance(value, _UNGUARDED_MEMBERS):
        return None
    if isinstance(value, types.FunctionType):
        return _guard_function(value, weak)
    if type(value) is property:
        if value.fget is not None and getattr(value.fget, _GUARDED, False):
            return None
        return _guard_property(value, weak)
    kind = type(value)
    if hasattr(kind, "__set__") or hasattr(kind, "__delete__"):
        return _GuardedDataDescriptor(value, _checker(weak))
    if hasattr(kind, "__get__") or callable(value):
        return _GuardedNonDataDescriptor(value, _checker(weak), name)
    return None


def _refuse_unguardable(cls: type) -> None:
    """Refuse a class whose data C code reads without calling anything (a built-in base)."""
    for klass in cls.__mro__:
        if klass is object or klass is typing.Generic or klass.__flags__ & _HEAPTYPE:
            continue
        raise UsageError(
            f"@owned cannot guard {cls.__qualname__}: it derives from {klass.__qualname__}, "
            "whose data C code reads without calling any method (json.dumps, dict(), "
            "iteration in C) that could check the owner",
            hint=f"Hold the {klass.__qualname__} in an attribute of a plain class instead",
        )


def _unchanged(cls: type) -> bool:
    """Whether ``cls`` was guarded and no member was added or replaced since (in a base too).

    Run at each build: the sizes of the MRO's dicts, then the guarded names'
    current values (one ``itemgetter`` call per class dict holding guards).
    """
    # Read through the class (a type-cache hit), then made sure it is cls's own.
    fingerprint = getattr(cls, _FINGERPRINT, None)
    if fingerprint is None or fingerprint[0] is not cls:
        return False
    _, sizes, checks = fingerprint
    for namespace, size in sizes:
        if len(namespace) != size:
            return False
    try:
        for namespace, values_of, guards in checks:
            if values_of(namespace) != guards:
                return False
    except KeyError:  # a guarded member was deleted
        return False
    return True


def _fingerprint(cls: type, guards: list[tuple[Any, str, Any]]) -> tuple[Any, ...]:
    """What :func:`_unchanged` compares: ``(cls, dict sizes, guards per dict)``."""
    sizes = tuple(
        (klass.__dict__, len(klass.__dict__))
        for klass in cls.__mro__
        if klass is not object and klass.__module__ != "builtins"
    )
    by_namespace: dict[int, tuple[Any, list[str], list[Any]]] = {}
    for namespace, name, guard in guards:
        entry = by_namespace.setdefault(id(namespace), (namespace, [], []))
        entry[1].append(name)
        entry[2].append(guard)
    checks = tuple(
        # Two names at least, so that itemgetter always returns a tuple.
        (namespace, operator.itemgetter(*names, *names[:1]), (*values, *values[:1]))
        for namespace, names, values in by_namespace.values()
    )
    return cls, sizes, checks


def _cached_slots(cls: type) -> frozenset[str]:
    """The slots in which attrs keeps a slotted class's cached properties.

    ``@attrs.define`` turns each ``functools.cached_property`` into a slot and a
    generated ``__getattr__`` that computes the value into the slot on its first
    read; later reads hit the slot. Those slots are guarded like the cached
    properties they replace (other slots are data and are not).
    """
    for klass in cls.__mro__:
        hook = klass.__dict__.get("__getattr__")
        if not isinstance(hook, types.FunctionType):
            continue
        code = hook.__code__
        names = code.co_varnames[: code.co_argcount]
        defaults = hook.__defaults__ or ()
        if "cached_properties" in names and defaults:
            index = names.index("cached_properties") - (len(names) - len(defaults))
            if 0 <= index < len(defaults) and isinstance(defaults[index], dict):
                return frozenset(name for name in defaults[index] if isinstance(name, str))
    return frozenset()


def _guard_members(cls: type, weak: bool) -> list[tuple[Any, str, Any]]:
    """Guard every public callable member of ``cls`` and its bases; ``(namespace, name,
    guard)`` of each, so that a replacement is noticed."""
    seen: set[str] = set()
    guards: list[tuple[Any, str, Any]] = []
    cached_slots = _cached_slots(cls)
    for klass in cls.__mro__:
        if klass is object or klass.__module__ == "builtins":
            continue
        for name, value in list(klass.__dict__.items()):
            if name in seen:
                continue
            seen.add(name)
            guarded: Any
            if name in _ATTRIBUTE_HOOKS:
                guarded = None if _is_guarded(value) else _guard_hook(name, value, weak)
            elif name.startswith("_") and name not in _GUARDED_DUNDERS:
                continue
            elif name in cached_slots and isinstance(value, types.MemberDescriptorType):
                guarded = _GuardedDataDescriptor(value, _checker(weak))
            else:
                guarded = _guard_value(value, weak, name)
            if guarded is not None:
                setattr(cls, name, guarded)
                guards.append((cls.__dict__, name, guarded))
            elif _is_guarded(value):
                guards.append((klass.__dict__, name, value))
    return guards


def _guard_class(cls: type) -> None:
    """Guard ``cls``'s members: at decoration, at a subclass's first build, and again at
    the next build after a member was added to or replaced in ``cls`` or a base."""
    with _guard_lock:
        if _unchanged(cls):
            return
        _refuse_unguardable(cls)
        weak = _storage_of(cls)
        type.__setattr__(cls, _MARK, weak)
        type.__setattr__(cls, _FINGERPRINT, None)  # the entry exists before sizes are taken
        guards = _guard_members(cls, weak)
        type.__setattr__(cls, _FINGERPRINT, _fingerprint(cls, guards))


def owned(cls: C) -> C:
    """Make instances of ``cls`` usable only inside the scope that built them.

    Construction records the current scope as the owner; outside any scope it
    raises :class:`~isolation.NoContextError`. Every public callable member
    (methods of any kind, properties, any descriptor, what ``__getattr__``
    provides, cached properties on every read) and the protocol dunders
    (``__call__``, ``__await__``, iteration, items, context managers,
    ``__format__``, comparisons) then raise
    :class:`~isolation.CrossContextAccessError` unless the current scope is
    the owner or nested in it (same principal). A subclass is guarded too, and
    members added later from the next build on. Put ``@owned`` outermost,
    above ``@attrs.define`` or ``@dataclass``.

    Raises:
        UsageError: ``cls`` is not a class, its instances can hold no owner, or
            it derives from a built-in container (``dict``, ``list``...).
    """
    if not isinstance(cls, type):
        raise UsageError(f"@owned decorates a class, got {type(cls).__name__}")
    _guard_class(cls)
    if _NEW_INSTALLED in cls.__dict__:  # decorated twice: once is enough
        return cls
    original_new: Any = cls.__new__

    def __new__(klass: type, /, *args: Any, **kwargs: Any) -> Any:  # noqa: N807
        current = bound_scope()
        if current is not None and is_held(current):
            current = current_scope()  # held across a yield: refused, or the scope seen here
        if current is None or not is_live(current):
            raise NoContextError(
                f"an @owned {klass.__qualname__} can only be built inside a scope",
                hint="Build it inside `with isolation.scope(ctx):`, where it is used",
            )
        if not _unchanged(klass):
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
