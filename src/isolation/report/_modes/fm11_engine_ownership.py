"""FM11, one execution engine serves several users: refused by the walk, and by ownership.

The seed's scenario: six users and a factory that caches three execution
engines and hands them out again. Two named checks:

``walk-refuses``
    Subject: a provider ``provide(factory) -> get_engine`` (the library's is
    ``request_scoped`` with its full walk). The six users' scopes are all live
    at once; each asks for an engine. Property: no engine object is handed to
    two users; the refused ones get :class:`~isolation.SharedStateError`.
    Mutant: a pool handing engines out round-robin.

``owned-refuses``
    Subject: a class decorator with the contract of :func:`isolation.owned`.
    The walk is off (``check="off"``), so only ownership stands between users.
    Property: an engine works in its owner scope (and in a thread that carries
    it), and every call under another user, outside any scope, or in a **later
    request of the same user** raises :class:`~isolation.CrossContextAccessError`.
    Mutant: an ``owned`` that compares users instead of scopes, which the later
    request of the same user catches.
"""

from __future__ import annotations

import contextvars
import functools
import itertools
import types
from collections.abc import Callable
from typing import Any, Final

from isolation._errors import CrossContextAccessError, IsolationError, SharedStateError
from isolation.context._interface import bound_scope
from isolation.context._model import UserContext
from isolation.context._propagation import ContextThreadPoolExecutor
from isolation.context._scope import Scope
from isolation.factories._index import SharedStateIndex
from isolation.factories._owned import owned
from isolation.factories._request_scoped import ScopedFactory, wrap_scoped
from isolation.report._modes._support.registration import add_check
from isolation.report._registry import ModeRegistry, Settings

__all__ = ["register"]

USERS: Final = 6
ENGINES: Final = 3

Provider = Callable[[Callable[[], Any]], Callable[[], Any]]
Decorator = Callable[[type], type]


def _users() -> list[UserContext]:
    return [UserContext.new(f"user-{i}", tenant_id="acme") for i in range(USERS)]


class _EngineCache:
    """The seed's bug: build three engines, then hand the cached ones out again."""

    def __init__(self, engine_class: Callable[[], Any]) -> None:
        self.engine_class = engine_class
        self.engines: list[Any] = []
        self.turn = itertools.count()

    def __call__(self) -> Any:
        if len(self.engines) < ENGINES:
            self.engines.append(self.engine_class())
            return self.engines[-1]
        return self.engines[next(self.turn) % ENGINES]


class _LiveScopes:
    """Several users' scopes live at once in one thread, each in its own context copy."""

    def __init__(self, contexts: list[UserContext]) -> None:
        self.entries: list[tuple[UserContext, contextvars.Context, Scope]] = []
        for ctx in contexts:
            copy = contextvars.Context()
            scope = Scope(ctx)
            copy.run(scope.__enter__)
            self.entries.append((ctx, copy, scope))

    def close(self) -> None:
        for _ctx, copy, scope in reversed(self.entries):
            copy.run(scope.__exit__, None, None, None)


# -- walk-refuses ------------------------------------------------------------------


class _Engine:
    """An execution engine with per-user state."""

    def __init__(self) -> None:
        self.history: list[str] = []

    def run(self, prompt: str) -> int:
        self.history.append(prompt)
        return len(self.history)


def check_walk_refuses(provide: Provider, settings: Settings) -> list[str]:
    """Six users live at once, three cached engines: no engine reaches two users."""
    get_engine = provide(_EngineCache(_Engine))
    holders: dict[int, list[str]] = {}
    found: list[str] = []
    live = _LiveScopes(_users())
    try:
        for ctx, copy, _scope in live.entries:
            try:
                engine = copy.run(get_engine)
            except SharedStateError as exc:
                if not exc.paths or exc.paths[0][:1] != ("_Engine",):
                    found.append(f"refused without naming the engine: paths {exc.paths}")
                continue
            except IsolationError as exc:
                found.append(f"{ctx.user_id}: unexpected {type(exc).__name__}: {exc}")
                continue
            holders.setdefault(id(engine), []).append(ctx.user_id)
    finally:
        live.close()
    for users in holders.values():
        if len(users) > 1:
            found.append(f"one engine served {len(users)} users at once: {sorted(users)}")
    if len(holders) != ENGINES:
        found.append(f"{len(holders)} users got an engine; expected {ENGINES} (one per build)")
    return found


def _library_provider() -> Provider:
    def provide(factory: Callable[[], Any]) -> Callable[[], Any]:
        return wrap_scoped(ScopedFactory(factory, check="full", index=SharedStateIndex()))

    return provide


def _round_robin_provider() -> Provider:
    """Mutant: a pool of engines handed out round-robin, whoever asks."""

    def provide(factory: Callable[[], Any]) -> Callable[[], Any]:
        pool = [factory() for _ in range(ENGINES)]
        turn = itertools.count()
        return lambda: pool[next(turn) % ENGINES]

    return provide


# -- owned-refuses -------------------------------------------------------------------


def _in_thread(pool: ContextThreadPoolExecutor, engine: Any) -> None:
    pool.submit(engine.run, "again").result()


def _engine_class(decorate: Decorator) -> type:
    class Engine:
        def __init__(self) -> None:
            self.history: list[str] = []

        def run(self, prompt: str) -> int:
            self.history.append(prompt)
            return len(self.history)

    return decorate(Engine)


def check_owned_refuses(decorate: Decorator, settings: Settings) -> list[str]:
    """With the walk off: engines work for their owner scope only, never a later request."""
    engine_class = _engine_class(decorate)
    get_engine = wrap_scoped(
        ScopedFactory(_EngineCache(engine_class), check="off", index=SharedStateIndex())
    )
    found: list[str] = []

    def expect_refused(engine: Any, where: str) -> None:
        try:
            engine.run("hello")
        except CrossContextAccessError:
            return
        found.append(f"an engine was used {where}")

    contexts = _users()
    first = _LiveScopes(contexts)
    engines: list[Any] = []
    try:
        for i, (_ctx, copy, _scope) in enumerate(first.entries):
            engine = copy.run(get_engine)
            engines.append(engine)
            if i < ENGINES:  # a fresh engine: it works for its owner, in a thread too
                try:
                    copy.run(engine.run, "hello")
                    with ContextThreadPoolExecutor(max_workers=1) as pool:
                        copy.run(_in_thread, pool, engine)
                except CrossContextAccessError as exc:
                    found.append(f"an engine was refused to its owner scope: {exc}")
            else:  # a cached engine of another user
                copy.run(expect_refused, engine, f"by user-{i}, built for another user")
        expect_refused(engines[0], "outside any scope")
    finally:
        first.close()
    # A later request of the same user: the engine's owner scope has ended.
    later = _LiveScopes(contexts[:1])
    try:
        _ctx, copy, _scope = later.entries[0]
        copy.run(expect_refused, engines[0], "in a later request of the same user")
    finally:
        later.close()
    return found


def _owned_by_user(cls: type) -> type:
    """Mutant: an ``owned`` that records and compares the *user*, not the scope."""
    original_init: Any = cls.__init__  # type: ignore[misc]

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N807
        scope = bound_scope()
        self._owner_principal = None if scope is None else scope.context.principal
        original_init(self, *args, **kwargs)

    def guard(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
            scope = bound_scope()
            if scope is None or scope.context.principal != self._owner_principal:
                raise CrossContextAccessError("used by another user")
            return fn(self, *args, **kwargs)

        return guarded

    for name, value in list(vars(cls).items()):
        if isinstance(value, types.FunctionType) and not name.startswith("_"):
            setattr(cls, name, guard(value))
    cls.__init__ = __init__  # type: ignore[misc]
    return cls


def _library_owned() -> Decorator:
    return owned


def _mutant_owned() -> Decorator:
    return _owned_by_user


def register(registry: ModeRegistry) -> None:
    """Register FM11's checks."""
    add_check(
        registry,
        11,
        "walk-refuses",
        check_walk_refuses,
        library=_library_provider,
        mutant=_round_robin_provider,
        description=(
            "6 users live at once, a factory caching 3 engines: the walk refuses every "
            "engine handed to a second user"
        ),
    )
    add_check(
        registry,
        11,
        "owned-refuses",
        check_owned_refuses,
        library=_library_owned,
        mutant=_mutant_owned,
        description=(
            "walk off, 3 cached engines for 6 users: @owned refuses other users, no "
            "scope, and a later request of the same user"
        ),
    )
