"""The shared-state walk: pure code, no scopes, no threads."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import logging
import threading
from typing import Any, ClassVar

import attrs
import pytest
from hypothesis import given
from sqlalchemy import ForeignKey
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

import isolation
from isolation.factories._graph import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_OBJECTS,
    WalkResult,
    render_path,
    walk,
)
from isolation.report._modes.fm05_shared_state import shared_state as fm05


def paths(result: WalkResult) -> list[str]:
    """Every mutable object's path, rendered, in walk order."""
    return [render_path(result.path(oid)) for oid in result.mutable]


def shared(a: object, b: object) -> list[tuple[str, str]]:
    """The paths, on each side, of the mutable objects both roots reach."""
    ra, rb = walk(a), walk(b)
    return [
        (render_path(ra.path(oid)), render_path(rb.path(oid))) for oid in ra.mutable if oid in rb
    ]


class Box:
    """A plain object."""


class TestWhatIsWalked:
    """What the walk enters, and what it compares."""

    def test_instance_dict_and_containers(self) -> None:
        """__dict__, dict values, list, tuple, deque and set items are all walked."""
        box = Box()
        member = Box()
        box.d = {"k": [1]}  # type: ignore[attr-defined]
        box.t = (1, {"x": 2})  # type: ignore[attr-defined]
        box.q = collections.deque([[3]])  # type: ignore[attr-defined]
        box.s = {member}  # type: ignore[attr-defined]
        assert paths(walk(box)) == [
            "Box",
            "Box.d",
            "Box.q",
            "Box.s",
            "Box.d['k']",
            "Box.q[0]",
            "Box.s{Box}",
            "Box.t[1]",
        ]

    def test_class_level_attributes_are_walked(self) -> None:
        """A mutable class attribute is reached as Type.name; atoms and methods are not."""

        class Engine:
            cache: ClassVar[dict[str, int]] = {}
            limit = 3
            name = "engine"

            def run(self) -> None:
                pass

        assert paths(walk(Engine())) == ["Engine", "Engine.cache"]

    def test_shadowed_class_attribute_is_not_walked(self) -> None:
        """An instance attribute of the same name hides the class attribute."""

        class Engine:
            cache: ClassVar[dict[str, int]] = {}

            def __init__(self) -> None:
                self.cache = {}  # type: ignore[misc]

        a, b = Engine(), Engine()
        assert shared(a, b) == []

    def test_inherited_class_attribute(self) -> None:
        """Class attributes of base classes are walked too."""

        class Base:
            registry: ClassVar[list[object]] = []

        class Engine(Base):
            pass

        assert shared(Engine(), Engine()) == [("Engine.registry", "Engine.registry")]

    def test_slots_attrs_and_dataclasses(self) -> None:
        """__slots__, attrs fields and dataclass fields are walked by name."""

        class Slotted:
            __slots__ = ("__weakref__", "data", "empty")

        @attrs.define
        class WithAttrs:
            items: list[int] = attrs.Factory(list)

        @dataclasses.dataclass
        class WithDataclass:
            items: dict[str, int] = dataclasses.field(default_factory=dict)

        slotted = Slotted()
        slotted.data = [WithAttrs(), WithDataclass()]
        assert paths(walk(slotted)) == [
            "Slotted",
            "Slotted.data",
            "Slotted.data[0]",
            "Slotted.data[1]",
            "Slotted.data[0].items",
            "Slotted.data[1].items",
        ]

    def test_frozen_instances_are_entered_not_compared(self) -> None:
        """A frozen attrs instance shared by two roots is fine; a list inside it is not."""

        @attrs.frozen
        class Settings:
            name: str
            tags: list[str]

        settings = Settings(name="x", tags=[])
        a, b = Box(), Box()
        a.settings = b.settings = settings  # type: ignore[attr-defined]
        assert shared(a, b) == [("Box.settings.tags", "Box.settings.tags")]

    def test_mutable_default_argument_of_a_method(self) -> None:
        """A method's mutable default argument is shared state, named by its parameter."""

        class Agent:
            def remember(self, item: str, memory: list[str] = []) -> None:  # noqa: B006
                memory.append(item)

        assert shared(Agent(), Agent()) == [
            ("Agent.remember.<default memory>", "Agent.remember.<default memory>")
        ]

    def test_closures_bound_methods_and_partials(self) -> None:
        """Closure cells, a bound method's __self__ (a C one's too) and a partial's parts."""
        counts: dict[str, int] = {}

        def count(name: str) -> None:
            counts[name] = counts.get(name, 0) + 1

        class Worker:
            def __init__(self) -> None:
                self.items: list[int] = []

            def run(self) -> None:
                pass

        box = Box()
        box.hook = count  # type: ignore[attr-defined]
        box.wrapper = Box().__repr__  # a C method-wrapper  # type: ignore[attr-defined]
        box.append = [2].append  # a builtin bound method  # type: ignore[attr-defined]
        box.bound = functools.partial(print, [1])  # print's __self__ is a module  # type: ignore[attr-defined]
        box.later = Worker().run  # type: ignore[attr-defined]
        assert paths(walk(box)) == [
            "Box",
            "Box.bound",
            "Box.append.__self__",
            "Box.bound.keywords",
            "Box.hook.<closure counts>",
            "Box.later.__self__",
            "Box.wrapper.__self__",
            "Box.bound.args[0]",
            "Box.later.__self__.items",
        ]

    def test_not_walked(self) -> None:
        """Atoms, types, modules, functions, loggers, locks and declared objects are skipped."""
        box = Box()
        box.atoms = (1, "s", b"b", 2.5, None, True)  # type: ignore[attr-defined]
        box.type = dict  # type: ignore[attr-defined]
        box.module = logging  # type: ignore[attr-defined]
        box.function = len  # type: ignore[attr-defined]
        box.logger = logging.getLogger("x")  # type: ignore[attr-defined]
        box.lock = threading.Lock()  # type: ignore[attr-defined]
        box.event = threading.Event()  # type: ignore[attr-defined]
        box.alock = asyncio.Lock()  # type: ignore[attr-defined]
        box.ctx = isolation.UserContext.new("alice")  # type: ignore[attr-defined]
        box.shared = isolation.shareable({"k": []})  # type: ignore[attr-defined]
        assert paths(walk(box)) == ["Box"]

    def test_shared_by_design(self) -> None:
        """A class marked __isolation_shareable__ and the library's app-wide objects are skipped."""

        class Client:
            __isolation_shareable__ = True

            def __init__(self) -> None:
                self.cookies: dict[str, str] = {}

        box = Box()
        box.client = Client()  # type: ignore[attr-defined]
        box.registry = isolation.Registry()  # type: ignore[attr-defined]
        assert paths(walk(box)) == ["Box"]

    def test_sqlalchemy_engine_is_shared_by_design(self) -> None:
        """A scoped object reaching the app's SQLAlchemy engine is not refused for it."""
        asyncio_ext = pytest.importorskip("sqlalchemy.ext.asyncio")
        engine = asyncio_ext.create_async_engine("sqlite+aiosqlite://")
        a, b = Box(), Box()
        a.engine = b.engine = engine  # type: ignore[attr-defined]
        a.pool = b.pool = engine.sync_engine.pool  # type: ignore[attr-defined]
        assert shared(a, b) == []

    def test_sqlalchemy_sessions_and_connections_are_boundaries(self) -> None:
        """A session or connection, sync or asyncio, is compared but not entered.

        Each user's own handle shares nothing (what lies behind it, the asyncio
        proxies' class-level registry included, is SQLAlchemy's); one handle
        reached by two users is shared. A session maker is shared by design.
        """
        asyncio_ext = pytest.importorskip("sqlalchemy.ext.asyncio")
        from sqlalchemy import create_engine
        from sqlalchemy.orm import Session, sessionmaker

        engine = create_engine("sqlite://")
        async_engine = asyncio_ext.create_async_engine("sqlite+aiosqlite://")
        makers: dict[str, Any] = {
            "Session": lambda: Session(engine),
            "AsyncSession": lambda: asyncio_ext.AsyncSession(async_engine),
            "Connection": engine.connect,
            "AsyncConnection": async_engine.connect,
        }
        to_close: list[Any] = []  # the sync ones; the asyncio ones were never started
        try:
            for name, make in makers.items():
                mine, theirs = make(), make()
                if not name.startswith("Async"):
                    to_close += [mine, theirs]
                a, b = Box(), Box()
                a.handle, b.handle = mine, theirs  # type: ignore[attr-defined]
                result = walk(a)
                assert (result.visited, result.truncated) == (2, None), name
                assert paths(result) == ["Box", "Box.handle"], name
                assert shared(a, b) == [], name
                b.handle = mine  # type: ignore[attr-defined]
                assert shared(a, b) == [("Box.handle", "Box.handle")], name
            a, b = Box(), Box()
            a.maker = b.maker = sessionmaker(engine)  # type: ignore[attr-defined]
            a.async_maker = b.async_maker = asyncio_ext.async_sessionmaker(async_engine)  # type: ignore[attr-defined]
            assert shared(a, b) == []
        finally:
            for handle in to_close:
                handle.close()
            engine.dispose()

    def test_shareable_type(self) -> None:
        """A type declared shareable makes every instance (and subclass instance) skipped."""

        @isolation.shareable
        class Pool:
            def __init__(self) -> None:
                self.connections: list[object] = []

        class SubPool(Pool):
            pass

        a, b = Box(), Box()
        a.pool = b.pool = SubPool()  # type: ignore[attr-defined]
        assert shared(a, b) == []

    def test_threading_local_is_compared(self) -> None:
        """A threading.local at class level is shared between users of a thread."""

        class Engine:
            local = threading.local()

        Engine.local.seen = []
        assert shared(Engine(), Engine()) == [("Engine.local", "Engine.local")]

    def test_more_kinds(self) -> None:
        """Frozensets, mapping proxies, bytearrays, keyword defaults, odd slots and keys."""
        import types
        import typing
        import weakref

        class Mangled:
            __slots__ = ("__secret",)

            def __init__(self) -> None:
                self.__secret = [1]

        class Stateless:
            __slots__ = ()

        @dataclasses.dataclass(frozen=True)
        class Frozen:
            items: list[int]

        def later(*, seen: list[int] = []) -> None:  # noqa: B006
            pass

        def make_empty_cell() -> Any:
            value = 1

            def inner() -> Any:
                return value  # noqa: F821 - deleted below: an empty cell

            del value
            return inner

        box = Box()
        box.frozen_set = frozenset({Box()})  # type: ignore[attr-defined]
        box.proxy = types.MappingProxyType({"k": [1]})  # type: ignore[attr-defined]
        box.raw = bytearray(b"x")  # type: ignore[attr-defined]
        box.later = later  # type: ignore[attr-defined]
        box.empty_cell = make_empty_cell()  # type: ignore[attr-defined]
        box.mangled = Mangled()  # type: ignore[attr-defined]
        box.stateless = Stateless()  # type: ignore[attr-defined]
        box.frozen = Frozen(items=[])  # type: ignore[attr-defined]
        box.keys = {7: [1], Box: [2], ("t",): [3]}  # type: ignore[attr-defined]
        box.typing = typing.TypeVar("T")  # type: ignore[attr-defined]
        box.ref = weakref.ref(Box)  # type: ignore[attr-defined]
        found = paths(walk(box))
        assert "Box.frozen_set{Box}" in found
        assert "Box.proxy['k']" in found
        assert "Box.raw" in found
        assert "Box.later.<default seen>" in found
        assert "Box.mangled" in found
        assert "Box.mangled.__secret" in found
        assert "Box.stateless" not in found
        assert "Box.frozen" not in found
        assert "Box.frozen.items" in found
        assert "Box.keys[7]" in found
        assert "Box.keys[<tuple>]" in found
        assert not [p for p in found if "typing" in p or "ref" in p or "empty_cell" in p]

    def test_root_is_always_compared(self) -> None:
        """The same object handed to two users is shared, even a tuple; atoms are not."""
        same = (1, 2)
        assert paths(walk(same)) == ["tuple"]
        assert walk(42).mutable == []
        assert walk(Box).mutable == []

    def test_opaque_root_is_compared_not_entered(self) -> None:
        """A C object without __dict__ is compared as the root, and not entered."""
        lock = threading.Lock()
        assert paths(walk(lock)) == ["lock"]


class TestClassesWithoutState:
    """Classes whose instances hold nothing can still hold shared state at class level."""

    def test_empty_slots_class_attributes_are_walked(self) -> None:
        """`__slots__ = ()` leaves nothing per instance; a mutable class attribute is shared."""

        class Engine:
            __slots__ = ()
            cache: ClassVar[dict[str, int]] = {}

        a, b = Box(), Box()
        a.engine, b.engine = Engine(), Engine()  # type: ignore[attr-defined]
        assert shared(a, b) == [("Box.engine.cache", "Box.engine.cache")]

    def test_empty_slots_class_without_class_state_is_skipped(self) -> None:
        """The same class with only atoms and methods at class level is not entered."""

        class Engine:
            __slots__ = ()
            limit = 3

            def run(self) -> None:
                pass

        a, b = Box(), Box()
        a.engine = b.engine = Engine()  # type: ignore[attr-defined]
        assert shared(a, b) == []
        assert paths(walk(Engine())) == []


UserStore = collections.UserDict[str, str]
_USER_STORE: UserStore = collections.UserDict()


def _traced(fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> object:
        return fn(*args, **kwargs)

    return wrapper


class TestStateBehindCallables:
    """State that decorators, descriptors, builtin methods and iterators hide."""

    def test_decorator_closures_at_class_level_are_not_entered(self) -> None:
        """A retrying or tracing decorator keeps a shared object in its closure by design
        (tenacity's Retrying, a tracer): class-level closures are not entered, so such
        methods do not refuse every second user. (The cost: a memoizing decorator's
        cache in a closure is not seen either; docs/explanation/shared-state.md.)"""

        class Retrying:
            def __init__(self) -> None:
                self.statistics: dict[str, int] = {}

        def retry(fn: Any) -> Any:
            retrying = Retrying()

            @functools.wraps(fn)
            def wrapper(*args: object) -> object:
                retrying.statistics["attempts"] = 1
                return fn(*args)

            wrapper.retry = retrying  # type: ignore[attr-defined]
            return wrapper

        class Agent:
            @retry
            def ask(self) -> str:
                return "answer"

        assert shared(Agent(), Agent()) == []

    def test_mutable_default_behind_a_decorator(self) -> None:
        """``memory=[]`` behind functools.wraps is reached through ``__wrapped__`` and the cell."""

        class Agent:
            @_traced
            def remember(self, item: str, memory: list[str] = []) -> list[str]:  # noqa: B006
                memory.append(item)
                return memory

        assert shared(Agent(), Agent()) == [
            ("Agent.remember.<default memory>", "Agent.remember.<default memory>")
        ]

    def test_plain_decorators_add_nothing(self) -> None:
        """A stateless decorator is entered and found clean."""

        class Agent:
            @_traced
            def run(self) -> None:
                pass

            @functools.wraps(print)
            def say(self) -> None:
                pass

        assert shared(Agent(), Agent()) == []

    def test_static_class_and_property_wrappers_are_opened(self) -> None:
        """An lru_cache under @staticmethod, a classmethod's default, a property's default."""

        def history(self: object, store: dict[str, list[str]] = {}) -> list[str]:  # noqa: B006
            return store.setdefault("history", [])

        class Agent:
            @staticmethod
            @functools.cache
            def embed(text: str) -> list[str]:
                return [text]

            @classmethod
            def remember(cls, item: str, memory: dict[str, bool] = {}) -> None:  # noqa: B006
                memory[item] = True

            recent = property(history)

        found = {left for left, _ in shared(Agent(), Agent())}
        assert found == {
            "Agent.embed",
            "Agent.recent.<default store>",
            "Agent.remember.<default memory>",
        }

    def test_function_attributes(self) -> None:
        """State kept on a function object (``fn.seen = []``) is walked."""

        def track() -> None:
            pass

        track.seen = []  # type: ignore[attr-defined]

        class Agent:
            def __init__(self) -> None:
                self.hook = track

        assert shared(Agent(), Agent()) == [("Agent.hook.seen", "Agent.hook.seen")]

    def test_builtin_bound_methods_reach_their_object(self) -> None:
        """``shared.append`` held as a callback is the shared list; ``print`` and ``time.time`` are not."""
        import random
        import time

        history: list[str] = []
        cache: dict[str, str] = {}

        class Agent:
            def __init__(self) -> None:
                self.record = history.append
                self.lookup = cache.get
                self.clock = time.time
                self.jitter = random.random
                self.say = print

        assert shared(Agent(), Agent()) == [
            ("Agent.lookup.__self__", "Agent.lookup.__self__"),
            ("Agent.record.__self__", "Agent.record.__self__"),
        ]

    def test_views_and_iterators_reach_what_they_iterate(self) -> None:
        """A dict view, a list iterator or an itertools object over shared data is that data."""
        import itertools

        tokens: dict[str, str] = {"alice": "t1"}
        queue: list[str] = []
        turns: list[str] = []

        class Agent:
            def __init__(self) -> None:
                self.tokens = tokens.values()
                self.pending = iter(queue)
                self.rounds = itertools.cycle(turns)  # holds an iterator over turns
                self.own = iter([1, 2, 3])  # a fresh list: not shared

        found = {left for left, _ in shared(Agent(), Agent())}
        assert found == {
            "Agent.tokens.<iterates>",
            "Agent.pending.<iterates>",
            "Agent.rounds.<iterates>.<iterates>",
        }


class TestLibraryModels:
    """pydantic models and SQLAlchemy rows: their libraries' class machinery is shared by
    design; a model's own data and its class's own attributes are not."""

    def test_pydantic_models_of_two_users(self) -> None:
        """Two users' models are separate; a model handed to both, or a ClassVar, is not."""
        import pydantic

        class Message(pydantic.BaseModel):
            registry: ClassVar[dict[str, str]] = {}
            text: str = ""
            tags: list[str] = []

        class Plain(pydantic.BaseModel):
            text: str = ""

        a, b = Box(), Box()
        a.plain, b.plain = Plain(text="a"), Plain(text="b")  # type: ignore[attr-defined]
        assert shared(a, b) == []
        message = Message(text="hi")
        a.message = b.message = message  # type: ignore[attr-defined]
        found = {left for left, _ in shared(a, b)}
        assert {"Box.message", "Box.message.registry", "Box.message.tags"} <= found
        assert not [path for path in found if "model_" in path]

    def test_sqlalchemy_rows_of_two_users(self) -> None:
        """Two users' rows are separate (the ORM's machinery is shared by design); a row
        handed to both, or a mutable class attribute of the mapped class, is not."""

        class Base(DeclarativeBase):
            pass

        class Note(Base):
            __tablename__ = "isolation_test_notes"
            id: Mapped[int] = mapped_column(primary_key=True)
            text: Mapped[str]

        class Cached(Base):
            __tablename__ = "isolation_test_cached"
            cache: ClassVar[dict[int, str]] = {}
            id: Mapped[int] = mapped_column(primary_key=True)

        a, b = Box(), Box()
        a.rows, b.rows = [Note(id=1, text="a")], [Note(id=2, text="b")]  # type: ignore[attr-defined]
        assert shared(a, b) == []
        a.cached, b.cached = Cached(id=1), Cached(id=2)  # type: ignore[attr-defined]
        assert shared(a, b) == [("Box.cached.cache", "Box.cached.cache")]
        row = Note(id=3, text="both")
        a.row = b.row = row  # type: ignore[attr-defined]
        assert ("Box.row", "Box.row") in shared(a, b)

    def test_sqlalchemy_rows_with_a_loaded_relationship(self) -> None:
        """A loaded collection reaches the ORM's class-wide attribute implementation: shared
        by design, not refused."""

        class Base(DeclarativeBase):
            pass

        class Parent(Base):
            __tablename__ = "isolation_test_parents"
            id: Mapped[int] = mapped_column(primary_key=True)
            kids: Mapped[list[Kid]] = relationship()

        class Kid(Base):
            __tablename__ = "isolation_test_kids"
            id: Mapped[int] = mapped_column(primary_key=True)
            parent_id: Mapped[int] = mapped_column(ForeignKey("isolation_test_parents.id"))

        a, b = Box(), Box()
        a.row, b.row = Parent(id=1, kids=[Kid(id=1)]), Parent(id=2, kids=[Kid(id=2)])  # type: ignore[attr-defined]
        assert shared(a, b) == []


class TestWebObjects:
    """Requests and HTTP clients held by a user's product: their app, routers and
    library defaults are shared by design; the objects themselves are not."""

    def test_requests_of_two_users_reach_one_app(self) -> None:
        """Two users' Requests share the app and its router through their scopes."""
        import fastapi
        from starlette.requests import Request

        app = fastapi.FastAPI()

        def request(user: str) -> Request:
            scope = {
                "type": "http",
                "method": "GET",
                "path": "/",
                "headers": [(b"x-user", user.encode())],
                "query_string": b"",
                "app": app,
                "router": app.router,
                "state": {},
            }
            return Request(scope)

        a, b = Box(), Box()
        a.request, b.request = request("alice"), request("bob")  # type: ignore[attr-defined]
        assert shared(a, b) == []
        a.request = b.request  # type: ignore[attr-defined]
        assert ("Box.request", "Box.request") in shared(a, b)

    def test_http_clients_of_two_users(self) -> None:
        """Library defaults of a client's methods (httpx's DEFAULT_LIMITS) are not shared
        state; one client handed to two users is."""
        import httpx

        with httpx.Client() as mine, httpx.Client() as theirs:
            a, b = Box(), Box()
            a.client, b.client = mine, theirs  # type: ignore[attr-defined]
            assert shared(a, b) == []
            b.client = mine  # type: ignore[attr-defined]
            assert ("Box.client", "Box.client") in shared(a, b)

    def test_object_defaults_of_methods_are_not_state(self) -> None:
        """A sentinel or config object as a method's default is an idiom; a list is a bug."""

        class Limits:
            def __init__(self) -> None:
                self.connections = 10

        default_limits = Limits()

        class Client:
            def send(self, limits: Limits = default_limits) -> None:
                pass

            def log(self, line: str, lines: list[str] = []) -> None:  # noqa: B006
                lines.append(line)

        assert shared(Client(), Client()) == [("Client.log.<default lines>",) * 2]

    def test_defaults_that_hold_a_container(self) -> None:
        """An object default whose attributes hold a container, a mutable mapping of any
        kind and a tuple holding a list are shared state, as ``[]`` is."""

        class Memory:
            def __init__(self) -> None:
                self.items: list[str] = []

        class Agent:
            def remember(self, item: str, memory: Memory = Memory()) -> None:  # noqa: B008
                memory.items.append(item)

            def cache(self, key: str, store: UserStore = _USER_STORE) -> None:
                store[key] = key

            def pair(self, item: str, slots: tuple[list[str]] = ([],)) -> None:
                slots[0].append(item)

        found = {left for left, _ in shared(Agent(), Agent())}
        assert {
            "Agent.remember.<default memory>",
            "Agent.remember.<default memory>.items",
            "Agent.cache.<default store>",
            "Agent.pair.<default slots>[0]",
        } <= found

    def test_lru_cache_behind_a_decorator(self) -> None:
        """A ``functools.wraps`` decorator over an ``lru_cache`` leads to the cache."""

        class Agent:
            @_traced
            @functools.cache  # noqa: B019
            def profile(self, user_id: str) -> dict[str, str]:
                return {"user": user_id}

        assert ("Agent.profile", "Agent.profile") in shared(Agent(), Agent())


class TestChangesBetweenWalks:
    """Each walk sees classes as they are now (a cache of class facts must keep this true)."""

    def test_class_attribute_added_after_a_walk_is_walked(self) -> None:
        """A class attribute added or rebound after a walk is seen by the next one."""

        class Engine:
            pass

        assert shared(Engine(), Engine()) == []
        Engine.cache = {}  # type: ignore[attr-defined]
        assert shared(Engine(), Engine()) == [("Engine.cache", "Engine.cache")]
        Engine.cache = 3  # type: ignore[attr-defined]
        assert shared(Engine(), Engine()) == []

    def test_class_declared_shareable_after_a_walk_is_skipped(self) -> None:
        """A class declared shareable (by attribute or by isolation.shareable) after a walk."""

        class Pool:
            def __init__(self) -> None:
                self.connections: list[object] = []

        class Later(Pool):
            pass

        a, b = Box(), Box()
        a.pool = b.pool = Pool()  # type: ignore[attr-defined]
        a.later = b.later = Later()  # type: ignore[attr-defined]
        assert len(shared(a, b)) == 4
        Pool.__isolation_shareable__ = True  # type: ignore[attr-defined]
        assert shared(a, b) == []  # Later inherits the attribute
        del Pool.__isolation_shareable__  # type: ignore[attr-defined]
        isolation.shareable(Later)
        assert shared(a, b) == [
            ("Box.pool", "Box.pool"),
            ("Box.pool.connections", "Box.pool.connections"),
        ]

    def test_bases_reassigned_after_a_walk(self) -> None:
        """A class moved off a base that made it infrastructure is walked from then on."""

        class Base:
            pass

        class Quiet(logging.Logger):
            pass

        class Moved(Quiet):
            pass

        logger = Moved("x")
        logger.userdata = {}  # type: ignore[attr-defined]
        a, b = Box(), Box()
        a.log = b.log = logger  # type: ignore[attr-defined]
        assert shared(a, b) == []
        Moved.__bases__ = (Base,)
        assert ("Box.log.userdata", "Box.log.userdata") in shared(a, b)

    def test_frozenset_subclass_slots_are_walked_every_time(self) -> None:
        """A frozenset subclass's slots are entered on every walk, not only the first."""

        class Tags(frozenset[str]):
            __slots__ = ("store",)

        store: dict[str, int] = {}
        for _ in range(2):
            a, b = Box(), Box()
            tags_a, tags_b = Tags({"x"}), Tags({"y"})
            tags_a.store = tags_b.store = store
            a.tags, b.tags = tags_a, tags_b  # type: ignore[attr-defined]
            assert shared(a, b) == [("Box.tags.store", "Box.tags.store")]


class TestOrderAndPaths:
    """Breadth first, shortest paths, ties broken by name."""

    def test_shortest_path_wins(self) -> None:
        """An object reachable at depths 1 and 3 is reported at depth 1."""
        target: list[int] = []
        box = Box()
        box.a_deep = {"x": {"y": target}}  # type: ignore[attr-defined]
        box.z_near = target  # type: ignore[attr-defined]
        result = walk(box)
        assert render_path(result.path(id(target))) == "Box.z_near"

    def test_ties_broken_by_name(self) -> None:
        """Two paths of one length: the one with the smaller names wins."""
        target: list[int] = []
        box = Box()
        box.beta = target  # type: ignore[attr-defined]
        box.alpha = target  # type: ignore[attr-defined]
        assert walk(box).path(id(target)) == ("Box", "alpha")

    def test_ties_at_depth_follow_parent_order(self) -> None:
        """At depth two the lexicographically smallest full path wins."""
        target: list[int] = []
        box = Box()
        box.b = {"a": target}  # type: ignore[attr-defined]
        box.a = {"z": target}  # type: ignore[attr-defined]
        assert render_path(walk(box).path(id(target))) == "Box.a['z']"

    def test_dict_keys_with_mixed_types_sort(self) -> None:
        """Dicts whose keys do not compare are still walked in a stable order."""
        data: dict[object, object] = {1: [1], "a": [2], (1, 2): [3]}
        assert len(walk(data).mutable) == 4

    def test_mutable_dict_keys_are_walked(self) -> None:
        """A mutable object used as a dict key is reached too."""
        key = Box()
        assert render_path(walk({key: 1}).path(id(key))) == "dict.<key Box>"

    def test_cycles_terminate(self) -> None:
        """A graph with cycles is walked once per object."""
        a, b = Box(), Box()
        a.other, b.other = b, a  # type: ignore[attr-defined]
        assert len(walk(a).mutable) == 2

    def test_long_keys_are_shortened(self) -> None:
        """A long string key is cut in the path."""
        result = walk({"k" * 100: []})
        assert render_path(result.path(result.mutable[1])) == "dict['" + "k" * 40 + "...']"

    def test_render_path(self) -> None:
        """Labels in brackets attach directly; others with a dot."""
        assert render_path(("Engine", "cache", "['k']", "[0]", "items")) == (
            "Engine.cache['k'][0].items"
        )
        assert render_path(()) == "?"


class TestBounds:
    """The walk stops at its bounds and says so."""

    def test_defaults(self) -> None:
        """At least 8 edges and 10,000 objects by default."""
        assert DEFAULT_MAX_DEPTH >= 8
        assert DEFAULT_MAX_OBJECTS >= 10_000

    def test_depth_bound(self) -> None:
        """A chain deeper than max_depth is truncated at that depth."""
        chain: list[Any] = []
        node = chain
        for _ in range(20):
            nxt: list[Any] = []
            node.append(nxt)
            node = nxt
        result = walk(chain, max_depth=8)
        assert result.depth == 8
        assert result.truncated is not None
        assert "depth" in result.truncated
        assert walk(chain, max_depth=30).truncated is None

    def test_object_bound(self) -> None:
        """A graph larger than max_objects is truncated with the bound named."""
        big = [[i] for i in range(100)]
        result = walk(big, max_objects=10)
        assert result.visited == 10
        assert result.truncated is not None
        assert "10 objects" in result.truncated
        assert "truncated" in repr(result)

    def test_default_bounds_reach_depth_eight(self) -> None:
        """An object 8 edges down is found with the default bounds."""
        target: list[int] = []
        node: Any = target
        for i in range(8):
            node = {f"k{i}": node}
        assert id(target) in walk(node).mutable


class TestProperties:
    """Hypothesis: random graphs, one planted shared object."""

    @given(fm05.cases("planted"))
    def test_planted_object_found_with_its_paths(self, case: fm05.Case) -> None:
        """The planted object is the first shared one, with the right path on each side."""
        assert fm05.judge_case(fm05.library_walker, fm05.build_case(case)) == []

    @given(fm05.cases("clean"))
    def test_graphs_without_sharing_pass(self, case: fm05.Case) -> None:
        """Two graphs built apart share no mutable object."""
        assert fm05.judge_case(fm05.library_walker, fm05.build_case(case)) == []

    @given(fm05.cases("declared"))
    def test_declared_shareable_never_refused(self, case: fm05.Case) -> None:
        """A planted object declared with isolation.shareable() is not reported."""
        assert fm05.judge_case(fm05.library_walker, fm05.build_case(case)) == []

    def test_classic_cases_and_the_mutant(self) -> None:
        """Class-level sharing is found by the walk and missed by the mutant walker."""
        for built in fm05.classic_cases():
            assert fm05.judge_case(fm05.library_walker, built) == []
            assert fm05.judge_case(fm05._walk_without_class_attributes, built) != []
