"""FM9, agent execution state bleeds between users: ``@owned`` refuses every member.

Subject: a class decorator with the contract of :func:`isolation.owned`. An
agent class carries its state behind every shape of member an application
writes: an ``lru_cache``-wrapped method, a class-based decorator, a
``partialmethod``, a method attached after decoration, ``__getattr__``
delegation, ``__await__``, ``__iter__``, ``__call__``, a
``functools.cached_property`` (cached by alice's read), ``__format__`` and
``__eq__``. Alice's agent is
built and used in her scope, then each member is used in bob's scope, live at
the same time: each must raise :class:`~isolation.CrossContextAccessError`,
and each must keep working for alice. The mutant is ``@owned`` as it was
before issue 16: it wraps plain public functions only.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Generator, Iterator
from typing import Any

import anyio.lowlevel

from isolation._errors import CrossContextAccessError
from isolation.context._interface import bound_scope
from isolation.context._model import UserContext
from isolation.context._scope import Scope
from isolation.factories._owned import owned
from isolation.report._modes._support.registration import add_check
from isolation.report._registry import ModeRegistry, Settings

__all__ = ["register"]

Decorator = Callable[[type], type]


class _Logged:
    """A class-based method decorator, as logging and retry libraries write them."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        return self if instance is None else functools.partial(self.fn, instance)


class _Memory:
    def __init__(self, user: str) -> None:
        self.notes = [f"{user}'s secret"]

    def recall(self) -> list[str]:
        return list(self.notes)


def _agent_class(decorate: Decorator) -> type:
    """A fresh agent class with every member shape, decorated, then one method attached."""

    class Agent:
        def __init__(self, user: str) -> None:
            self.user = user
            self._memory = _Memory(user)

        @functools.lru_cache(maxsize=64)  # noqa: B019 (the shape under check)
        def profile(self) -> str:
            return f"profile of {self.user}"

        @_Logged
        def history(self) -> list[str]:
            return self._memory.recall()

        def _say(self, what: str) -> str:
            return f"{self.user} says {what}"

        greet = functools.partialmethod(_say, "hello")

        def __getattr__(self, name: str) -> Any:
            if name.startswith("_"):
                raise AttributeError(name)
            return getattr(self._memory, name)

        def __await__(self) -> Generator[Any, None, str]:
            return self._answer().__await__()

        async def _answer(self) -> str:
            await anyio.lowlevel.checkpoint()
            return f"answer for {self.user}"

        def __iter__(self) -> Iterator[str]:
            return iter(self._memory.notes)

        def __call__(self) -> str:
            return self.user

        @functools.cached_property
        def plan(self) -> list[str]:
            return list(self._memory.notes)

        def __format__(self, spec: str) -> str:
            return str(self._memory.notes)

        def __eq__(self, other: object) -> bool:
            return self._memory.notes == other

        __hash__ = object.__hash__

    decorated = decorate(Agent)

    def peek(self: Any) -> str:
        return str(self.user)

    decorated.peek = peek  # type: ignore[attr-defined]  # attached after decoration
    return decorated


_USES: tuple[tuple[str, Callable[[Any], Any]], ...] = (
    ("an lru_cache-wrapped method", lambda agent: agent.profile()),
    ("a class-based decorator", lambda agent: agent.history()),
    ("a partialmethod", lambda agent: agent.greet()),
    ("a method attached after decoration", lambda agent: agent.peek()),
    ("__getattr__ delegation", lambda agent: agent.recall()),
    ("iteration", list),
    ("a call", lambda agent: agent()),
    # Alice's read comes first: the value is then cached in the instance dict.
    ("a cached_property", lambda agent: agent.plan),
    ("formatting", lambda agent: f"{agent}"),
    ("a comparison", lambda agent: agent == ["fm9-alice's secret"]),
)


async def check_owned_refuses_every_member(decorate: Decorator, settings: Settings) -> list[str]:
    """Alice's agent, every member used in bob's live scope: each refused, each alice's."""
    agent_class = _agent_class(decorate)
    violations: list[str] = []
    async with Scope(UserContext.new("fm9-alice", tenant_id="fm9")):
        agent = agent_class("fm9-alice")
        for what, use in _USES:
            try:
                use(agent)
            except CrossContextAccessError as exc:
                violations.append(f"{what} was refused to its owner: {exc}")
        try:
            await agent
        except CrossContextAccessError as exc:
            violations.append(f"await was refused to its owner: {exc}")
        async with Scope(UserContext.new("fm9-bob", tenant_id="fm9"), allow_switch=True):
            for what, use in _USES:
                try:
                    got = use(agent)
                except CrossContextAccessError:
                    continue
                violations.append(f"{what} of alice's agent answered bob: {got!r}")
            try:
                got = await agent
            except CrossContextAccessError:
                pass
            else:
                violations.append(f"await of alice's agent answered bob: {got!r}")
    return violations


def _functions_only(cls: type) -> type:
    """Mutant: ``@owned`` before issue 16, which wrapped plain public functions only."""
    original_init: Any = cls.__init__  # type: ignore[misc]

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N807
        object.__setattr__(self, "_fm9_owner", bound_scope())
        original_init(self, *args, **kwargs)

    def guard(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def guarded(self: Any, /, *args: Any, **kwargs: Any) -> Any:
            if bound_scope() is not self._fm9_owner:
                raise CrossContextAccessError("used outside its owner scope")
            return fn(self, *args, **kwargs)

        return guarded

    for name, value in list(vars(cls).items()):
        if isinstance(value, types.FunctionType) and not name.startswith("_"):
            setattr(cls, name, guard(value))
    cls.__init__ = __init__  # type: ignore[misc]
    return cls


def _library() -> Decorator:
    return owned


def _mutant() -> Decorator:
    return _functions_only


def register(registry: ModeRegistry) -> None:
    """Register FM9's @owned members check."""
    add_check(
        registry,
        9,
        "owned-refuses-every-member",
        check_owned_refuses_every_member,
        library=_library,
        mutant=_mutant,
        description=(
            "alice's @owned agent used in bob's live scope through lru_cache, a class "
            "decorator, partialmethod, a late method, __getattr__, await, iter, call, a "
            "cached_property after alice's read, format and ==: each refused, each still "
            "alice's"
        ),
    )
