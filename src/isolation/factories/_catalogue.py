"""The catalogue of known types: what the shared-state walk knows by name, not by shape.

:mod:`isolation.factories._graph` walks any object by its structure (its
``__dict__`` and slots, the builtin containers, functions and methods). Some
types it must not treat by their structure, and this module lists them, so
that the list can grow (a new HTTP client, a new ORM) without touching the walk:

- immutable atoms (numbers, strings, dates, ...): not walked at all;
- infrastructure shared by every user on purpose (loggers, event loops,
  executors, synchronisation primitives, the library's own app-wide objects,
  SQLAlchemy's engines, pools and ORM machinery, an ASGI application):
  neither entered nor compared;
- boundaries (a SQLAlchemy session or connection): compared, not entered;
- opaque C types (locks) and iterating views (dict views, iterators,
  ``itertools``);
- frozen dataclasses and attrs classes; class-level and instance-level
  metadata (pydantic's model metadata, SQLAlchemy's dataclass transforms,
  ``@owned``'s owner mark) that is every instance's alike.

The interface the walk uses is :data:`__all__`: one verdict per type
(:func:`verdict`) plus a few questions about values and attributes. Pure
code: no scopes, no threads, no locks; optional libraries are known by their
module and class name, never imported here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import decimal
import enum
import fractions
import io
import logging
import pathlib
import random
import re
import threading
import types
import uuid
import weakref
from typing import Final

from isolation import _compat
from isolation.factories import _shareable

__all__ = [
    "ATOMS",
    "METADATA_ATTRIBUTES",
    "Verdict",
    "is_atom_value",
    "is_class_metadata",
    "is_frozen",
    "is_machinery_class",
    "verdict",
]


@enum.unique
class Verdict(enum.Enum):
    """What the catalogue says of a type, before the walk looks at its shape."""

    SHARED = "shared"  # shared by design, or immutable: neither entered nor compared
    BOUNDARY = "boundary"  # one user's handle into a library: compared, not entered
    OPAQUE = "opaque"  # a C type without readable state: compared only as the root
    VIEW = "view"  # an iterating view: what it iterates is entered; it is not compared


ATOMS: Final[frozenset[type]] = frozenset(
    {
        type(None),
        type(Ellipsis),
        type(NotImplemented),
        bool,
        int,
        float,
        complex,
        str,
        bytes,
        range,
        slice,
        decimal.Decimal,
        fractions.Fraction,
        datetime.date,
        datetime.datetime,
        datetime.time,
        datetime.timedelta,
        datetime.timezone,
        uuid.UUID,
        re.Pattern,
        pathlib.PurePosixPath,
        pathlib.PureWindowsPath,
        pathlib.PosixPath,
        pathlib.WindowsPath,
        memoryview,
        types.ModuleType,
        types.WrapperDescriptorType,
        types.MethodDescriptorType,
        types.ClassMethodDescriptorType,
        types.GetSetDescriptorType,
        types.MemberDescriptorType,
        types.CodeType,
        types.FrameType,
        types.TracebackType,
        types.GeneratorType,
        types.CoroutineType,
        types.AsyncGeneratorType,
        types.CellType,
        property,
        staticmethod,
        classmethod,
    }
)
"""Immutable values and the language's machinery: never walked."""


def _infrastructure() -> tuple[type, ...]:
    # Shared on purpose by every user, and holding no user's data of their own.
    from isolation.context._model import Attributes, UserContext
    from isolation.context._scope import Scope

    return (
        logging.Logger,
        logging.PlaceHolder,
        logging.Manager,
        asyncio.AbstractEventLoop,
        asyncio.Lock,
        asyncio.Event,
        asyncio.Condition,
        asyncio.Semaphore,
        concurrent.futures.Executor,
        io.IOBase,
        random.Random,  # random.random and friends are bound methods of one module-level Random
        threading.Thread,
        threading.Condition,
        threading.Event,
        threading.Semaphore,
        threading.Barrier,
        enum.Enum,
        type,
        UserContext,
        Attributes,
        Scope,
    )


_INFRA: tuple[type, ...] | None = None

# Shared by design, known by name so that no optional library is imported here:
# the library's own app-wide objects, and SQLAlchemy's engines and pools (a
# scoped session reaches them). A class can also say so itself with
# `__isolation_shareable__ = True`, or be declared with isolation.shareable().
_SHARED_BY_NAME: Final = frozenset(
    {
        ("isolation", "Registry"),
        ("isolation.sessions", "SessionManager"),
        ("isolation.events", "EventRouter"),
        # The ASGI application and its routers, which every request's scope reaches.
        ("starlette.applications", "Starlette"),
        ("starlette.routing", "Router"),
        ("starlette.routing", "BaseRoute"),
        ("sqlalchemy.engine.base", "Engine"),
        ("sqlalchemy.ext.asyncio.engine", "AsyncEngine"),
        ("sqlalchemy.pool.base", "Pool"),
        ("sqlalchemy.orm.session", "sessionmaker"),
        ("sqlalchemy.ext.asyncio.session", "async_sessionmaker"),
        # The ORM's machinery, which every mapped instance reaches: its class
        # manager, mapper, declarative registry, instrumented attributes, schema
        # (MetaData, Table, Column) and the per-row InstanceState, whose class
        # defaults are shared. The row itself (its __dict__: the column values)
        # is still walked and compared.
        ("sqlalchemy.orm.base", "InspectionAttr"),  # states, attributes, hybrids, proxies
        ("sqlalchemy.orm.attributes", "_AttributeImpl"),  # collections' shared impl (2.1)
        ("sqlalchemy.orm.attributes", "AttributeImpl"),  # the same in 2.0
        ("sqlalchemy.orm.instrumentation", "ClassManager"),
        ("sqlalchemy.orm.mapper", "Mapper"),
        ("sqlalchemy.orm.decl_api", "registry"),
        ("sqlalchemy.sql.schema", "SchemaItem"),
    }
)

# One user's handle into SQLAlchemy: compared (two users reaching one session
# share its identity map and transaction), never entered. Behind it is the
# library's machinery, every session's alike: the engine, pool, dialect,
# mappers, event dispatch and, on the asyncio proxies, the class-level
# `_proxy_objects` registry. Entering it reported that registry as shared and
# ran into the walk's bounds.
_BOUNDARY_BY_NAME: Final = frozenset(
    {
        ("sqlalchemy.orm.session", "Session"),
        ("sqlalchemy.engine.base", "Connection"),
        # AsyncSession, AsyncConnection and their transactions (AsyncEngine is shared, above).
        ("sqlalchemy.ext.asyncio.base", "ReversibleProxy"),
    }
)

# Class-level metadata pydantic keeps on every model class: its config and its
# fields' descriptions, the same for every instance by design. A model's own
# class attributes are still walked.
_PYDANTIC_MODEL: Final = ("pydantic.main", "BaseModel")
_PYDANTIC_CLASS_METADATA: Final = frozenset(
    {"model_config", "model_fields", "model_computed_fields"}
)

METADATA_ATTRIBUTES: Final = frozenset({"__isolation_owner__", "__annotations__"})
"""Instance attributes that are bookkeeping, not state: the owner mark of ``@owned``,
and the annotations ``functools.update_wrapper`` copies onto wrapper objects."""


def _view_types() -> frozenset[type]:
    some: dict[object, object] = {}
    return frozenset(
        {
            type(some.keys()),
            type(some.values()),
            type(some.items()),
            type(iter(some)),
            type(iter(some.values())),
            type(iter(some.items())),
            type(iter([])),
            type(iter(())),
            type(iter(set())),
            type(reversed([])),
            enumerate,
            zip,
            map,
            filter,
            reversed,
        }
    )


# Iterating views of a container: walked through what they hold (gc referents),
# so a view of a shared dict or list is the dict or list itself.
_VIEW_TYPES: Final = _view_types()
_WEAKREF_TYPES: Final = (weakref.ref, weakref.ProxyType, weakref.CallableProxyType)
_LOCK_TYPES: Final = (type(threading.Lock()), type(threading.RLock()))


def _named(cls: type, names: frozenset[tuple[str, str]]) -> bool:
    return any((klass.__module__, klass.__qualname__) in names for klass in cls.__mro__)


def _says_shareable(cls: type) -> bool:
    # A class that says so, unless it keeps per-user state (an HTTP client's
    # cookie jar): that is still walked and compared.
    return (
        getattr(cls, "__isolation_shareable__", False) is True
        and _shareable.carries_user_state(cls) is None
    )


def verdict(cls: type, *, declarations: bool = True) -> Verdict | None:
    """What the catalogue says of ``cls``, or ``None`` (not known: the walk goes by its shape).

    With ``declarations=False``, types declared shareable (by
    :func:`isolation.shareable` or by the class) are not known as shared: a
    declaration's check enters them.
    """
    global _INFRA
    if cls in ATOMS or issubclass(cls, type):
        return Verdict.SHARED
    if _INFRA is None:
        _INFRA = _infrastructure()
    if issubclass(cls, _INFRA) or _named(cls, _SHARED_BY_NAME):
        return Verdict.SHARED
    if declarations and (_shareable.is_shareable_type(cls) or _says_shareable(cls)):
        return Verdict.SHARED
    if _named(cls, _BOUNDARY_BY_NAME):
        return Verdict.BOUNDARY
    if cls.__module__ in ("typing", "typing_extensions") or issubclass(cls, _WEAKREF_TYPES):
        return Verdict.SHARED
    if cls in _VIEW_TYPES or cls.__module__ == "itertools":
        return Verdict.VIEW
    if cls in _LOCK_TYPES:
        return Verdict.OPAQUE
    return None


def is_atom_value(value: object) -> bool:
    """Whether ``value`` is an atom or a type: nothing to walk."""
    try:
        return type(value) in ATOMS or isinstance(value, type)
    except Exception:  # an object whose __class__ raises (a werkzeug LocalProxy): walk it
        return False


def is_frozen(cls: type) -> bool:
    """Whether instances of ``cls`` cannot change: a frozen dataclass or attrs class."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is not None and getattr(params, "frozen", False):
        return True
    if getattr(cls, "__attrs_attrs__", None) is not None:
        return _compat.attrs_frozen(cls)
    return False


def is_machinery_class(klass: type) -> bool:
    """Whether the class attributes ``klass`` defines are a library's own machinery,
    the same for every instance (pydantic's ``BaseModel`` and its bases)."""
    return klass.__module__.startswith("pydantic.")


def is_class_metadata(cls: type, name: str) -> bool:
    """Whether the class attribute ``name`` of ``cls`` is metadata every instance
    shares by design (SQLAlchemy's dataclass transforms, a pydantic model's fields)."""
    return name == "_sa_apply_dc_transforms" or (
        name in _PYDANTIC_CLASS_METADATA
        and any((k.__module__, k.__qualname__) == _PYDANTIC_MODEL for k in cls.__mro__)
    )
