"""Ready state machines to point at your own event router and registry (extra ``testing``).

Public as :class:`isolation.testing.RouterMachine` and
:class:`isolation.testing.RegistryMachine`.

Subclass one, give it your object, and run its ``TestCase`` with pytest::

    class MyRouterTest(RouterMachine):
        def make_router(self) -> EventRouter:
            return EventRouter(backend=MyBackend(...))

    TestMyRouter = MyRouterTest.TestCase


    class MyRegistryTest(RegistryMachine):
        products = (Assistant, Memory)

        def make_registry(self) -> Registry:
            return build_registry()

    TestMyRegistry = MyRegistryTest.TestCase

Both run on :class:`~isolation.testing.AsyncRuleBasedStateMachine` (one event
loop per run; ``.on_backend("trio")`` for trio) and draw their principals from
a pool that holds the same user id in two tenants. A failure shrinks to a short
sequence of steps, printed by Hypothesis.
"""

from __future__ import annotations

import inspect
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, Final, NoReturn, TypeVar, cast

import anyio
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, initialize, invariant, multiple, precondition, rule

from isolation._clock import Clock, FakeClock, set_clock
from isolation._counters import counted, open_resources
from isolation._errors import (
    ConnectionClosedError,
    ConnectionLimitError,
    CrossContextAccessError,
    IsolationError,
    UsageError,
)
from isolation._lifetime import Lifetime
from isolation.context._model import Principal, UserContext
from isolation.context._scope import Scope
from isolation.events import Connection, Event, EventRouter
from isolation.factories._graph import render_path, walk
from isolation.factories._owned import _check_weak
from isolation.factories._registry import Registry
from isolation.testing._machine import AsyncRuleBasedStateMachine

__all__ = ["DEFAULT_PRINCIPALS", "RegistryMachine", "RouterMachine"]  # isolation.testing.X

DEFAULT_PRINCIPALS: Final[tuple[Principal, ...]] = (
    Principal("acme", "alice"),
    Principal("globex", "alice"),
    Principal("acme", "bob"),
    Principal(None, "alice"),
)
"""The principals the machines draw from: ``alice`` in two tenants and without one, and ``bob``."""

_GAP: Final = "gap"

_F = TypeVar("_F", bound=Callable[..., Any])

# Hypothesis types a rule without a target as returning None; an ``async def``
# rule returns a coroutine (the runner awaits it on the loop).
_async_rule = cast("Callable[..., Callable[[_F], _F]]", rule)


def _pool(principals: Sequence[tuple[str | None, str]]) -> list[Principal]:
    """The machine's principals as :class:`~isolation.Principal` (plain pairs are checked)."""
    return [Principal(*pair) for pair in principals]


def _show(principal: tuple[str | None, str]) -> str:
    tenant, user = principal
    return f"{user!r} of tenant {tenant!r}"


def _fail(machine: Any, text: str, cause: BaseException | None = None) -> NoReturn:
    # Every violation is raised from this one line, so Hypothesis sees one bug
    # (its origin is where the error is raised) and shrinks to the shortest
    # sequence that shows any violation, rather than reporting several.
    machine._failed = True
    raise AssertionError(text) from cause


def _drifted(before: dict[str, int], after: dict[str, int]) -> list[str]:
    return [
        f"{counted(after[name] - before.get(name, 0), name)} left open"
        for name in sorted(after)
        if after[name] > before.get(name, 0)
    ]


# -- the router conformance machine ---------------------------------------------------


class _Conn:
    """The model of one connection: what it must still hand over, and whether it is closed."""

    __slots__ = ("closed", "conn", "expected", "expires_at", "name", "principal", "receiver")

    def __init__(
        self, conn: Connection, principal: Principal, name: str, expires_at: float | None
    ) -> None:
        self.conn = conn
        self.principal = principal
        self.name = name
        self.expected: deque[int] = deque()
        self.closed = False  # closed by the machine, or its context expired
        self.expires_at = expires_at  # None: closed by the machine, if closed
        self.receiver: anyio.CancelScope | None = None

    def __repr__(self) -> str:
        return f"<{self.name} of {_show(self.principal)}>"


class RouterMachine(AsyncRuleBasedStateMachine):
    """Conformance of your :class:`~isolation.events.EventRouter` (backend included).

    Override :meth:`make_router` to return a new router for each run. The
    machine connects (always with an explicit context) from :attr:`principals`,
    closes connections, publishes to principals with and without live
    connections, receives (in the step, or from consumer tasks that live
    across steps and are cancelled at random points), and cancels waiting
    receives, against a model of what each connection must get. It checks:

    * no event ever reaches a connection of another principal (the same user
      id in another tenant is another principal);
    * nothing is lost or duplicated, and each connection gets its events in
      publish order (the machine never fills a queue, so this holds under
      every overflow policy; set :attr:`lossy` for a transport that may lose
      events and report gaps);
    * a closed connection stays closed: it hands nothing over and refuses;
    * with :attr:`ttls`, a connection whose context expired is closed the same
      way, and nothing published after that reaches it;
    * after ``await router.aclose()`` no connection is open, and the
      library's open-resource gauges are back where they were.

    Run it with ``TestMine = MyRouterTest.TestCase``.
    """

    principals: ClassVar[Sequence[tuple[str | None, str]]] = DEFAULT_PRINCIPALS
    """The principals connections are opened for and events published to (plain
    ``(tenant_id, user_id)`` pairs are turned into :class:`~isolation.Principal` objects)."""
    receive_timeout: ClassVar[float] = 10.0
    """Seconds a receive waits for an event the model expects, with a shared backend
    (events travel). An in-process router queues events in ``publish`` itself, so
    there an expected event that is not queued once every task waits is lost."""
    lossy: ClassVar[bool] = False
    """Whether the transport may lose events (reporting a ``"gap"`` event): then
    events may be missing, but never foreign, duplicated or out of order."""
    initial_connections: ClassVar[Sequence[tuple[str | None, str]]] = ()
    """Principals connected, in this order, before the first step of every run.

    With a large :attr:`principals` pool, list here the pairs every run must
    exercise (the same user id in two tenants): the drawn steps then publish to
    and receive on them from the start."""
    ttls: ClassVar[Sequence[float | None]] = (None,)
    """The lifetimes, in seconds, of the contexts connections open with, one drawn per
    connection (``None``: the context does not expire).

    With a number here the run installs a :class:`~isolation.testing.FakeClock`
    (:attr:`clock`, restored at teardown) and an ``expire`` rule advances it by up
    to the largest ttl: the machine then checks that a connection whose context
    expired refuses and gets nothing published later. The ttl reaches the
    context through :meth:`make_context`."""

    connections = Bundle("isolation_connections")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # The rules of the two options exist only in machines that use them, so a
        # machine without them draws the same sequences as before they existed.
        if cls.initial_connections and not hasattr(cls, "connect_initial"):
            cls.connect_initial = initialize(target=cls.connections)(_connect_initial)
        if any(t is not None for t in cls.ttls) and not hasattr(cls, "expire"):
            cls.expire = rule(data=st.data())(_expire)
        super().__init_subclass__(**kwargs)

    def __init__(self) -> None:
        pool = _pool(self.principals)  # first: an invalid pair fails before a loop starts
        initial = _pool(self.initial_connections)
        super().__init__()
        self._pool = pool
        self._initial = initial
        self._router: Any = None
        self._conns: list[_Conn] = []
        self._published = 0
        self._violations: list[str] = []
        self._failed = False
        self._baseline = open_resources()
        self._clock: FakeClock | None = None
        self._previous_clock: Clock | None = None
        if any(ttl is not None for ttl in self.ttls):
            self._clock = FakeClock()
            self._previous_clock = set_clock(self._clock)
        try:
            self._router = self.portal.call(self._build)
        except BaseException:
            self._restore_clock()
            super().teardown()
            raise
        shared = bool(self._router.backend.shared)
        self._exact_counts = not shared
        self._patience = self.receive_timeout if shared else 0.0

    def make_router(self) -> EventRouter | Awaitable[EventRouter]:
        """Return a new router for one run (override it; it may be ``async def``).

        It is called on the run's event loop, so it may create loop-bound objects.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must override make_router() to return a new EventRouter"
        )

    def make_context(self, principal: Principal, ttl: float | None = None) -> UserContext:
        """The context a connection of ``principal`` is opened with (override for roles).

        ``ttl`` is drawn from :attr:`ttls`; it is passed only when it is not
        ``None``, so an override taking ``principal`` alone works without ttls.
        The machine expects the connection to expire at the context's
        ``expires_at``.
        """
        tenant, user = principal
        return UserContext.new(user, tenant_id=tenant, ttl=ttl)

    @property
    def router(self) -> EventRouter:
        """The router of this run."""
        router: EventRouter = self._router
        return router

    @property
    def clock(self) -> FakeClock | None:
        """The fake clock installed for this run when :attr:`ttls` has a number, else ``None``."""
        return self._clock

    def _restore_clock(self) -> None:
        if self._clock is not None:
            set_clock(self._previous_clock)
            self._clock = None

    async def _build(self) -> Any:
        made = self.make_router()
        if inspect.isawaitable(made):
            made = await made
        return made

    def _violation(self, text: str) -> None:
        self._violations.append(text)

    def _live(self, principal: Principal) -> list[_Conn]:
        return [c for c in self._conns if not c.closed and c.principal == principal]

    def _check(self, c: _Conn, event: Event, where: str) -> None:
        got = (event.tenant_id, event.recipient)
        if got != c.principal:
            self._violation(
                f"{where}: {c!r} was handed an event for {_show(got)} (payload {event.payload!r})"
            )
            return
        if event.kind == _GAP:
            if not self.lossy:
                self._violation(f"{where}: {c!r} reported a gap: events were lost")
            return
        if self.lossy:
            # Lost events may be skipped, but what arrives is expected and in order.
            while c.expected and c.expected[0] != event.payload:
                c.expected.popleft()
        want = c.expected.popleft() if c.expected else None
        if event.payload != want:
            expected = "nothing" if want is None else f"event {want}"
            self._violation(f"{where}: {c!r} got event {event.payload!r}, expected {expected}")

    # -- rules --------------------------------------------------------------------

    # Rules that draw from ``data`` are sync: Hypothesis draws only in its own
    # thread. They draw, then run their async part on the loop with ``_call``.

    @rule(target=connections, data=st.data())
    def connect(self, data: st.DataObject) -> Any:
        """Open a connection with an explicit context (it lives until closed)."""
        principal = data.draw(st.sampled_from(self._pool), label="principal")
        ttl = data.draw(st.sampled_from(list(self.ttls)), label="ttl") if self._clock else None
        return self._call(self._connect, principal, ttl)

    async def _connect(self, principal: Principal, ttl: float | None) -> Any:
        ctx = self.make_context(principal) if ttl is None else self.make_context(principal, ttl)
        if len(self._live(principal)) >= self.router.max_connections_per_user:
            try:
                conn = await self.router.connect(ctx)
            except ConnectionLimitError:
                return multiple()
            self._violation(f"{_show(principal)} connected past max_connections_per_user")
            await conn.aclose()
            return multiple()
        conn = await self.router.connect(ctx)
        if conn.principal != principal:
            self._violation(
                f"a connection opened for {_show(principal)} is bound to {conn.principal}"
            )
        c = _Conn(conn, principal, f"connection {len(self._conns)}", ctx.expires_at)
        self._conns.append(c)
        return c

    async def _advance(self, seconds: float) -> None:
        assert self._clock is not None
        now = self._clock.time() + seconds
        for c in self._conns:  # the model first: a consumer task wakes as the clock moves
            if not c.closed and c.expires_at is not None and now >= c.expires_at:
                c.closed = True
                c.expected.clear()
        self._clock.advance(seconds)
        await anyio.wait_all_tasks_blocked()

    @_async_rule(c=connections)
    async def close(self, c: _Conn) -> None:
        """Close a connection (again, if it is closed: closing is idempotent)."""
        c.closed = True  # first: a consumer task that wakes now must expect the refusal
        c.expires_at = None  # closed by the machine: it must say so
        c.expected.clear()
        await c.conn.aclose()

    @rule(data=st.data())
    def publish(self, data: st.DataObject) -> None:
        """Publish to any principal of the pool, connected or not."""
        self._call(self._publish, data.draw(st.sampled_from(self._pool), label="to"))

    @_async_rule(c=connections)
    async def publish_to_connection(self, c: _Conn) -> None:
        """Publish to the principal of a connection (which may be closed by now)."""
        await self._publish(c.principal)

    async def _publish(self, principal: Principal) -> None:
        targets = self._live(principal)
        if any(len(t.expected) >= self.router.queue_size for t in targets):
            return  # never fill a queue: overflow is the router's policy, not tested here
        self._published += 1
        number = self._published
        for t in targets:  # the model first: a consumer task may take the event at once
            t.expected.append(number)
        result = await self.router.publish(principal, number)
        if self._exact_counts and (result.delivered, result.dropped) != (len(targets), 0):
            self._violation(
                f"publish of event {number} to {_show(principal)} reported delivered="
                f"{result.delivered}, dropped={result.dropped}; it has {len(targets)} live "
                "connection(s)"
            )

    @_async_rule(c=connections)
    async def receive(self, c: _Conn) -> None:
        """Receive the next expected event, or see that a closed connection refuses."""
        if c.receiver is None:
            await self._receive(c, f"receive on {c!r}", required=bool(c.expected))

    @_async_rule(c=connections)
    async def cancel_receive(self, c: _Conn) -> None:
        """Start a receive, let it wait, cancel it: nothing may be lost."""
        if c.receiver is None and not c.closed:
            await self._receive(c, f"cancelled receive on {c!r}", required=False)

    async def _receive(self, c: _Conn, where: str, *, required: bool) -> bool:
        """One receive on ``c``, checked against the model; whether it returned an event.

        The receive runs in a task. Once every task of the run waits, an
        in-process router has queued all it will (``publish`` queues), so a
        receive still waiting then is cancelled at once; with a shared
        backend it waits up to :attr:`receive_timeout` seconds for an event
        that is ``required`` (the model expects one). A closed connection must
        refuse at once.
        """
        got: list[Event | ConnectionClosedError] = []
        arrived = anyio.Event()

        async def receive() -> None:
            try:
                got.append(await c.conn.receive())
            except ConnectionClosedError as exc:
                got.append(exc)
            arrived.set()

        patience = self._patience if required and not c.closed else 0.0
        async with anyio.create_task_group() as tg:
            tg.start_soon(receive)
            await anyio.wait_all_tasks_blocked()
            if patience:
                with anyio.move_on_after(patience):
                    await arrived.wait()
            tg.cancel_scope.cancel()
        if not got:
            if c.closed:
                self._violation(f"{where}: closed, yet it waits for events instead of refusing")
            elif required:
                if self.lossy:
                    c.expected.clear()
                else:
                    self._violation(f"{where}: event {c.expected[0]} never arrived (lost)")
            return False
        result = got[0]
        if isinstance(result, ConnectionClosedError):
            if not c.closed:
                self._violation(f"{where}: a live connection refused ({result})")
            return False
        if c.closed:
            self._violation(f"{where}: closed, yet it handed over event {result.payload!r}")
            return False
        self._check(c, result, where)
        return True

    @_async_rule(c=connections)
    async def start_consumer(self, c: _Conn) -> None:
        """A consumer task that keeps receiving across later steps."""
        if c.receiver is not None or c.closed:
            return
        scope = anyio.CancelScope()
        c.receiver = scope

        async def consume() -> None:
            with scope:
                try:
                    while True:
                        self._check(c, await c.conn.receive(), f"consumer of {c!r}")
                except ConnectionClosedError as exc:
                    if not c.closed:
                        self._violation(f"consumer of {c!r}: a live connection refused ({exc})")
            c.receiver = None

        self.task_group.start_soon(consume)

    @_async_rule(c=connections)
    async def stop_consumer(self, c: _Conn) -> None:
        """Cancel a consumer task wherever it is: nothing may be lost."""
        if c.receiver is not None:
            c.receiver.cancel()
            await anyio.wait_all_tasks_blocked()

    # -- invariants ---------------------------------------------------------------

    @invariant()
    async def no_event_misdelivered_lost_or_duplicated(self) -> None:
        """Every event seen so far agreed with the model."""
        if self._violations:
            _fail(self, "\n".join(self._violations[:10]))

    @invariant()
    async def closed_connections_stay_closed(self) -> None:
        """A connection closed by the machine reports itself closed."""
        for c in self._conns:
            if c.closed and c.expires_at is None and not c.conn.closed:
                _fail(self, f"{c!r} was closed and is open again")

    async def ateardown(self) -> None:
        """Drain what is left, check nothing extra is queued, close the router, check it is empty."""
        if self._router is None:
            return
        for c in self._conns:
            if c.receiver is not None:
                c.receiver.cancel()
        await anyio.wait_all_tasks_blocked()
        for c in self._conns:
            if c.closed:
                continue
            where = f"final drain of {c!r}"
            while c.expected and await self._receive(c, where, required=True):
                pass
            if not c.expected:  # nothing more may be queued
                await self._receive(c, where, required=False)
        await self.router.aclose()
        left = self.router.stats().connections
        if left:
            self._violation(f"router.aclose() left {left} connection(s) open")
        still = [c for c in self._conns if not c.conn.closed]
        if still:
            self._violation(f"router.aclose() left {still[0]!r} open")
        self._violations += _drifted(self._baseline, open_resources())
        if self._violations and not self._failed:  # a step's failure is reported already
            _fail(self, "\n".join(self._violations[:10]))

    def teardown(self) -> None:
        """Run :meth:`ateardown`, close the run's event loop, put the previous clock back."""
        try:
            super().teardown()
        finally:
            self._restore_clock()


async def _connect_initial(self: RouterMachine) -> Any:
    """Connect the :attr:`~RouterMachine.initial_connections` (no ttl), before the first step."""
    opened = []
    for principal in self._initial:
        c = await self._connect(principal, None)
        if isinstance(c, _Conn):
            opened.append(c)
    return multiple(*opened)


def _expire(self: RouterMachine, data: st.DataObject) -> None:
    """Advance the fake clock: connections whose context expired are closed from now on."""
    ttls = sorted(ttl for ttl in self.ttls if ttl is not None)
    # The shortest ttl first: Hypothesis draws it most, so contexts do expire in most runs.
    seconds = data.draw(st.sampled_from([ttls[0], 1.0, ttls[-1]]), label="seconds")
    self._call(self._advance, seconds)


_connect_initial.__name__ = _connect_initial.__qualname__ = "connect_initial"
_expire.__name__ = _expire.__qualname__ = "expire"


# -- the factory machine over a Registry ----------------------------------------------


class _Request:
    """A request to a scope's holder task: resolve a product, or use one there."""

    __slots__ = ("done", "error", "key", "kind", "product", "result")

    def __init__(self, kind: str, *, key: Any = None, product: Any = None) -> None:
        self.kind = kind
        self.key = key
        self.product = product
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = anyio.Event()


class _ScopeModel:
    """One scope held open by a task of the run, and what was resolved in it."""

    __slots__ = (
        "closed",
        "done",
        "error",
        "inbox",
        "name",
        "outbox",
        "principal",
        "products",
        "scope",
    )

    def __init__(self, principal: Principal, name: str) -> None:
        self.principal = principal
        self.name = name
        self.scope: Scope | None = None
        self.products: dict[Any, Any] = {}
        self.closed = False
        self.error: BaseException | None = None
        self.done = anyio.Event()
        self.outbox, self.inbox = anyio.create_memory_object_stream[_Request](math.inf)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<{self.name} of {_show(self.principal)}, {state}>"


class _Handed:
    """A product handed out in a scope."""

    __slots__ = ("key", "product", "scope")

    def __init__(self, scope: _ScopeModel, key: Any, product: Any) -> None:
        self.scope = scope
        self.key = key
        self.product = product

    def __repr__(self) -> str:
        return f"<{_name(self.key)} of {self.scope!r}>"


def _name(key: Any) -> str:
    return str(getattr(key, "__qualname__", key))


def _is_owned(product: object) -> bool:
    return getattr(type(product), "__isolation_owned__", None) is not None


class RegistryMachine(AsyncRuleBasedStateMachine):
    """Isolation of the products of your :class:`~isolation.Registry`.

    Override :meth:`make_registry` to return a new registry for each run, and
    list in :attr:`products` the types to resolve. The machine opens scopes
    for principals of :attr:`principals` (each held open by a task of the run,
    which resolves products there when asked and leaves the scope when told),
    resolves products (sometimes several times at once), uses products from
    other scopes, and closes scopes. It checks:

    * one instance per product per scope, even when resolved concurrently, and
      never one handed out in another scope (``APP`` products excepted: they
      are shared by declaration);
    * no mutable object is reachable from the products of live scopes of two
      different principals (the library's shared-state walk, so
      :func:`isolation.shareable` declarations are honoured) — whatever the
      registry's own ``check`` setting;
    * a product of an ended scope is never handed out again: resolving from an
      ended scope is refused, and an ``@owned`` product used from another scope
      is refused with ``CrossContextAccessError``;
    * at the end, once every scope is closed, no scope is left open and the
      registry's index of live products is empty; then ``registry.aclose()``.

    An error raised while resolving (``SharedStateError`` from a registry
    with ``check="full"`` included) fails the run: your provider shares state.
    """

    products: ClassVar[Sequence[Any]] = ()
    """The product types to resolve (registered in the registry)."""
    principals: ClassVar[Sequence[tuple[str | None, str]]] = DEFAULT_PRINCIPALS
    """The principals scopes are opened for (plain ``(tenant_id, user_id)`` pairs are
    turned into :class:`~isolation.Principal` objects)."""
    scope_lifetime: ClassVar[Lifetime] = Lifetime.REQUEST
    """The lifetime of the scopes opened: ``Lifetime.CONNECTION`` resolves ``CONNECTION`` products."""
    max_open_scopes: ClassVar[int] = 6
    """How many scopes may be open at once."""
    timeout: ClassVar[float] = 30.0
    """Seconds any one request to a scope may take (a hang guard)."""

    scopes = Bundle("isolation_scopes")

    def __init__(self) -> None:
        pool = _pool(self.principals)  # first: an invalid pair fails before a loop starts
        super().__init__()
        self._pool = pool
        self._registry: Any = None
        self._scopes: list[_ScopeModel] = []
        self._handed_by_id: dict[int, _ScopeModel] = {}
        self._handed: list[_Handed] = []
        self._failed = False
        self._baseline = open_resources()
        if not self.products:
            super().teardown()
            raise UsageError(f"{type(self).__name__}.products lists no product type to resolve")
        try:
            self._registry = self.portal.call(self._build)
        except BaseException:
            super().teardown()
            raise

    def make_registry(self) -> Registry | Awaitable[Registry]:
        """Return a new registry for one run (override it; it may be ``async def``).

        It is closed at the end of the run, so do not return a shared one.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must override make_registry() to return a new Registry"
        )

    def make_context(self, principal: Principal) -> UserContext:
        """The context a scope of ``principal`` binds (override for roles, attributes)."""
        tenant, user = principal
        return UserContext.new(user, tenant_id=tenant)

    def use(self, product: Any) -> Any:
        """Use ``product`` in the current scope, as your code would (may be ``async def``).

        Called inside a scope other than the one that built the product; for an
        ``@owned`` product it must raise ``CrossContextAccessError``. The
        default runs the check every guarded member of an ``@owned`` product
        runs; override it to call one of your product's real methods.
        """
        _check_weak(product)

    @property
    def registry(self) -> Registry:
        """The registry of this run."""
        registry: Registry = self._registry
        return registry

    async def _build(self) -> Any:
        made = self.make_registry()
        if inspect.isawaitable(made):
            made = await made
        return made

    def _is_app(self, key: Any) -> bool:
        provider = self.registry._providers.get(key)
        return provider is not None and provider.lifetime is Lifetime.APP

    def _open(self) -> list[_ScopeModel]:
        return [s for s in self._scopes if not s.closed]

    # -- the task that holds a scope open ----------------------------------------

    async def _hold(self, s: _ScopeModel, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        started = False
        try:
            async with Scope(
                self.make_context(s.principal), registry=self.registry, lifetime=self.scope_lifetime
            ) as bound:
                s.scope = bound
                task_status.started()
                started = True
                async with s.inbox, anyio.create_task_group() as tg:
                    async for request in s.inbox:
                        tg.start_soon(self._serve, bound, request)
        except Exception as exc:
            if not started:
                raise
            s.error = exc
        finally:
            s.done.set()

    async def _serve(self, bound: Scope, request: _Request) -> None:
        try:
            if request.kind == "resolve":
                request.result = await bound.aget(request.key)
            else:
                used = self.use(request.product)
                if inspect.isawaitable(used):
                    await used
        except Exception as exc:
            request.error = exc
        finally:
            request.done.set()

    async def _ask(self, s: _ScopeModel, requests: list[_Request]) -> None:
        for request in requests:
            s.outbox.send_nowait(request)
        with anyio.fail_after(self.timeout):
            for request in requests:
                await request.done.wait()

    async def _end(self, s: _ScopeModel) -> None:
        s.closed = True
        await s.outbox.aclose()
        with anyio.fail_after(self.timeout):
            await s.done.wait()
        if s.error is not None:
            _fail(self, f"closing {s!r} raised {type(s.error).__name__}: {s.error}", s.error)

    # -- rules --------------------------------------------------------------------

    @precondition(lambda self: len(self._open()) < self.max_open_scopes)
    @rule(target=scopes, data=st.data())
    def open_scope(self, data: st.DataObject) -> _ScopeModel:
        """Open a scope for a principal, held open by a task until it is closed."""
        principal = data.draw(st.sampled_from(self._pool), label="principal")
        opened: _ScopeModel = self._call(self._open_scope, principal)
        return opened

    async def _open_scope(self, principal: Principal) -> _ScopeModel:
        s = _ScopeModel(principal, f"scope {len(self._scopes)}")
        await self.task_group.start(self._hold, s)
        self._scopes.append(s)
        return s

    @rule(s=scopes, data=st.data())
    def resolve(self, s: _ScopeModel, data: st.DataObject) -> None:
        """Resolve a product in a scope, sometimes several times at once."""
        key = data.draw(st.sampled_from(list(self.products)), label="product")
        copies = 1 if s.closed else data.draw(st.integers(1, 3), label="at once")
        self._call(self._resolve, s, key, copies)

    async def _resolve(self, s: _ScopeModel, key: Any, copies: int) -> None:
        if s.closed:
            assert s.scope is not None
            try:
                product = await s.scope.aget(key)
            except IsolationError:
                return
            _fail(self, f"{s!r} handed out a {_name(key)} after it ended")
        requests = [_Request("resolve", key=key) for _ in range(copies)]
        await self._ask(s, requests)
        for request in requests:
            if request.error is not None:
                error = request.error
                _fail(
                    self,
                    f"resolving {_name(key)} in {s!r} raised {type(error).__name__}: {error}",
                    error,
                )
        product = requests[0].result
        if any(r.result is not product for r in requests):
            _fail(self, f"{copies} concurrent resolves of {_name(key)} in {s!r} differ")
        if key not in s.products and _is_owned(product):
            self._handed.append(_Handed(s, key, product))
        first = s.products.setdefault(key, product)
        if first is not product:
            _fail(self, f"{s!r} handed out two different {_name(key)} instances")
        if not self._is_app(key):
            holder = self._handed_by_id.setdefault(id(product), s)
            if holder is not s:
                _fail(
                    self, f"the {_name(key)} handed out in {holder!r} was handed out again in {s!r}"
                )

    def _uses(self) -> list[tuple[_Handed, _ScopeModel]]:
        """Pairs of an ``@owned`` product and an open scope other than the one that built it."""
        return [
            (h, s)
            for h in self._handed
            if _is_owned(h.product)
            for s in self._open()
            if s is not h.scope
        ]

    @precondition(lambda self: bool(self._uses()))
    @rule(data=st.data())
    def use_elsewhere(self, data: st.DataObject) -> None:
        """Use an ``@owned`` product in another open scope: it must be refused."""
        h, s = data.draw(st.sampled_from(self._uses()), label="product, scope")
        self._call(self._use_elsewhere, h, s)

    async def _use_elsewhere(self, h: _Handed, s: _ScopeModel) -> None:
        request = _Request("use", product=h.product)
        await self._ask(s, [request])
        if not isinstance(request.error, CrossContextAccessError):
            raised = f" (it raised {request.error!r})" if request.error is not None else ""
            _fail(
                self, f"the @owned {h!r} was used in {s!r} without CrossContextAccessError{raised}"
            )

    @precondition(lambda self: bool(self._open()))
    @rule(data=st.data())
    def close_scope(self, data: st.DataObject) -> None:
        """Leave an open scope (its task exits it)."""
        self._call(self._end, data.draw(st.sampled_from(self._open()), label="scope"))

    # -- invariants ---------------------------------------------------------------

    @invariant()
    async def no_state_shared_between_principals(self) -> None:
        """No mutable object is reachable from live products of two different principals."""
        seen: dict[int, tuple[_ScopeModel, Any, Any]] = {}
        for s in self._open():
            for key, product in s.products.items():
                if self._is_app(key):
                    continue
                result = walk(product)
                for oid in result.mutable:
                    other = seen.setdefault(oid, (s, key, result))
                    theirs, their_key, their_walk = other
                    if theirs.principal != s.principal:
                        _fail(
                            self,
                            f"a {type(result.obj(oid)).__name__} is reachable from the "
                            f"{_name(key)} of {s!r} at {render_path(result.path(oid))} and from "
                            f"the {_name(their_key)} of {theirs!r} at "
                            f"{render_path(their_walk.path(oid))}",
                        )

    async def ateardown(self) -> None:
        """Close every scope; check nothing is left open; close the registry."""
        if self._registry is None:
            return
        failed = self._failed  # a step's failure is reported already: add no second one
        try:
            for s in self._open():
                try:
                    await self._end(s)
                except AssertionError:
                    if not failed:
                        raise
            left = _drifted(self._baseline, open_resources())
            if left and not failed:
                _fail(self, "after every scope closed: " + ", ".join(left))
            size = self.registry._index.size
            if size and not failed:
                _fail(self, f"the registry still indexes {size} objects of ended scopes")
        finally:
            await self.registry.aclose()


for _cls in (RegistryMachine, RouterMachine):
    _cls.__module__ = "isolation.testing"
del _cls


# Public as isolation.testing.X (this module is private since issue 19).
RegistryMachine.__module__ = "isolation.testing"
RouterMachine.__module__ = "isolation.testing"
