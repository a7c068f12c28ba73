"""The app's objects, made once at module level, serve every start of the app.

A module-scoped ``TestClient`` starts the app once per test module, each time
on a new event loop: ``with TestClient(app)`` twice on the same app (and the
same ``SessionManager``, ``Registry`` and ``EventRouter``, closed by
``lifespan()`` at the first shutdown) is that, in one test. Before, the second
start answered 500: ``UsageError: this SessionManager is closed``, then pooled
connections ``attached to a different loop``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import anyio
import pytest

pytest.importorskip("fastapi", reason="needs FastAPI (the tests extra)")
pytest.importorskip("aiosqlite", reason="needs the sqlalchemy extra")

from anyio.from_thread import start_blocking_portal
from fastapi import Depends, FastAPI
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from starlette.requests import HTTPConnection
from starlette.testclient import TestClient

import isolation
from _support.databases import Note, create_tables, pg_sandbox, sqlite_engine
from isolation import Lifetime, Registry, UserContext
from isolation.events import EventRouter
from isolation.integrations.fastapi import from_scope
from isolation.integrations.starlette import IsolationMiddleware, lifespan
from isolation.sessions import SessionManager

Session = Annotated[AsyncSession, Depends(from_scope(AsyncSession))]


def authenticate(conn: HTTPConnection) -> UserContext | None:
    user = conn.headers.get("x-user")
    return None if user is None else UserContext.new(user, tenant_id="acme")


class Clock:
    """An APP product with a teardown: built once per start of the app."""

    built = 0
    closed = 0


def app_clock() -> Iterator[Clock]:
    Clock.built += 1
    yield Clock()
    Clock.closed += 1


class Service:
    """What a module of an app holds: made once, started by every TestClient."""

    def __init__(self, engine: AsyncEngine, manager: SessionManager, router: EventRouter) -> None:
        self.engine = engine
        self.manager = manager
        self.router = router
        self.registry = Registry()
        manager.provide_to(self.registry)
        self.registry.provide(app_clock, lifetime=Lifetime.APP)
        api = FastAPI(lifespan=lifespan(self.registry, manager, router))
        api.add_middleware(IsolationMiddleware, authenticate=authenticate, registry=self.registry)

        @api.post("/notes/{body}")
        async def post(body: str, session: Session) -> dict[str, bool]:
            ctx = isolation.current_context()
            session.add(Note(tenant=ctx.tenant_id, owner=ctx.user_id, body=body))
            return {"created": True}

        @api.get("/notes")
        async def notes(session: Session) -> list[str]:
            ctx = isolation.current_context()
            query = select(Note.body).where(Note.owner == ctx.user_id).order_by(Note.id)
            return list((await session.scalars(query)).all())

        @api.post("/echo")
        async def echo() -> dict[str, Any]:
            isolation.current_scope().get(Clock)
            connection = await router.connect()  # the request's own, closed with its scope
            ctx = isolation.current_context()
            await router.publish(ctx, {"echo": 1})
            event = await connection.receive()
            return event.payload

        @api.post("/dirty")
        async def dirty(session: Session) -> dict[str, bool]:
            await session.execute(text("SET isolation.user_id = 'someone else'"))
            return {"left": True}

        self.app = api

    def serve(self, round_: int) -> None:
        """One start of the app: a write and a read through the session, the router, APP."""
        with TestClient(self.app) as client:
            alice = {"x-user": "alice"}
            assert client.post(f"/notes/a{round_}", headers=alice).json() == {"created": True}
            client.post(f"/notes/b{round_}", headers={"x-user": "bob"})
            expected = [f"a{n}" for n in range(round_ + 1)]
            assert client.get("/notes", headers=alice).json() == expected
            assert client.post("/echo", headers=alice).json() == {"echo": 1}


@pytest.fixture
def sqlite_service(tmp_path: Path) -> Iterator[Service]:
    engine = sqlite_engine(str(tmp_path / "restart.sqlite"))
    anyio.run(create_tables, engine, backend="asyncio")
    yield Service(engine, SessionManager(engine), EventRouter())
    anyio.run(engine.dispose, backend="asyncio")


class TestRestart:
    def test_two_starts_of_the_same_app(self, sqlite_service: Service) -> None:
        """Each start serves sessions, the router and APP products; each shutdown closes them."""
        built, closed = Clock.built, Clock.closed
        for round_ in range(2):
            sqlite_service.serve(round_)
            assert sqlite_service.router.closed
            assert Clock.built - built == Clock.closed - closed == round_ + 1
        stats = sqlite_service.manager.stats()
        assert (stats.open_sessions, stats.checked_out) == (0, 0)

    def test_a_closed_manager_refuses_until_started_again(self, tmp_path: Path) -> None:
        """Without a start, a closed manager still refuses (fail closed); start() reopens it."""
        engine = sqlite_engine(str(tmp_path / "closed.sqlite"))
        manager = SessionManager(engine)

        async def main() -> None:
            await create_tables(engine)
            await manager.start()
            await manager.aclose()
            async with isolation.scope(UserContext.new("alice")):
                with pytest.raises(isolation.UsageError, match="closed"):
                    async with manager.session():
                        pass
            await manager.start()
            async with isolation.scope(UserContext.new("alice")), manager.session() as s:
                s.add(Note(tenant=None, owner="alice", body="again"))
            await manager.aclose()
            await engine.dispose()

        anyio.run(main, backend="asyncio")
        assert manager.stats().commits == 1

    def test_registry_start_reopens(self) -> None:
        """A closed registry refuses new providers until start()."""
        registry = Registry()
        registry.close()
        with pytest.raises(isolation.UsageError, match="closed"):
            registry.provide(app_clock, lifetime=Lifetime.APP)
        registry.start()
        registry.provide(app_clock, lifetime=Lifetime.APP)

    def test_lifespan_start_failure_stops_the_app(self) -> None:
        """A resource that fails to start stops the app's start; every resource is closed."""
        closed: list[str] = []

        class Broken:
            async def start(self) -> None:
                raise isolation.ConfigurationError("cannot start")

            async def aclose(self) -> None:
                closed.append("broken")

        class Fine:
            def close(self) -> None:
                closed.append("fine")

        app = FastAPI(lifespan=lifespan(Fine(), Broken()))
        with pytest.raises(isolation.ConfigurationError, match="cannot start"), TestClient(app):
            pass
        assert closed == ["broken", "fine"]


@pytest.mark.postgres
class TestRestartOnPostgres:
    def test_two_starts_with_row_level_security(self, postgres_url: str) -> None:
        """asyncpg connections belong to their event loop: each start gets its own, and the
        row-level security return check is installed again (a SET left behind is caught)."""
        with start_blocking_portal(backend="asyncio") as portal:
            sandbox = portal.wrap_async_context_manager(pg_sandbox(postgres_url))
            with sandbox as box:
                manager = SessionManager(
                    box.engine, row_level_security=True, rls_tables=[box.table]
                )
                service = Service(box.engine, manager, EventRouter())
                for round_ in range(2):
                    service.serve(round_)
                    with TestClient(service.app) as client:
                        assert client.post("/dirty", headers={"x-user": "alice"}).status_code == 200
                    assert manager.stats().dirty_returns == round_ + 1


@pytest.mark.redis
class TestRestartWithRedis:
    def test_two_starts_with_a_redis_backend(self, redis_url: str, tmp_path: Path) -> None:
        """A router on Redis reopens its backend on the new event loop."""
        from isolation.events.backends.redis import RedisBackend

        engine = sqlite_engine(str(tmp_path / "redis.sqlite"))
        anyio.run(create_tables, engine, backend="asyncio")
        namespace = f"restart-{os.urandom(6).hex()}"
        router = EventRouter(
            backend=RedisBackend(redis_url, keys=[os.urandom(32)], namespace=namespace)
        )
        service = Service(engine, SessionManager(engine), router)
        try:
            for round_ in range(2):
                service.serve(round_)
        finally:
            anyio.run(engine.dispose, backend="asyncio")
