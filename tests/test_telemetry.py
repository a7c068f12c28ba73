"""isolation.telemetry with the real OpenTelemetry SDK: each instrument reports the library's
own counters after real activity, never an id, and nothing after ``uninstrument()``."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import isolation
import isolation.telemetry
from isolation import UserContext
from isolation.errors import ConfigurationError
from isolation.events import EventRouter, Overflow
from isolation.testing import FakeClock

Values = dict[str, dict[frozenset[tuple[str, Any]], int | float]]


def collect(reader: Any) -> Values:
    """Every data point the reader collects now: name -> attributes -> value."""
    found: Values = {}
    data = reader.get_metrics_data()
    if data is None:
        return found
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                points = found.setdefault(metric.name, {})
                for point in metric.data.data_points:
                    points[frozenset(point.attributes.items())] = point.value
    return found


def value(values: Values, name: str, **attributes: str) -> int | float:
    return values[name][frozenset(attributes.items())]


@pytest.fixture
def reader() -> Iterator[Any]:
    """An in-memory reader on a fresh SDK meter provider, instrumented for one test."""
    pytest.importorskip("opentelemetry.sdk", reason="needs opentelemetry-sdk (the dev group)")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    memory = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[memory])
    isolation.telemetry.instrument(meter_provider=provider)
    try:
        yield memory
    finally:
        isolation.telemetry.uninstrument()
        provider.shutdown()


def test_without_the_extra_a_configuration_error_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """No opentelemetry installed: instrument() refuses with the extra to install."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ConfigurationError, match=r"otel") as caught:
        isolation.telemetry.instrument()
    assert "isolation-primitives[otel]" in str(caught.value)
    assert isinstance(caught.value, isolation.IsolationError)


def test_scope_metrics_match_scope_stats(reader: Any, fake_clock: FakeClock) -> None:
    before = collect(reader)
    with isolation.scope(UserContext.new("alice", tenant_id="acme")):
        with isolation.scope(UserContext.new("alice", tenant_id="acme")):
            during = collect(reader)
    with (
        pytest.raises(isolation.ContextExpiredError),
        isolation.scope(UserContext.new("bob", tenant_id="acme", ttl=5)),
    ):
        fake_clock.advance(10)  # the scope ends by its deadline
    after = collect(reader)
    stats = isolation.scope_stats()

    assert value(after, "isolation.scope.opened") == stats.opened
    assert value(after, "isolation.scope.expired") == stats.expired
    assert value(after, "isolation.scope.escapes") == stats.escapes_detected
    assert value(after, "isolation.scope.finalizer_failures") == stats.finalizer_failures
    assert value(after, "isolation.scope.open") == stats.open
    assert value(after, "isolation.scope.opened") - value(before, "isolation.scope.opened") == 3
    assert value(after, "isolation.scope.expired") - value(before, "isolation.scope.expired") == 1
    assert value(during, "isolation.scope.open") - value(before, "isolation.scope.open") == 2
    assert value(after, "isolation.scope.open") == value(before, "isolation.scope.open")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_session_metrics_match_manager_stats(reader: Any, tmp_path: Path) -> None:
    """Sessions held and waiting, commits and timeouts, as the manager counts them."""
    pytest.importorskip("aiosqlite", reason="needs the sqlalchemy extra")
    from _support.databases import create_tables, sqlite_engine

    engine = sqlite_engine(str(tmp_path / "db.sqlite"), pool_size=1, max_overflow=0)
    await create_tables(engine)
    from isolation.sessions import SessionManager

    manager = SessionManager(engine, acquire_timeout=30)
    release = anyio.Event()
    before = collect(reader)

    async def holder(user: str) -> None:
        async with isolation.scope(UserContext.new(user, tenant_id="acme")), manager.session():
            await release.wait()

    try:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder, "alice")
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(holder, "bob")
                await anyio.wait_all_tasks_blocked()
                held = collect(reader)
                stats = manager.stats()
                assert (stats.checked_out, stats.waiting, stats.open_sessions) == (1, 1, 2)
                release.set()
        after = collect(reader)
        final = manager.stats()
    finally:
        await manager.aclose()
        await engine.dispose()

    def delta(values: Values, name: str, **attributes: str) -> int | float:
        return value(values, name, **attributes) - value(before, name, **attributes)

    assert delta(held, "db.client.connection.count", **{"db.client.connection.state": "used"}) == 1
    assert delta(held, "db.client.connection.pending_requests") == 1
    assert delta(held, "isolation.session.open") == stats.open_sessions
    assert delta(after, "db.client.connection.count", **{"db.client.connection.state": "used"}) == 0
    assert delta(after, "db.client.connection.pending_requests") == 0
    assert delta(after, "isolation.session.commits") == final.commits == 2
    assert delta(after, "isolation.session.rollbacks") == final.rollbacks
    assert delta(after, "db.client.connection.timeouts") == final.exhausted == 0


@pytest.mark.anyio
async def test_event_metrics_match_router_stats(reader: Any) -> None:
    """Connections, published, delivered, dropped and undeliverable, as the router counts them."""
    before = collect(reader)
    alice = UserContext.new("alice", tenant_id="acme")
    with anyio.fail_after(20):
        async with EventRouter(queue_size=1, overflow=Overflow.DROP_OLDEST) as router:
            conn = await router.connect(alice)
            await router.publish(alice.principal, {"n": 1})
            await router.publish(alice.principal, {"n": 2})  # drops the first: queue of one
            await router.publish(isolation.Principal("acme", "nobody"), {"n": 3})
            assert (await conn.receive()).payload == {"n": 2}
            live = collect(reader)
            stats = router.stats()
        after = collect(reader)

    def delta(values: Values, name: str) -> int | float:
        return value(values, name) - value(before, name)

    assert (stats.connections, stats.published, stats.delivered, stats.dropped) == (1, 2, 1, 1)
    assert delta(live, "isolation.events.connections") == stats.connections
    assert delta(live, "isolation.events.connections.opened") == stats.opened
    assert delta(live, "isolation.events.published") == stats.published
    assert delta(live, "isolation.events.undeliverable") == stats.undeliverable == 1
    assert delta(live, "isolation.events.delivered") == stats.delivered
    assert delta(live, "isolation.events.dropped") == stats.dropped
    assert delta(live, "isolation.events.refused") == stats.refused == 0
    assert delta(after, "isolation.events.connections") == 0
    assert delta(after, "isolation.events.connections.closed") == 1


@pytest.mark.anyio
async def test_a_collected_router_keeps_its_counts(reader: Any) -> None:
    """Monotonic counters never go down when a router is garbage-collected."""
    before = collect(reader)
    alice = UserContext.new("alice", tenant_id="acme")
    async with EventRouter() as router:
        async with await router.connect(alice) as conn:
            await router.publish(alice.principal, "hi")
            await conn.receive()
        middle = collect(reader)
    del router, conn
    gc.collect()
    after = collect(reader)
    for name in ("isolation.events.published", "isolation.events.delivered"):
        assert value(middle, name) - value(before, name) == 1
        assert value(after, name) == value(middle, name)


@pytest.mark.anyio
async def test_no_user_or_tenant_id_in_any_attribute(reader: Any, tmp_path: Path) -> None:
    """After activity by alice of acme, no attribute key or value carries either id."""
    alice = UserContext.new("alice", tenant_id="acme")
    async with EventRouter() as router:
        with isolation.scope(alice):
            conn = await router.connect()
            await router.publish(alice.principal, "secret-payload")
            await conn.receive()
            values = collect(reader)
    assert values, "the reader collected nothing"
    for name, points in values.items():
        for attributes in points:
            for key, attribute in attributes:
                for needle in ("alice", "acme", "secret-payload"):
                    assert needle not in key, (name, key)
                    assert needle not in str(attribute), (name, key, attribute)


def test_uninstrument_stops_reporting(reader: Any) -> None:
    assert "isolation.scope.opened" in collect(reader)
    isolation.telemetry.uninstrument()
    with isolation.scope(UserContext.new("alice", tenant_id="acme")):
        pass
    assert not any(collect(reader).values())
    isolation.telemetry.instrument()  # back on: every provider instrumented before reports again
    assert "isolation.scope.opened" in collect(reader)


def test_instrument_is_idempotent() -> None:
    """instrument() twice on one provider registers each instrument once, reporting once."""
    pytest.importorskip("opentelemetry.sdk", reason="needs opentelemetry-sdk (the dev group)")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    memory = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[memory])
    try:
        isolation.telemetry.instrument(meter_provider=provider)
        first = collect(memory)
        isolation.telemetry.instrument(meter_provider=provider)
        again = collect(memory)
    finally:
        isolation.telemetry.uninstrument()
        provider.shutdown()
    assert len(first) == len(again) > 20
    assert again.keys() == first.keys()
    assert all(len(points) == 1 for points in again.values())
