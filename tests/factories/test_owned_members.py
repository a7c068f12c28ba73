"""@owned guards every callable member (issue 16, finding 12).

Before, only plain functions, properties and a few dunders were wrapped:
``lru_cache``-wrapped methods, class-based decorators, ``partialmethod``,
methods attached after decoration, ``__getattr__`` delegation and ``await
agent`` returned alice's state to bob. Each shape below builds alice's
instance in her scope and uses it in bob's, live at the same time.
"""

from __future__ import annotations

import collections
import functools
import operator
from collections.abc import Callable, Generator
from typing import Any

import anyio.lowlevel
import pytest

import isolation
from isolation import UserContext

Refused = isolation.CrossContextAccessError


class logged:
    """A class-based method decorator, as logging and retry libraries write them."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        return self if instance is None else functools.partial(self.fn, instance)


class Memory:
    """What an agent delegates to."""

    def __init__(self, user: str) -> None:
        self.notes = [f"{user}'s secret"]

    def recall(self) -> list[str]:
        return list(self.notes)


@isolation.owned
class Agent:
    """An agent with every member shape of the issue."""

    def __init__(self, user: str) -> None:
        self.user = user
        self._memory = Memory(user)

    @functools.lru_cache(maxsize=128)  # noqa: B019 (the shape under test)
    def profile(self) -> str:
        return f"profile of {self.user}"

    @logged
    def history(self) -> list[str]:
        return self._memory.recall()

    def _say(self, what: str) -> str:
        return f"{self.user} says {what}"

    greet = functools.partialmethod(_say, "hello")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._memory, name)  # delegation: agent.recall() is memory.recall()

    def __await__(self) -> Generator[Any, None, str]:
        return self._answer().__await__()

    async def _answer(self) -> str:
        await anyio.lowlevel.checkpoint()
        return f"answer for {self.user}"


def call(obj: object, name: str, *args: Any) -> Any:
    """``obj.name(*args)``, the attribute read and the call both in the running scope."""
    return getattr(obj, name)(*args)


def alices_agent(live: Callable[..., Any]) -> tuple[Agent, Any]:
    """Alice's agent, built and used in her scope; bob's live scope."""
    alice = live("alice")
    agent = alice.run(Agent, "alice")
    assert alice.run(call, agent, "profile") == "profile of alice"
    return agent, live("bob")


class TestEachShapeRefusedInBobsScope:
    def test_lru_cache_method(self, live: Callable[..., Any]) -> None:
        agent, bob = alices_agent(live)
        with pytest.raises(Refused):
            bob.run(call, agent, "profile")

    def test_class_based_decorator(self, live: Callable[..., Any]) -> None:
        agent, bob = alices_agent(live)
        with pytest.raises(Refused):
            bob.run(call, agent, "history")

    def test_partialmethod(self, live: Callable[..., Any]) -> None:
        agent, bob = alices_agent(live)
        with pytest.raises(Refused):
            bob.run(call, agent, "greet")

    def test_getattr_delegation(self, live: Callable[..., Any]) -> None:
        agent, bob = alices_agent(live)
        with pytest.raises(Refused):
            bob.run(call, agent, "recall")

    def test_method_attached_after_decoration(self, live: Callable[..., Any]) -> None:
        """Attached after @owned, before alice's build: guarded at her build."""

        @isolation.owned
        class Late:
            def __init__(self) -> None:
                self.secret = "alice's"

        def peek(self: Late) -> str:
            return self.secret

        Late.peek = peek  # type: ignore[attr-defined]
        agent = live("alice").run(Late)
        with pytest.raises(Refused):
            live("bob").run(call, agent, "peek")

    def test_method_replaced_after_a_build(self, live: Callable[..., Any]) -> None:
        """A guarded method replaced after a build is guarded again at the next build."""

        @isolation.owned
        class Swapped:
            def __init__(self) -> None:
                self.secret = "alice's"

            def peek(self) -> str:
                return "nothing"

        agent = live("alice").run(Swapped)
        Swapped.peek = lambda self: self.secret  # type: ignore[method-assign]
        live("carol").run(Swapped)  # any later build re-guards the class
        with pytest.raises(Refused):
            live("bob").run(call, agent, "peek")

    @pytest.mark.anyio
    async def test_await_agent(self) -> None:
        """``await agent`` in bob's scope: refused."""
        async with isolation.scope(UserContext.new("alice")):
            agent = Agent("alice")
            assert await agent == "answer for alice"
            async with isolation.scope(UserContext.new("bob"), allow_switch=True):
                with pytest.raises(Refused):
                    await agent

    def test_bound_in_alices_scope_called_in_bobs(self, live: Callable[..., Any]) -> None:
        """A member bound in alice's scope is checked again when called in bob's."""
        alice = live("alice")
        agent = alice.run(Agent, "alice")
        bound = [alice.run(getattr, agent, name) for name in ("profile", "recall")]
        bob = live("bob")
        for method in bound:
            with pytest.raises(Refused):
                bob.run(method)


class TestOwnerStillWorks:
    @pytest.mark.anyio
    async def test_every_shape_works_for_the_owner(self) -> None:
        async with isolation.scope(UserContext.new("alice")):
            agent = Agent("alice")
            assert agent.profile() == "profile of alice"
            assert agent.profile.cache_info().hits >= 0  # the lru_cache's own API
            assert agent.history() == ["alice's secret"]
            assert agent.greet() == "alice says hello"
            assert agent.recall() == ["alice's secret"]
            assert await agent == "answer for alice"
            assert agent._memory.notes == ["alice's secret"]  # private: not guarded

    def test_custom_data_descriptor(self, live: Callable[..., Any]) -> None:
        """A descriptor of another kind (with __set__) is checked on read and write."""

        class Field:
            def __set_name__(self, owner: type, name: str) -> None:
                self.name = "_" + name

            def __get__(self, instance: object, owner: type | None = None) -> Any:
                return self if instance is None else getattr(instance, self.name)

            def __set__(self, instance: object, value: Any) -> None:
                setattr(instance, self.name, value)

        @isolation.owned
        class Note:
            body = Field()

            def __init__(self) -> None:
                self.body = "alice's note"

        note = live("alice").run(Note)
        bob = live("bob")
        with pytest.raises(Refused):
            bob.run(lambda: note.body)
        with pytest.raises(Refused):
            bob.run(setattr, note, "body", "bob's")


class TestRefusedAtDecoration:
    @pytest.mark.parametrize("base", [dict, list, set, collections.OrderedDict, bytearray])
    def test_builtin_container_base(self, base: type) -> None:
        """C code reads a dict subclass's items without calling a method: refused."""
        with pytest.raises(isolation.UsageError, match=base.__qualname__):
            isolation.owned(type("Memory", (base,), {}))


class TestDataStaysReadable:
    def test_slots_repr_and_truth_are_not_guarded(self) -> None:
        """Slots are data like __dict__ attributes; repr and truth tests work anywhere."""

        @isolation.owned
        class Slotted:
            __slots__ = ("__weakref__", "items")

            def __init__(self) -> None:
                self.items = ["a"]

            def __len__(self) -> int:
                return len(self.items)

            def __repr__(self) -> str:
                return f"<Slotted {self.items!r}>"

            def add(self, item: str) -> None:
                self.items.append(item)

        with isolation.scope(UserContext.new("alice")):
            slotted = Slotted()
            slotted.add("b")
        assert slotted.items == ["a", "b"]
        assert repr(slotted) == "<Slotted ['a', 'b']>"
        assert slotted
        assert len(slotted) == 2
        with pytest.raises(Refused):
            slotted.add("c")


class TestMoreShapes:
    def test_custom_getattribute(self, live: Callable[..., Any]) -> None:
        """A class that computes attributes in __getattribute__: public names checked."""

        @isolation.owned
        class Computed:
            def __init__(self) -> None:
                self._secret = "alice's"

            def __getattribute__(self, name: str) -> Any:
                if name == "secret":
                    return object.__getattribute__(self, "_secret")
                return object.__getattribute__(self, name)

        alice = live("alice")
        computed = alice.run(Computed)
        assert alice.run(getattr, computed, "secret") == "alice's"
        with pytest.raises(Refused):
            live("bob").run(getattr, computed, "secret")

    def test_singledispatchmethod(self, live: Callable[..., Any]) -> None:
        @isolation.owned
        class Dispatch:
            def __init__(self) -> None:
                self.secret = "alice's"

            @functools.singledispatchmethod
            def show(self, arg: object) -> str:
                return f"{self.secret} {arg}"

        dispatch = live("alice").run(Dispatch)
        with pytest.raises(Refused):
            live("bob").run(call, dispatch, "show", 1)


class caching:
    """A caching descriptor of the kind Django and others ship: not a subclass of
    functools.cached_property, it stores the value in the instance dict under its name."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.name = fn.__name__

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return self
        value = instance.__dict__[self.name] = self.fn(instance)
        return value


@isolation.owned
class Assistant:
    """The second review's shape (issue 16, M2): members that still handed alice's data to bob."""

    def __init__(self, user: str) -> None:
        self._user = user
        self._notes = [f"{user}'s medical note"]
        self.computed = 0

    @functools.cached_property
    def profile(self) -> dict[str, object]:  # computed once per instance
        self.computed += 1
        return {"user": self._user, "notes": list(self._notes)}

    @caching
    def summary(self) -> str:
        return "; ".join(self._notes)

    def __format__(self, spec: str) -> str:
        return str(self._notes)

    def __eq__(self, other: object) -> bool:
        return self._notes == other

    def __lt__(self, other: object) -> bool:
        return bool(self._notes < other)  # type: ignore[operator]

    def __hash__(self) -> int:
        return hash(self._user)


def alices_assistant() -> Assistant:
    """Alice's assistant, its cached members read once in her scope (which then ends)."""
    with isolation.scope(UserContext.new("alice")):
        assistant = Assistant("alice")
        assert assistant.profile["user"] == "alice"  # cached in the instance dict now
        assert assistant.summary == "alice's medical note"
    return assistant


class TestCachedAndComparedInBobsScope:
    """Before, a cached_property was checked on its first read only (then the instance
    dict answered), and ``f'{a}'`` and ``a == [...]`` ran for anyone."""

    def test_cached_property_after_the_owners_read(self) -> None:
        assistant = alices_assistant()
        with isolation.scope(UserContext.new("bob")), pytest.raises(Refused):
            assistant.profile

    def test_caching_descriptor_after_the_owners_read(self) -> None:
        assistant = alices_assistant()
        with isolation.scope(UserContext.new("bob")), pytest.raises(Refused):
            assistant.summary

    def test_cached_property_live_scopes(self, live: Callable[..., Any]) -> None:
        """Alice's scope still live: bob's read, write and delete are all refused."""
        alice = live("alice")
        assistant = alice.run(Assistant, "alice")
        alice.run(getattr, assistant, "profile")
        bob = live("bob")
        with pytest.raises(Refused):
            bob.run(getattr, assistant, "profile")
        with pytest.raises(Refused):
            bob.run(setattr, assistant, "profile", {"user": "bob"})
        with pytest.raises(Refused):
            bob.run(delattr, assistant, "profile")
        assert alice.run(getattr, assistant, "profile")["user"] == "alice"

    def test_format(self) -> None:
        assistant = alices_assistant()
        with isolation.scope(UserContext.new("bob")):
            with pytest.raises(Refused):
                f"{assistant}"
            with pytest.raises(Refused):
                format(assistant, "")

    def test_comparisons(self) -> None:
        assistant = alices_assistant()
        with isolation.scope(UserContext.new("bob")):
            with pytest.raises(Refused):
                assistant == ["alice's medical note"]  # noqa: B015
            with pytest.raises(Refused):
                assistant < ["b"]  # noqa: B015
            with pytest.raises(Refused):
                operator.eq(["alice's medical note"], assistant)  # reflected


class TestCachedAndComparedForTheOwner:
    def test_cached_property_still_caches(self) -> None:
        """The owner computes once, reads the cache, can assign and delete (recompute)."""
        with isolation.scope(UserContext.new("alice")):
            assistant = Assistant("alice")
            first = assistant.profile
            assert assistant.profile is first
            assert assistant.computed == 1
            assistant.profile = {"user": "set"}
            assert assistant.profile == {"user": "set"}
            del assistant.profile
            assert assistant.profile["user"] == "alice"
            assert assistant.computed == 2
            assert assistant.summary == "alice's medical note"
            assert f"{assistant}" == '["alice\'s medical note"]'
            assert assistant == ["alice's medical note"]
            assert assistant < ["b"]

    def test_hash_works_anywhere(self) -> None:
        """``__hash__`` is not guarded: the instance stays a dict key and a set member."""
        assistant = alices_assistant()
        with isolation.scope(UserContext.new("bob")):
            assert hash(assistant) == hash("alice")
            assert assistant in {assistant}  # identity first: no comparison runs


class TestCachedInASlot:
    def test_cached_property_of_a_slotted_attrs_class(self) -> None:
        """``@attrs.define`` keeps a cached property in a slot, filled by its __getattr__."""
        import attrs

        @isolation.owned
        @attrs.define
        class Slotted:
            user: str

            @functools.cached_property
            def profile(self) -> str:
                return f"{self.user}'s profile"

        with isolation.scope(UserContext.new("alice")):
            slotted = Slotted("alice")
            assert slotted.profile == "alice's profile"
            assert slotted.profile == "alice's profile"  # from the slot
        with isolation.scope(UserContext.new("bob")), pytest.raises(Refused):
            slotted.profile


class TestWalkOfGuardedClasses:
    def test_cached_property_is_not_shared_state(self, live: Callable[..., Any]) -> None:
        """The guard that replaces a cached_property lives on the class; the walk sees
        through it (to the cached_property, which holds no user's data), so two users'
        builds of one @owned class are not refused."""

        @isolation.owned
        class Profiled:
            def __init__(self) -> None:
                self.user = isolation.current_context().user_id

            @functools.cached_property
            def profile(self) -> str:
                return f"{self.user}'s profile"

        make = isolation.request_scoped(Profiled)
        alice, bob = live("alice"), live("bob")
        alices = alice.run(make)
        assert alice.run(getattr, alices, "profile") == "alice's profile"
        bobs = bob.run(make)
        assert bob.run(getattr, bobs, "profile") == "bob's profile"
        with pytest.raises(Refused):
            bob.run(getattr, alices, "profile")
