"""Sharing that is declared is still safe (issue 16, finding 6).

The docs advised ``isolation.shareable(httpx.AsyncClient())`` ("one pool for
everyone"). The client's cookie jar then carried alice's upstream session to
bob: ``bob got: {'acting_as': 'alice'}``. Objects known to keep per-user state
(an httpx client, a requests ``Session``, an aiohttp ``ClientSession``) cannot
be declared shareable, nor be an ``APP`` product, and the walk still compares
them when their class says ``__isolation_shareable__ = True``. What is shared
instead is the pool: a transport, with a client per user over it.

The upstream is a tiny ASGI app reached through ``httpx.ASGITransport``: no
network.
"""

from __future__ import annotations

import json
import types
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import httpx
import pytest

import isolation
from isolation import Lifetime, Registry, UserContext

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def upstream(scope: Scope, receive: Receive, send: Send) -> None:
    """``/login?user=X`` sets a session cookie; ``/whoami`` answers whom it acts as."""
    assert scope["type"] == "http"
    headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
    if scope["path"] == "/login":
        user = scope["query_string"].decode().removeprefix("user=")
        headers.append((b"set-cookie", f"session={user}; Path=/".encode()))
        body: dict[str, object] = {"logged_in": user}
    else:
        cookies = dict(
            part.strip().split("=", 1)
            for value in (v for k, v in scope["headers"] if k == b"cookie")
            for part in value.decode().split(";")
        )
        body = {"acting_as": cookies.get("session")}
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


def asgi_transport() -> httpx.ASGITransport:
    return httpx.ASGITransport(app=upstream)


class Assistant:
    """One user's assistant, calling the upstream service on the user's behalf."""

    def __init__(self, ctx: UserContext, http: httpx.AsyncClient) -> None:
        self.user = ctx.user_id
        self.http = http

    async def login(self) -> None:
        (await self.http.get("/login", params={"user": self.user})).raise_for_status()

    async def whoami(self) -> dict[str, object]:
        answer: dict[str, object] = (await self.http.get("/whoami")).json()
        return answer


class TestRefused:
    @pytest.mark.anyio
    async def test_the_advised_shared_client_is_refused(self) -> None:
        """The issue's shape: the old docs' shareable(httpx.AsyncClient()). Refused, saying
        what to share; before, alice's upstream session reached bob (the flow below)."""
        client = httpx.AsyncClient(transport=asgi_transport(), base_url="http://upstream")
        refused: isolation.ConfigurationError | None = None
        try:
            http = isolation.shareable(client)  # "one pool for everyone"
        except isolation.ConfigurationError as error:
            refused = error
        if refused is not None:
            assert "cookies" in str(refused)
            assert "AsyncHTTPTransport" in str(refused)
            return
        registry = Registry()  # check="full": the declared client is not walked
        registry.provide_value(http, provides=httpx.AsyncClient)
        registry.provide(Assistant)
        async with isolation.scope(UserContext.new("alice"), registry=registry) as a:
            await (await a.aget(Assistant)).login()
        async with isolation.scope(UserContext.new("bob"), registry=registry) as b:
            got = await (await b.aget(Assistant)).whoami()
        pytest.fail(f"shareable() accepted an httpx client; bob got: {got}")

    @pytest.mark.parametrize("cls", [httpx.Client, httpx.AsyncClient])
    def test_client_types_and_subclasses_are_refused(self, cls: type) -> None:
        """The class itself, a subclass, and an instance of the sync client too."""
        sub = type("MyClient", (cls,), {})
        for target in (cls, sub, sub()):
            with pytest.raises(isolation.ConfigurationError, match="cookie"):
                isolation.shareable(target)

    def test_requests_session_is_refused(self) -> None:
        """A requests Session keeps cookies too (known by name: requests need not be installed)."""
        import requests

        with pytest.raises(isolation.ConfigurationError, match="HTTPAdapter"):
            isolation.shareable(requests.Session())

    def test_known_by_name_without_the_library(self) -> None:
        """An aiohttp ClientSession (or requests Session) is known by its package and name."""
        for module, name in (("aiohttp.client", "ClientSession"), ("requests.sessions", "Session")):
            cls = types.new_class(name, ())
            cls.__module__ = module
            with pytest.raises(isolation.ConfigurationError, match="cookie"):
                isolation.shareable(cls())

    def test_app_client_is_refused(self) -> None:
        """An APP product is shared by every user: a client there is refused at registration."""
        registry = Registry()
        with pytest.raises(isolation.ConfigurationError, match="APP"):

            @registry.provide(lifetime=Lifetime.APP)
            def http() -> httpx.AsyncClient:
                return httpx.AsyncClient()

        with pytest.raises(isolation.ConfigurationError, match="cookie"):
            registry.provide_value(httpx.AsyncClient())

    def test_pool_and_ordinary_objects_are_still_declarable(self) -> None:
        """The transport (the pool) and a settings dict are declared as before."""
        transport = httpx.AsyncHTTPTransport()
        assert isolation.shareable(transport) is transport
        settings = {"upstream": "http://upstream"}
        assert isolation.shareable(settings) is settings


class TestWalkStillCompares:
    def test_a_client_class_saying_shareable_is_still_compared(
        self, live: Callable[..., Any]
    ) -> None:
        """``__isolation_shareable__ = True`` on a client subclass does not hide its cookies."""

        class SharedClient(httpx.AsyncClient):
            __isolation_shareable__ = True

        client = SharedClient(transport=asgi_transport())

        class Holder:
            def __init__(self) -> None:
                self.http = client

        make = isolation.request_scoped(Holder)
        live("alice").run(make)
        with pytest.raises(isolation.SharedStateError):
            live("bob").run(make)


class TestSharePoolNotClient:
    @pytest.mark.anyio
    async def test_shared_transport_per_user_client(self) -> None:
        """What the docs advise now: one transport shared, one client per user over it.

        Alice logs in upstream; bob, at the same time, acts as nobody but himself,
        with the full walk on (the per-user clients share nothing but the pool).
        """
        transport = isolation.shareable(asgi_transport())
        registry = Registry()  # check="full"

        @registry.provide
        async def http(ctx: UserContext) -> AsyncIterator[httpx.AsyncClient]:
            # Not closed: closing a client closes its transport, which is everyone's.
            yield httpx.AsyncClient(transport=transport, base_url="http://upstream")

        registry.provide(Assistant)
        async with isolation.scope(UserContext.new("alice"), registry=registry) as a:
            alice = await a.aget(Assistant)
            await alice.login()
            assert await alice.whoami() == {"acting_as": "alice"}
            async with isolation.scope(
                UserContext.new("bob"), registry=registry, allow_switch=True
            ) as b:
                bob = await b.aget(Assistant)
                assert bob.http is not alice.http
                assert await bob.whoami() == {"acting_as": None}
                await bob.login()
                assert await bob.whoami() == {"acting_as": "bob"}
            assert await alice.whoami() == {"acting_as": "alice"}
        assert registry.stats().violations == 0


class TestWrappedAndUndeclared:
    def test_wrapper_holding_a_client_is_refused(self) -> None:
        """A wrapper declared whole, holding a client in an attribute: refused, naming it."""

        class Upstream:
            def __init__(self) -> None:
                self.client = httpx.AsyncClient(transport=asgi_transport())

        with pytest.raises(isolation.ConfigurationError, match=r"Upstream\.client"):
            isolation.shareable(Upstream())

    def test_undeclared_shared_client_is_refused_by_the_walk(
        self, live: Callable[..., Any]
    ) -> None:
        """Not declared, one client reached by two users' instances: the walk refuses it."""
        client = httpx.AsyncClient(transport=asgi_transport())

        class Holder:
            def __init__(self) -> None:
                self.http = client

        make = isolation.request_scoped(Holder)
        live("alice").run(make)
        with pytest.raises(isolation.SharedStateError):
            live("bob").run(make)


class TestRegistryPattern:
    def test_pool_at_app_client_per_request(self) -> None:
        """providers.md: the transport an APP product, the client a REQUEST product over it;
        two users live at once under the full walk: nothing refused, nothing shared but the pool."""
        registry = Registry()

        @registry.provide(lifetime=Lifetime.APP)
        def pool() -> httpx.AsyncHTTPTransport:
            return httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=10))

        @registry.provide
        def client(transport: httpx.AsyncHTTPTransport) -> httpx.AsyncClient:
            return httpx.AsyncClient(transport=transport)

        with isolation.scope(UserContext.new("alice"), registry=registry) as a:
            alices = a.get(httpx.AsyncClient)
            with isolation.scope(UserContext.new("bob"), registry=registry, allow_switch=True) as b:
                bobs = b.get(httpx.AsyncClient)
        assert alices is not bobs
        assert alices.cookies is not bobs.cookies
        assert registry.stats().violations == 0


class Api:
    """An SDK-style wrapper that keeps its own client."""

    def __init__(self) -> None:
        self.http = httpx.AsyncClient()


class Service:
    """The app's service object, holding the SDK: the client is two levels in."""

    def __init__(self) -> None:
        self.api = Api()


class SlottedHolder:
    __slots__ = ("client",)

    def __init__(self) -> None:
        self.client = httpx.AsyncClient()


class CrmSdk:
    """A vendor SDK: keeps its own client."""

    def __init__(self) -> None:
        self._http = httpx.AsyncClient(transport=asgi_transport(), base_url="http://crm")

    async def get(self, path: str, **kw: Any) -> Any:
        return (await self._http.get(path, **kw)).json()


class CrmService:
    """The app's service, "shared on purpose"."""

    def __init__(self) -> None:
        self.sdk = CrmSdk()


class Desk:
    def __init__(self, ctx: UserContext, crm: CrmService) -> None:
        self.user = ctx.user_id
        self.crm = crm


def _fetcher(client: httpx.AsyncClient) -> Callable[[], object]:
    """A callback closing over a client."""
    return lambda: client.get("/")


def _deep_shapes() -> dict[str, Callable[[], object]]:
    """The review's shapes (second review of issue 16, H4): per-user state further in."""
    import functools
    import http.cookiejar

    import httpx2
    import requests

    return {
        "wrapper two deep": Service,
        "dict of clients": lambda: {"github": httpx.AsyncClient()},
        "list of sessions": lambda: [requests.Session()],
        "slots wrapper": SlottedHolder,
        "bound method": lambda: httpx.AsyncClient().get,
        "partial of a bound method": lambda: functools.partial(requests.Session().get, "https://x"),
        "bare httpx cookies": httpx.Cookies,
        "bare stdlib cookie jar": http.cookiejar.CookieJar,
        "bare requests cookie jar": requests.cookies.RequestsCookieJar,
        "httpx2 client": httpx2.AsyncClient,
        "httpx2 client in a wrapper": lambda: types.SimpleNamespace(http=httpx2.Client()),
        "httpx2 cookies": httpx2.Cookies,
        "closure over a client": lambda: _fetcher(httpx.AsyncClient()),
    }


class TestPerUserStateAnywhereInside:
    """Declared sharing is refused wherever the per-user state sits, not one attribute in.

    Before, ``shareable()`` looked at the object and its own attributes, and knew
    clients by class name only: each shape below was accepted and the walk then
    skipped it (second review of issue 16, H4; the end-to-end flow is below).
    """

    @pytest.mark.parametrize("shape", list(_deep_shapes()))
    def test_refused(self, shape: str) -> None:
        obj = _deep_shapes()[shape]()
        with pytest.raises(isolation.ConfigurationError, match="cannot be declared shareable"):
            isolation.shareable(obj)

    def test_message_names_the_path_and_what_to_share(self) -> None:
        with pytest.raises(isolation.ConfigurationError) as caught:
            isolation.shareable(Service())
        message = str(caught.value)
        assert "Service.api.http" in message
        assert "AsyncHTTPTransport" in message
        with pytest.raises(isolation.ConfigurationError, match=r"dict\['github'\]"):
            isolation.shareable({"github": httpx.AsyncClient()})

    def test_known_by_name_without_the_library(self) -> None:
        """aiohttp's cookie jars (any AbstractCookieJar) and httpx2's clients, by name."""
        for module, name in (
            ("aiohttp.abc", "AbstractCookieJar"),
            ("httpx2._client", "BaseClient"),
            ("httpx2", "Cookies"),
        ):
            base = types.new_class(name, ())
            base.__module__ = module
            sub = types.new_class("Mine", (base,))
            with pytest.raises(isolation.ConfigurationError, match="cannot be declared shareable"):
                isolation.shareable(types.SimpleNamespace(inner=[sub()]))
            with pytest.raises(isolation.ConfigurationError, match="cannot be declared shareable"):
                isolation.shareable(sub)

    def test_a_wrapper_class_saying_shareable_is_entered(self) -> None:
        """``__isolation_shareable__ = True`` on the wrapper does not hide the client inside."""

        class Wrapper:
            __isolation_shareable__ = True

            def __init__(self) -> None:
                self.inner = Api()

        with pytest.raises(isolation.ConfigurationError, match=r"Wrapper\.inner\.http"):
            isolation.shareable(Wrapper())

    @pytest.mark.anyio
    async def test_service_holding_an_sdk_holding_a_client(self) -> None:
        """The review's flow: alice's upstream session reached bob through a declared service."""

        refused: isolation.ConfigurationError | None = None
        try:
            crm = isolation.shareable(CrmService())
        except isolation.ConfigurationError as error:
            refused = error
        if refused is not None:
            assert "CrmService.sdk._http" in str(refused)
            return
        registry = Registry()
        registry.provide_value(crm, provides=CrmService)
        registry.provide(Desk)
        async with isolation.scope(UserContext.new("alice"), registry=registry) as a:
            await (await a.aget(Desk)).crm.sdk.get("/login", params={"user": "alice"})
        async with isolation.scope(UserContext.new("bob"), registry=registry) as b:
            got = await (await b.aget(Desk)).crm.sdk.get("/whoami")
        pytest.fail(f"shareable() accepted a service holding a client; bob got: {got}")

    def test_legitimate_shared_objects_are_accepted(self) -> None:
        """Pools, engines, regexes, settings, and wrappers of them: still declarable."""
        import re

        import requests
        import sqlalchemy

        transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=10))
        engine = sqlalchemy.create_engine("sqlite://")
        try:
            accepted: list[object] = [
                transport,
                httpx.HTTPTransport(),
                requests.adapters.HTTPAdapter(),
                engine,
                re.compile(r"\d+"),
                {"upstream": "https://api.example.com", "retries": [1, 2, 4]},
                types.SimpleNamespace(pool=transport, engine=engine, limits=httpx.Limits()),
            ]
            for obj in accepted:
                assert isolation.shareable(obj) is obj
        finally:
            engine.dispose()

    def test_search_is_bounded_and_says_so(self) -> None:
        """Beyond the walk's bounds nothing is searched, and a warning says so."""
        deep: list[object] = [httpx.AsyncClient()]
        for _ in range(12):
            deep = [deep]
        with pytest.warns(isolation.WalkTruncatedWarning, match="not searched"):
            isolation.shareable(deep)

    def test_app_product_holding_a_client_is_refused(self) -> None:
        """An APP product is declared shareable when built: searched the same way."""
        registry = Registry()

        @registry.provide(lifetime=Lifetime.APP)
        def service() -> Service:
            return Service()

        with (
            isolation.scope(UserContext.new("alice"), registry=registry) as a,
            pytest.raises(isolation.ConfigurationError, match=r"Service\.api\.http"),
        ):
            a.get(Service)
