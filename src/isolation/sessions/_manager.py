"""``SessionManager``: one SQLAlchemy session per user scope, admitted and bounded.

The hot path of a request is: find the scope's session in the scope's own
storage (made once per scope, with a finalizer as the backstop), take an
admission slot (two integer comparisons when there is room), run the user's
block, then commit or roll back and close **shielded**, and give the slot back.
This module is the thin class that composes the pieces, each in its own module:
the ownership guard (``_owner.py``, ``_guard.py``), the scope's session and leak
tracking (``_held.py``), the block lifecycle (``_blocks.py``, deciding through
``_lifecycle.py`` and ``_cleanup.py``), admission (``_gate.py`` over
``_admission.py``), the row-level security start check (``_rls_checks.py``) and
the hold watchdog (``_watchdog.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import types
from collections.abc import (
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
)
from typing import TYPE_CHECKING, Any, Final, Literal, final

import anyio
import attrs
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.pool import QueuePool, SingletonThreadPool, StaticPool

from isolation._compat import max_overflow
from isolation._counters import SESSION_MANAGERS, register_gauge, track, tracked
from isolation._errors import (
    ConfigurationError,
    CrossContextAccessError,
    UsageError,
)
from isolation._redact import redact_principal
from isolation.context._interface import is_async as scope_is_async
from isolation.context._principal import Principal
from isolation.context._scope import Scope, current_scope
from isolation.sessions import _unmanaged
from isolation.sessions._admission import Admission
from isolation.sessions._blocks import Block, running_task
from isolation.sessions._gate import Gate
from isolation.sessions._guard import install_connection_guard, owned_class
from isolation.sessions._held import Held, OpenSessions
from isolation.sessions._owner import Owner
from isolation.sessions._rls_checks import StartChecks
from isolation.sessions._tenancy import Tenancy
from isolation.sessions._unmanaged import Unmanaged
from isolation.sessions._watchdog import Watchdog

if TYPE_CHECKING:
    from isolation.factories._registry import Registry
    from isolation.sessions.postgres import _Binding as Binding

__all__ = ["SessionManager", "SessionStats"]

# Every live manager is tracked (weakly) (isolation._counters.track): the "sessions" gauge of
# --isolation-strict sums them, and isolation.telemetry's callbacks read their stats().


def _open_sessions() -> int:
    return sum(manager.stats().open_sessions for manager in tracked(SESSION_MANAGERS))


register_gauge("sessions", _open_sessions)

logger = logging.getLogger("isolation.sessions")

DEFAULT_ACQUIRE_TIMEOUT: Final = 10.0
DEFAULT_HOLD_WARNING: Final = 30.0
DEFAULT_CLOSE_TIMEOUT: Final = 10.0
_UNBOUNDED_PER_USER: Final = 5


@attrs.frozen(kw_only=True)
class SessionStats:
    """A snapshot of a :class:`SessionManager`'s sessions and counters.

    Attributes:
        open_sessions: Sessions owned by scopes that have not ended yet.
        open_sessions_by_principal: The same, per ``(tenant_id, user_id)``.
        checked_out: Admission slots in use: blocks that hold (or may take)
            one connection each.
        commits: Outermost blocks that committed.
        rollbacks: Outermost blocks that rolled back (errors, cancellations,
            expiry), plus sessions the scope's finalizer cut off.
        leaks: Sessions garbage-collected without being closed (each also
            emitted a ``ResourceWarning``).
        exhausted: :class:`~isolation.PoolExhaustedError` raised.
        hold_warnings: Blocks the watchdog saw held past ``hold_warning``.
        dirty_returns: Connections the row-level security return check found
            with settings, a role, temporary objects or held cursors left on them (each was invalidated).
        unmanaged: Connections opened on the engine inside a user scope by
            something other than a manager's session (refused, logged or allowed,
            by ``unmanaged=``), by every manager of the engine.
        unrestricted: Unrestricted (admin) blocks opened.
        unrestricted_refused: Unrestricted blocks refused to a context without
            an admin role.

        waiting: Blocks waiting for admission now (a free connection, or the
            user's per-user limit).
    """

    open_sessions: int
    open_sessions_by_principal: Mapping[Principal, int] = attrs.field(hash=False)
    checked_out: int
    commits: int
    rollbacks: int
    leaks: int
    exhausted: int
    hold_warnings: int
    dirty_returns: int
    unmanaged: int = 0
    unrestricted: int = 0
    unrestricted_refused: int = 0
    waiting: int = 0


def _pool_capacity(engine: Engine) -> int | None:
    pool = engine.pool
    if isinstance(pool, StaticPool | SingletonThreadPool):
        return 1
    if isinstance(pool, QueuePool):
        overflow = max_overflow(pool)
        if overflow < 0:
            return None
        return int(pool.size()) + overflow
    return None


def _positive(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not value > 0
        or math.isinf(value)
        or math.isnan(value)
    ):
        raise ConfigurationError(f"{name} must be a number of seconds > 0, got {value!r}")
    return float(value)


@final
class SessionManager:
    """One SQLAlchemy ``AsyncSession`` per user scope, with admission and clean endings.

    ``async with manager.session() as s`` yields an ``AsyncSession`` **owned by
    the current scope**: nested blocks in the same scope get the same session
    (a nested block is a SAVEPOINT), another scope never does, and every public
    method and property of it and of its ``sync_session`` refuses another scope
    (or none) before doing anything. The outermost
    block commits on a clean exit and rolls back on any exception, cancellation
    or expiry, then closes and returns the connection; the commit runs
    shielded, bounded by the scope's cleanup time. The scope's finalizer is the
    backstop for anything still open when the scope ends.

    Every session is admitted first: at most ``per_user_limit`` concurrent
    blocks per principal, and at most as many in total as the engine's pool
    holds, so SQLAlchemy's own ``pool_timeout`` never fires. A wait past
    ``acquire_timeout`` raises :class:`~isolation.PoolExhaustedError`.

    It works as constructed. ``async with manager`` (or :meth:`start` and
    :meth:`aclose`) also runs the startup checks up front and the hold
    watchdog. **asyncio only** (SQLAlchemy's asyncio layer).

    Args:
        engine: The ``AsyncEngine`` to take connections from.
        per_user_limit: Concurrent blocks one principal may hold (a child
            scope's block counts too). Default: a quarter of the global bound,
            at least 2 (at most the bound), or 5 without a global bound.
        acquire_timeout: Seconds a block may wait for admission, at both
            bounds together. Default 10.
        hold_warning: Seconds after which the watchdog logs and counts a block
            still open. Default 30.
        row_level_security: Bind the principal to every transaction with
            transaction-local ``set_config`` for PostgreSQL policies (``True``),
            or with the signed binding that app SQL cannot re-bind
            (``"signed"``, needs ``rls_key``); see
            :mod:`isolation.sessions.postgres`. Default ``False``.
        rls_key: The signed binding's key (32 to 64 random bytes), the one
            installed with ``rls_signing_key_sql()``.
        rls_schema: The schema of the signed binding's functions. Default
            ``"isolation"``.
        rls_tables: Tables the startup check verifies besides those of
            :meth:`protect` (``"schema.table"`` or ``"table"``).
        max_sessions: The global bound. Default: the pool's size plus its
            overflow (none for an unbounded pool).
        return_check: Fraction of connection returns on which the
            row-level security settings are checked to be empty (0 to 1); a
            connection with a setting left on it (a plain ``SET``) is
            invalidated. Default 1 (one round trip per return).
        close_timeout: Seconds :meth:`aclose` waits for open blocks. Default 10.
        watchdog_interval: Seconds between watchdog passes. Default
            ``min(hold_warning / 2, 5)``.

    Raises:
        ConfigurationError: A bad argument value.
    """

    __slots__ = (
        "__weakref__",
        "_admin_roles",
        "_admission",
        "_checks",
        "_close_timeout",
        "_closing",
        "_commits",
        "_dirty_returns",
        "_engine",
        "_gate",
        "_lock",
        "_managed",
        "_product",
        "_remove_return_check",
        "_return_check",
        "_rls",
        "_rollbacks",
        "_session_class",
        "_sessions",
        "_sync",
        "_sync_engine",
        "_tenancy",
        "_unrestricted",
        "_unrestricted_key",
        "_unrestricted_refused",
        "_watchdog",
    )

    def __init__(
        self,
        engine: AsyncEngine | Engine,
        *,
        session_class: type[Any] | None = None,
        unmanaged: Unmanaged = "refuse",
        admin_roles: Iterable[str] = (),
        per_user_limit: int | None = None,
        acquire_timeout: float = DEFAULT_ACQUIRE_TIMEOUT,
        hold_warning: float = DEFAULT_HOLD_WARNING,
        row_level_security: bool | Literal["signed"] = False,
        rls_tables: Iterable[str] = (),
        rls_key: bytes | None = None,
        rls_schema: str = "isolation",
        max_sessions: int | None = None,
        return_check: float | None = None,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        watchdog_interval: float | None = None,
    ) -> None:
        if isinstance(engine, AsyncEngine):
            sync_engine = engine.sync_engine
        elif isinstance(engine, Engine):
            sync_engine = engine
        else:
            raise UsageError(
                "SessionManager takes an sqlalchemy Engine or AsyncEngine, got "
                f"{type(engine).__name__}",
                hint="Build one with sqlalchemy.create_engine(url) or "
                "sqlalchemy.ext.asyncio.create_async_engine(url)",
            )
        if isinstance(admin_roles, str):
            raise ConfigurationError("admin_roles takes a list of role names, not one string")
        self._admin_roles = frozenset(admin_roles)
        if not all(isinstance(role, str) and role for role in self._admin_roles):
            raise ConfigurationError(f"admin_roles must be non-empty strings, got {admin_roles!r}")
        self._unrestricted_key = (self, "unrestricted")
        self._unrestricted = 0
        self._unrestricted_refused = 0
        self._sync = sync_engine is engine
        self._product: type[Any] = (
            (Session if self._sync else AsyncSession) if session_class is None else session_class
        )
        self._session_class = owned_class(self._product, is_async=not self._sync)
        capacity = _pool_capacity(sync_engine)
        if max_sessions is not None:
            if (
                isinstance(max_sessions, bool)
                or not isinstance(max_sessions, int)
                or max_sessions < 1
            ):
                raise ConfigurationError(f"max_sessions must be an int >= 1, got {max_sessions!r}")
            capacity = max_sessions if capacity is None else min(capacity, max_sessions)
        if per_user_limit is None:
            per_user_limit = (
                _UNBOUNDED_PER_USER if capacity is None else min(capacity, max(2, capacity // 4))
            )
        elif (
            isinstance(per_user_limit, bool)
            or not isinstance(per_user_limit, int)
            or per_user_limit < 1
        ):
            raise ConfigurationError(f"per_user_limit must be an int >= 1, got {per_user_limit!r}")
        if return_check is None:
            return_check = 1.0
        elif not isinstance(return_check, int | float) or not 0.0 <= return_check <= 1.0:
            raise ConfigurationError(f"return_check must be between 0 and 1, got {return_check!r}")
        self._engine = engine
        self._sync_engine = sync_engine
        # What the sessions and the start checks connect through: the engine's pool, with
        # the option the unmanaged-connection guard lets through inside a scope.
        self._managed: AsyncEngine | Engine = engine.execution_options(**{_unmanaged.MANAGED: True})
        _unmanaged.install(sync_engine, _unmanaged.check_mode(unmanaged))
        install_connection_guard(sync_engine)
        timeout = _positive("acquire_timeout", acquire_timeout)
        hold_warning = _positive("hold_warning", hold_warning)
        self._close_timeout = _positive("close_timeout", close_timeout)
        watchdog_interval = (
            min(hold_warning / 2, 5.0)
            if watchdog_interval is None
            else _positive("watchdog_interval", watchdog_interval)
        )
        self._admission = Admission(capacity, per_user_limit)
        self._rls: Binding | None = None
        if row_level_security is not False or rls_key is not None:
            from isolation.sessions.postgres import _binding_for as binding_for

            self._rls = binding_for(row_level_security, rls_key, rls_schema)
            if self._rls is not None:
                self._rls.unrestricted = bool(self._admin_roles)
        if isinstance(rls_tables, str):
            raise ConfigurationError("rls_tables takes a list of table names, not one string")
        self._return_check = float(return_check)
        self._remove_return_check: Callable[[], None] | None = None
        self._tenancy: Tenancy | None = None
        self._checks = StartChecks(self._rls, self._managed, rls_tables)
        # The sync face's: admission, counters and the startup check, across threads.
        self._lock = threading.Lock()
        self._gate = Gate(self._admission, timeout=timeout, sync=self._sync, lock=self._lock)
        self._watchdog = Watchdog(
            self._gate.held_now, hold_warning=hold_warning, interval=watchdog_interval
        )
        self._closing = False
        self._sessions = OpenSessions(self._lock)
        track(SESSION_MANAGERS, self)
        self._commits = 0
        self._rollbacks = 0
        self._dirty_returns = 0
        if self._rls is not None:
            from isolation.sessions.postgres import _install_pool_hooks as install_pool_hooks

            self._remove_return_check = install_pool_hooks(
                engine, self._return_check, self._dirty_return, self._rls
            )

    def __repr__(self) -> str:
        adm = self._admission
        return (
            f"<isolation.sessions.SessionManager {adm.in_use}/{adm.capacity or 'unbounded'} "
            f"checked out, per user {adm.per_principal}>"
        )

    # -- public face ----------------------------------------------------------

    @property
    def engine(self) -> AsyncEngine | Engine:
        """The engine the sessions take connections from (as given: sync or async)."""
        return self._engine

    @property
    def is_async(self) -> bool:
        """``True`` for an ``AsyncEngine`` (``async with``), ``False`` for a sync one (``with``)."""
        return not self._sync

    @property
    def per_user_limit(self) -> int:
        """Concurrent blocks one principal may hold."""
        return self._admission.per_principal

    @property
    def max_sessions(self) -> int | None:
        """The global bound (``None``: unbounded)."""
        return self._admission.capacity

    def session(self, *, unrestricted: bool = False) -> Block:
        """Open the current scope's session: ``async with manager.session() as s``
        (``with`` for a sync engine).

        ``unrestricted=True`` opens the scope's second, **audited** session for
        an administrator: allowed only when the bound context has one of the
        manager's ``admin_roles``, logged at every block (``event=
        "unrestricted_session"``, or ``"unrestricted_session_refused"``) and
        counted in :meth:`stats`; ``protect()`` does not filter it, and with
        row-level security it sets ``isolation.unrestricted``, which the
        ``isolation_unrestricted`` policy of ``rls_policy_sql(...,
        unrestricted=True)`` admits. It is still the scope's: every other scope
        is refused.

        Raises (on entering the block):
            NoContextError: No scope is bound (fail closed).
            ContextExpiredError: The scope's deadline has passed.
            SessionInUseError: Another task of this scope is inside a block.
            PoolExhaustedError: No admission within ``acquire_timeout``.
            UnsupportedBackendError: Not running under asyncio.
            UsageError: The scope was entered with a sync ``with``, or the
                manager is closed.

        The yielded session, used later from another scope or with none bound
        (kept in a global or a cache), raises :class:`~isolation.CrossContextAccessError`
        from every method and property before doing anything; from a copy of its
        scope that has ended (an escaped task), :class:`~isolation.ScopeEndedError`.
        """
        return Block(self, unrestricted=unrestricted)

    def provide_to(self, registry: Registry) -> None:
        """Register this manager's session as the ``AsyncSession`` product of ``registry``.

        A ``REQUEST`` product: ``await scope.aget(AsyncSession)`` opens the
        scope's session block on first use, and the scope's exit ends it —
        committed when the scope ends cleanly, rolled back when it raises, is
        cancelled or expires — exactly as ``async with manager.session()``.
        ``scope.finish()`` ends it earlier (``IsolationMiddleware`` does, before
        the response), so that a failed commit raises there. Needs an
        ``async with`` scope.
        """
        manager = self
        # The product is the class asked for (``session_class``: SQLModel's, say).
        product = self._product
        if self._sync:

            def sync_session() -> Generator[Any, None, None]:
                with contextlib.ExitStack() as stack:
                    opened = stack.enter_context(manager.session())

                    async def finish() -> None:
                        # Before the response: the commit runs in a worker thread, and a
                        # failure reaches the middleware while it can still answer 500.
                        await anyio.to_thread.run_sync(stack.close)

                    current_scope().on_finish(finish)
                    yield opened

            provider: Callable[..., Any] = sync_session
            provider.__annotations__ = {"return": Iterator[product]}  # type: ignore[valid-type]
        else:

            async def session() -> AsyncIterator[Any]:
                async with contextlib.AsyncExitStack() as stack:
                    block = manager.session()
                    opened = await stack.enter_async_context(block)

                    async def finish() -> None:
                        # The scope's work is done: the block passes to the task that ends
                        # it (Starlette may send a response from a task of its own).
                        if block._held is not None:
                            block._held.owner.task = asyncio.current_task()
                        await stack.aclose()  # commits now; the scope's exit is then a no-op

                    current_scope().on_finish(finish)
                    yield opened

            provider = session
            provider.__annotations__ = {"return": AsyncIterator[product]}  # type: ignore[valid-type]
        provider.__qualname__ = "SessionManager.session"
        # The manager itself keeps a session to its scope (and refuses any other
        # caller), and a session reaches deep into SQLAlchemy: no walk.
        registry.provide(provider, check="off")

    def protect(
        self,
        model: type[Any],
        *,
        user_column: object | None = None,
        tenant_column: object | None = None,
    ) -> None:
        """Filter ``model`` to the current principal in every ORM statement of these sessions.

        ORM selects, updates and deletes, relationship loads of every strategy
        and column loads (``refresh()``) get criteria on the owner columns (both
        when both are given), and every loaded row's owner is checked; new rows
        are stamped with the principal (flush and legacy bulk methods); writes
        by primary key (ORM bulk UPDATE, ``bulk_update_mappings``,
        ``bulk_save_objects``, a flush of an object the session did not load)
        are checked in the database first; writing a row of another principal,
        or setting an owner column to another, raises
        :class:`~isolation.CrossContextAccessError`. With ``user_column`` alone,
        a context that has a ``tenant_id`` is refused. Raw ``text()`` SQL is not
        rewritten: use row-level security on PostgreSQL for that.

        Args:
            model: A mapped ORM class.
            user_column: The attribute (or its name) holding the user id.
            tenant_column: The attribute (or its name) holding the tenant id.

        Raises:
            ConfigurationError: Neither column given, or not a mapped column.
        """
        if self._tenancy is None:
            tenancy = Tenancy()
            tenancy.protect(model, user_column, tenant_column)
            self._tenancy = tenancy
        else:
            self._tenancy.protect(model, user_column, tenant_column)
        self._checks.again(self._tenancy)

    def stats(self) -> SessionStats:
        """Return a frozen snapshot of the sessions and counters."""
        return SessionStats(
            open_sessions=self._sessions.count,
            open_sessions_by_principal=types.MappingProxyType(dict(self._sessions.by_principal)),
            checked_out=self._admission.in_use,
            commits=self._commits,
            rollbacks=self._rollbacks,
            leaks=self._sessions.leaks,
            exhausted=self._gate.exhausted,
            hold_warnings=self._watchdog.warnings,
            dirty_returns=self._dirty_returns,
            unmanaged=_unmanaged.count(self._sync_engine),
            unrestricted=self._unrestricted,
            unrestricted_refused=self._unrestricted_refused,
            waiting=len(self._admission.waiters),
        )

    async def start(self) -> None:
        """Run the startup checks now and start the hold watchdog; reopen after :meth:`aclose`.

        Started again after ``aclose()`` (a new start of the app, on a new event
        loop under each ``with TestClient(app)``), the manager admits sessions
        again, with its loop-bound members made anew on the running loop.

        Raises:
            ConfigurationError: Row-level security would not restrict the role.
            UnsupportedBackendError: Not running under asyncio.
        """
        running_task()
        self._reopen()
        loop = self._gate.loop = asyncio.get_running_loop()
        if self._checks.pending:
            if self._sync:
                await anyio.to_thread.run_sync(self._checks.run_sync)
            else:
                await self._checks.run()
        self._watchdog.start(loop)

    def _reopen(self) -> None:
        """Admit sessions again after a close, with the loop-bound members made anew."""
        if not self._closing:
            return
        self._closing = False
        self._gate.idle = None
        self._checks.new_loop()
        if self._rls is not None and self._remove_return_check is None:
            from isolation.sessions.postgres import _install_pool_hooks as install_pool_hooks

            self._remove_return_check = install_pool_hooks(
                self._engine, self._return_check, self._dirty_return, self._rls
            )

    async def aclose(self) -> None:
        """Stop admitting, wait up to ``close_timeout`` for open blocks, stop the watchdog.

        Then the engine's pooled connections are closed (``engine.dispose()``: they
        belong to this event loop); the engine stays usable. :meth:`start` reopens.
        """
        self._closing = True
        if self._sync:
            # Sync blocks end in threads: wait for them in one.
            if not await anyio.to_thread.run_sync(self._wait_idle_sync):
                self._log_close_timeout()
        elif self._admission.in_use:
            idle = self._gate.idle = asyncio.Event()
            with anyio.move_on_after(self._close_timeout) as bound:
                await idle.wait()
            if bound.cancelled_caught:
                self._log_close_timeout()
        await self._watchdog.stop()
        if self._remove_return_check is not None:
            self._remove_return_check()
            self._remove_return_check = None
        # Pooled connections belong to this event loop (asyncpg's do): closed on it, so that
        # a start() on another loop opens its own. An in-memory SQLite database is kept.
        engine = self._engine
        if isinstance(engine, AsyncEngine) and not isinstance(
            engine.sync_engine.pool, StaticPool | SingletonThreadPool
        ):
            await engine.dispose()

    def _log_close_timeout(self) -> None:
        logger.warning(
            "SessionManager closed with %d blocks still open",
            self._admission.in_use,
            extra={"event": "close_timeout", "open_blocks": self._admission.in_use},
        )

    def _wait_idle_sync(self) -> bool:
        return self._gate.wait_idle_sync(self._close_timeout)

    def close(self) -> None:
        """The sync face's :meth:`aclose`: stop admitting, wait up to ``close_timeout``
        for open blocks (there is no watchdog to stop: :meth:`start` runs it)."""
        if not self._sync:
            raise UsageError(
                "close() is for a manager of a sync Engine", hint="Use `await manager.aclose()`"
            )
        self._closing = True
        if not self._wait_idle_sync():
            self._log_close_timeout()
        if self._remove_return_check is not None:
            self._remove_return_check()
            self._remove_return_check = None

    def __enter__(self) -> SessionManager:
        """``with manager:`` (sync engine): run the startup checks now; :meth:`close` at exit."""
        if not self._sync:
            raise UsageError(
                "this SessionManager has an AsyncEngine", hint="Use `async with manager:`"
            )
        self._reopen()
        if self._checks.pending:
            self._checks.run_sync()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> SessionManager:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- sessions of scopes -----------------------------------------------------

    def _allow_unrestricted(self, scope: Scope) -> None:
        """Refuse an unrestricted block to a context without an admin role; log every one."""
        ctx = scope.context
        allowed = bool(ctx.roles & self._admin_roles)
        with self._lock:
            if allowed:
                self._unrestricted += 1
            else:
                self._unrestricted_refused += 1
        logger.warning(
            "%s unrestricted database session for %s",
            "opening an" if allowed else "refused an",
            redact_principal(ctx.principal),
            extra={
                "event": "unrestricted_session" if allowed else "unrestricted_session_refused",
                "roles": tuple(sorted(ctx.roles & self._admin_roles)),
            },
        )
        if not allowed:
            raise CrossContextAccessError(
                f"an unrestricted database session was refused to {redact_principal(ctx.principal)}"
                ": the context has none of the manager's admin_roles"
                + ("" if self._admin_roles else " (the manager was given none)"),
                hint=(
                    "Give admins a role listed in SessionManager(admin_roles=...); everyone "
                    "else uses manager.session() and sees their own rows"
                ),
            )

    def _new_held(self, scope: Scope, *, unrestricted: bool = False) -> Held:
        principal = scope.context.principal
        owner = Owner(
            scope, principal, self._tenancy, self._rls, sync=self._sync, unrestricted=unrestricted
        )
        session: Session | AsyncSession
        if self._sync:
            # Any scope will do: the sync face's cleanup does not await.
            session = self._session_class(
                bind=self._managed, isolation_owner=owner, expire_on_commit=False
            )
        else:
            if not scope_is_async(scope):
                raise UsageError(
                    "sessions need an `async with isolation.scope(ctx)` scope: their cleanup "
                    "awaits",
                    hint="Enter the scope with `async with`, not `with`",
                )
            if self._gate.loop is None:
                self._gate.loop = asyncio.get_running_loop()
            session = self._session_class(
                self._managed, isolation_owner=owner, expire_on_commit=False
            )
        held = Held(self, owner, session)
        scope.on_close(held.finalize)
        scope.on_finish(held.commit_now)
        self._sessions.opened(principal)
        return held

    # -- ending blocks ----------------------------------------------------------------

    def _count_end(self, *, committed: bool) -> None:
        """Count an outermost block's end (the sync face's from threads, under the lock)."""
        if self._sync:
            with self._lock:
                if committed:
                    self._commits += 1
                else:
                    self._rollbacks += 1
            return
        if committed:
            self._commits += 1
        else:
            self._rollbacks += 1

    def _dirty_return(self, values: tuple[Any, Any]) -> None:
        self._dirty_returns += 1


SessionManager.__module__ = "isolation.sessions"
SessionStats.__module__ = "isolation.sessions"
