"""A sync FastAPI + SQLModel app shaped like the FastAPI full-stack template, under load.

The app: ``User`` and ``Item`` tables with UUID ids and ``Item.owner_id`` a
foreign key to ``user.id``; bearer tokens (``isolation.tokens``, decoded once by
the middleware's ``authenticate``); ``CORSMiddleware`` outside
``IsolationMiddleware``; a sync ``get_db()`` dependency with ``yield`` opening
``manager.session()``; a sync ``get_current_user`` loading the ``User`` through
that session; sync endpoints to create, list, read, update and delete items,
each committing in the endpoint as the template does. Beside them, the bugs a
real app ships: a read by id that forgets the owner check, a create that lets
the client choose ``owner_id``, the app's old module-level ``Session(engine)``
used inside a request, an ``exists()`` boolean oracle, a bulk ``delete()`` by
id with no owner check and a list with no owner filter.

It runs twice: on SQLite with ``manager.protect(Item, user_column="owner_id")``,
and on PostgreSQL with row-level security alone (a restricted LOGIN role that
neither owns the tables nor bypasses RLS, ``rls_policy_sql(...,
user_type="uuid")``, no ``protect()``). Several users drive it at once through
httpx's ASGI transport, so FastAPI's thread pool runs the sync dependencies and
endpoints concurrently (a barrier in the list endpoint proves four of them
inside their sessions at the same time). Every owner's own operation must
succeed; every attack must answer 404, a ``False`` from the oracle, or a 403
carrying the typed refusal; no response to one user may contain another
user's id, item id or title; the database must end holding exactly what the
owners wrote. A control run without the library's protections shows that the
same attacks do leak there, so the harness has teeth.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import pytest

pytest.importorskip("fastapi", reason="needs FastAPI (the tests extra)")
pytest.importorskip("sqlmodel", reason="needs SQLModel (the tests extra)")

import anyio
import httpx
import sqlmodel
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, create_engine, delete, event, exists, func, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import registry
from sqlalchemy.pool import NullPool
from starlette.requests import HTTPConnection
from starlette.testclient import TestClient

from isolation import IsolationError, UserContext, tokens
from isolation.integrations.fastapi import CurrentContext
from isolation.integrations.starlette import IsolationMiddleware, lifespan
from isolation.sessions import SessionManager

HANG = 120
"""Seconds: a hang guard only (for the barrier and the whole scenario)."""
FRONT = "https://dashboard.example"
PURPOSE = "access"
API = "/api/v1"
USERS = ("alice", "bob", "carol", "dave")
ITEMS_PER_USER = 4
LANES = 3
"""Concurrent request lanes per user (one owner lane, two attack lanes in the storm)."""
POOL = 16


# -- the app's models (their own registry: no clash with SQLModel's default metadata) --


class AppModel(sqlmodel.SQLModel, registry=registry()):
    """The app's declarative base."""


class User(AppModel, table=True):
    id: uuid.UUID = sqlmodel.Field(default_factory=uuid.uuid4, primary_key=True)
    email: str = sqlmodel.Field(unique=True, index=True, max_length=255)
    hashed_password: str
    is_active: bool = True


class ItemBase(AppModel):
    title: str = sqlmodel.Field(min_length=1, max_length=255)
    description: str | None = sqlmodel.Field(default=None, max_length=255)


class ItemCreate(ItemBase):
    pass


class ItemUpdate(AppModel):
    title: str | None = sqlmodel.Field(default=None, min_length=1, max_length=255)
    description: str | None = sqlmodel.Field(default=None, max_length=255)


class Item(ItemBase, table=True):
    id: uuid.UUID = sqlmodel.Field(default_factory=uuid.uuid4, primary_key=True)
    owner_id: uuid.UUID = sqlmodel.Field(foreign_key="user.id", nullable=False, ondelete="CASCADE")


class ItemPublic(ItemBase):
    id: uuid.UUID
    owner_id: uuid.UUID


class ItemsPublic(AppModel):
    data: list[ItemPublic]
    count: int


class ForgedItemCreate(ItemBase):
    """The buggy create's body: the client names the owner."""

    owner_id: uuid.UUID


class Login(AppModel):
    email: str
    password: str


def hash_password(password: str) -> str:
    return hashlib.sha256(b"app-salt:" + password.encode()).hexdigest()


# -- the app's dependencies (module level, as in the template) --------------------


def get_db(request: Request) -> Iterator[sqlmodel.Session]:
    """The request's session: the scope's, admitted, committed or rolled back at the end."""
    manager: SessionManager = request.app.state.manager
    with manager.session() as session:
        if request.method != "GET" and session.get_bind().dialect.name == "sqlite":
            # SQLite's recipe for concurrent writers, nothing to do with isolation: a
            # write request takes the write lock at BEGIN (waiting on busy_timeout)
            # rather than failing to upgrade a read transaction another writer outdated.
            session.connection(execution_options={"sqlite_begin": "IMMEDIATE"})
        yield session


SessionDep = Annotated[sqlmodel.Session, Depends(get_db)]


def get_current_user(session: SessionDep, ctx: CurrentContext) -> User:
    user = session.get(User, uuid.UUID(ctx.user_id))
    if user is None:
        raise HTTPException(status_code=404, detail="User not found")
    if not user.is_active:
        raise HTTPException(status_code=400, detail="Inactive user")
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


# -- the app --------------------------------------------------------------------------


def create_app(engine: Engine, manager: SessionManager, secret: bytes) -> FastAPI:
    """The app on ``engine`` (its module-level engine), with ``manager`` for requests."""

    def authenticate(conn: HTTPConnection) -> UserContext | None:
        scheme, _, token = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        return tokens.loads(token, keys=[secret], purpose=PURPOSE)  # TokenError: a 401

    app = FastAPI(lifespan=lifespan(manager))
    app.state.manager = manager
    app.state.rendezvous = None
    app.state.refusals = []
    app.add_middleware(
        IsolationMiddleware, authenticate=authenticate, public_paths=("/api/v1/login/",)
    )
    app.add_middleware(  # added last: the outermost
        CORSMiddleware,
        allow_origins=[FRONT],
        allow_credentials=True,
        allow_methods=["*"],
        allow_headers=["*"],
    )

    @app.exception_handler(IsolationError)
    async def refused(request: Request, exc: IsolationError) -> JSONResponse:
        request.app.state.refusals.append(type(exc).__name__)
        status = 403 if isinstance(exc, PermissionError) else 500
        return JSONResponse({"detail": "refused", "error": type(exc).__name__}, status)

    login = APIRouter(prefix="/login")

    @login.post("/access-token")
    def login_access_token(body: Login) -> dict[str, str]:
        # A public path: no scope, so the app's plain Session(engine) is allowed here.
        with sqlmodel.Session(engine) as session:
            user = session.exec(sqlmodel.select(User).where(User.email == body.email)).first()
        if user is None or user.hashed_password != hash_password(body.password):
            raise HTTPException(status_code=400, detail="Incorrect email or password")
        ctx = UserContext.new(str(user.id), ttl=600)
        return {
            "access_token": tokens.dumps(ctx, key=secret, purpose=PURPOSE),
            "token_type": "bearer",
        }

    items = APIRouter(prefix="/items")

    @items.get("/", response_model=ItemsPublic)
    def read_items(session: SessionDep, current_user: CurrentUser) -> Any:
        mine = Item.owner_id == current_user.id
        count = session.exec(sqlmodel.select(func.count()).select_from(Item).where(mine)).one()
        rows = session.exec(sqlmodel.select(Item).where(mine)).all()
        # The test's rendezvous (none in production): wait, rows read and session open,
        # for the other users' requests to be here too.
        barrier: threading.Barrier | None = app.state.rendezvous
        if barrier is not None:
            barrier.wait(HANG)
        return ItemsPublic(data=[ItemPublic.model_validate(i) for i in rows], count=count)

    @items.get("/{id}", response_model=ItemPublic)
    def read_item(session: SessionDep, current_user: CurrentUser, id: uuid.UUID) -> Any:
        item = session.get(Item, id)
        if item is None:
            raise HTTPException(status_code=404, detail="Item not found")
        if item.owner_id != current_user.id:
            raise HTTPException(status_code=403, detail="Not enough permissions")
        return item

    @items.post("/", response_model=ItemPublic)
    def create_item(session: SessionDep, current_user: CurrentUser, item_in: ItemCreate) -> Any:
        item = Item.model_validate(item_in, update={"owner_id": current_user.id})
        session.add(item)
        session.commit()
        session.refresh(item)
        return item

    @items.put("/{id}", response_model=ItemPublic)
    def update_item(
        session: SessionDep, current_user: CurrentUser, id: uuid.UUID, item_in: ItemUpdate
    ) -> Any:
        item = session.get(Item, id)
        if item is None:
            raise HTTPException(status_code=404, detail="Item not found")
        if item.owner_id != current_user.id:
            raise HTTPException(status_code=403, detail="Not enough permissions")
        item.sqlmodel_update(item_in.model_dump(exclude_unset=True))
        session.add(item)
        session.commit()
        session.refresh(item)
        return item

    @items.delete("/{id}")
    def delete_item(session: SessionDep, current_user: CurrentUser, id: uuid.UUID) -> Any:
        item = session.get(Item, id)
        if item is None:
            raise HTTPException(status_code=404, detail="Item not found")
        if item.owner_id != current_user.id:
            raise HTTPException(status_code=403, detail="Not enough permissions")
        session.delete(item)
        session.commit()
        return {"message": "Item deleted successfully"}

    buggy = APIRouter(prefix="/buggy/items")

    @buggy.get("/", response_model=ItemsPublic)
    def list_every_item(session: SessionDep, current_user: CurrentUser) -> Any:
        """BUG: no owner filter."""
        rows = session.exec(sqlmodel.select(Item)).all()
        return ItemsPublic(data=[ItemPublic.model_validate(i) for i in rows], count=len(rows))

    @buggy.get("/{id}", response_model=ItemPublic)
    def read_item_unchecked(session: SessionDep, current_user: CurrentUser, id: uuid.UUID) -> Any:
        """BUG: the owner check is forgotten."""
        item = session.get(Item, id)
        if item is None:
            raise HTTPException(status_code=404, detail="Item not found")
        return item

    @buggy.post("/", response_model=ItemPublic)
    def create_item_forged(
        session: SessionDep, current_user: CurrentUser, item_in: ForgedItemCreate
    ) -> Any:
        """BUG: the client chooses ``owner_id``."""
        item = Item.model_validate(item_in)
        session.add(item)
        session.commit()
        session.refresh(item)
        return item

    @buggy.get("/{id}/old-session", response_model=ItemPublic)
    def read_item_old_session(current_user: CurrentUser, id: uuid.UUID) -> Any:
        """BUG: the app's old module-level ``Session(engine)``, no owner check."""
        with sqlmodel.Session(engine) as legacy:
            item = legacy.get(Item, id)
            if item is None:
                raise HTTPException(status_code=404, detail="Item not found")
            return ItemPublic.model_validate(item)

    @buggy.get("/{id}/title-starts-with")
    def title_starts_with(
        session: SessionDep, current_user: CurrentUser, id: uuid.UUID, prefix: str
    ) -> dict[str, bool]:
        """BUG: a boolean oracle on any item's title, a character at a time."""
        statement = sqlmodel.select(exists().where(Item.id == id, Item.title.startswith(prefix)))
        return {"exists": bool(session.exec(statement).one())}

    @buggy.delete("/{id}")
    def delete_item_unchecked(session: SessionDep, current_user: CurrentUser, id: uuid.UUID) -> Any:
        """BUG: a bulk ``delete()`` by id, no owner check."""
        result: Any = session.execute(delete(Item).where(Item.id == id))
        session.commit()
        if result.rowcount == 0:
            raise HTTPException(status_code=404, detail="Item not found")
        return {"message": "Item deleted successfully"}

    for router in (login, items, buggy):
        app.include_router(router, prefix=API)
    return app


# -- databases --------------------------------------------------------------------------


def sqlite_app_engine(path: Path) -> Engine:
    """A pysqlite file engine: WAL, busy timeout, SQLAlchemy's BEGIN recipe (``sqlite_begin``)."""
    engine = create_engine(f"sqlite:///{path}", pool_size=POOL, max_overflow=0)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


@dataclass
class Database:
    """What the app connects with, and an engine that sees every row (outside any scope)."""

    engine: Engine
    admin: Engine
    item_table: str


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    engine = sqlite_app_engine(tmp_path / "app.sqlite")
    AppModel.metadata.create_all(engine)  # outside any scope: a migration
    try:
        yield Database(engine=engine, admin=engine, item_table="item")
    finally:
        engine.dispose()


@pytest.fixture
def postgres_db(postgres_url: str) -> Iterator[Database]:
    """A schema with the app's tables, RLS on ``item`` (UUID owner), a restricted role."""
    from isolation.sessions.postgres import quote_identifier, rls_policy_sql

    suffix = uuid.uuid4().hex[:12]
    schema, role, password = f"sync_app_{suffix}", f"sync_app_{suffix}", secrets.token_hex(16)
    q_schema, q_role = quote_identifier(schema), quote_identifier(role)
    url = make_url(postgres_url).set(drivername="postgresql+psycopg")
    admin = create_engine(url, poolclass=NullPool)
    engine: Engine | None = None
    try:
        with admin.begin() as conn:
            for statement in [
                f"CREATE ROLE {q_role} LOGIN PASSWORD '{password}' NOSUPERUSER NOBYPASSRLS "
                "NOCREATEDB NOCREATEROLE",
                f"CREATE SCHEMA {q_schema}",
                f"GRANT USAGE ON SCHEMA {q_schema} TO {q_role}",
                f"ALTER ROLE {q_role} SET search_path = {q_schema}",
            ]:
                conn.exec_driver_sql(statement)
            AppModel.metadata.create_all(
                conn.execution_options(schema_translate_map={None: schema})
            )
            for statement in [
                f'GRANT SELECT ON {q_schema}."user" TO {q_role}',
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON {q_schema}.item TO {q_role}",
                *rls_policy_sql(f"{schema}.item", user_column="owner_id", user_type="uuid"),
            ]:
                conn.exec_driver_sql(statement)
        engine = create_engine(
            url.set(username=role, password=password), pool_size=POOL, max_overflow=0
        )
        admin_in_schema = admin.execution_options(schema_translate_map={None: schema})
        yield Database(engine=engine, admin=admin_in_schema, item_table=f"{schema}.item")
    finally:
        if engine is not None:
            engine.dispose()
        with admin.begin() as conn:
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"),
                {"r": role},
            )
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {q_schema} CASCADE")
            conn.exec_driver_sql(f"DROP ROLE IF EXISTS {q_role}")
        admin.dispose()


# -- the clients ------------------------------------------------------------------------


@dataclass
class Client:
    """One user of the app: credentials, items, and every response body they received."""

    name: str
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    token: str = ""
    items: dict[str, str] = field(default_factory=dict)
    """Item id -> title, as the owner expects it now."""
    created: dict[str, str] = field(default_factory=dict)
    """Item id -> title as created: the attackers' targets."""
    received: list[str] = field(default_factory=list)

    @property
    def email(self) -> str:
        return f"{self.name}@example.com"

    @property
    def password(self) -> str:
        return f"{self.name}'s password"

    def marker(self) -> str:
        return f"secret-of-{self.name}-"


def seed_users(db: Database, clients: list[Client]) -> None:
    """Sign the users up, outside any scope (an admin script)."""
    with sqlmodel.Session(db.admin) as session:
        for client in clients:
            session.add(
                User(
                    id=client.id, email=client.email, hashed_password=hash_password(client.password)
                )
            )
        session.commit()


class Driver:
    """Sends each user's requests and keeps every body they got back."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def login(self, client: Client) -> None:
        response = await self.http.post(
            f"{API}/login/access-token", json={"email": client.email, "password": client.password}
        )
        assert response.status_code == 200, response.text
        client.token = response.json()["access_token"]

    async def call(self, client: Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {client.token}", "origin": FRONT}
        response = await self.http.request(method, f"{API}{path}", headers=headers, **kwargs)
        client.received.append(response.text)
        assert response.headers.get("access-control-allow-origin") == FRONT
        return response


def expect_refused(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    assert response.json() == {"detail": "refused", "error": "CrossContextAccessError"}


def expect_not_found(response: httpx.Response) -> None:
    assert response.status_code == 404, response.text
    assert response.json() == {"detail": "Item not found"}


# -- the scenario --------------------------------------------------------------------------


@dataclass
class Outcome:
    clients: list[Client]
    attacks: Counter[str]


async def run_scenario(app: FastAPI, clients: list[Client]) -> Outcome:
    attacks: Counter[str] = Counter()
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://app") as http,
    ):
        driver = Driver(http)
        with anyio.fail_after(HANG):
            async with anyio.create_task_group() as tg:
                for client in clients:
                    tg.start_soon(driver.login, client)

            # 1. Every user creates items, LANES requests of each user at once.
            async def create(client: Client, lane: int) -> None:
                for n in range(lane, ITEMS_PER_USER, LANES):
                    title = f"{client.marker()}{n}-{secrets.token_hex(4)}"
                    response = await driver.call(client, "POST", "/items/", json={"title": title})
                    assert response.status_code == 200, response.text
                    body = response.json()
                    assert (body["title"], body["owner_id"]) == (title, str(client.id))
                    client.items[body["id"]] = client.created[body["id"]] = title

            async with anyio.create_task_group() as tg:
                for client in clients:
                    for lane in range(LANES):
                        tg.start_soon(create, client, lane)

            # 2. Every user lists at once: the barrier holds each endpoint, its session open
            # and its rows read, until all of them are inside: the pool really runs them
            # concurrently, and each still sees only its own items.
            app.state.rendezvous = threading.Barrier(len(clients))
            listed: dict[str, Any] = {}

            async def list_items(client: Client) -> None:
                response = await driver.call(client, "GET", "/items/")
                assert response.status_code == 200, response.text
                listed[client.name] = response.json()

            try:
                async with anyio.create_task_group() as tg:
                    for client in clients:
                        tg.start_soon(list_items, client)
            finally:
                app.state.rendezvous = None
            for client in clients:
                data = listed[client.name]
                assert data["count"] == ITEMS_PER_USER
                assert {i["id"]: i["title"] for i in data["data"]} == client.items

            # 3. The storm: each owner works on its items while the others attack them.
            async def own_work(client: Client) -> None:
                for n, (item_id, title) in enumerate(sorted(client.created.items())):
                    response = await driver.call(client, "GET", f"/items/{item_id}")
                    assert response.status_code == 200, response.text
                    assert response.json()["title"] == title
                    oracle = f"/buggy/items/{item_id}/title-starts-with"
                    response = await driver.call(client, "GET", oracle, params={"prefix": title})
                    assert response.json() == {"exists": True}  # the oracle works: for owners
                    response = await driver.call(client, "GET", oracle, params={"prefix": "zz"})
                    assert response.json() == {"exists": False}
                    if n % 2 == 0:
                        new_title = f"{title}-v2"
                        response = await driver.call(
                            client, "PUT", f"/items/{item_id}", json={"title": new_title}
                        )
                        assert response.status_code == 200, response.text
                        assert response.json()["title"] == new_title
                        client.items[item_id] = new_title
                    if n % 4 == 1:
                        response = await driver.call(client, "DELETE", f"/items/{item_id}")
                        assert response.status_code == 200, response.text
                        del client.items[item_id]
                response = await driver.call(client, "GET", "/buggy/items/")
                assert {i["id"] for i in response.json()["data"]} == set(client.items)

            async def attack(attacker: Client, victims: list[Client]) -> None:
                for victim in victims:
                    for item_id, title in victim.created.items():
                        for method, path in [
                            ("GET", f"/items/{item_id}"),
                            ("PUT", f"/items/{item_id}"),
                            ("DELETE", f"/items/{item_id}"),
                            ("GET", f"/buggy/items/{item_id}"),
                            ("DELETE", f"/buggy/items/{item_id}"),
                        ]:
                            body = (
                                {"title": f"defaced by {attacker.name}"}
                                if method == "PUT"
                                else None
                            )
                            expect_not_found(await driver.call(attacker, method, path, json=body))
                            attacks[f"{method} {path.split('/')[1]}"] += 1
                        response = await driver.call(
                            attacker,
                            "GET",
                            f"/buggy/items/{item_id}/title-starts-with",
                            params={"prefix": title},
                        )
                        assert response.json() == {"exists": False}
                        attacks["oracle"] += 1
                        expect_refused(
                            await driver.call(
                                attacker, "GET", f"/buggy/items/{item_id}/old-session"
                            )
                        )
                        attacks["old session"] += 1
                        planted = {
                            "title": f"planted by {attacker.name}",
                            "owner_id": str(victim.id),
                        }
                        expect_refused(
                            await driver.call(attacker, "POST", "/buggy/items/", json=planted)
                        )
                        attacks["forged owner"] += 1
                    response = await driver.call(attacker, "GET", "/buggy/items/")
                    assert {i["owner_id"] for i in response.json()["data"]} <= {str(attacker.id)}

            async with anyio.create_task_group() as tg:
                for client in clients:
                    victims = [c for c in clients if c is not client]
                    tg.start_soon(own_work, client)
                    for lane in range(LANES - 1):
                        tg.start_soon(attack, client, victims[lane :: LANES - 1])

            # 4. Each owner ends with exactly its items.
            for client in clients:
                response = await driver.call(client, "GET", "/items/")
                data = response.json()
                assert {i["id"]: i["title"] for i in data["data"]} == client.items
                assert data["count"] == len(client.items)
    return Outcome(clients=clients, attacks=attacks)


def assert_isolated(outcome: Outcome, db: Database, manager: SessionManager, app: FastAPI) -> None:
    clients = outcome.clients
    victims_items = ITEMS_PER_USER * (len(clients) - 1)
    for kind in ("old session", "forged owner", "oracle"):
        assert outcome.attacks[kind] == victims_items * len(clients)
    # Nobody received anything of anyone else: no id, no item id, no title.
    for client in clients:
        for other in clients:
            if other is client:
                continue
            secrets_of_other = [str(other.id), other.marker(), *other.created]
            for body in client.received:
                assert not [s for s in secrets_of_other if s in body], (client.name, body)
    # The database holds exactly what the owners wrote: nothing planted, defaced or lost.
    with sqlmodel.Session(db.admin) as admin:  # outside any scope
        rows = admin.exec(sqlmodel.select(Item)).all()
    by_owner: dict[uuid.UUID, dict[str, str]] = {}
    for row in rows:
        by_owner.setdefault(row.owner_id, {})[str(row.id)] = row.title
    assert by_owner == {c.id: c.items for c in clients if c.items}
    # Every refusal was the typed one, from the two attacks that reach the database
    # outside the manager or with a forged owner.
    refusals = Counter(app.state.refusals)
    assert refusals == {"CrossContextAccessError": 2 * victims_items * len(clients)}
    stats = manager.stats()
    assert (stats.open_sessions, stats.checked_out, stats.leaks) == (0, 0, 0)
    assert stats.unmanaged == victims_items * len(clients)  # each old Session(engine)


def make_clients() -> list[Client]:
    return [Client(name) for name in USERS]


class TestSyncApp:
    def test_sqlite_with_protect(self, sqlite_db: Database) -> None:
        manager = SessionManager(
            sqlite_db.engine,
            session_class=sqlmodel.Session,
            per_user_limit=LANES + 1,
            acquire_timeout=HANG,
        )
        manager.protect(Item, user_column="owner_id")
        clients = make_clients()
        seed_users(sqlite_db, clients)
        app = create_app(sqlite_db.engine, manager, os.urandom(32))
        outcome = anyio.run(run_scenario, app, clients)
        assert_isolated(outcome, sqlite_db, manager, app)

    @pytest.mark.postgres
    def test_postgres_with_row_level_security_alone(self, postgres_db: Database) -> None:
        manager = SessionManager(
            postgres_db.engine,
            session_class=sqlmodel.Session,
            row_level_security=True,
            rls_tables=[postgres_db.item_table],
            per_user_limit=LANES + 1,
            acquire_timeout=HANG,
        )
        clients = make_clients()
        seed_users(postgres_db, clients)
        app = create_app(postgres_db.engine, manager, os.urandom(32))
        outcome = anyio.run(run_scenario, app, clients)
        assert_isolated(outcome, postgres_db, manager, app)
        assert manager.stats().dirty_returns == 0


class TestControl:
    def test_without_the_protections_the_same_attacks_leak(self, sqlite_db: Database) -> None:
        """No ``protect()``, ``unmanaged="allow"``: every buggy endpoint leaks (the harness
        would see it), while the correct endpoints still keep to the owner."""
        manager = SessionManager(
            sqlite_db.engine, session_class=sqlmodel.Session, unmanaged="allow"
        )
        alice, bob = Client("alice"), Client("bob")
        seed_users(sqlite_db, [alice, bob])
        secret = os.urandom(32)
        app = create_app(sqlite_db.engine, manager, secret)

        with TestClient(app) as http:

            def call(client: Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
                headers = {"authorization": f"Bearer {client.token}"}
                return http.request(method, f"{API}{path}", headers=headers, **kwargs)

            for client in (alice, bob):
                response = http.post(
                    f"{API}/login/access-token",
                    json={"email": client.email, "password": client.password},
                )
                client.token = response.json()["access_token"]
            response = call(alice, "POST", "/items/", json={"title": "alice's secret"})
            item_id = response.json()["id"]

            assert call(bob, "GET", f"/items/{item_id}").status_code == 403  # the app's check
            assert call(bob, "GET", f"/buggy/items/{item_id}").json()["title"] == "alice's secret"
            assert call(bob, "GET", f"/buggy/items/{item_id}/old-session").status_code == 200
            oracle = call(
                bob,
                "GET",
                f"/buggy/items/{item_id}/title-starts-with",
                params={"prefix": "alice's s"},
            )
            assert oracle.json() == {"exists": True}
            assert "alice's secret" in call(bob, "GET", "/buggy/items/").text
            planted = {"title": "planted", "owner_id": str(alice.id)}
            assert call(bob, "POST", "/buggy/items/", json=planted).status_code == 200
            assert "planted" in call(alice, "GET", "/items/").text
            assert call(bob, "DELETE", f"/buggy/items/{item_id}").status_code == 200
            expect_not_found(call(alice, "GET", f"/items/{item_id}"))


class TestWeb:
    def test_cors_preflight_and_refusals_reach_the_browser(self, sqlite_db: Database) -> None:
        manager = SessionManager(sqlite_db.engine, session_class=sqlmodel.Session)
        app = create_app(sqlite_db.engine, manager, os.urandom(32))
        preflight = {"origin": FRONT, "access-control-request-method": "POST"}
        with TestClient(app) as http:
            answered = http.options(f"{API}/items/", headers=preflight)
            assert answered.status_code == 200
            assert answered.headers["access-control-allow-origin"] == FRONT
            refused = http.get(f"{API}/items/", headers={"origin": FRONT})
            assert refused.status_code == 401
            assert refused.headers["access-control-allow-origin"] == FRONT
            forged = tokens.dumps(
                UserContext.new(str(uuid.uuid4())), key=os.urandom(32), purpose=PURPOSE
            )
            bad = http.get(f"{API}/items/", headers={"authorization": f"Bearer {forged}"})
            assert bad.status_code == 401
