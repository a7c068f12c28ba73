"""Every reach into another project's internals, in one place.

Each name here leans on something its project does not promise (a private
function, an attribute's name, a ``repr``). ``tests/test_compat.py`` has a
canary per reach that fails loudly, naming the dependency, when an upgrade
changes it; fix it here, and every caller follows.

Kept because a benchmark row justifies it (``benchmarks/``, measured with and
without; see the CHANGELOG) or because no public way exists.

Nothing here imports an optional dependency at import time: a reach into one
(SQLAlchemy, contextvars-extras) reads attributes of the objects it is given.
SQLAlchemy's canaries are ``tests/sessions/test_sa_compat.py``, which CI runs on
the oldest SQLAlchemy the extra allows as well as on the newest (its
oldest-sqlalchemy phase runs ``tests/sessions``).

SQLAlchemy: ``protect()`` reads what a statement selects, joins, filters and
sets, and the manager reads a pool's and a dialect's settings, where SQLAlchemy
offers no public read. The public reads that look alike do not answer the same
question: ``whereclause`` folds the criteria into one clause (dropping
``true()``, collapsing on ``false()``) and the repair must extend the tuple in
place; ``get_final_froms()`` and ``column_descriptions`` give the FROM list as
rendered and the selected entities, not the elements a statement was built
of; ``QueuePool.overflow()`` is the current overflow, not its bound. A read
that tolerates an attribute's absence (``getattr`` with a default) keeps the
default its caller had: a statement kind without it (a ``CompoundSelect`` has
no ``_raw_columns``) is not a moved attribute. Where a missing attribute would
let a statement through unchecked, the caller fails closed (:func:`set_clause`
returns ``None``).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable
from typing import Any, Final

try:  # anyio uses sniffio to tell the backends apart when it is installed
    import sniffio
except ImportError:  # pragma: no cover - without it, anyio assumes asyncio too
    sniffio = None  # type: ignore[assignment]

__all__ = [
    "add_where_criteria",
    "async_library",
    "attrs_frozen",
    "cache_key",
    "connect_isolation_level",
    "count_value",
    "cve_allocates_on_setattr",
    "cve_var_descriptors",
    "deannotate",
    "dml_values",
    "from_obj",
    "from_objects",
    "hypothesis_rule_markers",
    "max_overflow",
    "multi_values",
    "of_type",
    "parent_entity",
    "raw_columns",
    "running_loop",
    "set_clause",
    "setup_joins",
    "where_criteria",
    "with_options",
]

# asyncio: the running loop of this thread, or None, without raising. The public
# asyncio.get_running_loop() raises RuntimeError outside a loop (under trio, in a
# thread), which costs an exception on the sync paths. It is a C function; the
# alias keeps it one call. (CPython lists it in asyncio.events.__all__ but gives
# it a private name.)
running_loop: Final[Callable[[], asyncio.AbstractEventLoop | None]] = asyncio._get_running_loop


def async_library() -> str:
    """``sniffio.current_async_library()``, without its slow sniffing for asyncio.

    Reads the two places an event loop announces itself to sniffio
    (``thread_local.name``, ``current_async_library_cvar``: documented for loop
    authors, not for readers), then asks asyncio. Kept: ``_shield()`` with it
    costs 0.94 us against 1.75 us with ``anyio.CancelScope()`` (see the CHANGELOG).
    """
    if sniffio is None:  # pragma: no cover - anyio then assumes asyncio too
        return "asyncio"
    name = sniffio.thread_local.name or sniffio.current_async_library_cvar.get()
    if name is None and running_loop() is not None:
        return "asyncio"
    return name or sniffio.current_async_library()  # raises the usual error outside a loop


def attrs_frozen(cls: type) -> bool:
    """Whether the attrs class ``cls`` is frozen (attrs has no public way to ask).

    attrs installs a ``__setattr__`` named ``_frozen_setattrs`` on a frozen class.
    """
    return getattr(cls.__setattr__, "__name__", "") == "_frozen_setattrs"


def count_value(counter: itertools.count[int]) -> int:
    """The next value of ``counter`` without advancing it (its ``repr`` is ``count(N)``).

    ``itertools.count`` has no public read: its ``__next__`` is one atomic C call
    (the reason it counts), and its ``repr`` is the only way to look.
    """
    return int(repr(counter)[6:-1])


def hypothesis_rule_markers() -> tuple[str, ...]:
    """The attribute names Hypothesis' ``@rule``, ``@initialize`` and ``@invariant``
    set on a function (undocumented constants of ``hypothesis.stateful``).

    Imported when called: Hypothesis is a dependency of ``isolation.testing`` only.
    """
    from hypothesis.stateful import (
        INITIALIZE_RULE_MARKER,
        INVARIANT_MARKER,
        RULE_MARKER,
    )

    markers: tuple[Any, ...] = (RULE_MARKER, INITIALIZE_RULE_MARKER, INVARIANT_MARKER)
    return tuple(str(marker) for marker in markers)


# -- SQLAlchemy (isolation.sessions: protect(), the manager, row-level security) ---------
#
# What a statement was built of


def where_criteria(statement: Any) -> tuple[Any, ...]:
    """The WHERE criteria of a SELECT, UPDATE or DELETE, one per ``where()`` term
    (``_where_criteria``)."""
    return statement._where_criteria  # type: ignore[no-any-return]


def add_where_criteria(statement: Any, added: Iterable[Any]) -> None:
    """AND ``added`` to the WHERE criteria of ``statement``, in place: for a clone
    not yet shared (a ``cloned_traverse()`` visitor's)."""
    statement._where_criteria += tuple(added)


def raw_columns(statement: Any) -> tuple[Any, ...]:
    """The entities and columns a SELECT names, as given (``_raw_columns``); ``()`` for
    a statement without them."""
    return tuple(getattr(statement, "_raw_columns", ()))


def from_obj(statement: Any) -> tuple[Any, ...]:
    """The explicit FROM elements of a SELECT (``select_from()``: ``_from_obj``)."""
    return tuple(getattr(statement, "_from_obj", ()))


def setup_joins(statement: Any) -> tuple[tuple[Any, ...], ...]:
    """A SELECT's ``join()`` calls, each ``(target, onclause, from, flags)``
    (``_setup_joins``)."""
    return tuple(getattr(statement, "_setup_joins", ()))


def with_options(statement: Any) -> tuple[Any, ...]:
    """The loader options given to ``options()`` (``_with_options``)."""
    return tuple(getattr(statement, "_with_options", ()))


def of_type(element: Any) -> Any | None:
    """The target of a relationship's ``of_type()`` (``_of_type``: the aliased class or
    its inspection, for ``inspect()``), or ``None``."""
    return getattr(element, "_of_type", None)


def parent_entity(element: Any) -> Any | None:
    """The mapper or aliased class an ORM-annotated element comes from (its
    ``parententity`` annotation), or ``None``."""
    return getattr(element, "_annotations", {}).get("parententity")


def from_objects(clause: Any) -> tuple[Any, ...]:
    """The FROM elements a clause names (``_from_objects``)."""
    return tuple(getattr(clause, "_from_objects", ()))


def deannotate(element: Any) -> Any:
    """``element`` without the ORM's annotations: the plain ``Table``, alias or column
    it annotates (``_deannotate()``)."""
    return element._deannotate()


def cache_key(statement: Any) -> Any | None:
    """SQLAlchemy's cache key of the statement's shape (``_generate_cache_key()``,
    memoized on the statement), or ``None`` for an uncacheable one."""
    return statement._generate_cache_key()


# -- what an INSERT or UPDATE sets --------------------------------------------------------


_ABSENT: Final = object()


def dml_values(statement: Any) -> dict[Any, Any]:
    """The ``values()`` of an UPDATE or single-row INSERT by column (``_values``); ``{}``
    for none. (On SQLAlchemy 2.0 ``ordered_values()`` is kept apart: see
    :func:`set_clause`.)"""
    return dict(getattr(statement, "_values", None) or {})


def set_clause(statement: Any) -> tuple[tuple[Any, Any], ...] | None:
    """The ``(column, value)`` pairs an UPDATE sets, from ``values()`` and
    ``ordered_values()`` (2.0 keeps the latter in ``_ordered_values``, 2.1 in
    ``_values``); ``None`` if this SQLAlchemy keeps them elsewhere (fail closed)."""
    values: Any = getattr(statement, "_values", _ABSENT)
    if values is _ABSENT:
        return None
    ordered = getattr(statement, "_ordered_values", None) or ()
    return (*(values or {}).items(), *ordered)


def multi_values(statement: Any) -> tuple[Any, ...]:
    """The rows of a multi-row ``insert().values([...])``, one list per ``values()``
    call (``_multi_values``); ``()`` for none."""
    return tuple(getattr(statement, "_multi_values", None) or ())


# -- engines ------------------------------------------------------------------------------


def max_overflow(pool: Any) -> int:
    """A ``QueuePool``'s ``max_overflow`` (``_max_overflow``; negative: unbounded)."""
    return int(getattr(pool, "_max_overflow", 0))


def connect_isolation_level(dialect: Any) -> str | None:
    """The ``isolation_level=`` given to ``create_engine()``, which the dialect sets on
    each new connection (``_on_connect_isolation_level``), or ``None``."""
    return getattr(dialect, "_on_connect_isolation_level", None)


# -- contextvars-extras (isolation.integrations.contextvars_extras) -----------------------


def cve_allocates_on_setattr(registry: type) -> bool:
    """Whether a ``ContextVarsRegistry`` class makes a new variable when an undeclared
    attribute is set (its ``_registry_allocate_on_setattr`` option, named in its docs
    but private)."""
    return bool(registry._registry_allocate_on_setattr)  # type: ignore[attr-defined]


def cve_var_descriptors(registry: type) -> list[Any]:
    """The ``ContextVarDescriptor`` of each variable a ``ContextVarsRegistry`` class
    declares (``_registry_var_descriptors``, by name)."""
    return list(registry._registry_var_descriptors.values())  # type: ignore[attr-defined]
