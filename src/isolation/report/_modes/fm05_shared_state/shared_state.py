"""FM5, factory instances share internal state: the walk finds any hidden shared object.

Subject: a walker ``walk(root) -> {id: path}``, the mutable objects ``root``
reaches, in breadth-first order, each with its path (the root's type name,
then one label per edge). The library's is :func:`isolation.factories._graph.walk`.

Scenario: Hypothesis builds random object graphs for two users (nested dicts,
lists, tuples, deques, objects with a ``__dict__`` or ``__slots__``, attrs and
dataclass instances, and class-level attributes) and plants one shared
mutable object at a random depth within the walk's guaranteed bounds (at most
8 edges). Properties: the planted object is always the first shared object
found, with the right path on each side; graphs without sharing are never
refused; a planted object declared with :func:`isolation.shareable` is never
refused. Every run also includes the classic ``class Engine: cache = {}``.

The mutant is a walker that skips class-level attributes: it misses the
classic case, every run.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from typing import Any

import attrs

from isolation.factories._graph import Path, walk
from isolation.factories._shareable import shareable
from isolation.report._modes._support.registration import add_check
from isolation.report._registry import ModeRegistry, Settings

__all__ = [
    "Case",
    "Walker",
    "build_case",
    "cases",
    "judge_case",
    "register",
    "rooted_trees",
    "trees",
]

Walker = Callable[[object], dict[int, Path]]

PLANT_DEPTH_MAX = 8
CONTAINERS = ("dict", "list", "tuple", "deque", "box", "slots", "attrs", "dataclass", "classattr")
ROOTS = ("dict", "list", "box", "slots", "attrs", "dataclass", "classattr")
PLANTED_KINDS = ("dict", "list", "box", "slots")


class Box:
    """A plain object with a ``__dict__``."""


class SlotsNode:
    """An object with ``__slots__`` only."""

    __slots__ = ("__weakref__", "a", "b", "planted")

    a: Any
    b: Any
    planted: Any


@attrs.define
class AttrsNode:
    """An attrs instance (slotted)."""

    a: Any = None
    b: Any = None
    planted: Any = None


@dataclasses.dataclass
class DataNode:
    """A dataclass instance."""

    a: Any = None
    b: Any = None
    planted: Any = None


# A spec is ("atom", value) or (kind, (child specs...)).
Spec = tuple[str, Any]


Target = tuple[int, ...]
"""Where the planted object goes: child indices from the root to the receiving container."""


@attrs.frozen
class Case:
    """One generated example: two users' graphs, and where (if anywhere) one object is planted.

    ``plant`` is ``None`` (no sharing), or the receiving container in each
    graph, the planted object's kind, and whether it is declared shareable.
    """

    spec_a: Spec
    spec_b: Spec
    plant: tuple[Target, Target, str, bool] | None


def _fresh_planted(kind: str, declared: bool) -> object:
    obj: object
    if declared:
        obj = Box()
        obj.inner = {"k": [1, 2]}  # type: ignore[attr-defined]
        return shareable(obj)
    if kind == "dict":
        obj = {"x": 1, "nested": []}
    elif kind == "list":
        obj = [1, {"y": 2}]
    elif kind == "box":
        obj = Box()
        obj.value = [3]  # type: ignore[attr-defined]
    else:
        obj = SlotsNode()
        obj.a = {"z": 4}
    return obj


class _Builder:
    """Materialise a spec into fresh objects, planting ``planted`` in the ``target`` container."""

    def __init__(self, target: Target | None, planted: object) -> None:
        self.target = target
        self.planted = planted
        self.planted_path: Path | None = None

    def build(self, spec: Spec, path: Path, where: Target = ()) -> object:
        kind, payload = spec
        if kind == "atom":
            return payload
        plant_here = where == self.target
        labels = self._labels(kind, len(payload))
        if not path:
            path = (_ROOT_NAMES[kind],)
        children = [
            self.build(child, (*path, label), (*where, i))
            for i, (child, label) in enumerate(zip(payload, labels, strict=True))
        ]
        if plant_here:
            self.planted_path = (*path, self._plant_label(kind, len(payload)))
        return self._make(kind, children, plant_here)

    @staticmethod
    def _labels(kind: str, n: int) -> list[str]:
        if kind == "dict":
            return [f"['k{i}']" for i in range(n)]
        if kind in ("list", "tuple", "deque"):
            return [f"[{i}]" for i in range(n)]
        if kind == "box":
            return [f"c{i}" for i in range(n)]
        if kind == "classattr":
            return ["shared"]
        return ["a", "b"]

    @staticmethod
    def _plant_label(kind: str, n: int) -> str:
        if kind == "dict":
            return "['planted']"
        if kind in ("list", "tuple", "deque"):
            return f"[{n}]"
        return "planted"

    def _make(self, kind: str, children: list[object], plant: bool) -> object:
        extra = [self.planted] if plant else []
        if kind == "dict":
            made: dict[str, object] = {f"k{i}": c for i, c in enumerate(children)}
            if plant:
                made["planted"] = self.planted
            return made
        if kind == "list":
            return [*children, *extra]
        if kind == "tuple":
            return (*children, *extra)
        if kind == "deque":
            return collections.deque([*children, *extra])
        if kind == "box":
            box = Box()
            for i, c in enumerate(children):
                setattr(box, f"c{i}", c)
            if plant:
                box.planted = self.planted  # type: ignore[attr-defined]
            return box
        if kind == "slots":
            node = SlotsNode()
            node.a, node.b = children
            if plant:
                node.planted = self.planted
            return node
        if kind == "attrs":
            return AttrsNode(a=children[0], b=children[1], planted=self.planted if plant else None)
        if kind == "dataclass":
            return DataNode(a=children[0], b=children[1], planted=self.planted if plant else None)
        # "classattr": a fresh class per user, whose class-level attributes hold
        # the child (and the planted object): only a walker of class attributes sees them.
        namespace: dict[str, object] = {"shared": children[0]}
        if plant:
            namespace["planted"] = self.planted
        holder_class = type("Holder", (), namespace)
        return holder_class()


_ROOT_NAMES = {
    "dict": "dict",
    "list": "list",
    "tuple": "tuple",
    "deque": "deque",
    "box": "Box",
    "slots": "SlotsNode",
    "attrs": "AttrsNode",
    "dataclass": "DataNode",
    "classattr": "Holder",
}


@attrs.frozen
class Built:
    """A materialised case: two roots, the planted object, and the expected paths."""

    root_a: object
    root_b: object
    planted: object | None
    expected: tuple[Path, Path] | None
    declared: bool
    keep: tuple[object, ...] = ()


def build_case(case: Case) -> Built:
    """Materialise ``case`` into two fresh graphs (sharing only the planted object)."""
    if case.plant is None:
        root_a = _Builder(None, None).build(case.spec_a, ())
        root_b = _Builder(None, None).build(case.spec_b, ())
        return Built(root_a, root_b, None, None, declared=False)
    target_a, target_b, kind, declared = case.plant
    planted = _fresh_planted(kind, declared)
    builder_a = _Builder(target_a, planted)
    builder_b = _Builder(target_b, planted)
    root_a = builder_a.build(case.spec_a, ())
    root_b = builder_b.build(case.spec_b, ())
    assert builder_a.planted_path is not None
    assert builder_b.planted_path is not None
    return Built(
        root_a,
        root_b,
        planted,
        (builder_a.planted_path, builder_b.planted_path),
        declared=declared,
    )


def classic_cases() -> list[Built]:
    """The cases every run includes: sharing through class-level attributes only."""

    class Engine:
        cache: dict[str, object] = {}  # noqa: RUF012 - the bug this case plants

        def __init__(self) -> None:
            self.history: list[str] = []

    class Tool:
        registry: list[object] = []  # noqa: RUF012 - the bug this case plants

    class Agent:
        def __init__(self) -> None:
            self.tools = [Tool(), Tool()]
            self.memory: dict[str, object] = {}

    return [
        Built(Engine(), Engine(), Engine.cache, (("Engine", "cache"),) * 2, declared=False),
        Built(
            Agent(),
            Agent(),
            Tool.registry,
            (("Agent", "tools", "[0]", "registry"),) * 2,
            declared=False,
        ),
    ]


def judge_case(walker: Walker, built: Built) -> list[str]:
    """Run ``walker`` on both graphs of ``built``; return what is wrong."""
    found_a = walker(built.root_a)
    found_b = walker(built.root_b)
    common = [oid for oid in found_a if oid in found_b]
    if built.expected is None or built.declared:
        if common:
            first = common[0]
            why = "declared shareable" if built.declared else "without sharing"
            return [
                f"a graph {why} was refused: {found_a[first]} and {found_b[first]} reported shared"
            ]
        return []
    if not common:
        return [
            f"a shared {type(built.planted).__name__} at {built.expected[0]} and "
            f"{built.expected[1]} was not detected"
        ]
    first = common[0]
    if first != id(built.planted):
        return [
            f"the first shared object reported is not the planted one: {found_a[first]} "
            f"(expected {built.expected[0]})"
        ]
    got = (found_a[first], found_b[first])
    if got != built.expected:
        return [f"the planted object was reported at {got}, expected {built.expected}"]
    return []


def _arity(kind: str) -> tuple[int, int]:
    if kind in ("slots", "attrs", "dataclass"):
        return 2, 2
    if kind == "classattr":
        return 1, 1
    return 0, 3


def trees() -> Any:
    """A Hypothesis strategy of random graph specs (needs the ``testing`` extra)."""
    from hypothesis import strategies as st

    atom = st.one_of(st.integers(-5, 5), st.text(max_size=3), st.none(), st.booleans()).map(
        lambda v: ("atom", v)
    )

    def extend(children: Any) -> Any:
        def node(kind: str) -> Any:
            def make(found: Any) -> Spec:
                return (kind, tuple(found))

            low, high = _arity(kind)
            return st.lists(children, min_size=low, max_size=high).map(make)

        return st.one_of([node(kind) for kind in CONTAINERS])

    return st.recursive(atom, extend, max_leaves=6)


def rooted_trees() -> Any:
    """Random graph specs whose root is a mutable container."""
    from hypothesis import strategies as st

    def rooted(spec: Spec) -> Any:
        if spec[0] in ROOTS:
            return st.just(spec)
        return st.sampled_from(("list", "box")).map(lambda k: (k, (spec,)))

    return trees().flatmap(rooted)


def with_target() -> Any:
    """A graph spec with a receiving container at a random depth (0 to 7): ``(spec, target)``."""
    from hypothesis import strategies as st

    @st.composite
    def build(draw: Any) -> tuple[Spec, Target]:
        depth = draw(st.integers(0, PLANT_DEPTH_MAX - 1))
        kinds = [draw(st.sampled_from(ROOTS))]
        kinds += [draw(st.sampled_from(CONTAINERS)) for _ in range(depth)]
        side = trees()
        low, high = _arity(kinds[-1])
        inner: Spec = (kinds[-1], tuple(draw(st.lists(side, min_size=low, max_size=high))))
        target: list[int] = []
        for kind in reversed(kinds[:-1]):
            low, high = _arity(kind)
            siblings = draw(st.lists(side, min_size=max(low - 1, 0), max_size=max(high - 1, 0)))
            position = draw(st.integers(0, len(siblings)))
            siblings.insert(position, inner)
            inner = (kind, tuple(siblings))
            target.insert(0, position)
        return inner, tuple(target)

    return build()


def cases(kind: str = "planted") -> Any:
    """A Hypothesis strategy of :class:`Case`: ``"planted"``, ``"declared"`` or ``"clean"``."""
    from hypothesis import strategies as st

    if kind == "clean":
        return st.builds(Case, rooted_trees(), rooted_trees(), st.none())

    def make(a: tuple[Spec, Target], b: tuple[Spec, Target], planted_kind: str) -> Case:
        return Case(a[0], b[0], (a[1], b[1], planted_kind, kind == "declared"))

    return st.builds(make, with_target(), with_target(), st.sampled_from(PLANTED_KINDS))


def generate_cases(count: int, kind: str = "planted") -> list[Case]:
    """Draw ``count`` cases of ``kind`` with Hypothesis, deterministically."""
    from hypothesis import HealthCheck, Phase, given, settings

    drawn: list[Case] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(cases(kind))
    def collect(case: Case) -> None:
        drawn.append(case)

    collect()
    return drawn


def check_planted_shared_state(walker: Walker, settings: Settings) -> list[str]:
    """The classic class-attribute cases, then random graphs: planted found, clean ones pass."""
    found: list[str] = []
    for built in classic_cases():
        found.extend(judge_case(walker, built))
    planted = max(settings.examples, 30)
    for kind, count in (("planted", planted), ("clean", planted // 3), ("declared", planted // 3)):
        for case in generate_cases(count, kind):
            found.extend(judge_case(walker, build_case(case)))
    return found


# -- the library's walker and the mutant ------------------------------------------------


def library_walker(root: object) -> dict[int, Path]:
    """The library's walk, as ``{id: path}`` in breadth-first order."""
    result = walk(root)
    return {oid: result.path(oid) for oid in result.mutable}


def _walk_without_class_attributes(root: object) -> dict[int, Path]:
    """Mutant: a breadth-first walk of instances and containers that skips class attributes."""
    from isolation.factories._shareable import declared_shareable

    atoms = (int, float, str, bytes, bool, type(None), type)
    found: dict[int, Path] = {}
    seen: set[int] = set()
    queue: collections.deque[tuple[object, Path]] = collections.deque(
        [(root, (type(root).__name__,))]
    )
    seen.add(id(root))
    while queue:
        obj, path = queue.popleft()
        if not isinstance(obj, tuple):
            found[id(obj)] = path
        children: list[tuple[str, object]] = []
        if isinstance(obj, dict):
            children = sorted((f"[{k!r}]", v) for k, v in obj.items())
        elif isinstance(obj, list | tuple | collections.deque):
            children = [(f"[{i}]", v) for i, v in enumerate(obj)]
        else:
            names: dict[str, object] = dict(getattr(obj, "__dict__", {}))
            for klass in type(obj).__mro__:
                for slot in klass.__dict__.get("__slots__", ()):
                    if slot != "__weakref__" and hasattr(obj, slot):
                        names[slot] = getattr(obj, slot)
            children = sorted(names.items())
        for label, child in children:
            if isinstance(child, atoms) or id(child) in seen or declared_shareable(child):
                continue
            seen.add(id(child))
            queue.append((child, (*path, label)))
    return found


def _library() -> Walker:
    return library_walker


def _mutant() -> Walker:
    return _walk_without_class_attributes


def register(registry: ModeRegistry) -> None:
    """Register FM5's check."""
    add_check(
        registry,
        5,
        "walk-finds-planted",
        check_planted_shared_state,
        library=_library,
        mutant=_mutant,
        requires=("hypothesis",),
        description=(
            "random object graphs with one planted shared object (class attributes "
            "included): found with both paths; clean and declared-shareable graphs pass"
        ),
    )
