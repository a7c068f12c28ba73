"""Export the library's counters as OpenTelemetry metrics: ``instrument()``, ``uninstrument()``.

Every instrument is **observable**: its callback reads the exact counters the
library already keeps (:func:`isolation.scope_stats`, each live
``SessionManager``'s ``stats()``, each live ``EventRouter``'s counters) when the
application's metric reader collects. Nothing is recorded on a hot path, so a
scope, a session block or a publish costs the same with or without telemetry.

Session managers and event routers are many per process and made by the
application at any time: the callbacks sum over the live ones, which the
library tracks weakly as they are made (``isolation._counters.track``), so no
object has to be passed in and none is kept alive. The counts of a manager or
router that was garbage-collected stay in its monotonic counters (its last
collected values), so they never go down.

No user id, tenant id, token or payload becomes an attribute (cardinality and
privacy): the only attributes are fixed, documented values.

Needs the ``otel`` extra (``opentelemetry-api``); the SDK and the exporters are
the application's choice.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from isolation import _counters
from isolation._errors import ConfigurationError
from isolation.context._scope import scope_stats
from isolation.events import _router

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
    from opentelemetry.trace import TracerProvider

__all__ = ["instrument", "uninstrument"]

_SCOPE: Final = "isolation"
_INSTALL: Final = "pip install 'isolation-primitives[otel]'"

_lock = threading.Lock()
_active = False
# Providers whose meter already has the instruments: instrument() again reuses them
# (an OpenTelemetry meter keeps the first callbacks of an instrument name).
_instrumented: dict[int, tuple[object, list[object]]] = {}

_Read = Callable[[], Mapping[str, int]]


class _Sum:
    """Sums counters over the live tracked objects of a kind, keeping the dead ones' last values.

    Monotonic fields of an object that was garbage-collected stay in the total (as
    last read), so an exported counter never goes down; gauges (current values)
    count only the live objects.
    """

    def __init__(self, kind: str, read: Callable[[Any], Mapping[str, int]], gauges: set[str]):
        self._kind = kind
        self._read = read
        self._gauges = gauges
        self._lock = threading.Lock()
        self._last: dict[int, tuple[weakref.ref[Any], Mapping[str, int]]] = {}
        self._retired: dict[str, int] = {}

    def totals(self) -> dict[str, int]:
        live = _counters.tracked(self._kind)
        reads = [(obj, self._read(obj)) for obj in live]
        with self._lock:
            for key, (ref, last) in list(self._last.items()):
                if ref() is None:
                    del self._last[key]
                    for name, value in last.items():
                        if name not in self._gauges:
                            self._retired[name] = self._retired.get(name, 0) + value
            totals = dict(self._retired)
            for obj, values in reads:
                self._last[id(obj)] = (weakref.ref(obj), values)
                for name, value in values.items():
                    totals[name] = totals.get(name, 0) + value
        return totals


def _manager_counts(manager: Any) -> Mapping[str, int]:
    stats = manager.stats()
    return {
        "open_sessions": stats.open_sessions,
        "checked_out": stats.checked_out,
        "waiting": stats.waiting,
        "commits": stats.commits,
        "rollbacks": stats.rollbacks,
        "leaks": stats.leaks,
        "exhausted": stats.exhausted,
        "hold_warnings": stats.hold_warnings,
        "dirty_returns": stats.dirty_returns,
        "unmanaged": stats.unmanaged,
        "unrestricted": stats.unrestricted,
        "unrestricted_refused": stats.unrestricted_refused,
    }


def _router_counts(router: Any) -> Mapping[str, int]:
    stats = _router.counters(router)
    return {
        "connections": stats.connections,
        "opened": stats.opened,
        "closed": stats.closed,
        "published": stats.published,
        "undeliverable": stats.undeliverable,
        "delivered": stats.delivered,
        "dropped": stats.dropped,
        "refused": stats.refused,
        "expired": stats.expired,
        "overflow_disconnects": stats.overflow_disconnects,
    }


_sessions = _Sum(
    _counters.SESSION_MANAGERS,
    _manager_counts,
    gauges={"open_sessions", "checked_out", "waiting"},
)
_routers = _Sum(_counters.EVENT_ROUTERS, _router_counts, gauges={"connections"})


def _scope_counts() -> dict[str, int]:
    stats = scope_stats()
    return {
        "open": stats.open,
        "opened": stats.opened,
        "expired": stats.expired,
        "escapes_detected": stats.escapes_detected,
        "finalizer_failures": stats.finalizer_failures,
    }


# name, kind ("counter" or "updown"), unit, description, source, field, attributes
_Spec = tuple[str, str, str, str, Callable[[], Mapping[str, int]], str, Mapping[str, str]]
_NONE: Final[Mapping[str, str]] = {}
_USED: Final[Mapping[str, str]] = {"db.client.connection.state": "used"}

_SPECS: Final[tuple[_Spec, ...]] = (
    # context
    ("isolation.scope.open", "updown", "{scope}", "Scopes entered and not yet exited.", _scope_counts, "open", _NONE),
    ("isolation.scope.opened", "counter", "{scope}", "Scopes entered (child scopes included).", _scope_counts, "opened", _NONE),
    ("isolation.scope.expired", "counter", "{scope}", "Scopes that ended by their deadline.", _scope_counts, "expired", _NONE),
    ("isolation.scope.escapes", "counter", "{read}", "Reads of a context from a scope that had ended (escapes detected).", _scope_counts, "escapes_detected", _NONE),
    ("isolation.scope.finalizer_failures", "counter", "{finalizer}", "Scope finalizers that raised or overran their cleanup time.", _scope_counts, "finalizer_failures", _NONE),
    # sessions: OpenTelemetry's database client connection conventions where they fit
    ("db.client.connection.count", "updown", "{connection}", "Connections of SessionManagers in use (admission slots held).", _sessions.totals, "checked_out", _USED),
    ("db.client.connection.pending_requests", "updown", "{request}", "Session blocks waiting for admission (a free connection or the user's limit).", _sessions.totals, "waiting", _NONE),
    ("db.client.connection.timeouts", "counter", "{timeout}", "Session blocks refused with PoolExhaustedError after waiting for admission.", _sessions.totals, "exhausted", _NONE),
    ("isolation.session.open", "updown", "{session}", "Sessions owned by scopes that have not ended.", _sessions.totals, "open_sessions", _NONE),
    ("isolation.session.commits", "counter", "{block}", "Outermost session blocks that committed.", _sessions.totals, "commits", _NONE),
    ("isolation.session.rollbacks", "counter", "{block}", "Outermost session blocks that rolled back, and sessions cut off at scope end.", _sessions.totals, "rollbacks", _NONE),
    ("isolation.session.leaks", "counter", "{session}", "Sessions garbage-collected without being closed (leaks detected).", _sessions.totals, "leaks", _NONE),
    ("isolation.session.hold_warnings", "counter", "{block}", "Session blocks held past hold_warning.", _sessions.totals, "hold_warnings", _NONE),
    ("isolation.session.dirty_returns", "counter", "{connection}", "Connections the row-level security return check found dirty (invalidated).", _sessions.totals, "dirty_returns", _NONE),
    ("isolation.session.unmanaged", "counter", "{connection}", "Connections opened in a user scope outside a manager's session.", _sessions.totals, "unmanaged", _NONE),
    ("isolation.session.unrestricted", "counter", "{block}", "Unrestricted (admin) session blocks opened.", _sessions.totals, "unrestricted", _NONE),
    ("isolation.session.unrestricted_refused", "counter", "{block}", "Unrestricted session blocks refused to a context without an admin role.", _sessions.totals, "unrestricted_refused", _NONE),
    # events
    ("isolation.events.connections", "updown", "{connection}", "Live EventRouter connections.", _routers.totals, "connections", _NONE),
    ("isolation.events.connections.opened", "counter", "{connection}", "EventRouter connections opened.", _routers.totals, "opened", _NONE),
    ("isolation.events.connections.closed", "counter", "{connection}", "EventRouter connections closed.", _routers.totals, "closed", _NONE),
    ("isolation.events.connections.expired", "counter", "{connection}", "Connections closed because their context expired.", _routers.totals, "expired", _NONE),
    ("isolation.events.connections.overflow_disconnects", "counter", "{connection}", "Connections closed by Overflow.DISCONNECT.", _routers.totals, "overflow_disconnects", _NONE),
    ("isolation.events.published", "counter", "{event}", "publish() calls that found at least one live connection.", _routers.totals, "published", _NONE),
    ("isolation.events.undeliverable", "counter", "{event}", "publish() calls that found no live connection.", _routers.totals, "undeliverable", _NONE),
    ("isolation.events.delivered", "counter", "{event}", "Events handed to consumers.", _routers.totals, "delivered", _NONE),
    ("isolation.events.dropped", "counter", "{event}", "Events dropped by the overflow policy, BLOCK timeouts or backlogs discarded at close.", _routers.totals, "dropped", _NONE),
    ("isolation.events.refused", "counter", "{event}", "Events refused at the last step: not for the connection's principal.", _routers.totals, "refused", _NONE),
)  # fmt: skip


def _callback(
    source: Callable[[], Mapping[str, int]], field: str, attributes: Mapping[str, str]
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    from opentelemetry.metrics import Observation

    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        if not _active:
            return []
        return [Observation(source().get(field, 0), dict(attributes))]

    return observe


def _register(meter: Meter) -> list[object]:
    made: list[object] = []
    for name, kind, unit, description, source, field, attributes in _SPECS:
        create = (
            meter.create_observable_counter
            if kind == "counter"
            else meter.create_observable_up_down_counter
        )
        made.append(
            create(
                name,
                callbacks=[_callback(source, field, attributes)],
                unit=unit,
                description=description,
            )
        )
    return made


def instrument(
    *,
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
) -> None:
    """Report the library's metrics through OpenTelemetry (idempotent).

    Args:
        meter_provider: Where the instruments are made; OpenTelemetry's global
            meter provider when ``None``.
        tracer_provider: Reserved for the library's spans (not emitted yet);
            the global tracer provider when ``None``.

    Raises:
        ConfigurationError: ``opentelemetry-api`` is not installed (the ``otel`` extra).
    """
    global _active
    try:
        from opentelemetry import metrics
    except ImportError as exc:
        raise ConfigurationError(
            "isolation.telemetry needs OpenTelemetry's API, the 'otel' extra",
            hint=f"Install it: {_INSTALL}",
        ) from exc
    del tracer_provider  # the traces slice of issue 21 uses it
    provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
    with _lock:
        if id(provider) not in _instrumented:
            meter = provider.get_meter(_SCOPE)
            _instrumented[id(provider)] = (provider, _register(meter))
        _active = True


def uninstrument() -> None:
    """Stop reporting: every instrument's callback observes nothing from now on (idempotent)."""
    global _active
    with _lock:
        _active = False
