"""``Registry``: typed providers resolved per scope, with the isolation checks built in.

A provider is registered for the type it returns (its return annotation) and
a lifetime. Parameters are resolved by annotation: registered types and
:class:`~isolation.UserContext`. Products are cached where their lifetime
says — ``APP`` in the registry, ``CONNECTION`` in the nearest connection
scope, ``REQUEST`` in the current scope — built exactly once per place even
when threads and tasks ask at the same moment, built *as* the scope that owns
them (so :func:`~isolation.owned` classes record the right owner), and torn
down at that scope's exit in reverse order.

A provider that would make a longer-lived product depend on a shorter-lived
one is refused, naming both: an ``APP`` engine taking the ``UserContext`` is
failure mode 11 (the engine built for the first user serves everyone).
"""

from __future__ import annotations

import collections.abc
import enum
import functools
import inspect
import threading
import typing
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, Final, Literal, TypeAlias, TypeVar, final

import attrs

from isolation._counters import Counter
from isolation._errors import (
    ConfigurationError,
    FactoryError,
    SharedStateError,
    UsageError,
)
from isolation._lifetime import Lifetime
from isolation.context._interface import add_finalizer, aonce, is_async, once
from isolation.context._model import UserContext
from isolation.context._scope import Scope
from isolation.factories._index import SharedStateIndex
from isolation.factories._request_scoped import check_shared_state
from isolation.factories._sampling import Schedule, schedule_for
from isolation.factories._shareable import refuse_per_user_state, shareable

__all__ = ["Registry", "RegistryStats"]

T = TypeVar("T")

CheckMode = Literal["full", "sampled", "off"]


class _Kind(enum.Enum):
    VALUE = "value"
    SYNC = "sync"
    ASYNC = "async"
    GENERATOR = "generator"
    ASYNC_GENERATOR = "async generator"


_GENERATOR_ORIGINS = (collections.abc.Iterator, collections.abc.Generator, collections.abc.Iterable)
_ASYNC_GENERATOR_ORIGINS = (
    collections.abc.AsyncIterator,
    collections.abc.AsyncGenerator,
    collections.abc.AsyncIterable,
)


@attrs.frozen(kw_only=True)
class RegistryStats:
    """A snapshot of a registry's counters.

    Attributes:
        built_app: ``APP`` products built.
        built_connection: ``CONNECTION`` products built.
        built_request: ``REQUEST`` products built.
        walks: Shared-state walks run.
        walks_truncated: Walks cut short by their bounds.
        violations: Products refused for shared state.
    """

    built_app: int
    built_connection: int
    built_request: int
    walks: int
    walks_truncated: int
    violations: int


@final
@attrs.frozen(kw_only=True, eq=False)
class _Provider:
    key: type[Any]
    fn: Callable[..., Any] | None
    value: Any
    kind: _Kind
    lifetime: Lifetime
    params: tuple[tuple[str, Any], ...]
    name: str
    check: CheckMode | None = None
    # Every parameter can be passed by position, in order: the faster call.
    positional: bool = False


def _name(obj: object) -> str:
    return getattr(obj, "__qualname__", None) or repr(obj)


def _product_type(fn: Callable[..., Any]) -> tuple[Any, _Kind]:
    if inspect.isclass(fn):
        return fn, _Kind.SYNC
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:
        raise ConfigurationError(
            f"cannot read the annotations of provider {_name(fn)}: {exc}"
        ) from exc
    returned = hints.get("return")
    if returned is None:
        raise ConfigurationError(
            f"provider {_name(fn)} has no return annotation",
            hint="Annotate what it provides, for example `-> Engine`",
        )
    origin = typing.get_origin(returned)
    if inspect.isasyncgenfunction(fn):
        if origin not in _ASYNC_GENERATOR_ORIGINS:
            raise ConfigurationError(
                f"async generator provider {_name(fn)} must return AsyncIterator[T]"
            )
        return typing.get_args(returned)[0], _Kind.ASYNC_GENERATOR
    if inspect.isgeneratorfunction(fn):
        if origin not in _GENERATOR_ORIGINS:
            raise ConfigurationError(f"generator provider {_name(fn)} must return Iterator[T]")
        return typing.get_args(returned)[0], _Kind.GENERATOR
    if inspect.iscoroutinefunction(fn):
        return returned, _Kind.ASYNC
    return returned, _Kind.SYNC


def _parameters(fn: Callable[..., Any]) -> tuple[tuple[tuple[str, Any], ...], bool]:
    """The annotated parameters to resolve, and whether they can all go by position."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        hints = typing.get_type_hints(target)
    except Exception as exc:
        raise ConfigurationError(f"cannot read the annotations of {_name(fn)}: {exc}") from exc
    params = []
    positional = True
    if inspect.isclass(fn):
        # The constructor's own signature: decorators such as @owned may give
        # the class a generic __new__ that hides it from inspect.signature(cls).
        parameters = list(inspect.signature(fn.__init__).parameters.items())[1:]
    else:
        parameters = list(inspect.signature(fn).parameters.items())
    for name, param in parameters:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.default is not param.empty:
            continue
        if name not in hints:
            raise ConfigurationError(
                f"parameter {name!r} of provider {_name(fn)} has no annotation",
                hint="Annotate it with a registered type or isolation.UserContext",
            )
        params.append((name, hints[name]))
        positional = positional and param.kind in (
            param.POSITIONAL_ONLY,
            param.POSITIONAL_OR_KEYWORD,
        )
    # A decorated callable shows the signature of what it wraps (``__wrapped__``)
    # or one it claims (``__signature__``); only its own can vouch for positions.
    if getattr(target, "__wrapped__", None) is not None or hasattr(target, "__signature__"):
        positional = False
    return tuple(params), positional


def _context_of(scope: Scope) -> UserContext:
    return scope.context


_MISSING: Final = object()
V = TypeVar("V")


class _Compiled(dict[Any, V]):
    """A registry's compiled resolvers by key; a missing key is compiled (and stored) by ``compile``."""

    __slots__ = ("_compile",)

    def __init__(self, compile: Callable[[Any], V]) -> None:
        super().__init__()
        self._compile = compile

    def __missing__(self, key: Any) -> V:
        return self._compile(key)


# How Scope.aget resolves a key: (awaits, resolver, cache key of a REQUEST product).
_AsyncEntry: TypeAlias = tuple[bool, Callable[["Scope"], Any], "_Provider | None"]
# Enum members looked up once (each Lifetime.X is a metaclass lookup).
_REQUEST: Final = Lifetime.REQUEST
_APP: Final = Lifetime.APP


class Registry:
    """Typed providers per lifetime, resolved per scope, checked for shared state.

    Args:
        check: ``"full"`` walks every ``REQUEST`` and ``CONNECTION`` product for
            state shared with another principal's (the default: safe unless told
            otherwise); ``"sampled"`` walks each build with chance
            ``1/sample_every``, drawn per provider, independently of the
            others; ``"off"`` walks none.
        sample_every: How often ``"sampled"`` walks.
        sample_seed: Makes the sampled builds reproducible (for tests); by
            default each provider's generator is seeded from ``os.urandom``,
            so that no build order can line up with the walked builds.
        event_factory: Makes the :class:`threading.Event` a resolver in another
            thread waits on while a product is built (``threading.Event`` by
            default): a test's hook to see the waiters, as dishka's
            ``lock_factory=``.

    Example::

        registry = isolation.Registry()

        @registry.provide(lifetime=isolation.Lifetime.APP)
        def settings() -> Settings: ...

        @registry.provide
        def assistant(ctx: isolation.UserContext, settings: Settings) -> Assistant: ...

        with isolation.scope(ctx, registry=registry) as s:
            s.get(Assistant)
    """

    def __init__(
        self,
        *,
        check: CheckMode = "full",
        sample_every: int = 100,
        sample_seed: int | None = None,
        event_factory: Callable[[], threading.Event] | None = None,
    ) -> None:
        if not isinstance(check, str) or check not in ("full", "sampled", "off"):
            raise ConfigurationError(f"check must be 'full', 'sampled' or 'off', got {check!r}")
        # type() is int: a bool is an int, and sample_every=True is a mistake, not 1.
        if type(sample_every) is not int or sample_every < 1:
            raise ConfigurationError(f"sample_every must be an int >= 1, got {sample_every!r}")
        if sample_seed is not None and type(sample_seed) is not int:
            raise ConfigurationError(f"sample_seed must be an int or None, got {sample_seed!r}")
        self._check = check
        self._sample_every = sample_every
        self._sample_seed = sample_seed
        if event_factory is not None and not callable(event_factory):
            raise ConfigurationError(f"event_factory must be callable, got {event_factory!r}")
        self._event_factory = event_factory
        # One schedule per sampled provider, kept across recompilations.
        self._schedules: dict[_Provider, Schedule] = {}
        self._providers: dict[Any, _Provider] = {}
        self._app: dict[Any, Any] = {}
        self._app_teardowns: list[tuple[_Provider, Any]] = []
        self._lock = threading.RLock()
        self._closed = False
        self._counts = {name: Counter() for name in attrs.fields_dict(RegistryStats)}
        # Other principals' live products, for the shared-state walk (per registry).
        self._index = SharedStateIndex()
        self._needs_async: dict[Any, bool] = {}
        self._resolvers: _Compiled[Callable[[Scope], Any]] = _Compiled(self._make_resolver)
        self._async_keys: set[Any] = set()
        # For aget: (awaits, resolver) per key, the sync resolver where nothing awaits.
        self._aresolvers: _Compiled[_AsyncEntry] = _Compiled(self._make_aresolver)
        # The declared interface of Scope.get and Scope.aget to this registry: how
        # each key resolves, compiled on first lookup (``table[key]``).
        self.__isolation_resolvers__: Mapping[Any, Callable[[Scope], Any]] = self._resolvers
        self.__isolation_aresolvers__: Mapping[Any, _AsyncEntry] = self._aresolvers
        self._checker: Callable[[Scope, Any, str], None] | None = self._walk

    # -- registration -----------------------------------------------------------

    @typing.overload
    def provide(
        self,
        fn: Callable[..., T],
        /,
        *,
        lifetime: Lifetime = Lifetime.REQUEST,
        check: CheckMode | None = None,
    ) -> Callable[..., T]: ...

    @typing.overload
    def provide(
        self,
        fn: None = None,
        /,
        *,
        lifetime: Lifetime = Lifetime.REQUEST,
        check: CheckMode | None = None,
    ) -> Callable[[Callable[..., T]], Callable[..., T]]: ...

    def provide(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        lifetime: Lifetime = Lifetime.REQUEST,
        check: CheckMode | None = None,
    ) -> Any:
        """Register ``fn`` as the provider of its declared return type (a decorator).

        ``fn`` may be a function, a class, a generator (``-> Iterator[T]``,
        teardown after ``yield``), an ``async def``, or an async generator
        (``-> AsyncIterator[T]``). Returns ``fn`` unchanged.

        Args:
            lifetime: How long the product lives (``REQUEST`` by default).
            check: This provider's shared-state check, overriding the
                registry's: ``"off"`` for products whose isolation something
                else enforces (the session of a ``SessionManager``).

        Raises:
            ConfigurationError: No return annotation, an unannotated parameter,
                a type registered twice, a captive dependency, or an ``APP``
                product known to keep per-user state (an HTTP client: see
                :func:`~isolation.shareable`).
        """
        if fn is None:
            return lambda f: self.provide(f, lifetime=lifetime, check=check)
        if check is not None and (
            not isinstance(check, str) or check not in ("full", "sampled", "off")
        ):
            raise ConfigurationError(f"check must be 'full', 'sampled' or 'off', got {check!r}")
        if not isinstance(lifetime, Lifetime):
            raise UsageError(f"lifetime must be an isolation.Lifetime, got {lifetime!r}")
        if not callable(fn):
            raise UsageError(f"provide() takes a function or class, got {type(fn).__name__}")
        key, kind = _product_type(fn)
        if lifetime is Lifetime.APP and isinstance(key, type):
            refuse_per_user_state(key, "an APP product, which every user shares")
        params, positional = _parameters(fn)
        provider = _Provider(
            key=key,
            fn=fn,
            value=None,
            kind=kind,
            lifetime=lifetime,
            params=params,
            name=_name(fn),
            check=check,
            positional=positional,
        )
        self._add(provider)
        return fn

    def provide_value(
        self, obj: object, *, lifetime: Lifetime = Lifetime.APP, provides: type[Any] | None = None
    ) -> None:
        """Register an existing object as the ``APP`` product of its type (or of ``provides``).

        A value is one object, so every user gets it: registering it is the
        declaration that it is shared (see :func:`~isolation.shareable`). A
        per-user product needs a factory: ``registry.provide(fn, lifetime=...)``.

        Raises:
            ConfigurationError: ``lifetime`` is not ``APP`` (one object handed
                to every user as if it were theirs), or ``provides`` is not a type.
        """
        if not isinstance(lifetime, Lifetime):
            raise UsageError(f"lifetime must be an isolation.Lifetime, got {lifetime!r}")
        if provides is not None and not (
            isinstance(provides, (type, typing.NewType)) or typing.get_origin(provides) is not None
        ):
            raise ConfigurationError(
                f"provides must be a type (what the value is resolved as), got {provides!r}"
            )
        key = provides if provides is not None else type(obj)
        if lifetime is not Lifetime.APP:
            raise ConfigurationError(
                f"provide_value() registers one object, which every user would get: "
                f"a value of {_name(key)} cannot have lifetime {lifetime.name}",
                hint="Register a factory with `registry.provide(fn, "
                f"lifetime=Lifetime.{lifetime.name})` to build one per scope, or drop "
                "the lifetime to share the value on purpose (APP)",
            )
        shareable(obj)  # registering a value is the declaration
        self._add(
            _Provider(
                key=key,
                fn=None,
                value=obj,
                kind=_Kind.VALUE,
                lifetime=Lifetime.APP,
                params=(),
                name=f"value of {_name(key)}",
            )
        )

    def _add(self, provider: _Provider) -> None:
        with self._lock:
            if self._closed:
                raise UsageError("this Registry is closed")
            if provider.key in self._providers or provider.key is UserContext:
                existing = self._providers.get(provider.key)
                holder = existing.name if existing is not None else "the scope"
                raise ConfigurationError(f"{_name(provider.key)} already has a provider ({holder})")
            for name, annotation in provider.params:
                self._check_captive(provider, name, annotation)
            self._providers[provider.key] = provider
            self._needs_async.clear()
            self._resolvers.clear()
            self._aresolvers.clear()
            self._async_keys.clear()

    def _check_captive(self, provider: _Provider, name: str, annotation: Any) -> None:
        if annotation is UserContext:
            if provider.lifetime is Lifetime.APP:
                raise ConfigurationError(
                    f"APP provider {provider.name} takes the UserContext ({name!r}): the product "
                    "built for the first user would serve every user",
                    hint="Make it a REQUEST (or CONNECTION) product, or drop the parameter",
                )
            return
        dependency = self._providers.get(annotation)
        if dependency is not None and dependency.lifetime < provider.lifetime:
            raise ConfigurationError(
                f"{provider.lifetime.name} provider {provider.name} depends on "
                f"{dependency.lifetime.name} product {dependency.name} ({name!r}): the "
                "longer-lived product would keep one request's object",
                hint="Give the dependency a lifetime at least as long, or shorten the dependant",
            )

    def _provider(self, key: Any) -> _Provider:
        provider = self._providers.get(key)
        if provider is None:
            raise UsageError(
                f"no provider for {_name(key)} in this registry",
                hint="Register one with @registry.provide",
            )
        return provider

    # -- resolution (called by Scope.get / Scope.aget) -------------------------------

    def _owner(self, scope: Scope, provider: _Provider) -> Scope:
        if provider.lifetime is _REQUEST:
            return scope
        owner: Scope | None = scope
        while owner is not None and owner.lifetime < provider.lifetime:
            owner = owner.parent
        if owner is None:
            raise UsageError(
                f"{provider.name} is a CONNECTION product, but no CONNECTION scope "
                "encloses this one",
                hint="Enter `isolation.scope(ctx, lifetime=Lifetime.CONNECTION)` around requests",
            )
        return owner

    def _get(self, scope: Scope, key: Any) -> Any:
        resolver = self._resolvers.get(key)
        if resolver is None:
            resolver = self._make_resolver(key)
        return resolver(scope)

    def _make_resolver(self, key: Any) -> Callable[[Scope], Any]:
        """Compile how to resolve ``key``: checked once, then a closure per key."""
        with self._lock:
            resolver = self._resolvers.get(key)
            if resolver is None:
                resolver = self._compile(key)
                self._resolvers[key] = resolver
            return resolver

    def _compile(self, key: Any) -> Callable[[Scope], Any]:
        if key is UserContext:
            return _context_of
        provider = self._provider(key)
        if provider.kind is _Kind.VALUE:
            value = provider.value
            return lambda scope: value
        if provider.lifetime is not Lifetime.APP:
            # Checked once here, so neither build path checks it per product.
            for name, annotation in provider.params:
                self._check_captive(provider, name, annotation)
        if self._is_async(provider):
            self._async_keys.add(key)

            def refuse(scope: Scope) -> Any:
                raise UsageError(
                    f"{provider.name} is an async provider, or depends on one",
                    hint="Use `await scope.aget(...)` in an `async with` scope",
                )

            return refuse
        if provider.lifetime is Lifetime.APP:
            return lambda scope: self._get_app(provider)
        dependencies = tuple(
            (name, self._resolvers.get(annotation) or self._compile_nested(annotation))
            for name, annotation in provider.params
        )
        return self._product_resolver(provider, dependencies)

    def _compile_nested(self, key: Any) -> Callable[[Scope], Any]:
        resolver = self._compile(key)
        self._resolvers[key] = resolver
        return resolver

    def _product_resolver(
        self, provider: _Provider, dependencies: tuple[tuple[str, Callable[[Scope], Any]], ...]
    ) -> Callable[[Scope], Any]:
        cache_key = provider  # unique per registry and key, hashed by identity
        fn = provider.fn
        assert fn is not None
        generator = provider.kind is _Kind.GENERATOR
        per_request = provider.lifetime is Lifetime.REQUEST
        owner_of = self._owner
        built = self._counts["built_request" if per_request else "built_connection"].increment
        walk, schedule = self._compiled_check(provider)
        sampled = schedule is not None
        draw, chance = (schedule.draw, schedule.chance) if schedule is not None else (float, 1.0)
        product_name = provider.name
        single = dependencies[0] if len(dependencies) == 1 else None
        positional = provider.positional
        partial = functools.partial

        def build(owner: Scope) -> Any:
            # Runs once per owner scope, with the owner bound (isolation.context._once).
            if single is not None:
                product = (
                    fn(single[1](owner)) if positional else fn(**{single[0]: single[1](owner)})
                )
            elif dependencies:
                kwargs = {}  # a loop, not a comprehension: no extra frame on 3.11
                for name, dependency in dependencies:
                    kwargs[name] = dependency(owner)
                product = fn(**kwargs)
            else:
                product = fn()
            if generator:
                made = product
                product = next(made)
                add_finalizer(owner, partial(_close_generator, provider, made))
            built()
            # Sampled: Schedule.due, inlined (this provider's own generator).
            if walk is not None and (not sampled or draw() < chance):
                walk(owner, product, product_name)
            return product

        resolve_in = once(cache_key, build, name=product_name, event_factory=self._event_factory)
        if per_request:
            return resolve_in

        def resolve(scope: Scope) -> Any:
            return resolve_in(owner_of(scope, provider))

        return resolve

    def _get_app(self, provider: _Provider) -> Any:
        product = self._app.get(provider.key, _MISSING)
        if product is not _MISSING:
            return product
        with self._lock:
            product = self._app.get(provider.key, _MISSING)
            if product is _MISSING:
                if self._closed:
                    raise UsageError("this Registry is closed")
                product = self._call_sync(None, provider)
                # Registering at APP is the declaration that every user shares it.
                shareable(product)
                self._app[provider.key] = product
                self._counts["built_app"].increment()
        return product

    def _arguments(self, scope: Scope | None, provider: _Provider) -> dict[str, Any]:
        kwargs = {}
        for name, annotation in provider.params:
            if scope is None:  # APP products depend only on APP products
                dependency = self._provider(annotation)
                self._check_captive(provider, name, annotation)
                kwargs[name] = (
                    dependency.value
                    if dependency.kind is _Kind.VALUE
                    else self._get_app(dependency)
                )
            else:
                if annotation is not UserContext:
                    self._check_captive(provider, name, annotation)
                kwargs[name] = self._get(scope, annotation)
        return kwargs

    def _call_sync(self, owner: Scope | None, provider: _Provider) -> Any:
        assert provider.fn is not None
        kwargs = self._arguments(owner, provider)
        if provider.kind is _Kind.GENERATOR:
            generator = provider.fn(**kwargs)
            product = next(generator)
            self._register_teardown(owner, provider, generator)
            return product
        return provider.fn(**kwargs)

    def _compiled_check(
        self, provider: _Provider
    ) -> tuple[Callable[[Scope, Any, str], None] | None, Schedule | None]:
        """``(walk, schedule)`` for a compiled resolver.

        ``walk`` is None when nothing is walked; otherwise a build is walked
        always when ``schedule`` is None (``"full"``), else when the schedule
        says so (``"sampled"``: the resolvers inline :meth:`Schedule.due`).
        """
        mode = provider.check or self._check
        if mode == "off" or self._checker is None:
            return None, None
        return self._checker, self._schedule(provider) if mode == "sampled" else None

    def _schedule(self, provider: _Provider) -> Schedule:
        """``provider``'s own sampled walks: its own random generator (see _sampling)."""
        with self._lock:
            schedule = self._schedules.get(provider)
            if schedule is None:
                schedule = schedule_for(self._sample_every, provider.name, self._sample_seed)
                self._schedules[provider] = schedule
            return schedule

    def _walk(self, owner: Scope, product: Any, name: str) -> None:
        self._counts["walks"].increment()
        try:
            result = check_shared_state(owner, product, name=name, index=self._index)
        except SharedStateError:
            self._counts["violations"].increment()
            raise
        if result.truncated is not None:
            self._counts["walks_truncated"].increment()

    # -- what `isolation audit` asks of a registry -----------------------------------

    __isolation_scope_lifetime__ = Lifetime.CONNECTION

    def __isolation_factories__(self) -> list[tuple[str, Callable[[], Any]]]:
        """``(name, factory)`` for each REQUEST and CONNECTION provider, for the audit.

        Each factory resolves its type in the current scope, so the audit's
        overlapping scopes of many users exercise the registry itself; its
        ``__isolation_provider__`` is the provider, which the report names.
        """
        factories: list[tuple[str, Callable[[], Any]]] = []
        for key, provider in list(self._providers.items()):
            if provider.lifetime is Lifetime.APP or provider.kind is _Kind.VALUE:
                continue
            factories.append((provider.name, self._audit_factory(key)))
        return factories

    def _audit_factory(self, key: Any) -> Callable[[], Any]:
        from isolation.context._scope import current_scope

        factory: Callable[[], Any]
        if key in self._async_keys or self._is_async(self._providers[key]):

            async def aresolve() -> Any:
                return await self._aget(current_scope(), key)

            factory = aresolve
        else:

            def resolve() -> Any:
                return self._get(current_scope(), key)

            factory = resolve
        # What the audit names: the provider (a class is reported as a class).
        vars(factory)["__isolation_provider__"] = self._providers[key].fn
        return factory

    def _register_teardown(self, owner: Scope | None, provider: _Provider, generator: Any) -> None:
        if owner is None:
            self._app_teardowns.append((provider, generator))
            return

        def teardown(exc: BaseException | None) -> None:
            _close_generator(provider, generator, exc)

        owner.on_close(teardown)

    # -- async resolution -----------------------------------------------------------

    async def _aget(self, scope: Scope, key: Any) -> Any:
        awaits, resolver, _ = self._aresolvers.get(key) or self._make_aresolver(key)
        return (await resolver(scope)) if awaits else resolver(scope)

    def _make_aresolver(self, key: Any) -> _AsyncEntry:
        """Compile how ``aget`` resolves ``key``: the sync resolver unless something awaits.

        The entry is ``(awaits, resolver, cache_key)``; ``cache_key`` is set for
        REQUEST products, which ``Scope.aget`` may find built without awaiting.
        """
        with self._lock:  # with provide(), which clears both tables, held off
            resolver = self._resolvers.get(key) or self._make_resolver(key)  # checks, marks async
            entry = self._aresolvers.get(key)
            if entry is None:
                if key in self._async_keys:
                    provider = self._providers[key]
                    cache_key = provider if provider.lifetime is _REQUEST else None
                    entry = (True, self._compile_async(provider), cache_key)
                else:
                    entry = (False, resolver, None)
                self._aresolvers[key] = entry
            return entry

    def _compile_async(self, provider: _Provider) -> Callable[[Scope], Any]:
        if provider.lifetime is _APP:

            async def refuse(scope: Scope) -> Any:
                raise UsageError(
                    f"APP provider {provider.name} is async",
                    hint="Build async APP products at startup and register them with "
                    "provide_value()",
                )

            return refuse
        dependencies = tuple(
            (name, *self._make_aresolver(annotation)[:2]) for name, annotation in provider.params
        )
        return self._async_product_resolver(provider, dependencies)

    def _async_product_resolver(
        self,
        provider: _Provider,
        dependencies: tuple[tuple[str, bool, Callable[[Scope], Any]], ...],
    ) -> Callable[[Scope], Any]:
        """The async twin of _product_resolver: one build per key per scope, even
        when tasks and threads resolve it at once (isolation.context._once)."""
        cache_key = provider
        fn = provider.fn
        assert fn is not None
        kind = provider.kind
        agen = kind is _Kind.ASYNC_GENERATOR
        per_request = provider.lifetime is _REQUEST
        owner_of = self._owner
        built = self._counts["built_request" if per_request else "built_connection"].increment
        walk, schedule = self._compiled_check(provider)
        sampled = schedule is not None
        draw, chance = (schedule.draw, schedule.chance) if schedule is not None else (float, 1.0)
        product_name = provider.name
        register_teardown = self._register_teardown
        partial = functools.partial

        async def build(owner: Scope) -> Any:
            # Runs once per owner scope, with the owner bound (isolation.context._once).
            if agen and not is_async(owner):
                raise UsageError(
                    f"{provider.name} is an async generator provider, which needs an "
                    "`async with` scope"
                )
            kwargs = {}
            for name, awaits, dependency in dependencies:
                kwargs[name] = (await dependency(owner)) if awaits else dependency(owner)
            if agen:
                generator = fn(**kwargs)
                product = await generator.__anext__()
                # An async finalizer of the owner (an `async with` scope, checked above).
                add_finalizer(owner, partial(_aclose_generator, provider, generator))
            elif kind is _Kind.ASYNC:
                product = await fn(**kwargs)
            elif kind is _Kind.GENERATOR:
                generator = fn(**kwargs)
                product = next(generator)
                register_teardown(owner, provider, generator)
            else:
                product = fn(**kwargs)
            built()
            # Sampled: Schedule.due, inlined (this provider's own generator).
            if walk is not None and (not sampled or draw() < chance):
                walk(owner, product, product_name)
            return product

        aresolve_in = aonce(cache_key, build, name=product_name, event_factory=self._event_factory)
        if per_request:
            return aresolve_in

        async def aresolve(scope: Scope) -> Any:
            return await aresolve_in(owner_of(scope, provider))

        return aresolve

    def _is_async(self, provider: _Provider) -> bool:
        """Whether building ``provider`` awaits anything (itself or a dependency)."""
        known = self._needs_async.get(provider.key)
        if known is not None:
            return known
        result = provider.kind in (_Kind.ASYNC, _Kind.ASYNC_GENERATOR) or any(
            self._is_async(self._provider(annotation))
            for _, annotation in provider.params
            if annotation is not UserContext
        )
        self._needs_async[provider.key] = result
        return result

    # -- the registry's own lifetime -------------------------------------------------

    def stats(self) -> RegistryStats:
        """A snapshot of the counters."""
        return RegistryStats(**{name: c.value for name, c in self._counts.items()})

    def start(self) -> None:
        """Open the registry again after :meth:`close`: a new start of the app.

        ``APP`` products are built anew on first use, and providers may be added
        again. Nothing to do on an open registry. :func:`isolation.integrations.starlette.lifespan`
        calls it at startup, so module-level registries survive a second ``TestClient``.
        """
        with self._lock:
            self._closed = False

    def close(self) -> None:
        """Tear down the ``APP`` products, in reverse order of building; :meth:`start` reopens."""
        with self._lock:
            self._closed = True
            teardowns, self._app_teardowns = self._app_teardowns, []
            self._app.clear()
        failures: list[BaseException] = []
        for provider, generator in reversed(teardowns):
            try:
                _close_generator(provider, generator, None)
            except Exception as exc:
                failures.append(exc)
        if failures:
            raise failures[0]

    async def aclose(self) -> None:
        """Tear down the ``APP`` products (the async twin of :meth:`close`)."""
        self.close()

    def __repr__(self) -> str:
        return f"<isolation.Registry {len(self._providers)} providers, check={self._check!r}>"


def _close_generator(
    provider: _Provider, generator: Iterator[Any], exc: BaseException | None
) -> None:
    if exc is None:
        # next() with a default returns it at the end instead of raising StopIteration.
        if next(generator, _MISSING) is _MISSING:
            return
        raise FactoryError(f"provider {provider.name} yielded more than once")
    try:
        generator.throw(exc)  # type: ignore[attr-defined]
    except StopIteration:
        return
    except BaseException as raised:
        if raised is exc:
            return  # the provider let the body's exception through: nothing more to do
        raise
    raise FactoryError(f"provider {provider.name} yielded more than once")


async def _aclose_generator(
    provider: _Provider, generator: AsyncIterator[Any], exc: BaseException | None
) -> None:
    try:
        if exc is None:
            await generator.__anext__()
        else:
            await generator.athrow(exc)  # type: ignore[attr-defined]
    except StopAsyncIteration:
        return
    except BaseException as raised:
        if raised is exc:
            return
        raise
    raise FactoryError(f"provider {provider.name} yielded more than once")


Registry.__module__ = "isolation"
RegistryStats.__module__ = "isolation"
