"""@owned: an instance works only in the scope that built it (or a scope nested in it)."""

from __future__ import annotations

import contextvars
import functools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import attrs
import pytest

import isolation
from isolation import UserContext
from isolation.factories._owned import owner_of
from isolation.report import Settings
from isolation.report._modes import fm11_engine_ownership as fm11


@isolation.owned
class Engine:
    """An engine with every kind of guarded member."""

    def __init__(self, name: str = "engine") -> None:
        self.name = name
        self.history: list[str] = []

    def run(self, prompt: str) -> int:
        self.history.append(prompt)
        return len(self.history)

    async def arun(self, prompt: str) -> int:
        await anyio.lowlevel.checkpoint()
        return self.run(prompt)

    def stream(self) -> Iterator[str]:
        yield from ("a", "b")

    async def astream(self) -> AsyncIterator[str]:
        for item in ("a", "b"):
            yield item

    @property
    def size(self) -> int:
        return len(self.history)

    @size.setter
    def size(self, value: int) -> None:
        del self.history[value:]

    @functools.cached_property
    def summary(self) -> str:
        return f"{self.name}: {len(self.history)}"

    def __call__(self) -> str:
        return self.name

    def __getitem__(self, index: int) -> str:
        return self.history[index]

    def _private(self) -> str:
        return "not guarded"

    @staticmethod
    def version() -> int:
        return 1

    def __repr__(self) -> str:
        return "<Engine>"


class TestOwner:
    """Every guarded member works in the owner scope and its nested scopes."""

    def test_all_members_work_for_the_owner(self) -> None:
        """Methods, generators, properties, cached properties, __call__ and __getitem__."""
        with isolation.scope(UserContext.new("alice")) as scope:
            engine = Engine()
            assert owner_of(engine) is scope
            assert engine.run("hi") == 1
            assert list(engine.stream()) == ["a", "b"]
            assert engine.size == 1
            engine.size = 0
            assert engine.size == 0
            assert engine.summary == "engine: 0"
            assert engine() == "engine"
            engine.run("again")
            assert engine[0] == "again"
            assert engine._private() == "not guarded"
            assert Engine.version() == 1

    @pytest.mark.anyio
    async def test_async_members_and_child_tasks(self) -> None:
        """Async methods and async generators work in the owner scope and its child tasks."""
        async with isolation.scope(UserContext.new("alice")):
            engine = Engine()
            assert await engine.arun("hi") == 1
            assert [item async for item in engine.astream()] == ["a", "b"]
            async with anyio.create_task_group() as tg:
                tg.start_soon(engine.arun, "from a child task")
            assert await isolation.to_thread(engine.run, "from a thread") == 3

    def test_thread_through_a_context_executor(self) -> None:
        """A thread that carries the scope shares it."""
        with (
            isolation.ContextThreadPoolExecutor(max_workers=1) as pool,
            isolation.scope(UserContext.new("alice")),
        ):
            engine = Engine()
            assert pool.submit(engine.run, "hi").result() == 1

    def test_nested_scope_of_the_same_user(self) -> None:
        """A child scope (same principal) may use its parent's instance."""
        with isolation.scope(UserContext.new("alice")):
            engine = Engine()
            with isolation.scope(UserContext.new("alice")):
                with isolation.scope(UserContext.new("alice")):
                    assert engine.run("deep") == 1

    def test_repr_and_data_are_not_guarded(self) -> None:
        """repr and plain attributes stay readable anywhere (they are not methods)."""
        with isolation.scope(UserContext.new("alice")):
            engine = Engine()
        assert repr(engine) == "<Engine>"
        assert engine.name == "engine"


class TestRefusals:
    """Another principal, no scope, or an ended owner: CrossContextAccessError."""

    def build(self, user: str = "alice") -> Engine:
        with isolation.scope(UserContext.new(user)):
            return Engine()

    def test_built_outside_any_scope(self) -> None:
        """Construction outside a scope is refused."""
        with pytest.raises(isolation.NoContextError, match="only be built inside a scope"):
            Engine()

    def test_another_principal(self) -> None:
        """Another user's live scope is refused, naming both users."""
        with isolation.scope(UserContext.new("alice")):
            engine = Engine()
            copy = contextvars.Context()

            def as_bob() -> None:
                with isolation.scope(UserContext.new("bob")):
                    engine.run("x")

            with pytest.raises(isolation.CrossContextAccessError, match=r"'alice'.*'bob'"):
                copy.run(as_bob)

    def test_no_scope(self) -> None:
        """Outside any scope, every guarded member is refused."""
        engine = self.build()
        with pytest.raises(isolation.CrossContextAccessError, match="outside any scope"):
            engine.run("x")
        with pytest.raises(isolation.CrossContextAccessError):
            _ = engine.size
        with pytest.raises(isolation.CrossContextAccessError):
            engine.size = 0
        with pytest.raises(isolation.CrossContextAccessError):
            engine()
        with pytest.raises(isolation.CrossContextAccessError):
            engine[0]
        with pytest.raises(isolation.CrossContextAccessError):
            engine.stream()
        with pytest.raises(isolation.CrossContextAccessError):
            _ = engine.summary

    def test_later_request_of_the_same_user(self) -> None:
        """The owner scope has ended: refused even for the same user."""
        engine = self.build("alice")
        with (
            isolation.scope(UserContext.new("alice")),
            pytest.raises(isolation.CrossContextAccessError, match="earlier request of 'alice'"),
        ):
            engine.run("x")

    def test_ended_scope_of_another_user(self) -> None:
        """Another user after the owner's scope ended: refused."""
        engine = self.build("alice")
        with (
            isolation.scope(UserContext.new("bob")),
            pytest.raises(isolation.CrossContextAccessError, match="has ended"),
        ):
            engine.run("x")

    def test_parallel_request_of_the_same_user(self) -> None:
        """Another live scope of the same user (not nested) is refused."""
        with isolation.scope(UserContext.new("alice")):
            engine = Engine()

            def other_request() -> None:
                with isolation.scope(UserContext.new("alice")):
                    engine.run("x")

            with pytest.raises(isolation.CrossContextAccessError, match="another live scope"):
                contextvars.Context().run(other_request)

    def test_parent_may_not_use_a_child_scope_instance(self) -> None:
        """An instance built in a child scope is not the parent's."""
        with isolation.scope(UserContext.new("alice")):
            with isolation.scope(UserContext.new("alice")):
                engine = Engine()
                copy = contextvars.copy_context()
            with pytest.raises(isolation.CrossContextAccessError):
                engine.run("x")
        with pytest.raises(isolation.CrossContextAccessError, match="ended"):
            copy.run(engine.run, "x")

    def test_escaped_copy_of_the_owner_scope(self) -> None:
        """Code still running in a copy of the ended owner scope is refused."""
        with isolation.scope(UserContext.new("alice")):
            engine = Engine()
            copy = contextvars.copy_context()
        with pytest.raises(isolation.CrossContextAccessError, match=r"earlier request|ended"):
            copy.run(engine.run, "x")

    def test_generator_checked_at_each_resume(self) -> None:
        """A generator made by the owner refuses to resume under another scope."""
        with isolation.scope(UserContext.new("alice")):
            engine = Engine()
            stream = engine.stream()
            assert next(stream) == "a"
        with pytest.raises(isolation.CrossContextAccessError):
            next(stream)

    def test_generator_send_throw_and_close(self) -> None:
        """The guarded generator delegates send, throw and close."""

        @isolation.owned
        class Echo:
            def echo(self) -> Iterator[object]:
                received: object = None
                while True:
                    try:
                        received = yield received
                    except ValueError:
                        received = "caught"

        with isolation.scope(UserContext.new("alice")):
            gen = Echo().echo()
            assert next(gen) is None
            assert gen.send(1) == 1
            assert gen.throw(ValueError()) == "caught"
            gen.close()

    @pytest.mark.anyio
    async def test_async_refusals(self) -> None:
        """Async methods and async generators are refused outside the owner scope."""
        async with isolation.scope(UserContext.new("alice")):
            engine = Engine()
            stream = engine.astream()
            assert await stream.__anext__() == "a"
        with pytest.raises(isolation.CrossContextAccessError):
            await engine.arun("x")
        with pytest.raises(isolation.CrossContextAccessError):
            await stream.__anext__()
        await stream.aclose()

    @pytest.mark.anyio
    async def test_async_generator_send_and_throw(self) -> None:
        """The guarded async generator delegates asend and athrow."""

        @isolation.owned
        class Echo:
            async def echo(self) -> AsyncIterator[object]:
                received: object = None
                while True:
                    try:
                        received = yield received
                    except ValueError:
                        received = "caught"

        async with isolation.scope(UserContext.new("alice")):
            gen = Echo().echo()
            assert await gen.asend(None) is None
            assert await gen.asend(1) == 1
            assert await gen.athrow(ValueError()) == "caught"
            await gen.aclose()

    def test_instance_without_an_owner(self) -> None:
        """An instance made without the constructor (no owner) is refused."""
        with isolation.scope(UserContext.new("alice")):
            bare = object.__new__(Engine)
            with pytest.raises(isolation.CrossContextAccessError, match="no owner"):
                bare.run("x")


class TestClasses:
    """Which classes @owned accepts, and subclasses."""

    def test_subclass_is_guarded_at_its_first_build(self) -> None:
        """A subclass's own methods are guarded too."""

        class Turbo(Engine):
            def boost(self) -> str:
                return "boost"

        with isolation.scope(UserContext.new("alice")):
            turbo = Turbo()
            assert turbo.boost() == "boost"
            assert turbo.run("x") == 1
        with pytest.raises(isolation.CrossContextAccessError):
            turbo.boost()

    def test_attrs_slotted_class(self) -> None:
        """A slotted attrs class (no __dict__) keeps its owner in a weak map."""

        @isolation.owned
        @attrs.define
        class Session:
            user: str
            items: list[str] = attrs.Factory(list)

            def add(self, item: str) -> None:
                self.items.append(item)

        with isolation.scope(UserContext.new("alice")) as scope:
            session = Session("alice")
            session.add("x")
            assert owner_of(session) is scope
        with pytest.raises(isolation.CrossContextAccessError):
            session.add("y")

    def test_slot_for_the_owner(self) -> None:
        """A __slots__ class with an __isolation_owner__ slot keeps the owner there."""

        @isolation.owned
        class Slotted:
            __slots__ = ("__isolation_owner__", "value")

            def get(self) -> int:
                return 1

        with isolation.scope(UserContext.new("alice")) as scope:
            obj = Slotted()
            assert obj.get() == 1
            assert owner_of(obj) is scope

    def test_class_that_cannot_hold_an_owner(self) -> None:
        """__slots__ without a dict, a weakref or an owner slot is refused at decoration."""

        class Tight:
            __slots__ = ("value",)

        with pytest.raises(isolation.UsageError, match="__isolation_owner__"):
            isolation.owned(Tight)

    def test_not_a_class(self) -> None:
        """@owned decorates classes only."""
        with pytest.raises(isolation.UsageError, match="decorates a class"):
            isolation.owned(len)  # type: ignore[type-var]

    def test_custom_new_is_kept(self) -> None:
        """A class with its own __new__ still builds through it."""

        @isolation.owned
        class Counted:
            made = 0

            def __new__(cls, *args: Any) -> Counted:
                cls.made += 1
                return super().__new__(cls)

            def ping(self) -> str:
                return "pong"

        with isolation.scope(UserContext.new("alice")):
            assert Counted().ping() == "pong"
        assert Counted.made == 1

    def test_decorating_twice_is_harmless(self) -> None:
        """@owned applied twice guards once."""

        @isolation.owned
        @isolation.owned
        class Twice:
            def ping(self) -> str:
                return "pong"

        with isolation.scope(UserContext.new("alice")):
            assert Twice().ping() == "pong"
        assert Twice.ping.__wrapped__.__name__ == "ping"  # type: ignore[attr-defined]
        assert not hasattr(Twice.ping.__wrapped__, "__wrapped__")  # type: ignore[attr-defined]

    def test_owner_of_something_else(self) -> None:
        """owner_of() is None for objects that are not @owned."""
        assert owner_of(object()) is None


class TestWithRequestScoped:
    """A @request_scoped @owned instance is owned by the scope it was built for."""

    def test_scoped_instance_is_owned_by_its_scope(self) -> None:
        """The factory builds as the scope, so the scope owns the instance."""
        make = isolation.request_scoped(Engine)
        with isolation.scope(UserContext.new("alice")) as scope:
            engine = make()
            assert owner_of(engine) is scope
            assert engine.run("x") == 1


class TestChecks:
    """FM11's two checks: silent on the library, loud on their mutants."""

    def test_walk_refuses(self) -> None:
        """Six users, three cached engines: the walk refuses the second user of each."""
        settings = Settings(quick=True)
        assert fm11.check_walk_refuses(fm11._library_provider(), settings) == []
        found = fm11.check_walk_refuses(fm11._round_robin_provider(), settings)
        assert any("served 2 users" in line for line in found)

    def test_owned_refuses(self) -> None:
        """With the walk off, @owned refuses; comparing users instead of scopes is caught."""
        settings = Settings(quick=True)
        assert fm11.check_owned_refuses(isolation.owned, settings) == []
        assert fm11.check_owned_refuses(fm11._owned_by_user, settings) == [
            "an engine was used in a later request of the same user"
        ]
