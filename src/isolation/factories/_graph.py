"""The shared-state walk: which mutable objects an instance reaches, and by what path.

Pure code: no scopes, no threads, no locks, so it is property-tested on its own.
:func:`walk` visits, breadth first and with bounds, what an instance reaches:
instance ``__dict__`` and ``__slots__``, **class-level attributes** (the
commonest hidden sharing: ``class Engine: cache = {}``), dict values, list,
tuple, deque and set items, attrs and dataclass fields, a bound method's
``__self__``, a ``functools.partial``'s parts, and a function's default
arguments and closure cells. It returns every *mutable* object reached with
its shortest path (ties broken by name), which the index of live scopes
compares between users.

The walk goes by an object's shape; the types it knows by name (below) are
listed in :mod:`isolation.factories._catalogue`, which gives one verdict per
type (shared, boundary, opaque, view) and answers a few questions about values
and attributes: that module's ``__all__`` is the whole interface between them.

Not walked (neither entered nor compared): immutable atoms (``None``, numbers,
strings, bytes, dates, ...), types, modules, functions as such, enum members,
``logging.Logger``, event loops, executors and synchronisation primitives, the
library's own ``UserContext``, ``Scope``, ``Registry``, ``SessionManager`` and
``EventRouter``, SQLAlchemy engines, pools and session makers, instances of a
class with ``__isolation_shareable__ = True``, and anything declared with
:func:`isolation.shareable`. A SQLAlchemy session or connection (sync or
asyncio) is a boundary: compared, so two users reaching one session are
refused, but not entered, since what lies behind it is SQLAlchemy's own
machinery, shared by every session by design. Tuples, frozensets and frozen
attrs or dataclass instances are entered but not compared themselves (they
cannot change; what they hold can). Objects of C extension types without a ``__dict__`` (a NumPy
array, a lock) are opaque: not entered and not compared, except as the root.
"""

from __future__ import annotations

import array
import collections
import collections.abc
import enum
import functools
import gc
import operator
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any, Final, TypeVar, final

from isolation._errors import WalkTruncatedWarning
from isolation._redact import redact
from isolation.factories import _catalogue, _shareable

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_OBJECTS",
    "MIN_MAX_DEPTH",
    "MIN_MAX_OBJECTS",
    "Path",
    "WalkResult",
    "WalkTruncatedWarning",
    "find_reachable",
    "render_path",
    "walk",
]

DEFAULT_MAX_DEPTH: Final = 10
"""Edges from the instance the walk follows by default."""

DEFAULT_MAX_OBJECTS: Final = 10_000
"""Objects the walk visits by default before it stops."""

MIN_MAX_DEPTH: Final = 1
MIN_MAX_OBJECTS: Final = 1

T = TypeVar("T")

Path = tuple[str, ...]
"""An attribute path: the root's type name, then one label per edge: ``("Engine", "cache")``."""


# -- how each type is walked ------------------------------------------------------

_SKIP: Final = 0  # not entered, not compared
_OPAQUE: Final = 1  # not entered, not compared (compared only as the root)
_DICT: Final = 2
_SEQ: Final = 3  # list, deque
_SET: Final = 4
_TUPLE: Final = 5  # entered, not compared
_FROZENSET: Final = 6  # entered, not compared
_OBJECT: Final = 7
_FROZEN_OBJECT: Final = 8  # entered, not compared
_FUNCTION: Final = 9  # defaults and closure cells entered, not compared
_METHOD: Final = 10  # __self__ entered, not compared
_PARTIAL: Final = 11
_MAPPINGPROXY: Final = 12  # entered, not compared
_MUTABLE_ATOM: Final = 13  # compared, nothing inside to enter (or a boundary: not entered)
_LOCAL: Final = 14  # threading.local: its __dict__ is the current thread's
_VIEW: Final = 15  # dict views, iterators, itertools: what they iterate entered, not compared

_COMPARED: Final = frozenset({_DICT, _SEQ, _SET, _OBJECT, _PARTIAL, _MUTABLE_ATOM, _LOCAL})

# Edge kinds, rendered into path labels only when a path is asked for.
_E_ROOT: Final = 0
_E_ATTR: Final = 1
_E_KEY: Final = 2  # a dict value, by its key
_E_INDEX: Final = 3
_E_MEMBER: Final = 4  # a set member
_E_DEFAULT: Final = 5
_E_CLOSURE: Final = 6
_E_DICT_KEY: Final = 7  # a dict key that is itself walked

_ATOMS: Final = _catalogue.ATOMS
_is_atom_value: Final = _catalogue.is_atom_value


class _TypeInfo:
    """How instances of one type are walked (computed once per walk)."""

    __slots__ = ("class_edges", "has_dict", "kind", "slots")

    def __init__(
        self,
        kind: int,
        *,
        has_dict: bool = False,
        slots: tuple[tuple[str, Any], ...] = (),
        class_edges: tuple[tuple[str, object], ...] = (),
    ) -> None:
        self.kind = kind
        self.has_dict = has_dict
        self.slots = slots
        self.class_edges = class_edges


_SKIP_INFO: Final = _TypeInfo(_SKIP)
_OPAQUE_INFO: Final = _TypeInfo(_OPAQUE)
_BOUNDARY_INFO: Final = _TypeInfo(_MUTABLE_ATOM)  # no edges: compared, not entered
_VIEW_INFO: Final = _TypeInfo(_VIEW)

# The walk's treatment of each verdict of the catalogue.
_KNOWN_INFO: Final = {
    _catalogue.Verdict.SHARED: _SKIP_INFO,
    _catalogue.Verdict.BOUNDARY: _BOUNDARY_INFO,
    _catalogue.Verdict.OPAQUE: _OPAQUE_INFO,
    _catalogue.Verdict.VIEW: _VIEW_INFO,
}


def _slots_of(cls: type) -> tuple[tuple[str, Any], ...]:
    found: list[tuple[str, Any]] = []
    seen: set[str] = set()
    for klass in cls.__mro__:
        names = klass.__dict__.get("__slots__", ())
        if isinstance(names, str):
            names = (names,)
        for name in names:
            if name in ("__dict__", "__weakref__") or name in seen:
                continue
            seen.add(name)
            stored = name
            if name.startswith("__") and not name.endswith("__"):
                stored = f"_{klass.__name__.lstrip('_')}{name}"  # name mangling
            descriptor = klass.__dict__.get(stored)
            if isinstance(descriptor, types.MemberDescriptorType):
                found.append((name, descriptor))
    return tuple(found)


# The defaults that make a class's method share state between instances: the
# classic `memory=[]`, and objects that hold such a container directly
# (`memory=Memory()`, a TTLCache). Other objects as defaults (sentinels, config
# objects such as httpx's DEFAULT_LIMITS) are every library's idiom and not
# walked from the class; a default reached from an instance's own function is.
_MUTABLE_ABCS: Final = (
    collections.abc.MutableMapping,
    collections.abc.MutableSequence,
    collections.abc.MutableSet,
    bytearray,
    array.array,
)


def _is_mutable_container(value: object) -> bool:
    try:
        return isinstance(value, _MUTABLE_ABCS)
    except Exception:  # an object whose __class__ raises (a werkzeug LocalProxy)
        return False


def _holds_state(value: object) -> bool:
    """Whether a default argument is shared state: a mutable container, a tuple
    holding one, or an object whose own attributes hold one (one level deep)."""
    if _is_mutable_container(value):
        return True
    if type(value) is tuple:
        return any(_is_mutable_container(item) for item in value)
    if type(value) in _ATOMS:
        return False
    attributes = _read_dict(value)
    if attributes and any(_is_mutable_container(v) for v in list(attributes.values())):
        return True
    for name, descriptor in _slots_of(type(value)):
        if name.startswith("__"):
            continue  # pydantic's __pydantic_fields_set__ and the like: bookkeeping
        try:
            if _is_mutable_container(descriptor.__get__(value, type(value))):
                return True
        except AttributeError:
            continue
    return False


def _has_mutable_defaults(fn: types.FunctionType) -> bool:
    defaults = fn.__defaults__ or ()
    kwdefaults = fn.__kwdefaults__ or {}
    return any(_holds_state(v) for v in defaults) or any(
        _holds_state(v) for v in kwdefaults.values()
    )


def _class_level_state(fn: types.FunctionType) -> object | None:
    """What to walk for a class-level function: ``fn``, or the function it wraps
    (``functools.wraps``'s ``__wrapped__``, followed to the end), that has
    mutable defaults, or the object at the end of that chain if it is not a
    function (an ``lru_cache`` under a decorator); else None.

    Closures are not entered: decorator libraries (tenacity, backoff, tracing)
    keep shared objects there by design, so a memoizing decorator's closure
    cache is not seen.
    """
    seen: set[int] = set()
    current: object = fn
    while isinstance(current, types.FunctionType) and id(current) not in seen:
        seen.add(id(current))
        if _has_mutable_defaults(current):
            return current
        current = getattr(current, "__wrapped__", None)  # without materialising fn.__dict__
    if current is None or isinstance(current, types.FunctionType) or _is_atom_value(current):
        return None
    return current


def _owned_guard_raw(value: object) -> object:
    """What an ``@owned`` guard descriptor guards (the class member it replaced), else
    ``value``: the guard is the library's, the member is what the class defines."""
    for klass in type(value).__mro__:
        slot = klass.__dict__.get("__isolation_raw__")
        if isinstance(slot, types.MemberDescriptorType):
            try:
                return slot.__get__(value, type(value))
            except AttributeError:
                return value
    return value


def _unwrapped(value: object) -> tuple[object, ...]:
    """What a class attribute runs: the function inside a staticmethod or
    classmethod, a property's accessors, else the value itself (seen through
    an ``@owned`` guard)."""
    value = _owned_guard_raw(value)
    if isinstance(value, staticmethod | classmethod):
        return (value.__func__,)
    if isinstance(value, property):
        return tuple(f for f in (value.fget, value.fset, value.fdel) if f is not None)
    return (value,)


def _class_edges(cls: type) -> tuple[tuple[str, object], ...]:
    """Class-level attributes worth walking: data, and methods (also static,
    class and property ones, and what a decorator wraps) with mutable defaults."""
    edges: list[tuple[str, object]] = []
    seen: set[str] = set()
    for klass in cls.__mro__:
        module = klass.__module__
        if klass is object or module == "builtins" or _catalogue.is_machinery_class(klass):
            continue
        for name, value in list(klass.__dict__.items()):
            if name in seen or not isinstance(name, str):
                continue
            seen.add(name)
            if name.startswith("__") and name.endswith("__"):
                continue
            if _catalogue.is_class_metadata(cls, name):
                continue
            if type(value) is types.FunctionType:  # the common case, without a tuple
                state = _class_level_state(value)
                if state is not None:
                    edges.append((name, state))
                continue
            for inner in _unwrapped(value):
                if isinstance(inner, types.FunctionType):
                    state = _class_level_state(inner)
                    if state is not None:
                        edges.append((name, state))
                elif not _is_atom_value(inner) and not isinstance(inner, functools.cached_property):
                    edges.append((name, inner))
    return tuple(edges)


def _classify(cls: type, *, declarations: bool = True) -> _TypeInfo:
    """How the walk treats instances of ``cls``; with ``declarations=False``, types
    declared shareable (by :func:`isolation.shareable` or by the class) are entered."""
    known = _catalogue.verdict(cls, declarations=declarations)
    if known is not None:
        return _KNOWN_INFO[known]
    kind: int
    if cls is types.FunctionType:
        return _TypeInfo(_FUNCTION)
    if cls is types.MethodType or cls is types.BuiltinMethodType or cls is types.MethodWrapperType:
        return _TypeInfo(_METHOD)  # shared_list.append held as a callback reaches the list
    if issubclass(cls, threading.local):
        return _TypeInfo(_LOCAL, class_edges=_class_edges(cls))
    if issubclass(cls, functools.partial):
        kind = _PARTIAL
    elif issubclass(cls, dict):
        kind = _DICT
    elif issubclass(cls, list | collections.deque):
        kind = _SEQ
    elif issubclass(cls, set):
        kind = _SET
    elif issubclass(cls, tuple):
        kind = _TUPLE
    elif issubclass(cls, frozenset):
        kind = _FROZENSET
    elif cls is types.MappingProxyType:
        return _TypeInfo(_MAPPINGPROXY)
    elif issubclass(cls, bytearray) or cls.__module__ == "array":
        return _TypeInfo(_MUTABLE_ATOM)
    else:
        has_dict = cls.__dictoffset__ != 0
        slots = _slots_of(cls)
        if not has_dict and not slots:
            if all("__slots__" in klass.__dict__ for klass in cls.__mro__[:-1]):
                # A Python class with `__slots__ = ()`: no state of its own, so its
                # instances are entered, not compared; but its class attributes
                # are every user's.
                class_edges = _class_edges(cls)
                if not class_edges:
                    return _SKIP_INFO
                return _TypeInfo(_FROZEN_OBJECT, class_edges=class_edges)
            return _OPAQUE_INFO
        kind = _FROZEN_OBJECT if _catalogue.is_frozen(cls) else _OBJECT
        return _TypeInfo(kind, has_dict=has_dict, slots=slots, class_edges=_class_edges(cls))
    # Subclasses of the builtin containers may carry attributes too; a tuple
    # subclass (a namedtuple) keeps only metadata at class level.
    if cls.__module__ == "builtins":
        return _TypeInfo(kind)
    return _TypeInfo(
        kind,
        has_dict=cls.__dictoffset__ != 0,
        slots=_slots_of(cls),
        class_edges=() if kind in (_TUPLE, _FROZENSET) else _class_edges(cls),
    )


_HEAPTYPE: Final = 1 << 9  # Py_TPFLAGS_HEAPTYPE: classes made at run time
_static_infos: dict[type, _TypeInfo] = {}
_static_generation = [-1]


def _static_info(cls: type) -> _TypeInfo:
    """The walk info of a static (C) type: such types never die, so it is cached for good."""
    generation = _shareable.generation()
    if _static_generation[0] != generation:
        _static_infos.clear()
        _static_generation[0] = generation
    info = _static_infos.get(cls)
    if info is None:
        info = _static_infos[cls] = _classify(cls)
    return info


# -- the result ---------------------------------------------------------------


@final
class WalkResult:
    """What one walk reached: the mutable objects, each with its shortest path.

    Holds a strong reference to every object it visited, so that the ids it
    reports stay valid for as long as the result lives.

    Attributes:
        root: The instance walked.
        mutable: Ids of the mutable objects reached, in breadth-first order
            (so the first one found in another walk is the shallowest shared one).
        visited: Objects visited, mutable or not.
        depth: The greatest depth reached, in edges from the root.
        truncated: ``None``, or why the walk stopped before the end.
    """

    __slots__ = ("_nodes", "depth", "mutable", "root", "truncated", "visited")

    def __init__(
        self,
        root: object,
        nodes: dict[int, tuple[object, int, int, object]],
        mutable: list[int],
        depth: int,
        truncated: str | None,
    ) -> None:
        self.root = root
        self._nodes = nodes
        self.mutable = mutable
        self.visited = len(nodes)
        self.depth = depth
        self.truncated = truncated

    def __contains__(self, oid: object) -> bool:
        return oid in self._nodes

    def obj(self, oid: int) -> object:
        """The object with id ``oid`` reached by this walk."""
        return self._nodes[oid][0]

    def path(self, oid: int) -> Path:
        """The shortest path (ties broken by name) from the root to the object ``oid``."""
        labels: list[str] = []
        nodes = self._nodes
        while True:
            obj, parent, edge, key = nodes[oid]
            labels.append(_label(obj, edge, key))
            if parent < 0:
                break
            oid = parent
        labels.reverse()
        return tuple(labels)

    def __repr__(self) -> str:
        more = f", truncated: {self.truncated}" if self.truncated else ""
        return (
            f"<WalkResult of {type(self.root).__name__}: {len(self.mutable)} mutable of "
            f"{self.visited} visited, depth {self.depth}{more}>"
        )


def _key_label(key: object) -> str:
    if type(key) is str:
        shown = redact(key)
        if len(shown) > 40:
            shown = shown[:40] + "..."
        return repr(shown)
    if type(key) in (int, bool, float, type(None)) or isinstance(key, enum.Enum):
        return repr(key)
    return f"<{type(key).__name__}>"


def _label(obj: object, edge: int, key: object) -> str:
    if edge == _E_ROOT:
        return type(obj).__name__
    if edge == _E_ATTR:
        return str(key)
    if edge == _E_KEY:
        return f"[{_key_label(key)}]"
    if edge == _E_INDEX:
        return f"[{key}]"
    if edge == _E_MEMBER:
        return f"{{{type(obj).__name__}}}"
    if edge == _E_DEFAULT:
        return f"<default {key}>"
    if edge == _E_CLOSURE:
        return f"<closure {key}>"
    return f"<key {type(obj).__name__}>"


def render_path(path: Path) -> str:
    """Render a path as Python-like text: ``Engine.cache['k'][0]``, ``Engine.pool{Conn}``."""
    if not path:
        return "?"
    parts = [path[0]]
    for label in path[1:]:
        parts.append(label if label[:1] in ("[", "{") else f".{label}")
    return "".join(parts)


# -- the walk --------------------------------------------------------------------

_by_key = operator.itemgetter(0)


def _sorted_items(items: list[tuple[Any, object]]) -> list[tuple[Any, object]]:
    try:
        items.sort(key=_by_key)
    except TypeError:
        items.sort(key=lambda item: (type(item[0]).__name__, repr(item[0])))
    return items


def _read_dict(obj: object) -> dict[str, object] | None:
    try:
        found = object.__getattribute__(obj, "__dict__")
    except Exception:
        return None
    return found if type(found) is dict else None


_METADATA: Final = _catalogue.METADATA_ATTRIBUTES


def _attributes(obj: object, info: _TypeInfo) -> list[tuple[str, object]]:
    items: list[tuple[str, object]] = []
    names: set[str] | None = None
    if info.has_dict or info.kind == _LOCAL:
        found = _read_dict(obj)
        if found:
            snapshot = list(found.items())
            names = {name for name, _ in snapshot}
            items.extend(
                (name, value)
                for name, value in snapshot
                if type(value) not in _ATOMS and name not in _METADATA
            )
    for name, descriptor in info.slots:
        try:
            value = descriptor.__get__(obj, type(obj))
        except AttributeError:
            continue
        if names is None:
            names = set()
        names.add(name)
        if type(value) not in _ATOMS and name not in _METADATA:
            items.append((name, value))
    for name, value in info.class_edges:
        if names is None or name not in names:
            items.append((name, value))
    return _sorted_items(items)


def _function_edges(fn: types.FunctionType) -> Iterator[tuple[int, object, object]]:
    code = fn.__code__
    defaults = fn.__defaults__
    if defaults:
        names = code.co_varnames[code.co_argcount - len(defaults) : code.co_argcount]
        pairs = sorted(zip(names, defaults, strict=True), key=_by_key)
        for name, value in pairs:
            yield _E_DEFAULT, name, value
    if fn.__kwdefaults__:
        for name, value in sorted(fn.__kwdefaults__.items(), key=_by_key):
            yield _E_DEFAULT, name, value
    if fn.__closure__:
        cells = sorted(zip(code.co_freevars, fn.__closure__, strict=True), key=_by_key)
        for name, cell in cells:
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            yield _E_CLOSURE, name, value
    attributes = fn.__dict__
    if attributes:
        for name, value in _sorted_items(list(attributes.items())):
            if name == "__wrapped__" or (
                type(value) not in _ATOMS
                and not (isinstance(name, str) and name.startswith("__") and name.endswith("__"))
            ):
                yield _E_ATTR, name, value


def _edges(obj: object, info: _TypeInfo) -> Iterator[tuple[int, object, object]]:
    """``(edge kind, key, child)`` for each child of ``obj``, in walk order."""
    kind = info.kind
    if kind in (_DICT, _MAPPINGPROXY):
        mapping: Any = obj
        snapshot = list(mapping.items())
        keys = [k for k, _ in snapshot if not (type(k) in _ATOMS or isinstance(k, type))]
        values = [(k, v) for k, v in snapshot if type(v) not in _ATOMS]
        for key, value in _sorted_items(values):
            yield _E_KEY, key, value
        for key in keys:
            yield _E_DICT_KEY, None, key
    elif kind in (_SEQ, _TUPLE):
        sequence: Any = obj
        for index, value in enumerate(list(sequence)):
            if type(value) not in _ATOMS:
                yield _E_INDEX, index, value
    elif kind in (_SET, _FROZENSET):
        members: Any = obj
        found = [m for m in list(members) if type(m) not in _ATOMS]
        found.sort(key=lambda m: type(m).__name__)
        for member in found:
            yield _E_MEMBER, None, member
    elif kind == _FUNCTION:
        fn: Any = obj
        yield from _function_edges(fn)
        return
    elif kind == _METHOD:
        owner = getattr(obj, "__self__", None)  # None for a builtin function of no module
        if owner is not None:
            yield _E_ATTR, "__self__", owner
        return
    elif kind == _VIEW:
        for value in gc.get_referents(obj):
            if type(value) not in _ATOMS:
                yield _E_ATTR, "<iterates>", value
        return
    elif kind == _PARTIAL:
        partial: Any = obj
        yield _E_ATTR, "args", partial.args
        yield _E_ATTR, "func", partial.func
        yield _E_ATTR, "keywords", partial.keywords
    if info.has_dict or info.slots or info.class_edges or kind == _LOCAL:
        for name, value in _attributes(obj, info):
            yield _E_ATTR, name, value


def walk(
    root: object,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_objects: int = DEFAULT_MAX_OBJECTS,
) -> WalkResult:
    """Walk what ``root`` reaches, breadth first and bounded; return the mutable objects.

    Args:
        root: The instance to walk. It is always compared (the same object
            handed to two users is refused), unless it is an atom, a type or
            declared shareable.
        max_depth: Edges from ``root`` the walk follows.
        max_objects: Objects the walk visits before it stops.

    Returns:
        The :class:`WalkResult`; ``truncated`` says whether a bound was hit.
    """
    infos: dict[type, _TypeInfo] = {}
    declared = _shareable.declared_shareable
    any_declared = bool(_shareable._strong or _shareable._weak)

    def info_of(cls: type) -> _TypeInfo:
        info = infos.get(cls)
        if info is None:
            info = infos[cls] = (
                _static_info(cls) if not cls.__flags__ & _HEAPTYPE else _classify(cls)
            )
        return info

    nodes: dict[int, tuple[object, int, int, object]] = {}
    mutable: list[int] = []
    root_info = info_of(type(root))
    if root_info.kind == _SKIP or (any_declared and declared(root)):
        return WalkResult(root, nodes, mutable, 0, None)
    nodes[id(root)] = (root, -1, _E_ROOT, None)
    mutable.append(id(root))
    queue: collections.deque[tuple[object, _TypeInfo, int]] = collections.deque()
    if root_info.kind != _OPAQUE:
        queue.append((root, root_info, 0))
    deepest = 0
    truncated: str | None = None
    while queue:
        obj, info, depth = queue.popleft()
        parent = id(obj)
        child_depth = depth + 1
        for edge, key, child in _edges(obj, info):
            cid = id(child)
            if cid in nodes:
                continue
            child_info = info_of(type(child))
            kind = child_info.kind
            if kind == _SKIP or (any_declared and declared(child)):
                continue
            if child_depth > max_depth:
                truncated = truncated or f"the depth bound of {max_depth} edges"
                continue
            if len(nodes) >= max_objects:
                truncated = f"the bound of {max_objects} objects"
                queue.clear()
                break
            nodes[cid] = (child, parent, edge, key)
            deepest = max(deepest, child_depth)
            if kind in _COMPARED:
                mutable.append(cid)
            if kind not in (_OPAQUE, _MUTABLE_ATOM):
                queue.append((child, child_info, child_depth))
    return WalkResult(root, nodes, mutable, deepest, truncated)


def find_reachable(
    root: object,
    match: Callable[[type], T | None],
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_objects: int = DEFAULT_MAX_OBJECTS,
) -> tuple[tuple[Path, object, T] | None, str | None]:
    """The shallowest object reachable from ``root`` whose type ``match`` recognises.

    Follows the walk's edges, breadth first and with its bounds, and enters
    what the walk skips as declared shareable (objects and types declared with
    :func:`isolation.shareable`, classes saying ``__isolation_shareable__``):
    it is what checks a declaration. Run once per declaration, not per build.

    Returns:
        ``((path, object, what match returned) or None, why it stopped early or None)``.
    """
    infos: dict[type, _TypeInfo] = {}
    matches: dict[type, T | None] = {}

    def found(cls: type) -> T | None:
        if cls not in matches:
            matches[cls] = match(cls)
        return matches[cls]

    def info_of(cls: type) -> _TypeInfo:
        info = infos.get(cls)
        if info is None:
            info = infos[cls] = _classify(cls, declarations=False)
        return info

    nodes: dict[int, tuple[object, int, int, object]] = {id(root): (root, -1, _E_ROOT, None)}
    hit = found(type(root))
    if hit is not None:
        return ((type(root).__name__,), root, hit), None
    root_info = info_of(type(root))
    queue: collections.deque[tuple[object, _TypeInfo, int]] = collections.deque()
    if root_info.kind not in (_SKIP, _OPAQUE, _MUTABLE_ATOM):
        queue.append((root, root_info, 0))
    truncated: str | None = None
    while queue:
        obj, info, depth = queue.popleft()
        parent = id(obj)
        for edge, key, child in _edges(obj, info):
            cid = id(child)
            if cid in nodes:
                continue
            hit = found(type(child))
            child_info = info_of(type(child))
            if hit is None and child_info.kind == _SKIP:
                continue
            if depth + 1 > max_depth:
                truncated = truncated or f"the depth bound of {max_depth} edges"
                continue
            if len(nodes) >= max_objects:
                return None, f"the bound of {max_objects} objects"
            nodes[cid] = (child, parent, edge, key)
            if hit is not None:
                path = WalkResult(root, nodes, [], 0, None).path(cid)
                return (path, child, hit), None
            if child_info.kind not in (_OPAQUE, _MUTABLE_ATOM):
                queue.append((child, child_info, depth + 1))
    return None, truncated
