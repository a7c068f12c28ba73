"""No unguarded connection inside a user scope: an engine given to a manager serves
its managed sessions there, and nothing else.

A request that opens the app's old ``Session(engine)``, calls
``engine.connect()`` or runs ``text()`` on a plain session reaches the
database with no owner check, no ``protect()`` filter and no row-level security
binding. Every connection a manager's sessions open carries an execution
option (:data:`MANAGED`) on an option engine that shares the engine's pool;
the engine's ``engine_connect`` event refuses (or logs) any other connection
made while a scope is bound, returning it to the pool before any SQL is sent.
Outside every scope (migrations, start-up, admin scripts) connections pass.

The driver connection itself (``engine.raw_connection()``) is below this
guard: documented as its limit.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import TYPE_CHECKING, Any, Final, Literal

from sqlalchemy import event

from isolation._errors import ConfigurationError, CrossContextAccessError
from isolation._redact import redact_principal
from isolation.context._interface import bound_scope

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

__all__ = ["MANAGED", "Unmanaged", "check_mode", "count", "install"]

logger = logging.getLogger("isolation.sessions")

Unmanaged = Literal["refuse", "warn", "allow"]

#: The execution option on the connections of managed sessions.
MANAGED: Final = "isolation_managed"

_MODES: Final = ("refuse", "warn", "allow")
# The strictest mode any manager asked for, per engine; and what the guard saw.
_mode: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()
_seen: weakref.WeakKeyDictionary[Engine, int] = weakref.WeakKeyDictionary()
_lock = threading.Lock()
_current_scope = bound_scope


def check_mode(value: object) -> Unmanaged:
    """``value`` as a mode, or a :class:`ConfigurationError` naming the choices."""
    if value not in _MODES:
        raise ConfigurationError(
            f"unmanaged must be one of {', '.join(map(repr, _MODES))}, got {value!r}"
        )
    return value


def install(sync_engine: Engine, mode: Unmanaged) -> None:
    """Guard ``sync_engine`` (once); two managers on one engine: the stricter mode holds."""
    with _lock:
        previous = _mode.get(sync_engine)
        if previous is None:
            event.listen(sync_engine, "engine_connect", _on_connect)
            _seen[sync_engine] = 0
        if previous is None or _MODES.index(mode) < _MODES.index(previous):
            _mode[sync_engine] = mode


def count(sync_engine: Engine) -> int:
    """Unmanaged connections the guard saw inside a scope on ``sync_engine`` (all modes)."""
    return _seen.get(sync_engine, 0)


def _base(engine: Any) -> Engine:
    # An option engine (engine.execution_options(...)) shares its parent's pool and events.
    while hasattr(engine, "_proxied"):
        engine = engine._proxied
    return engine  # type: ignore[no-any-return]


def _on_connect(conn: Connection) -> None:
    current = _current_scope()
    if current is None or conn.get_execution_options().get(MANAGED):
        return
    engine = _base(conn.engine)
    mode = _mode.get(engine, "refuse")
    with _lock:
        _seen[engine] = _seen.get(engine, 0) + 1
    if mode == "allow":
        return
    who = redact_principal(current.context.principal)
    if mode == "warn":
        logger.warning(
            "a database connection was opened inside the scope of %s by something other "
            "than its SessionManager: no owner check, filter or row-level security binding",
            who,
            extra={"event": "unmanaged_connection"},
        )
        return
    conn.close()  # back to the pool: nothing was sent
    raise CrossContextAccessError(
        f"a database connection was opened inside the scope of {who} by something other "
        "than its SessionManager (Session(engine), engine.connect(), a plain session's "
        "text()): it would run with no owner check, filter or row-level security binding",
        hint=(
            "Use `with manager.session()` (or `async with`) inside a user scope; open "
            "connections outside any scope for migrations and admin work, or pass "
            "unmanaged='warn' to the SessionManager while migrating"
        ),
    )
