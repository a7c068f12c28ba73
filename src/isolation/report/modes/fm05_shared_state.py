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
from isolation.report._registry import Backend, Check, ModeRegistry, Settings

__all__ = ["Case", "Walker", "build_case", "cases", "judge_case", "register"]

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


@attrs.frozen
class Case:
    """One generated example: two users' graphs, and where (if anywhere) one object is planted.

    ``plant`` is ``None`` (no sharing), or the ordinals of the container that
    receives the planted object in each graph (taken modulo the number of
    eligible containers), the planted object's kind, and whether it is
    declared shareable.
    """

    spec_a: Spec
    spec_b: Spec
    plant: tuple[int, int, str, bool] | None


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


def _eligible(spec: Spec, depth: int, out: list[tuple[Spec, int]]) -> None:
    kind, payload = spec
    if kind == "atom":
        return
    if depth <= PLANT_DEPTH_MAX - 1:
        out.append((spec, depth))
    for child in payload:
        _eligible(child, depth + 1, out)


class _Builder:
    """Materialise a spec into fresh objects, planting ``planted`` in ``target``."""

    def __init__(self, target: Spec | None, planted: object) -> None:
        self.target = target
        self.planted = planted
        self.planted_path: Path | None = None

    def build(self, spec: Spec, path: Path) -> object:
        kind, payload = spec
        if kind == "atom":
            return payload
        plant_here = spec is self.target
        labels = self._labels(kind, len(payload))
        if not path:
            path = (_ROOT_NAMES[kind],)
        children = [self.build(c, (*path, label)) for c, label in zip(payload, labels, strict=True)]
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
    ordinal_a, ordinal_b, kind, declared = case.plant
    planted = _fresh_planted(kind, declared)
    spots_a: list[tuple[Spec, int]] = []
    spots_b: list[tuple[Spec, int]] = []
    _eligible(case.spec_a, 0, spots_a)
    _eligible(case.spec_b, 0, spots_b)
    builder_a = _Builder(spots_a[ordinal_a % len(spots_a)][0], planted)
    builder_b = _Builder(spots_b[ordinal_b % len(spots_b)][0], planted)
    root_a = builder_a.build(case.spec_a, ())
    root_b = builder_b.build(case.spec_b, ())
    assert builder_a.planted_path is not None and builder_b.planted_path is not None
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
                f"a graph {why} was refused: {found_a[first]} and {found_b[first]} "
                "reported shared"
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


def cases() -> Any:
    """A Hypothesis strategy of :class:`Case` (needs the ``testing`` extra)."""
    from hypothesis import strategies as st

    atom = st.one_of(
        st.integers(-5, 5), st.text(max_size=3), st.none(), st.booleans()
    ).map(lambda v: ("atom", v))

    def extend(children: Any) -> Any:
        def node(kind: str) -> Any:
            if kind in ("slots", "attrs", "dataclass"):
                return st.tuples(children, children).map(lambda cs, k=kind: (k, cs))
            if kind == "classattr":
                return children.map(lambda c: ("classattr", (c,)))
            return st.lists(children, max_size=3).map(lambda cs, k=kind: (k, tuple(cs)))

        return st.one_of([node(kind) for kind in CONTAINERS])

    tree = st.recursive(atom, extend, max_leaves=8)

    def rooted(spec: Spec) -> Any:
        if spec[0] in ROOTS:
            return st.just(spec)
        return st.sampled_from(("list", "box")).map(lambda k: (k, (spec,)))

    root = tree.flatmap(rooted)
    plant = st.one_of(
        st.none(),
        st.tuples(
            st.integers(0, 50),
            st.integers(0, 50),
            st.sampled_from(PLANTED_KINDS),
            st.booleans(),
        ),
    )
    return st.builds(Case, root, root, plant)


def generate_cases(count: int) -> list[Case]:
    """Draw ``count`` cases with Hypothesis, deterministically."""
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
    @given(cases())
    def collect(case: Case) -> None:
        drawn.append(case)

    collect()
    return drawn


def check_planted_shared_state(walker: Walker, settings: Settings) -> list[str]:
    """The classic class-attribute cases, then random graphs: planted found, clean ones pass."""
    found: list[str] = []
    for built in classic_cases():
        found.extend(judge_case(walker, built))
    for case in generate_cases(max(settings.examples, 50)):
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
    registry.register(
        5,
        Check(
            name="walk-finds-planted",
            backend=Backend.MEMORY,
            run=check_planted_shared_state,
            library=_library,
            mutant=_mutant,
            requires=("hypothesis",),
            description=(
                "random object graphs with one planted shared object (class attributes "
                "included): found with both paths; clean and declared-shareable graphs pass"
            ),
        ),
    )
