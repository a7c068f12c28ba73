"""``Scope``: the one place a user context is bound, with a deadline and finalizers.

One :class:`~contextvars.ContextVar` holds the current scope; the scope holds
the context. Context operations never await, so one ``scope(ctx)`` object
serves both ``with`` and ``async with``. A scope is entered once.

Rules, in the order :meth:`Scope._bind` applies them:

* the same context object nested inside its own scope is re-entrant: the inner
  block gets the enclosing scope;
* a new context of the same principal opens a **child scope** (fresh per-scope
  values, the earliest deadline of the two);
* another principal is refused with :class:`ContextSwitchError` unless
  ``allow_switch=True``;
* a copied context whose scope has ended is not bound: anything may be entered
  there, but :func:`current_context` refuses with :class:`ScopeEndedError`;
* a scope entered in a generator or async generator body (directly, through
  an ``ExitStack``, or through a ``@contextmanager`` / ``@asynccontextmanager``
  helper) and still bound when it yields is **held across a yield**: the
  consumer shares the generator's :class:`~contextvars.Context`, so it would
  run as the generator's user between items (and a thread pool's next job
  after it). A held scope is seen only by code whose stack runs through the
  generator's frame: elsewhere (the consumer, tasks and threads started by
  either side, a later job) it is refused with :class:`UsageError`, or, if it
  is the child of a scope of the same principal seen there, that scope
  answers. A new scope entered there binds over it and remembers it: the
  generator, resumed under that scope, is refused instead of running as its
  user. An exit in another context or out of order raises
  :class:`UsageError`, never a ``ValueError`` from a foreign token. Context
  managers and pytest fixtures hold a scope for their caller on purpose and
  are exempt.
"""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import inspect
import logging
import math
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar, Token
from types import CoroutineType, FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar, final

import anyio
import attrs

from isolation import _clock
from isolation._counters import Counter, register_gauge
from isolation._errors import (
    CleanupTimeoutError,
    ConfigurationError,
    ContextExpiredError,
    ContextSwitchError,
    CrossContextAccessError,
    NoContextError,
    ScopeEndedError,
    UsageError,
)
from isolation._lifetime import Lifetime
from isolation._redact import redact_principal
from isolation.context._model import UserContext
from isolation.context._shield import start_shielded

if TYPE_CHECKING:
    from isolation.factories._registry import Registry

__all__ = [
    "DEFAULT_CLEANUP_TIMEOUT",
    "Finalizer",
    "FinishHook",
    "Scope",
    "ScopeStats",
    "current_context",
    "current_context_or_none",
    "current_scope",
    "scope_stats",
]

logger = logging.getLogger("isolation.context")

T = TypeVar("T")

Finalizer = Callable[[BaseException | None], Awaitable[None] | None]
FinishHook = Callable[[], Awaitable[None] | None]

DEFAULT_CLEANUP_TIMEOUT: Final = 5.0
"""Seconds each finalizer may take, shielded from cancellation, before it is abandoned."""

_current: ContextVar[Scope | None] = ContextVar("isolation.scope", default=None)

_NEW: Final = 0
_ACTIVE: Final = 1
_ENDED: Final = 2

_getframe = sys._getframe
# Code flags of a body that can yield to its consumer.
_YIELDS: Final = inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR
_CONTEXTLIB: Final = vars(contextlib)
# Test runners that drive generator fixtures: their frames are named for fixtures.
_FIXTURE_RUNNERS: Final = frozenset({"_pytest", "anyio"})
# Plugins that only drive fixtures and tests: any frame of theirs (pytest-asyncio's
# `async def setup()` is not named for fixtures).
_FIXTURE_PLUGINS: Final = frozenset({"pytest_asyncio", "pytest_trio"})


class _Unset:
    """The type of ``_UNSET``: a held scope that did not end elsewhere."""


_UNSET: Final = _Unset()


@final
class _Hold:
    """How a generator holds a scope: its frame and driver, and what to restore.

    Attributes:
        frame: The generator's frame, ``None`` once the scope ended elsewhere.
        by: The thread and task that drove the generator when it entered.
        before: For a scope that ended in another context, what was bound
            before it, for :func:`_restore`; ``_UNSET`` otherwise.
    """

    __slots__ = ("before", "by", "frame")

    def __init__(self, frame: FrameType, by: tuple[int, object]) -> None:
        self.frame: FrameType | None = frame
        self.by = by
        self.before: Scope | _Unset | None = _UNSET


def _task_key() -> tuple[int, object]:
    """The running thread and task (asyncio or trio), or ``None`` for no task."""
    try:
        return threading.get_ident(), asyncio.current_task()
    except RuntimeError:  # no asyncio loop runs in this thread
        pass
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            return threading.get_ident(), trio.lowlevel.current_task()
        except RuntimeError:
            pass
    return threading.get_ident(), None


def _runs_in(frame: FrameType) -> bool:
    """Whether the calling code runs inside ``frame``: it is on the caller's stack.

    A generator's frame is on the stack of the code it runs (and of what that
    code calls or awaits), never on the stack of its consumer between items, of
    a task or a thread started from it, or of a later job on the same worker:
    the answer depends on who reads, not on when. Code in a greenlet (SQLAlchemy's
    async sessions run their sync core in one) continues its stack in the
    greenlets that switched into it and wait for it to return.
    """
    current: FrameType | None = _getframe(1)
    while current is not None:
        if current is frame:
            return True
        current = current.f_back
    greenlet = sys.modules.get("greenlet")
    if greenlet is None:
        return False
    waiting = greenlet.getcurrent().parent
    while waiting is not None:
        current = waiting.gr_frame
        while current is not None:
            if current is frame:
                return True
            current = current.f_back
        waiting = waiting.parent
    return False


def _fixture_runner(caller: FrameType | None) -> bool:
    """Whether ``caller``, which runs a generator, is a test runner driving a fixture."""
    if caller is None:
        return False
    module = str(caller.f_globals.get("__name__", "")).partition(".")[0]
    if module in _FIXTURE_PLUGINS:
        return True
    return "fixture" in caller.f_code.co_name and module in _FIXTURE_RUNNERS


def _hidden(scope: Scope) -> bool:
    """Whether the generator holding ``scope`` has yielded it, seen from the caller."""
    hold = scope._held
    frame = None if hold is None else hold.frame
    return frame is not None and not _runs_in(frame)


def _shadows(scope: Scope) -> bool:
    """Whether ``scope``, opened over a held scope, is read from inside that scope's generator."""
    over = scope._over
    hold = None if over is None else over._held
    frame = None if hold is None else hold.frame
    return frame is not None and _runs_in(frame)


def _seen(scope: Scope) -> Scope:
    """The scope the caller sees where ``scope`` (held, or opened over a held one) is bound.

    A held scope read from outside its generator is refused, unless it is the
    child of a scope of the same principal that the caller sees (a body
    generator's own deadline inside a request): that one answers. A scope
    opened over a held one is refused inside that generator, resumed under it.
    """
    while _hidden(scope):
        parent = scope._parent
        if parent is None:
            raise _across_yield_error(scope, "it was read outside the generator, between its items")
        scope = parent
    if _shadows(scope):
        raise _resumed_error(scope)
    return scope


def _across_yield_error(scope: Scope, what: str) -> UsageError:
    hold = scope._held
    frame = None if hold is None else hold.frame
    name = "a generator" if frame is None else f"the generator {frame.f_code.co_qualname}()"
    return UsageError(
        f"the scope of {redact_principal(scope._ctx.principal)} entered in {name} "
        f"is held across a yield: {what}",
        hint=(
            "Enter the scope in the consumer, around the loop; or, in the generator, "
            "call a function that enters scope() for one item and returns its result. "
            "Tasks and threads started in a generator's own scope open their own scope "
            "(pass them the context)"
        ),
    )


def _resumed_error(scope: Scope) -> UsageError:
    over = scope._over
    assert over is not None
    hold = over._held
    frame = None if hold is None else hold.frame
    name = "a generator" if frame is None else f"the generator {frame.f_code.co_qualname}()"
    return UsageError(
        f"{name} holding the scope of {redact_principal(over._ctx.principal)} was resumed "
        f"inside the scope of {redact_principal(scope._ctx.principal)}: its body would run "
        "as another user",
        hint="Resume (next(), send(), anext()) the generator outside other users' scopes",
    )


_counter_lock = threading.Lock()
_counts = {"finalizer_failures": 0, "escapes_detected": 0, "expired": 0}


_opened = Counter()
_closed = Counter()
_opened_increment = _opened.increment
_closed_increment = _closed.increment
_get_current = _current.get
_set_current = _current.set
# The C lock itself: threading.RLock is a Python function in front of it.
_RLock: Final[Callable[[], threading.RLock]] = _thread.RLock
# Enum members, looked up once: Lifetime.REQUEST costs a metaclass lookup each time.
_REQUEST: Final = Lifetime.REQUEST
_CONNECTION: Final = Lifetime.CONNECTION
register_gauge("scopes", lambda: _opened.value - _closed.value)


def _bump(name: str) -> None:
    with _counter_lock:
        _counts[name] += 1


@attrs.frozen(kw_only=True)
class ScopeStats:
    """Process-wide counters of the context core (a snapshot).

    Attributes:
        finalizer_failures: Finalizers that raised or overran their cleanup time.
        escapes_detected: Reads of a context from a scope that had ended.
        expired: Scopes that ended by their deadline.
        opened: Scopes entered since the process started (a child scope counts;
            a re-entered one does not).
        open: Scopes entered and not yet exited, now.
    """

    finalizer_failures: int
    escapes_detected: int
    expired: int
    opened: int = 0
    open: int = 0


def scope_stats() -> ScopeStats:
    """Return a snapshot of the context core's counters."""
    closed = _closed.value  # read before opened: ``open`` is never negative
    opened = _opened.value
    with _counter_lock:
        return ScopeStats(**_counts, opened=opened, open=opened - closed)


def _check_registry(registry: object) -> None:
    """Refuse a ``registry=`` that is not an :class:`isolation.Registry`, at construction.

    The registry's module is looked up, not imported: factories sit above this
    layer, and a ``Registry`` can only exist once its module is loaded.
    """
    module = sys.modules.get("isolation.factories._registry")
    if module is None or not isinstance(registry, module.Registry):
        raise UsageError(
            f"scope(registry=...) takes an isolation.Registry, got {type(registry).__name__}",
            hint="Pass the Registry whose products this scope resolves, or leave it out",
        )


def _is_async_callable(fn: object) -> bool:
    code = getattr(fn, "__code__", None)
    if code is not None:  # functions, lambdas, bound methods: one flag test
        return bool(code.co_flags & inspect.CO_COROUTINE)
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - a callable object with `async def __call__`
    )


@final
class Scope:
    """A bound user context with a deadline and finalizers; ``with`` or ``async with``.

    ``isolation.scope`` is this class. Inside the block, :func:`current_context`
    returns ``ctx`` and :func:`current_scope` the scope, in this task, its child
    tasks and the threads started through :func:`isolation.to_thread`.

    In ``async with``, the context's deadline cancels the body (an anyio cancel
    scope) and the block then **raises** :class:`ContextExpiredError`: it never
    exits silently, so nothing after it commits expired work. In ``with``, the
    deadline is checked on entry and on exit. Finalizers registered with
    :meth:`on_close` run at exit in reverse order, shielded from cancellation,
    each bounded by ``cleanup_timeout`` seconds.

    The other parts of the library use a scope through its public properties
    and its declared internal interface, :mod:`isolation.context._interface`
    (the per-scope storage and its "build once" primitive, finalizers of a
    build, how the scope was entered and is seen), never its private fields.

    Args:
        ctx: The context to bind.
        allow_switch: Allow entering this scope while another principal's is
            bound (the new scope is then a root, not a child).
        cleanup_timeout: Seconds each finalizer may run at exit.

    Raises:
        ContextSwitchError: Another principal's scope is bound here.
        ContextExpiredError: The context (or the enclosing one) has expired.
    """

    # The fields every scope writes or its hot paths read are slots, set in
    # __init__; the rest (what a deadline, a child scope, a non-default option
    # or a generator's body needs) are class-level defaults, written to the
    # instance's __dict__ only when they differ: a common scope stores 13
    # fields, not 20.
    __slots__ = (
        "__dict__",
        "__weakref__",
        "_async",
        "_ctx",
        "_data",
        "_deadline",
        "_fast",
        "_finalizers",
        "_finishers",
        "_held",
        "_lock",
        "_registry",
        "_state",
        "_timed",
        "_token",
    )

    _lifetime: Lifetime = _REQUEST
    _allow_switch: bool = False
    _cleanup_timeout: float = DEFAULT_CLEANUP_TIMEOUT
    # The enclosing scope of the same principal (a child scope's).
    _parent: Scope | None = None
    # The enclosing scope this one stands for, when re-entered.
    _reentered: Scope | None = None
    _cancel_scope: anyio.CancelScope | None = None
    # The held scope this one was opened over, out of its generator's sight (see _seen).
    _over: Scope | None = None

    def __init__(
        self,
        ctx: UserContext,
        *,
        registry: Registry | None = None,
        lifetime: Lifetime = Lifetime.REQUEST,
        allow_switch: bool = False,
        cleanup_timeout: float = DEFAULT_CLEANUP_TIMEOUT,
    ) -> None:
        if type(ctx) is not UserContext:
            raise UsageError(
                f"scope() takes an isolation.UserContext, got {type(ctx).__name__}",
                hint="Build one with isolation.UserContext.new(user_id)",
            )
        if lifetime is not _REQUEST:
            if lifetime is not _CONNECTION:
                raise UsageError(
                    "a scope's lifetime is Lifetime.REQUEST or Lifetime.CONNECTION, "
                    f"got {lifetime!r}",
                    hint="APP products live in the Registry, not in a scope",
                )
            self._lifetime = lifetime
        if cleanup_timeout is not DEFAULT_CLEANUP_TIMEOUT:
            if cleanup_timeout != DEFAULT_CLEANUP_TIMEOUT and (
                isinstance(cleanup_timeout, bool)
                or not isinstance(cleanup_timeout, int | float)
                or not 0 < cleanup_timeout < math.inf
            ):
                raise ConfigurationError(
                    f"cleanup_timeout must be finite and > 0 seconds, got {cleanup_timeout!r}"
                )
            self._cleanup_timeout = cleanup_timeout
        if registry is not None:
            _check_registry(registry)
        if allow_switch is not False:
            if allow_switch is not True:
                raise UsageError(f"allow_switch takes a bool, got {type(allow_switch).__name__}")
            self._allow_switch = True
        self._ctx = ctx
        self._state = _NEW
        self._token: Token[Scope | None] | None = None
        # The context while active with no deadline: the fast path of current_context().
        self._fast: UserContext | None = None
        # The deadline while active with one: the fast path's expiry check.
        self._timed: float | None = None
        self._deadline: float | None = None
        self._finalizers: list[Finalizer] | None = None
        self._finishers: list[FinishHook] | None = None
        self._async = False
        # Set when a generator's body entered this scope (see _seen).
        self._held: _Hold | None = None
        # Per-scope values (ContextLocal, scoped instances): made on first use,
        # or now for a registry's scope, which will need them.
        if registry is None:
            self._registry: Registry | None = None
            self._data: dict[object, Any] | None = None
            self._lock: threading.RLock | None = None
        else:
            self._registry = registry
            self._data = {}
            self._lock = _RLock()

    @classmethod
    def from_token(
        cls,
        token: str | bytes,
        *,
        keys: Sequence[bytes],
        purpose: str,
        registry: Registry | None = None,
        lifetime: Lifetime = Lifetime.REQUEST,
        allow_switch: bool = False,
        cleanup_timeout: float = DEFAULT_CLEANUP_TIMEOUT,
    ) -> Scope:
        """Open a scope for the context in a signed token: how a worker runs a user's job.

        The context is verified and re-validated by :func:`isolation.tokens.loads`
        (any :class:`~isolation.TokenError` propagates) and gets a new request id.
        """
        from isolation.tokens import loads

        return cls(
            loads(token, keys=keys, purpose=purpose),
            registry=registry,
            lifetime=lifetime,
            allow_switch=allow_switch,
            cleanup_timeout=cleanup_timeout,
        )

    # -- what a scope tells -------------------------------------------------

    @property
    def context(self) -> UserContext:
        """The bound context."""
        return self._ctx

    @property
    def lifetime(self) -> Lifetime:
        """``Lifetime.REQUEST`` or ``Lifetime.CONNECTION``."""
        return self._lifetime

    @property
    def registry(self) -> Registry | None:
        """The registry whose products this scope resolves, if any."""
        return self._registry

    @property
    def parent(self) -> Scope | None:
        """The enclosing scope of the same principal, or ``None`` for a root scope."""
        return self._parent

    @property
    def active(self) -> bool:
        """Whether the scope has been entered, has not ended, and is the caller's to use.

        ``False`` for a scope a generator holds across a yield, read from outside
        that generator, and for a scope opened over such a scope, read from inside it.
        """
        return self._state == _ACTIVE and (
            (self._held is None and self._over is None) or not (_hidden(self) or _shadows(self))
        )

    @property
    def ended(self) -> bool:
        """Whether the scope has ended."""
        return self._state == _ENDED

    @property
    def deadline(self) -> float | None:
        """Epoch seconds when the scope expires: the earliest of its context's and its parent's."""
        return self._deadline

    def remaining(self) -> float:
        """Seconds until the deadline, clamped at 0; ``math.inf`` without one."""
        if self._deadline is None:
            return math.inf
        return max(0.0, self._deadline - _clock._now())

    def __repr__(self) -> str:
        state = ("new", "active", "ended")[self._state]
        return f"<isolation.Scope {redact_principal(self._ctx.principal)} {state}>"

    # -- products of the registry ---------------------------------------------

    def get(self, key: type[T]) -> T:
        """Return this scope's product of type ``key`` from its registry.

        Raises:
            UsageError: No registry, no provider for ``key``, or an async
                provider (use :meth:`aget`).
            CrossContextAccessError: Called from outside this scope.
        """
        registry = self._registry
        if registry is None:
            raise UsageError(
                "this scope has no registry", hint="Pass registry= to isolation.scope()"
            )
        if _current.get() is not self or self._fast is None:
            self._check_caller()
        return registry.__isolation_resolvers__[key](self)  # type: ignore[no-any-return]

    async def aget(self, key: type[T]) -> T:
        """Return this scope's product of type ``key``; sync and async providers alike."""
        registry = self._registry
        if registry is None:
            raise UsageError(
                "this scope has no registry", hint="Pass registry= to isolation.scope()"
            )
        if _current.get() is not self or self._fast is None:
            self._check_caller()
        awaits, resolver, cache_key = registry.__isolation_aresolvers__[key]
        if not awaits:
            return resolver(self)  # type: ignore[no-any-return]
        data = self._data
        if cache_key is not None and data is not None:  # built already: no coroutine needed
            product = data.get(cache_key, data)
            if product is not data and type(product) is not _Pending:
                return product  # type: ignore[no-any-return]
        return await resolver(self)  # type: ignore[no-any-return]

    def _check_caller(self) -> None:
        """Refuse resolving from a scope that ended, expired, or is not the caller's."""
        if self._state != _ACTIVE:
            raise _ended(self)
        if self._held is not None and _hidden(self):
            raise _across_yield_error(self, "a product was asked for outside the generator")
        if self._over is not None and _shadows(self):
            raise _resumed_error(self)
        self._check_deadline()
        current = _current.get()
        while current is not None and current is not self:
            current = current._parent
        if current is None:
            raise CrossContextAccessError(
                f"{self!r} was asked for a product from outside that scope",
                hint="Resolve products from code running inside the scope",
            )

    # -- finalizers ---------------------------------------------------------

    def on_close(self, fn: Finalizer) -> Finalizer:
        """Run ``fn(exc)`` when the scope exits; returns ``fn`` so it works as a decorator.

        ``exc`` is the body's exception (the :class:`ContextExpiredError` on
        expiry, the cancellation on an outside cancel) or ``None``. Finalizers
        run in reverse order of registration, all of them, shielded from
        cancellation. ``async`` finalizers need an ``async with`` scope.

        Raises:
            UsageError: The scope is not active, or ``fn`` is async on a sync scope.
        """
        if self._state != _ACTIVE:
            raise UsageError(f"on_close() on a scope that is not active: {self!r}")
        if self._reentered is not None:
            # A re-entered scope is the enclosing one: its exit runs nothing of its own.
            return self._reentered.on_close(fn)
        if not callable(fn):
            raise UsageError(f"on_close() takes a callable, got {type(fn).__name__}")
        if not self._async and _is_async_callable(fn):
            raise UsageError(
                "an async finalizer needs an `async with` scope",
                hint="Enter the scope with `async with`, or register a sync finalizer",
            )
        if self._finalizers is None:
            self._finalizers = [fn]
        else:
            self._finalizers.append(fn)
        return fn

    # -- finishing the work early ------------------------------------------------

    def on_finish(self, fn: FinishHook) -> FinishHook:
        """Run ``fn()`` (sync or async) when :meth:`finish` is called; returns ``fn``.

        A finish hook ends a unit of work **early**, at a point where its
        failure can still change the outcome: a session provided by
        ``SessionManager.provide_to`` commits in one, and ``IsolationMiddleware``
        calls :meth:`finish` before it sends the response's status. The hook is
        an optional early step: what it ends must also be ended by the scope's
        finalizers (:meth:`on_close`), for a scope whose owner never calls
        :meth:`finish`.

        Raises:
            UsageError: The scope is not active, or ``fn`` is not callable.
        """
        if self._state != _ACTIVE:
            raise UsageError(f"on_finish() on a scope that is not active: {self!r}")
        if self._reentered is not None:
            return self._reentered.on_finish(fn)
        if not callable(fn):
            raise UsageError(f"on_finish() takes a callable, got {type(fn).__name__}")
        if self._finishers is None:
            self._finishers = [fn]
        else:
            self._finishers.append(fn)
        return fn

    async def finish(self) -> None:
        """Run the finish hooks registered so far, last first, each once; the scope stays open.

        Called by the scope's owner when its main work is done (the middleware:
        before the response). Every hook runs; the first failure is raised, with
        the others added to it as notes. A hook registered later runs at the
        next call, or never: the scope's finalizers end its work at exit.

        Raises:
            UsageError: The scope is not active.
        """
        if self._state != _ACTIVE:
            raise UsageError(f"finish() on a scope that is not active: {self!r}")
        if self._reentered is not None:
            return await self._reentered.finish()
        hooks, self._finishers = self._finishers, None
        if not hooks:
            return None
        failure: Exception | None = None
        for fn in reversed(hooks):
            try:
                result = fn()
                if result is not None and inspect.isawaitable(result):
                    await result
            except Exception as raised:
                if failure is None:
                    failure = raised
                else:
                    failure.add_note(f"isolation: another finish hook failed too: {raised!r}")
        if failure is not None:
            raise failure
        return None

    # -- entering and leaving -------------------------------------------------

    def _bind(self) -> Scope | None:
        """Bind this scope, or return the enclosing one when re-entered."""
        if self._state != _NEW:
            raise UsageError(f"a Scope is entered once; {self!r} was entered before")
        ctx = self._ctx
        deadline = ctx.expires_at
        outer = _current.get()
        if outer is not None and (outer._held is not None or outer._over is not None):
            outer = self._outer_seen(outer)
        if outer is not None and outer._state == _ACTIVE:
            if self._lifetime > outer._lifetime:
                raise UsageError(
                    f"a {self._lifetime.name} scope cannot be entered inside a "
                    f"{outer._lifetime.name} scope",
                    hint="Enter the longer-lived scope first (a connection holds requests)",
                )
            if (
                outer._ctx is ctx
                and outer._lifetime == self._lifetime
                and (self._registry is None or self._registry is outer._registry)
            ):
                outer._check_deadline()
                self._reentered = outer
                self._state = _ACTIVE
                return outer
            if outer._ctx.user_id == ctx.user_id and outer._ctx.tenant_id == ctx.tenant_id:
                self._parent = outer
                if self._registry is None:
                    self._registry = outer._registry
            elif not self._allow_switch:
                raise ContextSwitchError(
                    f"cannot enter a scope for {redact_principal(ctx.principal)} "
                    f"inside the scope of {redact_principal(outer._ctx.principal)}",
                    entered=ctx.principal,
                    bound=outer._ctx.principal,
                )
            if outer._deadline is not None and (deadline is None or outer._deadline < deadline):
                deadline = outer._deadline
        if deadline is not None and _clock._now() >= deadline:
            _bump("expired")
            raise ContextExpiredError(
                f"the context of {redact_principal(ctx.principal)} has expired"
            )
        self._deadline = deadline
        # A held scope, or one over a held scope, has no fast path: every read asks _seen.
        if self._held is not None or self._over is not None:
            pass
        elif deadline is None:
            self._fast = ctx
        else:
            self._timed = deadline
        self._token = _current.set(self)
        self._state = _ACTIVE
        _opened.increment()
        return None

    def _outer_seen(self, outer: Scope) -> Scope | None:
        """The enclosing scope as this code sees it, past held scopes out of its sight.

        A held scope of a generator that has yielded is not bound out here: this
        scope binds over it (as a child of its visible parent, or as a root, so
        the thread or task stays usable) and remembers it, so that the
        generator, resumed under this scope, is refused rather than run as its
        user. Inside a generator resumed under another scope, nothing binds.
        """
        found: Scope | None = outer
        while found is not None and _hidden(found):
            found = found._parent
        if found is not None and found._over is not None:
            if _shadows(found):
                raise _resumed_error(found)
            self._over = found._over
        if found is not outer:
            self._over = outer
        return found

    def _check_deadline(self) -> None:
        if self._deadline is not None and _clock._now() >= self._deadline:
            raise ContextExpiredError(
                f"the context of {redact_principal(self._ctx.principal)} has expired"
            )

    def _unbind(self) -> UsageError | None:
        """End the scope and restore the binding; the error to raise if that was refused.

        A scope exited in another :class:`~contextvars.Context` (a generator closed
        elsewhere) cannot reset its own token there: that Context gets what was
        bound before the scope, and the exit is refused with :class:`UsageError`,
        never a ``ValueError`` from a foreign token.
        """
        token, self._token = self._token, None
        self._state = _ENDED
        self._fast = None
        self._finalizers = None
        self._finishers = None
        self._data = None
        self._timed = None
        # A class-level default, cleared only where set (a store makes the __dict__).
        if self._cancel_scope is not None:
            self._cancel_scope = None
        if token is None:
            return None
        _closed_increment()
        if self._held is None:
            try:
                _current.reset(token)
            except ValueError:  # the token was made in another Context
                return self._exited_elsewhere(token)
            return None
        return self._unbind_held(token)

    def _unbind_held(self, token: Token[Scope | None]) -> UsageError | None:
        """``_unbind`` for a scope a generator entered: refuse an exit out of place."""
        if _current.get() is self:
            try:
                _current.reset(token)
            except ValueError:
                return self._exited_elsewhere(token)
            self._held = None
            return None
        # Another scope is bound on top (the consumer's), or this is a Context
        # that never bound this scope: leave its binding alone.
        return self._exited_elsewhere(token, reset=False)

    def _exited_elsewhere(self, token: Token[Scope | None], *, reset: bool = True) -> UsageError:
        previous = token.old_value
        before = None if previous is Token.MISSING else previous
        if reset and _current.get() is self:
            # Only where this scope is bound (a copy of its Context): a scope bound
            # here on top (another user's) keeps this Context as that user's.
            _current.set(before)
        what = (
            "it was exited in another context than the one it was entered in"
            if reset
            else "it was exited under another scope, or in another context"
        )
        if self._held is None:
            return UsageError(
                f"the scope of {redact_principal(self._ctx.principal)} was exited out of "
                f"place: {what}",
                hint="Enter and exit a scope with `with` or `async with`, in one task",
            )
        # Where this scope is still bound (the generator's consumer, a pool's
        # worker), the next read restores what was bound before it (_restore).
        error = _across_yield_error(self, what)
        self._held.frame = None
        self._held.before = before
        return error

    def __enter__(self) -> Scope:
        # Who runs the `with`: a generator's body may hold the scope across a
        # yield (see _seen). One frame look-up, the cost of the check.
        frame = _getframe(1)
        if frame.f_code.co_flags & _YIELDS or frame.f_globals is _CONTEXTLIB:
            self._note_holder(frame)
        elif self._state == _NEW and self._ctx.expires_at is None and _get_current() is None:
            # The common case, _bind's outcome without its questions: not entered
            # before (so not held), no enclosing scope, no deadline.
            self._fast = self._ctx
            self._token = _set_current(self)
            self._state = _ACTIVE
            _opened_increment()
            return self
        outer = self._bind()
        return self if outer is None else outer

    def _enter_root(self) -> Scope:
        """Bind as a root scope with no deadline (the common case of ``__aenter__``)."""
        if self._state != _NEW:
            return self._bind() or self  # raises: a scope is entered once
        self._fast = self._ctx
        self._token = _current.set(self)
        self._state = _ACTIVE
        _opened_increment()
        return self

    def _note_holder(self, frame: FrameType | None) -> None:
        """Remember the generator whose body enters this scope (see _seen).

        contextlib's frames (``ExitStack``, the ``__enter__`` of a
        ``@contextmanager``) are skipped to the code that enters. A generator
        that a context manager drives holds the scope for whoever entered that
        context manager: if that is itself a generator's body, the scope is held
        there. Generator fixtures hold a scope for their test, on purpose.
        """
        if self._state != _NEW:
            return
        while frame is not None:
            while frame is not None and frame.f_globals is _CONTEXTLIB:
                frame = frame.f_back
            if frame is None or not frame.f_code.co_flags & _YIELDS:
                return
            caller = frame.f_back
            if caller is not None and caller.f_globals is _CONTEXTLIB:
                frame = caller  # a @contextmanager helper: who entered it?
                continue
            if not _fixture_runner(caller):
                self._held = _Hold(frame, _task_key())
            return

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if self._fast is not None and self._finalizers is None:
            # The common case, _unbind's work without its questions: bound here by
            # this scope (_fast: not re-entered, not held, no deadline, so no
            # cancel scope and no _timed), no finalizers.
            token, self._token = self._token, None
            self._state = _ENDED
            self._fast = None
            self._finishers = None
            self._data = None
            _closed_increment()
            try:
                _current.reset(token)  # type: ignore[arg-type]
            except ValueError:  # the token was made in another Context
                raise self._exited_elsewhere(token) from exc  # type: ignore[arg-type]
            return False
        if self._reentered is not None:
            self._state = _ENDED
            return False
        expired: ContextExpiredError | None = None
        if exc is None and self._deadline is not None and _clock._now() >= self._deadline:
            expired = self._expired_error()
        refused: UsageError | None = None
        if self._finalizers:
            try:
                self._run_sync_finalizers(exc if expired is None else expired)
            finally:
                refused = self._unbind()
        else:
            refused = self._unbind()
        if refused is not None:
            raise refused from exc if expired is None else expired
        if expired is not None:
            raise expired
        return False

    async def __aenter__(self) -> Scope:
        self._async = True
        frame = _getframe(1)
        if frame.f_code.co_flags & _YIELDS or frame.f_globals is _CONTEXTLIB:
            self._note_holder(frame)
        if self._held is None and self._ctx.expires_at is None and _current.get() is None:
            entered = self._enter_root()
        else:
            bound = self._bind()
            entered = self if bound is None else bound
        if entered is self and self._deadline is not None:
            try:
                self._arm_deadline()
            except BaseException:
                self._unbind()
                raise
        return entered

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if self._reentered is not None:
            self._state = _ENDED
            return False
        expired: ContextExpiredError | None = None
        cancel_scope = self._cancel_scope
        if cancel_scope is not None and self._held is not None and _task_key() != self._held.by:
            # An async generator closed by another task: the deadline's cancel scope
            # belongs to the task that entered it and cannot be exited here. Disarm
            # it, so it never cancels that task; _unbind then refuses the exit.
            _clock.get_clock().unwatch(self._clock_moved)
            cancel_scope.deadline = math.inf
        elif cancel_scope is not None:
            _clock.get_clock().unwatch(self._clock_moved)
            try:
                cancel_scope.__exit__(exc_type, exc, tb)
            except BaseException as raised:  # the cancel scope re-raised: keep what it gives
                exc = raised
            timed_out = cancel_scope.cancel_called or _clock._now() >= self._deadline  # type: ignore[operator]
            if timed_out and (
                exc is None
                or cancel_scope.cancelled_caught
                or isinstance(exc, anyio.get_cancelled_exc_class())
            ):
                expired = self._expired_error()
        elif exc is None and self._deadline is not None and _clock._now() >= self._deadline:
            expired = self._expired_error()
        refused: UsageError | None = None
        try:
            if self._finalizers:
                await self._run_async_finalizers(exc if expired is None else expired)
        finally:
            refused = self._unbind()
        if refused is not None:
            raise refused from exc if expired is None else expired
        if expired is not None:
            raise expired from exc
        return False

    def _expired_error(self) -> ContextExpiredError:
        _bump("expired")
        return ContextExpiredError(
            f"the context of {redact_principal(self._ctx.principal)} expired inside its "
            "scope; the work was cancelled"
        )

    def _arm_deadline(self) -> None:
        assert self._deadline is not None
        clock = _clock.get_clock()
        cancel_scope = anyio.CancelScope()
        cancel_scope.__enter__()
        self._cancel_scope = cancel_scope
        # Whichever comes first: the real sleep to the deadline, or a clock that
        # moves when told to (FakeClock) calling _clock_moved past it.
        cancel_scope.deadline = anyio.current_time() + clock.deadline_to_sleep_time(self._deadline)
        clock.watch(self._clock_moved)

    def _clock_moved(self) -> None:
        """Called by a clock that moved: cancel the body if the deadline passed."""
        cancel_scope = self._cancel_scope
        if (
            cancel_scope is not None
            and self._deadline is not None
            and _clock._now() >= self._deadline
        ):
            cancel_scope.cancel()

    # -- finalizers at exit -----------------------------------------------------

    def _run_sync_finalizers(self, exc: BaseException | None) -> None:
        failures: list[BaseException] | None = None
        for fn in reversed(self._finalizers or ()):
            try:
                result = fn(exc)
                if result is not None and inspect.isawaitable(result):
                    if inspect.iscoroutine(result):
                        result.close()
                    raise UsageError("a finalizer of a sync scope returned an awaitable")
            except Exception as failure:
                if failures is None:
                    failures = []
                failures.append(failure)
        if failures:
            self._report_failures(failures, exc)

    async def _run_async_finalizers(self, exc: BaseException | None) -> None:
        failures: list[BaseException] = []
        # Sync finalizers never await; async ones run shielded and bounded, the
        # shield paid for only if they suspend (see _shield).
        for fn in reversed(self._finalizers or ()):
            try:
                result = fn(exc)
                if result is None or (
                    type(result) is not CoroutineType and not inspect.isawaitable(result)
                ):
                    continue
                rest = start_shielded(result, self._cleanup_timeout)
                overran = False if rest is None else await rest
            except Exception as failure:
                failures.append(failure)
                continue
            if overran:
                name = str(getattr(fn, "__qualname__", fn))
                failures.append(
                    CleanupTimeoutError(
                        f"finalizer {name!r} overran its cleanup time of {self._cleanup_timeout} s",
                        finalizer=name,
                        timeout=self._cleanup_timeout,
                    )
                )
        if failures:
            self._report_failures(failures, exc)

    def _report_failures(self, failures: list[BaseException], exc: BaseException | None) -> None:
        if not failures:
            return
        for failure in failures:
            _bump("finalizer_failures")
            logger.error(
                "finalizer failed at scope exit",
                exc_info=failure,
                extra={"event": "finalizer_failed", "request_id": self._ctx.request_id},
            )
        if exc is not None:
            for failure in failures:
                exc.add_note(f"isolation: a finalizer of this scope failed: {failure!r}")
            return
        first = failures[0]
        # Chain the later failures behind the first, so none is lost from the traceback.
        link = first
        for later in failures[1:]:
            if link.__context__ is None:
                link.__context__ = later
            link = later
        raise first

    # -- per-scope storage (ContextLocal, scoped factories) ---------------------

    def _storage(self) -> tuple[dict[object, Any], threading.RLock]:
        """Return this scope's storage and lock, creating them once (thread-safe)."""
        data, lock = self._data, self._lock
        if data is not None and lock is not None:
            return data, lock
        with _storage_lock:
            if self._state == _ENDED:
                raise ScopeEndedError(f"{self!r} has ended")
            if self._lock is None:
                self._lock = _RLock()
            if self._data is None:
                self._data = {}
            return self._data, self._lock


_storage_lock = threading.Lock()


class _Pending:
    """The marker of a value being built in a scope's storage; others wait for it.

    Made by :mod:`isolation.context._once`, the one "build once per scope"
    primitive, which sets ``thread`` and ``task`` (the builder's; ``task`` stays
    ``None`` for a sync build). Waiters on the builder's own thread wait on an
    anyio event (``done``); a waiter in another thread (with an event loop of
    its own, or none) waits on a threading event (``done_elsewhere``), since an
    anyio event wakes only its own loop. Both are made only when such a waiter
    arrives (most builds are uncontended): class attributes until then, so that
    making a marker costs one attribute set.
    """

    thread: int = 0
    task: object = None
    done: anyio.Event | None = None
    done_elsewhere: threading.Event | None = None

    def wake(self) -> None:
        """Wake every waiter; called by the builder once its value is stored or dropped."""
        if self.done is not None:
            self.done.set()
        if self.done_elsewhere is not None:
            self.done_elsewhere.set()


def _ended(scope: Scope) -> ScopeEndedError:
    _bump("escapes_detected")
    return ScopeEndedError(
        f"the scope of {redact_principal(scope._ctx.principal)} has ended, but code "
        "still runs in a copy of it"
    )


def _restore(scope: Scope) -> Scope | None:
    """Unbind held scopes that ended in another context, here where they are still bound.

    A generator closed elsewhere could not reset its binding in its consumer's
    context; that binding is replaced by what was bound before the generator's
    scope, so the consumer (or a pool's worker) is where it was, not failing closed
    for ever.
    """
    found: Scope | None = scope
    while found is not None and found._held is not None:
        before = found._held.before
        if isinstance(before, _Unset):
            break
        found = before
    _current.set(found)
    return found


def current_scope() -> Scope:
    """Return the bound scope.

    Raises:
        NoContextError: No scope is bound here.
        ScopeEndedError: The scope bound here has ended (the caller escaped it).
        ContextExpiredError: The scope's deadline has passed.
    """
    scope = _current.get()
    if scope is not None and scope._held is not None and scope._held.before is not _UNSET:
        scope = _restore(scope)
    if scope is None:
        raise NoContextError("no isolation scope is bound here")
    if scope._held is not None or scope._over is not None:
        scope = _seen(scope)
    if scope._state != _ACTIVE:
        error = _ended(scope)
        # Work left running after its deadline (a thread abandoned on cancel)
        # learns that the context expired, as the contract says.
        scope._check_deadline()
        raise error
    scope._check_deadline()
    return scope


def current_context() -> UserContext:
    """Return the bound user context.

    Raises:
        NoContextError: No scope is bound here.
        ScopeEndedError: The scope bound here has ended (the caller escaped it).
        ContextExpiredError: The context's deadline has passed.
    """
    scope = _get_current()
    if scope is not None:
        ctx = scope._fast
        if ctx is not None:
            return ctx
        timed = scope._timed
        if timed is not None and _clock._now() < timed:
            return scope._ctx
    return current_scope()._ctx


def current_context_or_none() -> UserContext | None:
    """Return the bound user context, or ``None`` when no scope is bound.

    Fails closed like :func:`current_context` for a scope that has ended or
    expired: those raise, never return ``None``.
    """
    scope = _get_current()
    if scope is None:
        return None
    ctx = scope._fast
    if ctx is not None:
        return ctx
    timed = scope._timed
    if timed is not None and _clock._now() < timed:
        return scope._ctx
    return current_scope()._ctx


Scope.__module__ = "isolation"
ScopeStats.__module__ = "isolation"
