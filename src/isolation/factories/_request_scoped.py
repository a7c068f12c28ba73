"""``@request_scoped``: one instance per scope, built exactly once, refused if it shares state.

The wrapped factory keeps its name and call sites: ``make_engine()`` (or
``await make_engine()``) returns the instance built for the current scope. The
instance lives in the scope's storage, so it dies with the scope; the first
call in a scope builds it through the context core's "build once" primitive
(:mod:`isolation.context._once`), so concurrent callers of one scope (threads,
tasks, other threads' event loops) all get the one instance and the factory
runs once. A new instance is walked
(:mod:`isolation.factories._graph`) and compared with the live instances of
other principals (:mod:`isolation.factories._index`) before anyone sees it.
"""

from __future__ import annotations

import functools
import inspect
import typing
import warnings
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, Generic, Literal, ParamSpec, Protocol, TypeVar, overload

from isolation._errors import ConfigurationError, ScopeEndedError, SharedStateError, UsageError
from isolation._redact import redact_principal
from isolation.context._interface import EventFactory, ain_current, aonce, in_current, once
from isolation.context._model import UserContext
from isolation.context._scope import Scope, _ended, current_scope
from isolation.factories._graph import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_OBJECTS,
    WalkResult,
    WalkTruncatedWarning,
    render_path,
    walk,
)
from isolation.factories._index import Conflict, ScopeRecord, SharedStateIndex, default_index
from isolation.factories._sampling import schedule_for

__all__ = [
    "CheckMode",
    "ScopedFactory",
    "check_shared_state",
    "request_scoped",
    "scoped_factory_of",
    "shared_state_error",
    "wrap_scoped",
]

P = ParamSpec("P")
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

CheckMode = Literal["full", "sampled", "off"]
"""How builds are checked for shared state: every build, one in ``sample_every``, or none."""

_CHECKS: Final = ("full", "sampled", "off")
DEFAULT_SAMPLE_EVERY: Final = 100


class _Decorator(Protocol):
    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, T]], /
    ) -> Callable[[], Awaitable[T]]: ...
    @overload
    def __call__(self, fn: Callable[P, T], /) -> Callable[[], T]: ...


# -- the factory's signature --------------------------------------------------------


def _is_user_context(annotation: object) -> bool:
    if annotation is UserContext:
        return True
    if isinstance(annotation, str):
        return annotation.rsplit(".", 1)[-1].strip("'\" ") == "UserContext"
    return False


def _injection(fn: Callable[..., Any], name: str) -> tuple[str, bool] | None:
    """Which parameter takes the context: ``(name, positional_only)``, or ``None``.

    Raises:
        UsageError: a required parameter other than one annotated ``UserContext``.
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have none: called with no argument
        return None
    target: Any = fn.__init__ if isinstance(fn, type) else fn  # type: ignore[misc]
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable forward references: fall back to the raw annotations
        hints = {}
    found: tuple[str, bool] | None = None
    for parameter in signature.parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if parameter.default is not parameter.empty:
            continue
        annotation = hints.get(parameter.name, parameter.annotation)
        if not _is_user_context(annotation):
            raise UsageError(
                f"@request_scoped cannot call {name}: its parameter {parameter.name!r} is "
                "required and is not annotated UserContext",
                hint=(
                    "Give it a default, or annotate it `isolation.UserContext` to receive "
                    "the scope's context; other inputs come from the scope, not the caller"
                ),
            )
        if found is not None:
            raise UsageError(
                f"@request_scoped cannot call {name}: both {found[0]!r} and "
                f"{parameter.name!r} ask for the UserContext",
                hint="Take the context in one parameter",
            )
        found = (parameter.name, parameter.kind == parameter.POSITIONAL_ONLY)
    return found


def _is_async(fn: Callable[..., Any]) -> bool:
    if isinstance(fn, type):
        return False
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with `async def __call__`
    )


# -- the wrapper --------------------------------------------------------------------------


class ScopedFactory(Generic[T_co]):
    """The state behind one ``@request_scoped`` factory (what ``audit`` and a registry use).

    Args:
        fn: The factory: a function or class, sync or async.
        check: ``"full"``, ``"sampled"`` or ``"off"``.
        sample_every: With ``"sampled"``, one build in this many is walked.
        max_depth: The walk's depth bound, in edges.
        max_objects: The walk's bound on objects visited.
        index: The index of live scopes' objects to compare and register with.
        warn_truncated: Warn (:class:`WalkTruncatedWarning`) when a walk is truncated.
        event_factory: Makes the :class:`threading.Event` a caller in another
            thread waits on while the instance is built (``threading.Event``):
            a test's hook to see the waiters, as dishka's ``lock_factory=``.
    """

    __slots__ = (
        "__weakref__",
        "_inject",
        "_resolve",
        "_schedule",
        "check",
        "fn",
        "index",
        "is_async",
        "max_depth",
        "max_objects",
        "name",
        "sample_every",
        "warn_truncated",
    )

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        check: CheckMode = "full",
        sample_every: int = DEFAULT_SAMPLE_EVERY,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_objects: int = DEFAULT_MAX_OBJECTS,
        index: SharedStateIndex | None = None,
        warn_truncated: bool = True,
        event_factory: EventFactory | None = None,
    ) -> None:
        if not callable(fn):
            raise UsageError(
                f"@request_scoped wraps a function or a class, got {type(fn).__name__}"
            )
        _check_options(check, sample_every, max_depth, max_objects)
        self.fn = fn
        self.name: str = getattr(fn, "__qualname__", None) or type(fn).__qualname__
        self.is_async = _is_async(fn)
        self._inject = _injection(fn, self.name)
        self.check = check
        self.sample_every = sample_every
        self.max_depth = max_depth
        self.max_objects = max_objects
        self.index = default_index() if index is None else index
        self.warn_truncated = warn_truncated
        # Sampled: each build walked with chance 1/sample_every, from this factory's
        # own generator, so that no order of users lines up with the walked builds.
        self._schedule = schedule_for(sample_every, self.name)
        # Built once per scope by the context core, keyed by this factory.
        self._resolve: Callable[[Scope], Any] = (
            aonce(self, self._abuild, name=self.name, event_factory=event_factory)
            if self.is_async
            else once(self, self._build, name=self.name, event_factory=event_factory)
        )

    def __repr__(self) -> str:
        return f"<isolation.request_scoped {self.name} check={self.check!r}>"

    def get(self) -> Any:
        """Return the current scope's instance, building it once (sync factories)."""
        return self._resolve(current_scope())

    async def aget(self) -> Any:
        """Return the current scope's instance, building it once (async factories)."""
        return await self._resolve(current_scope())

    def _build(self, scope: Scope) -> Any:
        instance = self._call(scope.context)
        self._register(scope, instance)
        return instance

    async def _abuild(self, scope: Scope) -> Any:
        instance = await self._call(scope.context)
        self._register(scope, instance)
        return instance

    # -- building and checking ------------------------------------------------------

    def _call(self, ctx: UserContext) -> Any:
        inject = self._inject
        if inject is None:
            return self.fn()
        name, positional = inject
        if positional:
            return self.fn(ctx)
        return self.fn(**{name: ctx})

    def _register(self, scope: Scope, instance: object) -> None:
        check = self.check
        if check == "off":
            return
        if check == "sampled" and not self._schedule.due():
            return
        check_shared_state(
            scope,
            instance,
            name=self.name,
            index=self.index,
            max_depth=self.max_depth,
            max_objects=self.max_objects,
            warn_truncated=self.warn_truncated,
        )


def check_shared_state(
    scope: Scope,
    instance: object,
    *,
    name: str,
    index: SharedStateIndex,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_objects: int = DEFAULT_MAX_OBJECTS,
    warn_truncated: bool = True,
) -> WalkResult:
    """Walk ``instance``, built for ``scope`` by ``name``; refuse it or register it in ``index``.

    The step every scoped build goes through (``@request_scoped`` and a
    registry alike): the walk, then one atomic compare-and-register against the
    live instances of other principals. The scope keeps the walk (strong
    references) until it ends; then its entries leave the index.

    Raises:
        SharedStateError: an object of the walk is reachable from another
            principal's live instance; nothing was registered.
        ScopeEndedError: ``scope`` has ended.
    """
    result = walk(instance, max_depth=max_depth, max_objects=max_objects)
    if result.truncated is not None and warn_truncated:
        warnings.warn(
            WalkTruncatedWarning(
                f"the shared-state walk of the {type(instance).__name__} built by {name} "
                f"stopped at {result.truncated}, after {result.visited} objects: what lies "
                "beyond is not compared with other users' instances. Raise max_depth or "
                "max_objects, or declare large read-only parts with isolation.shareable()"
            ),
            stacklevel=5,
        )
    record: ScopeRecord = once(index, functools.partial(_new_record, index), name=name)(scope)
    try:
        conflict = index.add(record, result, name)
    except ScopeEndedError:
        raise _ended(scope) from None
    if conflict is not None:
        raise shared_state_error(conflict)
    return result


def _new_record(index: SharedStateIndex, scope: Scope) -> ScopeRecord:
    """The scope's record in ``index`` (built once per scope), closed when the scope ends."""
    record = index.new_record(scope.context.principal, scope)

    def close_record(exc: BaseException | None, record: ScopeRecord = record) -> None:
        index.close(record)

    try:
        scope.on_close(close_record)
    except UsageError:
        raise _ended(scope) from None
    return record


def shared_state_error(conflict: Conflict) -> SharedStateError:
    """The :class:`SharedStateError` describing ``conflict``."""
    mine, theirs = conflict.principals
    my_path, their_path = conflict.paths
    my_factory, their_factory = conflict.factories
    who, whom = redact_principal(mine), redact_principal(theirs)
    if conflict.same_object:
        message = (
            f"{my_factory} returned for {who} the same {conflict.shared_type} object that "
            f"{their_factory} returned for {whom}, whose scope is still live"
        )
    else:
        message = (
            f"the {my_factory} instance built for {who} shares a mutable "
            f"{conflict.shared_type} with the live {their_factory} instance built for {whom}: "
            f"{render_path(my_path)} (this build) is {render_path(their_path)} (theirs)"
        )
    return SharedStateError(message, principals=conflict.principals, paths=conflict.paths)


def _check_options(
    check: object, sample_every: object, max_depth: object, max_objects: object
) -> None:
    if check not in _CHECKS:
        raise ConfigurationError(f"check must be one of {_CHECKS}, got {check!r}")
    for name, value in (
        ("sample_every", sample_every),
        ("max_depth", max_depth),
        ("max_objects", max_objects),
    ):
        if type(value) is not int or value < 1:
            raise ConfigurationError(f"{name} must be an int >= 1, got {value!r}")


def wrap_scoped(factory: ScopedFactory[Any]) -> Callable[[], Any]:
    """The callable ``@request_scoped`` returns for ``factory``.

    Declared for the report's checks and the tests, which build a
    ``ScopedFactory`` with options the decorator does not take (an own
    ``index=``, ``event_factory=``).
    """
    # The cache hit: one ContextVar read and one dict lookup (isolation.context._once).
    wrapper: Callable[[], Any] = (
        ain_current(factory, factory._resolve)
        if factory.is_async
        else in_current(factory, factory._resolve)
    )
    functools.update_wrapper(wrapper, factory.fn, updated=())
    wrapper.__signature__ = inspect.Signature()  # type: ignore[attr-defined]
    wrapper.__isolation_factory__ = factory  # type: ignore[attr-defined]
    return wrapper


@overload
def request_scoped(fn: Callable[P, Coroutine[Any, Any, T]], /) -> Callable[[], Awaitable[T]]: ...
@overload
def request_scoped(fn: Callable[P, T], /) -> Callable[[], T]: ...
@overload
def request_scoped(
    *,
    check: CheckMode = "full",
    sample_every: int = DEFAULT_SAMPLE_EVERY,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_objects: int = DEFAULT_MAX_OBJECTS,
) -> _Decorator: ...
def request_scoped(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    check: CheckMode = "full",
    sample_every: int = DEFAULT_SAMPLE_EVERY,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_objects: int = DEFAULT_MAX_OBJECTS,
) -> Any:
    """Make an existing factory return one instance per scope, refused if it shares state.

    Wraps a function or a class, sync or ``async def`` (then ``await
    make_engine()``). Inside ``isolation.scope(...)`` every call returns the
    instance built for that scope: built **exactly once per scope**, even when
    threads and tasks call at the same moment; another scope (a child scope
    too) gets another instance, and the instance dies with its scope. The
    factory takes no argument, except one parameter annotated
    :class:`~isolation.UserContext`, which receives the scope's context.

    Each new instance is walked (its ``__dict__``, slots, class attributes,
    containers, ...) and compared with the live instances of other principals:
    a mutable object reachable from both is refused with
    :class:`~isolation.SharedStateError`, which names both principals and the
    path on each side, and the build leaves nothing in the scope.

    Args:
        fn: The factory (when used as ``@request_scoped`` without arguments).
        check: ``"full"`` walks every build (the default: safe unless told
            otherwise); ``"sampled"`` one build in ``sample_every``, for hot paths
            once ``isolation audit`` is clean; ``"off"`` none.
        sample_every: With ``"sampled"``, walk one build in this many.
        max_depth: Edges from the instance the walk follows.
        max_objects: Objects the walk visits before it stops (and warns).

    Raises:
        UsageError: At decoration: a required parameter not annotated ``UserContext``.
        ConfigurationError: At decoration: a bad option value.
        NoContextError: At a call outside any scope.
        SharedStateError: At the build: state shared with another user's live instance.
    """
    _check_options(check, sample_every, max_depth, max_objects)

    def decorate(factory: Callable[..., Any]) -> Callable[[], Any]:
        return wrap_scoped(
            ScopedFactory(
                factory,
                check=check,
                sample_every=sample_every,
                max_depth=max_depth,
                max_objects=max_objects,
            )
        )

    if fn is None:
        return decorate
    return decorate(fn)


def scoped_factory_of(obj: object) -> ScopedFactory[Any] | None:
    """The :class:`ScopedFactory` behind a ``@request_scoped`` wrapper, or ``None``."""
    found = getattr(obj, "__isolation_factory__", None)
    return found if isinstance(found, ScopedFactory) else None
