"""The ownership guard: managed session classes and the SQLAlchemy listeners.

Every public method and property of a managed ``Session`` / ``AsyncSession``
(and of a ``session_class=`` given to the manager) checks its :class:`Owner`
before doing anything; SQLAlchemy's ``do_orm_execute``, ``before_flush`` and
``after_begin`` events call :meth:`Owner.guard` before any SQL is sent, and the
engine's ``before_cursor_execute`` guards a connection a managed transaction
holds (``await session.connection()`` kept in a global).
"""

from __future__ import annotations

import functools
import inspect
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import event
from sqlalchemy import util as sa_util
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction

from isolation._errors import ConfigurationError
from isolation.context._interface import holds_itself
from isolation.sessions._owner import Owner, current_scope_or_none
from isolation.sessions._tenancy import TenantSession

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

__all__ = ["install_connection_guard", "owned_class"]

_current_scope = current_scope_or_none

# Dunder methods that reach the session's contents or end its work.
_CHECKED_DUNDERS: Final = frozenset(
    {"__contains__", "__iter__", "__enter__", "__exit__", "__aenter__", "__aexit__"}
)
# Private entry points reached with no public method on the stack: a lazy many-to-one
# load answered from the identity map, without SQL.
_CHECKED_PRIVATE: Final = frozenset({"_identity_lookup"})
# Public instance attributes that hold the owner's data or its transaction: made
# checked properties (the value lives under another name in the instance dict).
_CHECKED_ATTRIBUTES: Final = {"identity_map": Session, "sync_session": AsyncSession}
# SQLAlchemy's computed properties (``Session.info``, ``Session.no_autoflush``).
_MEMOIZED: Final = (sa_util.memoized_property, sa_util.non_memoized_property)


def _checked(produce: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A getter that checks the session's owner, then returns ``produce(session)``."""
    current_scope = _current_scope

    def get(self: Any) -> Any:
        owner: Owner = self._isolation_owner
        current = current_scope()
        if (
            current is None
            or current is not owner.scope_ref()
            or owner.closed
            or holds_itself(current)
        ):
            owner.refuse(current)
        return produce(self)

    return get


def _checked_setter(put: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """A setter that checks the session's owner, then calls ``put(session, value)``."""

    def set_(self: Any, value: Any) -> None:
        owner: Owner = self._isolation_owner
        current = _current_scope()
        if (
            current is None
            or current is not owner.scope_ref()
            or owner.closed
            or holds_itself(current)
        ):
            owner.refuse(current)
        put(self, value)

    return set_


def _checked_lookup(fn: Callable[..., Any]) -> property:
    """``fn`` as a property: looking the method up checks the owner, then gives
    SQLAlchemy's own bound method (its signature, a coroutine function where it is).

    For ``AsyncSession`` methods, which all reach the checked ``sync_session``
    before doing anything, so a bound method kept from the owner's scope is
    refused too. Cheaper than forwarding ``*args, **kwargs`` on every call.
    """
    return property(_checked(fn.__get__), doc=fn.__doc__)


def _checked_call(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, checking the owner when it is called (also as a bound method kept from
    the owner's scope): the sync ``Session``'s methods act directly."""

    def checked(self: Any, *args: Any, **kwargs: Any) -> Any:
        owner: Owner = self._isolation_owner
        current = _current_scope()
        if (
            current is None
            or current is not owner.scope_ref()
            or owner.closed
            or holds_itself(current)
        ):
            owner.refuse(current)
        return fn(self, *args, **kwargs)

    return functools.wraps(fn)(checked)


def _checked_property(name: str, raw: Any) -> property:
    """A property checking the owner, then answering as ``raw`` (a descriptor) would;
    ``raw=None``: a plain instance attribute, kept under another name in the instance dict."""
    if isinstance(raw, property):
        fget, fset = raw.fget, raw.fset
        assert fget is not None
        return property(
            _checked(fget), None if fset is None else _checked_setter(fset), doc=raw.__doc__
        )
    if raw is None:
        key = f"_isolation_{name}"
        current_scope = _current_scope

        def get(self: Any) -> Any:  # hot (identity_map): the check inline
            owner: Owner = self._isolation_owner
            current = current_scope()
            if (
                current is None
                or current is not owner.scope_ref()
                or owner.closed
                or holds_itself(current)
            ):
                owner.refuse(current)
            return self.__dict__[key]

        def put(self: Any, value: Any) -> None:
            self.__dict__[key] = value

        return property(get, _checked_setter(put))

    # A non-data descriptor (SQLAlchemy's memoized properties): the instance dict
    # first, as Python's own lookup would.
    def get_memo(self: Any) -> Any:
        try:
            return self.__dict__[name]
        except KeyError:
            return raw.__get__(self, type(self))

    return property(_checked(get_memo), doc=getattr(raw, "__doc__", None))


def _check_every_method(cls: type, base: type, *, on_lookup: bool) -> type:
    """Give ``cls`` a checked version of every public method and property of ``base``.

    Built from ``base``'s members when the module loads, so a method SQLAlchemy
    adds is checked too; class-level members (classmethods, nested classes,
    constants) are not bound to a session and are left alone. Methods are
    checked when looked up (``on_lookup``) or when called; special methods,
    looked up on the type, always when called.
    """
    checked_method = _checked_lookup if on_lookup else _checked_call
    for name in dir(base):
        dunder = name in _CHECKED_DUNDERS
        if name.startswith("_") and not dunder and name not in _CHECKED_PRIVATE:
            continue
        if name in cls.__dict__:
            continue
        raw = inspect.getattr_static(base, name)
        if inspect.isfunction(raw):
            if dunder:
                setattr(cls, name, _checked_call(raw))
            elif name in _CHECKED_PRIVATE:  # looked up by SQLAlchemy itself, never kept
                setattr(cls, name, _checked_lookup(raw))
            else:
                setattr(cls, name, checked_method(raw))
        elif isinstance(raw, (property, *_MEMOIZED)):
            setattr(cls, name, _checked_property(name, raw))
    for name, owner_class in _CHECKED_ATTRIBUTES.items():
        if issubclass(base, owner_class):
            setattr(cls, name, _checked_property(name, None))
    return cls


class _OwnedBase(TenantSession):
    """What every managed sync ``Session`` class derives from: it knows its owner, the
    SQLAlchemy events below listen on it, and the legacy bulk methods are checked by
    tenancy (``TenantSession``)."""

    _isolation_owner: Owner

    def __init__(self, *, isolation_owner: Owner, **kwargs: Any) -> None:
        self._isolation_owner = isolation_owner
        super().__init__(**kwargs)


class _OwnedSession(_OwnedBase):
    """The managed sync ``Session`` (and the one behind every managed ``AsyncSession``):
    every public method refuses use from another scope before doing anything."""


class _OwnedAsyncSession(AsyncSession):
    """The ``AsyncSession`` a :class:`SessionManager` yields: every public method, property
    and its ``sync_session`` refuse use from another scope before doing anything."""

    _isolation_owner: Owner
    sync_session_class = _OwnedSession

    def __init__(self, bind: AsyncEngine, *, isolation_owner: Owner, **kwargs: Any) -> None:
        self._isolation_owner = isolation_owner
        super().__init__(bind, isolation_owner=isolation_owner, **kwargs)


# From _OwnedBase, so that TenantSession's checked bulk methods are the ones wrapped.
_check_every_method(_OwnedSession, _OwnedBase, on_lookup=False)
_check_every_method(_OwnedAsyncSession, AsyncSession, on_lookup=True)

# Managed classes made for a ``session_class=`` (SQLModel's ``Session``, an app's own).
_OWNED_CLASSES: dict[type, type] = {Session: _OwnedSession, AsyncSession: _OwnedAsyncSession}
_owned_classes_lock = threading.RLock()


def _owned_async_init(base: type[Any]) -> Callable[..., None]:
    """``__init__`` of a managed subclass of ``base`` made at run time (no ``super()`` cell)."""

    def init(self: Any, bind: AsyncEngine, *, isolation_owner: Owner, **kwargs: Any) -> None:
        self._isolation_owner = isolation_owner
        base.__init__(self, bind, isolation_owner=isolation_owner, **kwargs)

    return init


def owned_class(session_class: object, *, is_async: bool) -> type[Any]:
    """The managed subclass of ``session_class``, made once: every public member of it
    (``exec()`` of SQLModel's included) checked, SQLAlchemy's events listening."""
    base = AsyncSession if is_async else Session
    if not isinstance(session_class, type) or not issubclass(session_class, base):
        face = "an AsyncEngine" if is_async else "a sync Engine"
        raise ConfigurationError(
            f"session_class must be a subclass of sqlalchemy's {base.__name__} for a manager "
            f"of {face}, got {session_class!r}",
            hint="SQLModel: sqlmodel.Session (sync) or sqlmodel.ext.asyncio.session.AsyncSession",
        )
    with _owned_classes_lock:
        owned = _OWNED_CLASSES.get(session_class)
        if owned is not None:
            return owned
        name = session_class.__name__
        if is_async:
            sync_class = owned_class(
                getattr(session_class, "sync_session_class", Session), is_async=False
            )
            owned = type(
                f"Owned{name}",
                (session_class,),
                {
                    "sync_session_class": sync_class,
                    "__init__": _owned_async_init(session_class),
                    "__module__": __name__,
                },
            )
            _check_every_method(owned, session_class, on_lookup=True)
        else:
            combined = type(f"Tenant{name}", (_OwnedBase, session_class), {"__module__": __name__})
            owned = type(f"Owned{name}", (combined,), {"__module__": __name__})
            _check_every_method(owned, combined, on_lookup=False)
        _OWNED_CLASSES[session_class] = owned
        return owned


def _guarded(session: Session) -> Owner | None:
    """The owner of a managed session once its guard has passed (``None``: no owner)."""
    owner: Owner | None = session._isolation_owner  # type: ignore[attr-defined]
    if owner is not None:
        owner.guard()
    return owner


@event.listens_for(_OwnedBase, "do_orm_execute")
def _on_execute(state: ORMExecuteState) -> None:
    owner = _guarded(state.session)
    if owner is not None and owner.tenancy is not None:
        owner.tenancy.apply(state, owner.principal)


@event.listens_for(_OwnedBase, "before_flush")
def _on_flush(session: Session, flush_context: Any, instances: Any) -> None:
    owner = _guarded(session)
    if owner is not None and owner.tenancy is not None:
        owner.tenancy.check_flush(session, owner.principal)


# Key of a pooled connection's info: the owner of the managed session whose
# transaction holds it, from its begin to its commit or rollback.
_CONNECTION_OWNER: Final = "isolation.owner"
_GUARDED_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


def _guard_connection(conn: Connection, *args: Any) -> None:
    """Engine ``before_cursor_execute``: SQL on a connection that a managed session's
    transaction holds runs only from that session's scope and task.

    ``await session.connection()`` hands out the transaction's connection: kept
    in a global, it would otherwise run another request's SQL in the owner's
    transaction, under the owner's row-level security binding.
    """
    owner: Owner | None = conn.info.get(_CONNECTION_OWNER)
    if owner is not None:
        owner.guard()


def _forget_owner(conn: Connection) -> None:
    """Engine ``commit`` / ``rollback``: the transaction ended; the connection goes back."""
    try:
        info = conn.info
    except SQLAlchemyError:  # invalidated: the pool's checkin forgets it (below)
        return
    info.pop(_CONNECTION_OWNER, None)


def _forget_owner_on_checkin(dbapi_connection: Any, record: Any) -> None:
    record.info.pop(_CONNECTION_OWNER, None)


def install_connection_guard(sync_engine: Engine) -> None:
    """Listen once per engine; the listeners act only while a managed session's
    transaction holds a connection (one dict lookup per statement otherwise)."""
    if sync_engine in _GUARDED_ENGINES:
        return
    event.listen(sync_engine, "before_cursor_execute", _guard_connection)
    event.listen(sync_engine, "commit", _forget_owner)
    event.listen(sync_engine, "rollback", _forget_owner)
    event.listen(sync_engine.pool, "checkin", _forget_owner_on_checkin)
    _GUARDED_ENGINES.add(sync_engine)


@event.listens_for(_OwnedBase, "after_begin")
def _on_begin(session: Session, transaction: SessionTransaction, connection: Connection) -> None:
    owner = _guarded(session)
    if owner is None:
        return
    connection.info[_CONNECTION_OWNER] = owner
    binding = owner.rls
    if binding is not None:
        if connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            raise ConfigurationError(
                "row_level_security refuses an AUTOCOMMIT connection: "
                "transaction-local settings would last one statement",
                hint="Do not set isolation_level='AUTOCOMMIT' on managed sessions",
            )
        # params() refuses a tenant context where a policy binds the user alone.
        connection.execute(binding.statement, binding.params(owner.principal))
        if owner.unrestricted:
            binding.unrestrict(connection, owner.principal)
